"""Numbers, durations and lengths: the one reader of numbers from JSON, the one duration
formatter, the one reader of ``Retry-After`` and the one cutter of long text.

This is the lowest layer (it imports nothing from poller), so that the config, the sources, the
notifications and the command line read numbers, write durations and cut text the same way.
"""

from __future__ import annotations

import email.utils
import math

#: The longest span `format_duration` spells out when rounding (100 years); a longer one comes
#: from bad data.
MAX_SPAN = 100 * 365 * 86400

#: The units a duration is written in, largest first.
_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def number(value: object, *, strings: bool = True) -> float | None:
    """A finite float from a JSON number, or None for anything else; never raises.

    A numeric string (``" 42.5 "``) counts as a number unless `strings` is False: the sources
    read APIs that quote their numbers, while an event's stored payload holds numbers only.
    """
    # JSON's own numbers first, asked by exact type (a bool is neither): the sources read
    # several per answer
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is int:
        try:
            return float(value)  # finite, or too big for a float
        except OverflowError:
            return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            result = float(value)
        except OverflowError:  # an integer too big for a float (a 400-digit JSON number)
            return None
    elif strings and isinstance(value, str):
        try:
            result = float(value.strip())
        except (ValueError, OverflowError):
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def count(value: object, *, strings: bool = True, maximum: float | None = None) -> int | None:
    """A whole count from 0 up to `maximum` (if given) read by `number`, or None."""
    result = number(value, strings=strings)
    if result is None or result < 0 or (maximum is not None and result > maximum):
        return None
    # exact: an int up to `maximum` (below 2**53 where callers set one) survives the float
    return int(result)


def format_duration(seconds: float, *, rounded: bool = False) -> str:
    """A duration as text, in the units ``d``, ``h``, ``m`` and ``s``.

    By default the string is exact, one that `config.parse_duration` reads back: whole days,
    hours and minutes use their unit (``7200.0`` → ``2h``); anything else is seconds (``90.0`` →
    ``90s``, ``0.25`` → ``0.25s``).

    `rounded` writes a span for people instead and never raises: the largest unit and the next
    one (``1d 2h``, ``5m 3s``, ``40s``), a negative span as ``0s``, and anything beyond
    `MAX_SPAN` (or NaN) as ``over 100 years``.
    """
    if rounded:
        return _rounded(seconds)
    if float(seconds).is_integer() and 0 <= seconds < 2**53:
        whole = int(seconds)
        for unit, size in _UNITS[:-1]:
            if whole and whole % size == 0:
                return f"{whole // size}{unit}"
        return f"{whole}s"
    return f"{float(seconds)!r}s"


def _rounded(seconds: float) -> str:
    if not (seconds <= MAX_SPAN):  # also NaN
        return "over 100 years"
    rest = int(max(0.0, seconds))
    parts: list[str] = []
    for index, (unit, size) in enumerate(_UNITS):
        amount, rest = divmod(rest, size)
        if amount:
            parts.append(f"{amount}{unit}")
            # the largest unit and the next one: a lesser unit is noise beside it
            following, _ = divmod(rest, _UNITS[index + 1][1]) if index + 1 < len(_UNITS) else (0, 0)
            if following:
                parts.append(f"{following}{_UNITS[index + 1][0]}")
            break
    return " ".join(parts) or "0s"


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, marked with an ellipsis when cut.

    The ellipsis takes the last place, so a cut text is `limit` characters long (one, the
    ellipsis alone, for a `limit` below one).
    """
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)
