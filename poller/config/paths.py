"""Places in a config: the key path of a value, how a problem prints it, and the places whose
values are text as written (found from the models' field types)."""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

#: A place in the config: mapping keys and list indexes from the root.
KeyPath = tuple[str | int, ...]


def format_path(path: Sequence[str | int]) -> str:
    """The path as a person reads it: ``jobs[2].polling.interval``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class AsWritten:
    """The mark of a field type whose value is text even where YAML reads a number, a boolean
    or a date (``id: 0123`` is "0123", not 83): put `AS_WRITTEN` in its ``Annotated``."""

    def __repr__(self) -> str:
        return "AS_WRITTEN"


AS_WRITTEN = AsWritten()

#: A set of places: a key path whose `str` or `int` stands for any mapping key or list index.
Pattern = tuple[object, ...]


def _marked(annotation: Any) -> bool:
    """Whether `annotation` (or a member of its union) carries `AS_WRITTEN`."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return any(m is AS_WRITTEN for m in annotation.__metadata__) or _marked(
            get_args(annotation)[0]
        )
    if origin is Union or origin is types.UnionType:
        return any(_marked(member) for member in get_args(annotation))
    return False


def bare_type(annotation: Any) -> Any:
    """`annotation` without ``Annotated`` and ``None``; a union of several types stays one."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def as_written(annotation: Any) -> list[Pattern]:
    """The places inside a value of type `annotation` whose plain scalars are kept as written.

    The places are those whose type carries `AS_WRITTEN`, found through models, mappings,
    lists and unions; a list of such text counts too, since a list of one may be written as
    its single item.
    """
    found: list[Pattern] = [()] if _marked(annotation) else []
    bare = bare_type(annotation)
    if isinstance(bare, type) and issubclass(bare, BaseModel):
        for name, field in bare.model_fields.items():
            marked = any(m is AS_WRITTEN for m in field.metadata)
            inner: list[Pattern] = [()] if marked else []
            inner += [p for p in as_written(field.annotation) if p or not marked]
            found += [(name, *p) for p in inner]
        return found
    origin, args = get_origin(bare), get_args(bare)
    if origin is dict and len(args) == 2:
        found += [(str, *p) for p in as_written(args[1])]
    elif origin is tuple and args:
        items = as_written(args[0])
        if () in items and () not in found:
            found.append(())
        found += [(int, *p) for p in items]
    elif origin is Union or origin is types.UnionType:
        for member in args:
            found += [p for p in as_written(member) if p not in found]
    return found
