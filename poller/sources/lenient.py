"""Lenient readers of JSON values that the source adapters share.

Job APIs differ in casing, number formats and date formats, and their documents are silent on
much of it. Every function here takes any decoded JSON value and returns a plain Python value or
None; none of them raises, so a parser built on them only has to decide what is missing.
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from poller.sources.client import Unreadable

# the one number reader and text cutter, shared with the notifications; the adapters call them
# `lenient.number` and `lenient.shorten`
from poller.units import count as count
from poller.units import number as number
from poller.units import shorten as shorten

#: Longest text kept from a remote field, so a hostile answer cannot bloat rows or messages.
MAX_TEXT = 2000

#: Epoch numbers above this are taken for milliseconds (it is in the year 5138 as seconds).
_MILLISECONDS_FROM = 1e11


def text(value: object, limit: int = MAX_TEXT) -> str | None:
    """A string of at most `limit` characters; objects and lists as compact JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        result = value
    elif isinstance(value, dict | list):
        try:
            result = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
        except (ValueError, TypeError, RecursionError):
            try:
                result = repr(value)
            except RecursionError:  # nested deeper than the stack this runs on allows
                result = "[nested too deep to show]"
    else:
        result = str(value)
    return shorten(result, limit)


def identifier(value: object) -> str | None:
    """A job id from a string or a whole number (ids are never floats, booleans or empty)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip() and len(value) <= 1000:
        return value.strip()
    return None


def parse_time(value: object) -> float | None:
    """Epoch seconds from an ISO-8601 date (naive means UTC), an HTTP date or an epoch number.

    Epoch numbers may be seconds or milliseconds (told apart by size).
    """
    if isinstance(value, str):
        value = value.strip()
        if not _EPOCH_TEXT.fullmatch(value):  # a date; asked first, float() of one raises
            return _parse_date(value) if value else None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    epoch = number(value)
    if epoch is None or epoch <= 0:
        return None
    return epoch / 1000 if epoch >= _MILLISECONDS_FROM else epoch


#: what a number written as text looks like (as `float` reads it; stripped)
_EPOCH_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _parse_date(text: str) -> float | None:
    try:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (ValueError, TypeError, IndexError, OverflowError, OSError):
        return None


def fields(value: object) -> dict[str, object]:
    """A JSON object's members with lower-cased names ({} for anything that is not one)."""
    if not isinstance(value, dict):
        return {}
    return {str(k).lower(): v for k, v in value.items()}


def first(found: Mapping[str, object], names: Iterable[str]) -> object:
    """The value of the first of `names` (lower-case) that `found` has and is not null."""
    for name in names:
        value = found.get(name)
        if value is not None:
            return value
    return None


def unreadable(value: object) -> str | None:
    """Why `value` cannot be read, if a partly read answer put an `Unreadable` anywhere in it.

    The adapters ask this of each entry of an answer about many jobs: such an entry is a
    ``bad_answer`` for its job alone. Iterative, so that no nesting can exhaust the stack.
    """
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, Unreadable):
            return item.why
    return None
