"""The reports on watches that `poller status` and `poller history` show (and a web page may
reuse): a filtered, sorted, limited list of watches, counts by condition, the outbox backlog
per channel, and one watch's history.

Every filter, sort, limit and count runs in SQL: a database of 100,000 watches answers with
the few rows shown and a handful of aggregates, never with every row read into Python.

A watch's *condition* is the one word the state column shows: its state (``pending``,
``running``, ``succeeded``, ...), or ``new`` before its first answer, or what overrides the
state: ``removed``, ``unreachable``, ``stalled`` and ``timed_out`` (ended by
``polling.timeout`` before its job did).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from poller.models import TERMINAL_STATES, State, Watch
from poller.store.db import IN_CHUNK, Database
from poller.store.rows import WATCH_COLUMNS, watch_from_row
from poller.store.schema import deliveries, events, transitions, watches

#: The conditions a watch can be in (`WatchFilter.states`), in the order a summary lists them.
CONDITIONS: tuple[str, ...] = (
    "unreachable",
    "stalled",
    "timed_out",
    "failed",
    "partial",
    "cancelled",
    "expired",
    "unknown",
    "new",
    "pending",
    "running",
    "succeeded",
    "removed",
)
#: How `list_watches` sorts: ``oldest`` (first added first) or ``problems`` (`problem_rank`).
WatchOrder = Literal["oldest", "problems"]

_TERMINAL = sorted(state.value for state in TERMINAL_STATES)
_ENDED_BADLY = ("timed_out", *sorted(s.value for s in TERMINAL_STATES if s != State.SUCCEEDED))


@dataclass(frozen=True)
class WatchFilter:
    """Which watches a report covers; an empty field does not filter.

    Values of one field are alternatives (any state, any source); tags must all be there.
    """

    #: only watches still polled (not ended, timed out or removed)
    active: bool = False
    #: conditions (`CONDITIONS`)
    states: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    #: only watches that ended (or timed out) at or after this time (a report's window)
    ended_after: float | None = None


@dataclass(frozen=True)
class ChannelBacklog:
    """A channel's deliveries that have not gone out: counts, the oldest, the last error."""

    channel: str
    pending: int
    given_up: int
    oldest_at: float
    last_error: str | None


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a watch's history: a transition or an event, with its deliveries."""

    at: float
    kind: str  # "transition" | "event"
    what: str
    detail: Mapping[str, Any]


def condition() -> ColumnElement[str]:
    """The SQL expression of a watch's condition (module docstring)."""
    return sa.case(
        (watches.c.removed_at.is_not(None), "removed"),
        (sa.and_(watches.c.active, watches.c.unreachable), "unreachable"),
        (sa.and_(watches.c.active, watches.c.stalled), "stalled"),
        (
            sa.and_(
                sa.not_(watches.c.active),
                sa.or_(watches.c.state.is_(None), watches.c.state.not_in(_TERMINAL)),
            ),
            "timed_out",
        ),
        (watches.c.state.is_(None), "new"),
        else_=watches.c.state,
    )


def problem_rank() -> ColumnElement[int]:
    """Problems first: unreachable, stalled, failing polls, then jobs that ended badly (or
    timed out), then the ones still running or waiting, then successes, then removed ones."""
    cond = condition()
    return sa.case(
        (cond == "unreachable", 0),
        (cond == "stalled", 1),
        (sa.and_(watches.c.active, watches.c.error_count > 0), 2),
        (cond.in_(_ENDED_BADLY), 3),
        (cond == "succeeded", 5),
        (cond == "removed", 6),
        else_=4,
    )


class Reports(Database):
    """Read-only reports on watches, their deliveries and their history."""

    def _where(self, filters: WatchFilter | None) -> list[ColumnElement[bool]]:
        """The WHERE clauses of `filters`."""
        if filters is None:
            return []
        where: list[ColumnElement[bool]] = []
        if filters.active:
            where.append(sa.and_(watches.c.active, watches.c.removed_at.is_(None)))
        if filters.states:
            where.append(condition().in_(list(filters.states)))
        if filters.sources:
            where.append(watches.c.source.in_(list(filters.sources)))
        for tag in filters.tags:
            where.append(self._has_tag(tag))
        if filters.ended_after is not None:
            where.append(watches.c.ended_at >= filters.ended_after)
        return where

    def _has_tag(self, tag: str) -> ColumnElement[bool]:
        """Watches whose JSON list of tags holds `tag` (each database's own JSON operator)."""
        if self.is_sqlite:
            each = sa.func.json_each(watches.c.tags).table_valued("value")
            return sa.exists(sa.select(sa.literal(1)).select_from(each).where(each.c.value == tag))
        return sa.cast(watches.c.tags, JSONB).contains([tag])

    def list_watches(
        self,
        filters: WatchFilter | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        order: WatchOrder = "oldest",
        after: int = 0,
    ) -> list[Watch]:
        """The watches `filters` lets through, sorted by `order`, `limit` of them from `offset`.

        With ``problems``, ties go newest first (the latest end, removal or addition).
        `after` keeps only watches whose id is above it: with ``oldest``, the page after a
        cursor (keyset paging, as the status page and the API read, whatever the table's size).
        """
        query = sa.select(*WATCH_COLUMNS).where(*self._where(filters))
        if after:
            query = query.where(watches.c.id > after)
        if order == "problems":
            recent = sa.func.coalesce(
                watches.c.removed_at, watches.c.ended_at, watches.c.created_at
            )
            query = query.order_by(problem_rank(), recent.desc(), watches.c.id.desc())
        else:
            query = query.order_by(watches.c.id)
        if limit is not None:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [watch_from_row(row) for row in rows]

    def count_watches(self, filters: WatchFilter | None = None) -> dict[str, int]:
        """How many watches `filters` lets through, by condition (one aggregate query)."""
        cond = condition().label("condition")
        query = sa.select(cond, sa.func.count()).where(*self._where(filters)).group_by(cond)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {name: count for name, count in rows}

    def delivery_counts(self, since: float | None = None) -> dict[str, int]:
        """How many deliveries are pending, sent and given up (of those queued at or after
        `since`, when given)."""
        query = sa.select(deliveries.c.status, sa.func.count()).group_by(deliveries.c.status)
        if since is not None:
            query = query.where(deliveries.c.created_at >= since)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {status: count for status, count in rows}

    def undelivered_by_watch(self, keys: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
        """Pending and given-up deliveries per watch key, ``{key: {status: count}}``: of the
        watches `keys` only when given (a page of them), else of all."""
        query = (
            sa.select(watches.c.key, deliveries.c.status, sa.func.count())
            .select_from(
                deliveries.join(events, events.c.id == deliveries.c.event_id).join(
                    watches, watches.c.id == events.c.watch_id
                )
            )
            .where(deliveries.c.status.in_(("pending", "given_up")))
            .group_by(watches.c.key, deliveries.c.status)
        )
        chunks = (
            [query]
            if keys is None
            else [
                query.where(watches.c.key.in_(list(keys[i : i + IN_CHUNK])))
                for i in range(0, len(keys), IN_CHUNK)
            ]
        )
        found: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks:
                for key, status, count in conn.execute(chunk).all():
                    found.setdefault(key, {})[status] = count
        return found

    def undelivered_by_channel(self) -> list[ChannelBacklog]:
        """Each channel with deliveries pending or given up, the most pending first: one line
        per channel, however many messages a dead channel holds."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    deliveries.c.channel,
                    deliveries.c.status,
                    sa.func.count(),
                    sa.func.min(deliveries.c.created_at),
                    sa.func.max(deliveries.c.id),
                )
                .where(deliveries.c.status.in_(("pending", "given_up")))
                .group_by(deliveries.c.channel, deliveries.c.status)
            ).all()
            latest = [row[4] for row in rows]
            errors = dict(
                conn.execute(
                    sa.select(deliveries.c.id, deliveries.c.last_error).where(
                        deliveries.c.id.in_(latest)
                    )
                ).all()
            )
        by_channel: dict[str, dict[str, Any]] = {}
        for channel, status, count, oldest, last_id in rows:
            entry = by_channel.setdefault(
                channel, {"pending": 0, "given_up": 0, "oldest_at": oldest, "last": (0, None)}
            )
            entry[status] = count
            entry["oldest_at"] = min(entry["oldest_at"], oldest)
            if errors.get(last_id) and last_id > entry["last"][0]:
                entry["last"] = (last_id, errors[last_id])
        backlog = [
            ChannelBacklog(
                channel=channel,
                pending=entry["pending"],
                given_up=entry["given_up"],
                oldest_at=entry["oldest_at"],
                last_error=entry["last"][1],
            )
            for channel, entry in by_channel.items()
        ]
        backlog.sort(key=lambda b: (-b.pending, -b.given_up, b.channel))
        return backlog

    def history(self, key: str) -> list[HistoryEntry] | None:
        """A watch's transitions and events (with their payload and deliveries), oldest first;
        None if there is no such watch."""
        with self.engine.connect() as conn:
            watch_id = conn.execute(
                sa.select(watches.c.id).where(watches.c.key == key)
            ).scalar_one_or_none()
            if watch_id is None:
                return None
            entries = [
                HistoryEntry(
                    at=row.at,
                    kind="transition",
                    what=f"{row.from_state or 'new'} -> {row.to_state}",
                    detail={
                        "from": row.from_state,
                        "to": row.to_state,
                        "remote_status": row.remote_status,
                        "progress": row.progress,
                    },
                )
                for row in conn.execute(
                    sa.select(transitions).where(transitions.c.watch_id == watch_id)
                )
            ]
            delivery_rows = conn.execute(
                sa.select(
                    deliveries.c.event_id,
                    deliveries.c.channel,
                    deliveries.c.status,
                    deliveries.c.attempts,
                    deliveries.c.sent_at,
                    deliveries.c.last_error,
                )
                .join(events, events.c.id == deliveries.c.event_id)
                .where(events.c.watch_id == watch_id)
            ).all()
            by_event: dict[int, list[dict[str, Any]]] = {}
            for d in delivery_rows:
                by_event.setdefault(d.event_id, []).append(
                    {
                        "channel": d.channel,
                        "status": d.status,
                        "attempts": d.attempts,
                        "sent_at": d.sent_at,
                        "last_error": d.last_error,
                    }
                )
            for row in conn.execute(sa.select(events).where(events.c.watch_id == watch_id)):
                entries.append(
                    HistoryEntry(
                        at=row.at,
                        kind="event",
                        what=row.kind,
                        detail={
                            "deliveries": by_event.get(row.id, []),
                            "payload": row.payload if isinstance(row.payload, dict) else {},
                        },
                    )
                )
        # Transitions sort before the events they caused at the same instant.
        entries.sort(key=lambda e: (e.at, e.kind != "transition"))
        return entries
