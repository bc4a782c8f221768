"""The one number reader and the one duration formatter (`poller.units`)."""

from __future__ import annotations

import math
import re

from hypothesis import given
from hypothesis import strategies as st

from poller.units import MAX_SPAN, count, format_duration, number, shorten

SIZES = {"d": 86400, "h": 3600, "m": 60, "s": 1}
ORDER = "dhms"


class TestRoundedDuration:
    """`format_duration(..., rounded=True)`: a span for people, never raising."""

    @given(st.floats(allow_nan=True, allow_infinity=True))
    def test_never_raises(self, seconds: float) -> None:
        """Any float gives text: negative is 0s, beyond 100 years (or NaN) says so."""
        text = format_duration(seconds, rounded=True)
        if not seconds <= MAX_SPAN:
            assert text == "over 100 years"
        elif seconds < 1:
            assert text == "0s"

    @given(st.integers(min_value=1, max_value=MAX_SPAN))
    def test_largest_unit_and_the_next(self, seconds: int) -> None:
        """At most two units, adjacent, largest first; their sum is the span without the
        lesser units."""
        parts = format_duration(seconds, rounded=True).split()
        units = [re.fullmatch(r"(\d+)([dhms])", part) for part in parts]
        assert all(units) and 1 <= len(parts) <= 2
        letters = [m.group(2) for m in units if m]
        first = ORDER.index(letters[0])
        assert letters[0] == next(u for u in ORDER if seconds >= SIZES[u])
        if len(letters) == 2:
            assert ORDER.index(letters[1]) == first + 1
        shown = sum(int(m.group(1)) * SIZES[m.group(2)] for m in units if m)
        finest = SIZES[ORDER[min(first + 1, 3)]]
        assert shown == seconds - seconds % finest

    def test_examples(self) -> None:
        """The forms a message shows."""
        assert format_duration(93784, rounded=True) == "1d 2h"
        assert format_duration(303, rounded=True) == "5m 3s"
        assert format_duration(40, rounded=True) == "40s"
        assert format_duration(3605, rounded=True) == "1h"

    def test_status_spans(self) -> None:
        """The ages `poller status` shows: whole seconds, a fraction of one is dropped."""
        assert format_duration(5400, rounded=True) == "1h 30m"
        assert format_duration(0.6, rounded=True) == "0s"
        assert format_duration(89.9, rounded=True) == "1m 29s"


class TestShorten:
    """`shorten`: the one cutter of long text (source fields, message fields and bodies)."""

    @given(st.text(), st.integers(min_value=1, max_value=50))
    def test_fits_and_keeps_the_start(self, text: str, limit: int) -> None:
        """Text that fits is unchanged; longer text is its start and an ellipsis, `limit` long."""
        result = shorten(text, limit)
        if len(text) <= limit:
            assert result == text
        else:
            assert len(result) == limit and result.endswith("…")
            assert text.startswith(result[:-1])

    def test_examples(self) -> None:
        """The ellipsis takes the last place; a limit below one leaves it alone."""
        assert shorten("abcdef", 4) == "abc…"
        assert shorten("abcd", 4) == "abcd"
        assert shorten("abc", 0) == "…"


class TestNumbers:
    """`number` and `count`: never raise; strings and a cap only where the caller asks."""

    @given(st.from_type(object) | st.floats() | st.integers() | st.text())
    def test_never_raise(self, value: object) -> None:
        """Anything a JSON API sends gives a finite float or None, a count >= 0 or None."""
        result = number(value)
        assert result is None or math.isfinite(result)
        whole = count(value, maximum=10**15)
        assert whole is None or 0 <= whole <= 10**15

    def test_strings_only_when_asked(self) -> None:
        """A quoted number is read by default (the sources), not with strings=False."""
        assert number(" 42.5 ") == 42.5
        assert number("42", strings=False) is None
        assert count("7") == 7
        assert count("7", strings=False) is None
        assert number(True) is None and count(False) is None

    @given(st.integers(min_value=0, max_value=10**15))
    def test_count_up_to_the_cap_is_exact(self, value: int) -> None:
        """A whole count up to the cap survives unchanged; one past it is refused."""
        assert count(value, strings=False, maximum=10**15) == value
        assert count(10**15 + 1, maximum=10**15) is None
        assert count(10**400) is None
