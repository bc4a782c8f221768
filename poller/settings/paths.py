"""Places in a config: the key path of a value, how a problem prints it, and the places whose
values are text as written (found from the models' field types)."""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Annotated, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

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


def _marked(annotation: object) -> bool:
    """Whether `annotation` (or a member of its union) carries `AS_WRITTEN`."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return any(m is AS_WRITTEN for m in getattr(annotation, "__metadata__", ())) or _marked(
            get_args(annotation)[0]
        )
    if origin is Union or origin is types.UnionType:
        return any(_marked(member) for member in get_args(annotation))
    return False


def bare_type(annotation: object) -> object:
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


def as_written(annotation: object) -> list[Pattern]:
    """The places inside a value of type `annotation` whose plain scalars are kept as written.

    The places are those whose type carries `AS_WRITTEN`, found through models, mappings,
    lists and unions; a list of such text counts too, since a list of one may be written as
    its single item.
    """
    found: list[Pattern] = [()] if _marked(annotation) else []
    for place in _places_inside(bare_type(annotation)):
        if place not in found:
            found.append(place)
    return found


def _places_inside(bare: object) -> list[Pattern]:
    """`as_written` of the parts of a model, a mapping, a list or a union."""
    if isinstance(bare, type) and issubclass(bare, BaseModel):
        return [
            (name, *place)
            for name, field in bare.model_fields.items()
            for place in as_written(_field_type(field))
        ]
    origin, args = get_origin(bare), get_args(bare)
    if origin is dict and len(args) == 2:
        return [(str, *place) for place in as_written(args[1])]
    if origin is tuple and args:
        items = as_written(args[0])
        one = [()] if () in items else []  # a list of one written as its item
        return one + [(int, *place) for place in items]
    if origin is Union or origin is types.UnionType:
        return [place for member in args for place in as_written(member)]
    return []


def _field_type(field: FieldInfo) -> object:
    """The annotation of a model's field with the metadata pydantic took out of it."""
    if not field.metadata:
        return field.annotation
    return Annotated[(field.annotation, *field.metadata)]
