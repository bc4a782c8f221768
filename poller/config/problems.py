"""Problems in words: pydantic's errors turned into prose with their ``file:line``.

A problem says what was expected, never what was given, unless the value is never a secret
(a choice, a number, a duration, a rate, a state or a name) and was written in the file. As a
last guard, every value that came from the environment or an ``x_file`` is masked.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, get_args, get_origin, overload

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from poller.config.document import Document
from poller.errors import Problem
from poller.notify import TemplateProblem
from poller.settings.fields import ShownValueError, control_character
from poller.settings.paths import KeyPath, bare_type, format_path
from poller.sources.base import source_types, source_union

T = TypeVar("T")
#: the kind of a top-level section (dict, list)
_Kind = TypeVar("_Kind")

_ADAPTERS: dict[object, TypeAdapter[Any]] = {}


@overload
def adapter(annotation: type[T]) -> TypeAdapter[T]: ...
@overload
def adapter(annotation: object) -> TypeAdapter[Any]: ...
# Any: an annotation is a type form (``Annotated[...]``, a union), which `TypeAdapter` takes and
# no other type than Any names for mypy until PEP 747's ``TypeForm``
def adapter(annotation: Any) -> TypeAdapter[Any]:
    """The one `TypeAdapter` of `annotation` (building one costs far more than validating)."""
    found = _ADAPTERS.get(annotation)
    if found is None:
        found = _ADAPTERS[annotation] = TypeAdapter(annotation)
    return found


def _step(annotation: object, part: str | int) -> object:
    """The type found at `part` inside a value of type `annotation` (pydantic's loc steps)."""
    annotation = bare_type(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return field.annotation if field is not None else None
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin in (tuple, list) and args:
        return args[0]
    if args:  # a union of models: pydantic's loc names the member by its tag
        for member in args:
            member = bare_type(member)
            if isinstance(member, type) and issubclass(member, BaseModel):
                tag = member.model_fields.get("type")
                if tag is not None and tag.default == part:
                    return member
    return None


def _expected_keys(root: object, loc: Sequence[str | int]) -> list[str] | None:
    annotation = root
    for part in loc[:-1]:
        annotation = _step(annotation, part)
        if annotation is None:
            return None
    annotation = bare_type(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [name for name in annotation.model_fields if name != "path"]
    return None


def unknown_key(key: str, expected: Sequence[str]) -> str:
    """The message about an unknown `key`: the keys expected, and the closest one if any."""
    message = f"unknown key; expected one of: {', '.join(expected)}"
    close = difflib.get_close_matches(key, expected, n=1)
    return f"{message} (did you mean {close[0]}?)" if close else message


#: pydantic's error kinds about a value that is never a secret (a choice, a number): their
#: problems quote the value given
_SHOWN_KINDS = frozenset(
    {
        "union_tag_invalid",
        "literal_error",
        "enum",
        "int_parsing",
        "int_from_float",
        "float_parsing",
        "bool_parsing",
        "greater_than_equal",
        "greater_than",
        "less_than_equal",
        "less_than",
    }
)


def _shown_value(error: Mapping[str, Any]) -> str | None:
    """The value an error is about, quoted, if it may be shown; else None.

    Only choices, numbers, durations, rates and states are quoted (never a token, a URL or a
    header), and only short one-line values.
    """
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = ctx.get("tag") if kind == "union_tag_invalid" else error.get("input")
    shown = kind in _SHOWN_KINDS or isinstance(ctx.get("error"), ShownValueError)
    if not shown or isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = repr(value)
    if len(text) > 60 or control_character(str(value)) is not None:
        return None
    return text


def _with_value(message: str, shown: str | None) -> str:
    """`message` naming the value: ``unknown X 'v'; expected...`` or ``...; got 'v'``."""
    if shown is None:
        return message
    head, sep, tail = message.partition(";")
    if head.startswith("unknown ") and sep:
        return f"{head} {shown};{tail}"
    return f"{message}; got {shown}"


def describe_error(error: ErrorDetails, root: object) -> str:
    """What was expected, in words, from pydantic's error; its input is never used."""
    kind = error["type"]
    loc = error["loc"]
    ctx = error.get("ctx") or {}
    msg = str(error["msg"])
    if kind == "missing":
        hint = f" (or {loc[-1]}_file)" if loc and loc[-1] == "token" else ""
        return f"required{hint}"
    if kind == "extra_forbidden":
        keys = _expected_keys(root, loc)
        return unknown_key(str(loc[-1]), keys) if keys else "unknown key"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        what = "unknown source type" if kind == "union_tag_invalid" else "required"
        return f"{what}; expected one of: {', '.join(source_types())}"
    if kind in ("literal_error", "enum"):
        choices = str(ctx.get("expected", "")).replace("' or '", "', '")
        return f"expected one of: {choices.replace(chr(39), '')}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "assertion_error":
        return msg.removeprefix("Assertion failed, ")
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "expected a mapping (key: value)"
    if kind in ("tuple_type", "list_type", "iterable_type"):
        return "expected a list"
    if kind == "string_type":
        return "expected a string"
    if kind in ("bool_type", "bool_parsing"):
        return "expected true or false"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "expected a whole number"
    if kind in ("float_type", "float_parsing"):
        return "expected a number"
    if kind == "too_short":
        return "must not be empty"
    bounds = {
        "greater_than_equal": ("ge", "at least"),
        "greater_than": ("gt", "more than"),
        "less_than_equal": ("le", "at most"),
        "less_than": ("lt", "less than"),
    }
    if kind in bounds:
        name, words = bounds[kind]
        return f"must be {words} {ctx.get(name)}"
    return msg


class Checker:
    """Validates the parts of a read document and collects every problem."""

    def __init__(self, document: Document) -> None:
        self.doc = document

    def validate(
        self, adapter: TypeAdapter[T], value: object, prefix: KeyPath, root: object
    ) -> T | None:
        """The validated value, or None after recording each of pydantic's errors."""
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        tag = value.get("type") if isinstance(value, Mapping) else None
        for error in errors:
            loc = tuple(error["loc"])
            message = describe_error(error, root)
            if error["type"].startswith("union_tag"):
                loc = ("type",)
            elif root is source_union() and loc and loc[0] == tag:
                loc = loc[1:]
            if (*prefix, *loc) not in self.doc.tainted:  # else from the environment or a file
                message = _with_value(message, _shown_value(error))
            cause = (error.get("ctx") or {}).get("error")
            if isinstance(cause, TemplateProblem):
                line, message = self.doc.template_place((*prefix, *loc), cause)
                self.doc.problem((*prefix, *loc), message, line)
                continue
            self.doc.problem((*prefix, *loc), message)
        return None

    def section(self, data: Mapping[str, object], key: str, kind: type[_Kind], hint: str) -> _Kind:
        """The top-level `key` if it is a `kind` (absent: an empty one); else `hint` is
        recorded and an empty one returned, so that the rest is still checked."""
        value = data.get(key)
        if value is None:
            return kind()
        if not isinstance(value, kind):
            self.doc.problem((key,), hint)
            return kind()
        return value


def final_problems(doc: Document) -> list[Problem]:
    """The document's problems as `Problem`s: noise dropped, ordered by line, secrets masked."""
    kept: list[tuple[KeyPath, int | None, str]] = []
    for index, (path, line, message) in enumerate(doc.problems):
        # a value already reported while reading (unset variable, unreadable file) is not
        # reported again for what validation then makes of it
        later = index >= doc.read_problems
        if later and any(path[: len(b)] == b for b in doc.broken):
            continue
        kept.append((path, line, message))
    kept.sort(key=lambda p: (p[1] is None, p[1] or 0))
    secrets = sorted((s for s in doc.secrets if len(s) >= 4), key=len, reverse=True)
    result = []
    for path, line, message in kept:
        shown = format_path(doc.renamed.get(path, path))
        for secret in secrets:
            message = message.replace(secret, "***")
            shown = shown.replace(secret, "***")
        result.append(Problem(doc.file, line, shown, message))
    return result
