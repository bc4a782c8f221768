"""What the database says about the daemon's work as a whole, in two aggregate queries: the
gauges ``/metrics`` shows (`poller.web.metrics`), and whether the database answers at all.

Both queries are one pass each: one over the watches (grouped by source and state, with the
flags, this process's leases and the oldest due watch nobody claimed counted on the way) and
one over the pending deliveries (grouped by channel, on the index of their status). Nothing
here is per job: what comes back is bounded by the sources, states and channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from poller.store.db import Database
from poller.store.schema import deliveries, lease_free, watches

#: rows of a grouped answer read at most: a database that another version filled with odd
#: states cannot make a scrape unbounded
MAX_GROUPS = 10_000


@dataclass(frozen=True)
class WatchCount:
    """The watches of one source in one state (``None``: not answered yet)."""

    source: str
    state: str | None
    count: int
    #: of those, still polled and unreachable, or stalled
    unreachable: int
    stalled: int


@dataclass(frozen=True)
class PendingCount:
    """The pending deliveries of one channel: how many, and when the oldest was queued."""

    channel: str
    count: int
    oldest: float


@dataclass(frozen=True)
class GaugeReading:
    """The database's gauges at `at` (one read; see the module docstring)."""

    at: float
    watches: list[WatchCount] = field(default_factory=list)
    pending: list[PendingCount] = field(default_factory=list)
    #: the next poll time of the most overdue watch no process has claimed (None: none due)
    oldest_unclaimed_due: float | None = None
    #: leases this process holds now
    watch_leases: int = 0
    delivery_leases: int = 0


def _count(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """How many rows of a group meet `condition` (portable: PostgreSQL sums no booleans)."""
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


class Gauges(Database):
    """Aggregate reads for monitoring; they never write."""

    def ping(self) -> None:
        """Raise unless the database answers a read of poller's own tables."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()

    def gauges(self, owner: str, now: float) -> GaugeReading:
        """The gauges at `now`, with the leases of process `owner`."""
        w = watches.c
        held = sa.and_(w.lease_owner == owner, w.lease_until >= now)
        unclaimed_due = sa.and_(w.active, w.next_poll_at <= now, lease_free(watches, now))
        by_state = (
            sa.select(
                w.source,
                w.state,
                sa.func.count(),
                _count(sa.and_(w.active, w.unreachable)),
                _count(sa.and_(w.active, w.stalled)),
                _count(held),
                sa.func.min(sa.case((unclaimed_due, w.next_poll_at))),
            )
            .where(w.removed_at.is_(None))
            .group_by(w.source, w.state)
            .limit(MAX_GROUPS)
        )
        d = deliveries.c
        by_channel = (
            sa.select(
                d.channel,
                sa.func.count(),
                sa.func.min(d.created_at),
                _count(sa.and_(d.lease_owner == owner, d.lease_until >= now)),
            )
            .where(d.status == "pending")
            .group_by(d.channel)
            .limit(MAX_GROUPS)
        )
        counts, pending = [], []
        oldest_due: float | None = None
        watch_leases = delivery_leases = 0
        with self.engine.connect() as conn:
            for source, state, count, unreachable, stalled, leases, due in conn.execute(by_state):
                counts.append(WatchCount(source, state, count, unreachable, stalled))
                watch_leases += leases
                if due is not None and (oldest_due is None or due < oldest_due):
                    oldest_due = due
            for channel, count, oldest, leases in conn.execute(by_channel):
                pending.append(PendingCount(channel, count, oldest))
                delivery_leases += leases
        return GaugeReading(
            at=now,
            watches=counts,
            pending=pending,
            oldest_unclaimed_due=oldest_due,
            watch_leases=watch_leases,
            delivery_leases=delivery_leases,
        )
