"""The event payload: what a message may show about one event, as it was when it happened.

Polling builds an `EventPayload` and stores it as JSON (`to_json`) with the event; the
notifications read it back (`from_json`) to write the message. The JSON keeps one shape for
databases written by every version, and `from_json` is the one place that reads it
defensively: a payload holds what a remote API sent, and a database may hold older or damaged
rows, so any field may be missing or of the wrong type, and reading one never raises for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field

from poller.models import JsonValue, record
from poller.units import count, number

#: The largest count a message shows; a bigger "row count" from an API is not a real one and is
#: left out (a 400-digit integer cannot even be turned into a float).
MAX_COUNT = 10**15


@record
class EventPayload:
    """One event's snapshot of its watch: the job, its state and progress, the error, times.

    Times are epoch seconds. The text fields hold the text as stored; messages clean it
    (`notify.text`) because it came from a remote API.
    """

    #: the `Event` value this snapshot was taken for
    event: str | None = None
    key: str | None = None
    name: str | None = None
    source: str | None = None
    site: str | None = None
    job_id: str | None = None
    tags: tuple[str, ...] = ()
    state: str | None = None
    #: the state before this event, when the event changed it
    previous_state: str | None = None
    remote_status: str | None = None
    progress: float | None = None
    #: the source's own facts about the job (rows, reason, output, URL, the API's times)
    details: Mapping[str, JsonValue] = field(default_factory=dict)
    #: the last poll error, for unreachable and timed-out events
    error: str | None = None
    #: failed polls in a row, for unreachable events (and the outage's, for recovered ones)
    error_count: int | None = None
    #: when polling started failing, for unreachable and recovered events
    outage_since: float | None = None
    #: the last change of state or progress: a stalled job has not moved since
    last_change_at: float | None = None
    created_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    #: when the event happened
    at: float | None = None

    def to_json(self) -> dict[str, JsonValue]:
        """The payload as the events table stores it (the shape existing databases hold)."""
        return {
            "event": self.event,
            "key": self.key,
            "name": self.name,
            "source": self.source,
            "site": self.site,
            "job_id": self.job_id,
            "tags": list(self.tags),
            "state": self.state,
            "previous_state": self.previous_state,
            "remote_status": self.remote_status,
            "progress": self.progress,
            "details": dict(self.details),
            "error": self.error,
            "error_count": self.error_count,
            "outage_since": self.outage_since,
            "last_change_at": self.last_change_at,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> EventPayload:
        """A stored payload read back; a field missing or of the wrong type is left unset.

        Numbers must be JSON numbers (what the source read), counts whole and at most
        `MAX_COUNT`; any other JSON value where text belongs is read as its text, as messages
        always showed it. The payload itself must be a mapping (callers fall back to a minimal
        message when it is not).
        """
        raw_details = data.get("details")
        raw_tags = data.get("tags")
        # an empty key (or 0, [], false) names no job: messages show "?" for it
        key = data.get("key")
        return cls(
            event=_text(data.get("event")),
            key=_text(key) if key else None,
            name=_text(data.get("name")),
            source=_text(data.get("source")),
            site=_text(data.get("site")),
            job_id=_text(data.get("job_id")),
            tags=tuple(map(_as_text, raw_tags)) if isinstance(raw_tags, list) else (),
            state=_text(data.get("state")),
            previous_state=_text(data.get("previous_state")),
            remote_status=_text(data.get("remote_status")),
            progress=_number(data.get("progress")),
            details=_details(raw_details),
            error=_text(data.get("error")),
            error_count=count(data.get("error_count"), strings=False, maximum=MAX_COUNT),
            outage_since=_number(data.get("outage_since")),
            last_change_at=_number(data.get("last_change_at")),
            created_at=_number(data.get("created_at")),
            started_at=_number(data.get("started_at")),
            ended_at=_number(data.get("ended_at")),
            at=_number(data.get("at")),
        )


def _text(value: object) -> str | None:
    """Text as stored; None stays None, and any other value is read as its text."""
    return None if value is None else _as_text(value)


def _as_text(value: object) -> str:
    """A value where text belongs, as text (a hostile API may send a number for a name)."""
    return value if isinstance(value, str) else str(value)


def _number(value: object) -> float | None:
    """A number from a stored payload: JSON numbers only (what the source read)."""
    return number(value, strings=False)


def _details(value: object) -> Mapping[str, JsonValue]:
    """The source's facts, or none when they are not a JSON object."""
    if isinstance(value, Mapping):
        # a JSON column decodes an object to a dict of JSON values: nothing to convert
        details: Mapping[str, JsonValue] = value
        return details
    return {}
