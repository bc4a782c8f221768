"""Plain data shared by every layer: states, events, watches, poll outcomes and policies.

Nothing here does I/O; all times are UNIX epoch seconds (floats) so that the pure decisions in
`rules.polling` and the store agree on one clock representation on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias, TypeVar, dataclass_transform

T = TypeVar("T")

#: A value decoded from JSON: what job APIs answer and what JSON columns hold.
JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"

#: The longest wait poller accepts from anyone, in seconds: however long a Retry-After or a
#: backoff asks for, a watch's next poll, a paused source and a channel's retry come within an
#: hour, so a hostile header cannot park a watch, a source or a channel.
MAX_WAIT = 3600.0


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T]) -> type[T]:
    """A dataclass that type checkers treat as frozen, built as a plain one with slots.

    `frozen=True` sets every field through `object.__setattr__`, which made building a claimed
    watch take 2.5 times as long; these classes are made for every poll (README "Performance").
    mypy still refuses an assignment to a field, so nothing mutates them.
    """
    made: Callable[[type[T]], type[T]] = dataclass(slots=True)
    return made(cls)


class State(StrEnum):
    """poller's normalised state of a remote job."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    #: the API answered with a status poller does not know; never terminal
    UNKNOWN = "unknown"


TERMINAL_STATES: frozenset[State] = frozenset(
    {State.SUCCEEDED, State.PARTIAL, State.FAILED, State.CANCELLED, State.EXPIRED}
)


class Event(StrEnum):
    """What a notification is about."""

    STARTED = "started"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    STALLED = "stalled"
    TIMED_OUT = "timed_out"
    UNREACHABLE = "unreachable"
    RECOVERED = "recovered"
    #: a scheduled report (``reports:`` in the config): about many watches, never routed by
    #: rules, never part of a digest
    REPORT = "report"


#: The Apprise message type of each event (README "States and events").
EVENT_SEVERITY: Mapping[Event, str] = {
    Event.SUCCEEDED: "success",
    Event.PARTIAL: "warning",
    Event.STALLED: "warning",
    Event.FAILED: "failure",
    Event.CANCELLED: "failure",
    Event.EXPIRED: "failure",
    Event.TIMED_OUT: "failure",
    Event.UNREACHABLE: "failure",
    Event.STARTED: "info",
    Event.RECOVERED: "info",
    Event.REPORT: "info",
}


def watch_key(source: str, job_id: str, site: str | None = None) -> str:
    """The key of a watch: `{source}/{jobId}`, or `{source}/{siteId}/{jobId}` for ruler.

    Source names and site ids hold no ``/`` (`text_problem`), so a key names one job: two
    specs with different parts cannot make the same key.
    """
    return f"{source}/{site}/{job_id}" if site else f"{source}/{job_id}"


#: The longest text of each part of a watch, in characters. The store sizes its columns from
#: these (store/schema.py), and every way in (`poller add`, the config, discovery) checks them
#: first, so that SQLite and PostgreSQL accept the same watches and a long id is refused
#: where it came in instead of failing a database write.
MAX_LENGTH: Mapping[str, int] = {
    "source": 128,
    "channel": 128,
    "site": 256,
    "job_id": 256,
    "name": 512,
    "tag": 256,
    "key": 512,
}


def key_problem(key: str) -> str | None:
    """Why a key made of valid parts is still too long to store, or None."""
    limit = MAX_LENGTH["key"]
    if len(key) > limit:
        return f"the key would be {len(key)} characters long; at most {limit} are allowed"
    return None


#: How messages name the parts
_SAID = {"job_id": "id"}

#: Parts that a key joins with ``/``: they may not hold one themselves (the job id, last in
#: the key, may).
_NO_SLASH = frozenset({"source", "site"})


def line_problem(value: str) -> str | None:
    """Why `value` is not one non-empty line of text, or None if it is.

    The one check of every name, id, tag and filter a config or a command gives (there is one
    wording for it, wherever it runs): not empty (nor only blanks), no control character, no
    lone surrogate (such as a command-line byte that is not UTF-8, which no database driver
    can encode).
    """
    if not value.strip():
        return "must not be empty"
    if not value.isprintable():  # the rare case: find out which character, and why
        for char in value:
            kind = unicodedata.category(char)
            if kind == "Cc":
                return f"holds a control character (U+{ord(char):04X}); it is one line of text"
            if kind == "Cs":
                return "is not valid UTF-8 text"
    return None


def text_problem(part: str, value: str) -> str | None:
    """Why `value` cannot be the `part` (a `MAX_LENGTH` key) of a watch, or None if it can.

    The one rule for ids, sites, names, tags and source and channel names, wherever they come
    from: one line of text (`line_problem`), at most `MAX_LENGTH[part]` characters, and no
    ``/`` in a source name or a site id.
    """
    if not value.strip():
        return "must not be empty"
    limit = MAX_LENGTH[part]
    if len(value) > limit:
        return f"is {len(value)} characters long; at most {limit} are allowed"
    if part in _NO_SLASH and "/" in value:
        return "must not contain '/' (keys join their parts with it)"
    return line_problem(value)


@dataclass(frozen=True)
class Policy:
    """Polling timings of one watch, in seconds, after defaults and overrides are merged."""

    interval: float = 30.0
    backoff: float = 1.5
    max_interval: float = 600.0
    timeout: float = 86400.0
    stall_after: float = 7200.0
    error_after: float = 900.0
    #: the source keeps a request outstanding (Immuta's ``long_poll``): after a readable
    #: answer the job is asked again at once, whatever `interval` says (`rules.polling`)
    continuous: bool = False


@record
class JobRef:
    """Which remote job a watch is about: enough for a source adapter to poll it."""

    key: str
    source: str
    job_id: str
    site: str | None = None
    #: when the job was last polled (epoch seconds), by this process or another replica; an
    #: adapter must not answer from anything it fetched before then
    last_polled: float | None = None


@record
class PollResult:
    """A readable answer about one job.

    `state` is None when the remote status is not one poller knows: it is recorded raw in
    `remote_status` and never taken for terminal.
    """

    remote_status: str
    state: State | None
    progress: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@record
class PollFailure:
    """A poll that produced no readable answer: a poll error on that watch alone."""

    kind: str
    message: str
    transient: bool = True
    retry_after: float | None = None


PollOutcome = PollResult | PollFailure


@record
class WatchProgress:
    """The part of a watch that the pure decisions read and write."""

    state: State | None = None
    remote_status: str | None = None
    progress: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    wait: float | None = None
    last_change_at: float | None = None
    error_since: float | None = None
    error_count: int = 0
    last_error: str | None = None
    unreachable: bool = False
    stalled: bool = False
    active: bool = True


@record
class Watch:
    """One watch as stored: identity, labels, schedule and the progress the decisions track."""

    id: int
    key: str
    source: str
    job_id: str
    site: str | None
    name: str | None
    tags: tuple[str, ...]
    origin: str
    overrides: Mapping[str, float]
    progress: WatchProgress
    next_poll_at: float | None
    last_poll_at: float | None
    removed_at: float | None
    version: int
    lease_owner: str | None = None

    @property
    def ref(self) -> JobRef:
        """The remote job this watch is about."""
        return JobRef(
            key=self.key,
            source=self.source,
            job_id=self.job_id,
            site=self.site,
            last_polled=self.last_poll_at,
        )

    @property
    def label(self) -> str:
        """The name if it has one, else the key: how messages and logs name the job."""
        return self.name or self.key

    @property
    def shown_name(self) -> str | None:
        """The name to show: the watch's own, else the one its API gave (the detail
        ``job_name`` of an http source's ``name``), as messages title it."""
        given = self.progress.details.get("job_name")
        return self.name or (given if isinstance(given, str) and given else None)


@record
class Transition:
    """One change of a watch's state, as recorded in its history."""

    from_state: State | None
    to_state: State
    remote_status: str | None
    progress: float | None
    at: float


@dataclass(frozen=True)
class WatchSpec:
    """A request to watch one job, from the config file, `poller add` or discovery."""

    source: str
    job_id: str
    site: str | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()
    overrides: Mapping[str, float] = field(default_factory=dict)
    origin: str = "cli"
    #: discovery: the config's bulk or search that found it (`engine.discovery.entry_key`)
    entry: str | None = None
    #: discovery: the job had ended when it was first listed, as (state, remote status); it is
    #: recorded as ended, never polled and never notified
    ended_as: tuple[State, str] | None = None

    @property
    def key(self) -> str:
        """The key the watch will have."""
        return watch_key(self.source, self.job_id, self.site)

    def problems(self) -> list[str]:
        """Why poller cannot watch this (`text_problem` of each part, then of the key), each
        as "<part> <problem>"; empty when it can."""
        parts = [("source", self.source), ("job_id", self.job_id)]
        parts += [("site", self.site)] if self.site is not None else []
        parts += [("name", self.name)] if self.name is not None else []
        parts += [("tag", tag) for tag in self.tags]
        found = [
            f"{_SAID.get(part, part)} {problem}"
            for part, value in parts
            if (problem := text_problem(part, value))
        ]
        if not found and (problem := key_problem(self.key)):
            found.append(problem)
        return found


@record
class EventRecord:
    """An event to store with the channels its rules route it to (one delivery each)."""

    kind: Event
    at: float
    #: what messages show (`events.EventPayload.to_json`)
    payload: Mapping[str, JsonValue]
    channels: tuple[str, ...]


@dataclass(frozen=True)
class Delivery:
    """One message waiting to be sent to one channel (a row of the outbox)."""

    id: int
    channel: str
    attempts: int
    created_at: float
    kind: Event
    #: the event's stored payload, read by `events.EventPayload.from_json`
    payload: Mapping[str, JsonValue]


@dataclass(frozen=True)
class DeliveryOutcome:
    """What happened to one delivery attempt: sent, to be retried at `retry_at`, or given up."""

    id: int
    sent: bool
    error: str | None = None
    retry_at: float | None = None
