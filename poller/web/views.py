"""What the status page and the API both read: a page of watches by filter and cursor, and
one watch with its history, through the daemon's bounded database reads.

The query's parts are checked here, once, for both: a bad one is `BadQuery`, said in words
(the page shows it, the API answers 400 with it). The database's answers are the store's own
records (`store.browse`, `Watches.get_watch` and `history`), shaped as ``poller status
--json`` and ``poller history --json`` shape them (`store.shapes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from poller.models import MAX_LENGTH, Watch, line_problem
from poller.store.browse import WatchPage
from poller.store.repo import CONDITIONS, HistoryEntry, Store, WatchFilter
from poller.web.reads import DatabaseReads

#: Watches on a page unless ``limit`` says otherwise, and the most ``limit`` may ask for.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: The most history entries shown of one watch (the newest); the API says when it cut.
HISTORY_LIMIT = 1000
#: The longest cursor read: an id.
_CURSOR_DIGITS = 18


class BadQuery(Exception):
    """A query part that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Query:
    """A page's filter (a condition as `poller status --state` takes, a source, a tag: each
    None for any), cursor and size, as the query string gave them."""

    state: str | None
    source: str | None
    tag: str | None
    after: int
    limit: int

    @property
    def where(self) -> WatchFilter:
        """The filter, as `poller status` reads it (`store.reports`)."""
        return WatchFilter(
            states=(self.state,) if self.state else (),
            sources=(self.source,) if self.source else (),
            tags=(self.tag,) if self.tag else (),
        )

    def link(self, *, cursor: int | None = None, **changes: str | None) -> dict[str, str]:
        """The query string's parts of this query at `cursor` (the first page if None), with
        `changes` to the filter; empty parts left out."""
        parts = {
            "state": self.state,
            "source": self.source,
            "tag": self.tag,
            "limit": str(self.limit) if self.limit != DEFAULT_LIMIT else None,
            "cursor": str(cursor) if cursor else None,
        } | changes
        return {name: value for name, value in parts.items() if value}


def _number(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= _CURSOR_DIGITS):
        raise BadQuery(f"{name} must be a whole number from {low} to {high}")
    number = int(text)
    if not low <= number <= high:
        raise BadQuery(f"{name} must be a whole number from {low} to {high}")
    return number


def _text(params: Mapping[str, str], name: str, part: str) -> str | None:
    text = params.get(name) or None
    if text is None:
        return None
    if len(text) > MAX_LENGTH[part]:
        raise BadQuery(f"{name} is {len(text)} characters long; at most {MAX_LENGTH[part]}")
    problem = line_problem(text)
    if problem:
        raise BadQuery(f"{name} {problem}")
    return text


def parse_query(params: Mapping[str, str]) -> Query:
    """The filter (``state``, ``source``, ``tag``), ``cursor`` and ``limit`` of a query
    string; `BadQuery` for a part that cannot be used."""
    state = params.get("state") or None
    if state is not None and state not in CONDITIONS:
        raise BadQuery(f"state must be one of {', '.join(CONDITIONS)}")
    return Query(
        state=state,
        source=_text(params, "source", "source"),
        tag=_text(params, "tag", "tag"),
        after=_number(params, "cursor", 0, 0, 10**_CURSOR_DIGITS - 1),
        limit=_number(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
    )


@dataclass(frozen=True)
class WatchView:
    """One watch, its pending and given-up deliveries counted, and its newest history."""

    watch: Watch
    undelivered: Mapping[str, int]
    history: Sequence[HistoryEntry]
    #: entries left out (older than the newest `HISTORY_LIMIT`)
    left_out: int


class Views:
    """The reads of the page and the API, through the daemon's shared, bounded reads."""

    def __init__(self, reads: DatabaseReads) -> None:
        self.reads = reads

    async def page(self, query: Query) -> WatchPage:
        """A page of watches (`DatabaseUnavailable` if the database does not answer)."""
        kind = f"page {query!r}"
        return await self.reads.read(
            kind, lambda store: store.watch_page(query.where, query.after, query.limit)
        )

    async def watch(self, key: str) -> WatchView | None:
        """One watch with its history, or None if there is no such watch."""
        return await self.reads.read(f"watch {key!r}", lambda store: _watch_view(store, key))


def _watch_view(store: Store, key: str) -> WatchView | None:
    watch = store.get_watch(key)
    history = store.history(key) if watch is not None else None
    if watch is None or history is None:
        return None
    left_out = max(0, len(history) - HISTORY_LIMIT)
    undelivered = store.undelivered_by_watch([key]).get(key, {})
    return WatchView(watch, undelivered, history[left_out:], left_out)
