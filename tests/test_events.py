"""The event payload: the JSON polling stores reads back as the same record, whatever it holds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from poller.events import EventPayload

_text = st.none() | st.text(max_size=20)
_time = st.none() | st.floats(min_value=0, max_value=4e9)


@given(
    key=st.text(min_size=1, max_size=20),
    name=_text,
    tags=st.lists(st.text(max_size=10), max_size=3).map(tuple),
    progress=st.none() | st.floats(min_value=0, max_value=100),
    error_count=st.none() | st.integers(min_value=0, max_value=10**6),
    at=_time,
    started_at=_time,
)
def test_round_trip(
    key: str,
    name: str | None,
    tags: tuple[str, ...],
    progress: float | None,
    error_count: int | None,
    at: float | None,
    started_at: float | None,
) -> None:
    """`from_json(to_json())` gives back the payload polling built."""
    payload = EventPayload(
        event="failed",
        key=key,
        name=name,
        tags=tags,
        progress=progress,
        details={"rows": [1, 2], "url": "https://x"},
        error_count=error_count,
        started_at=started_at,
        at=at,
    )
    assert EventPayload.from_json(payload.to_json()) == payload


def test_the_stored_shape_is_kept() -> None:
    """The JSON has every key existing databases hold, in the same order."""
    assert list(EventPayload().to_json()) == [
        "event", "key", "name", "source", "site", "job_id", "tags", "state", "previous_state",
        "remote_status", "progress", "details", "error", "error_count", "outage_since",
        "last_change_at", "created_at", "started_at", "ended_at", "at",
    ]  # fmt: skip


def test_hostile_values_are_left_unset_or_read_as_text() -> None:
    """Wrong types never raise: numbers must be numbers, text may be any JSON value."""
    payload = EventPayload.from_json(
        {"key": 0, "name": 7, "tags": "a", "progress": "50", "details": [], "error_count": -1}
    )
    assert payload == EventPayload(name="7")
