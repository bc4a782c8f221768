"""A page of watches, filtered, as the status page and the API read them: bounded however
many watches there are (keyset paging on the id, never the whole table)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from poller.models import State, Watch
from poller.store.db import Database
from poller.store.rows import WATCH_COLUMNS, watch_from_row
from poller.store.schema import deliveries, events, watches

#: The states a page of watches can be filtered by: poller's states, ``new`` (not answered
#: yet), and the flags ``stalled``, ``unreachable`` and ``removed``.
FILTER_STATES: tuple[str, ...] = (
    "new",
    *(state.value for state in State),
    "stalled",
    "unreachable",
    "removed",
)


@dataclass(frozen=True)
class PageFilter:
    """Which watches a page shows: each given part must match (None: any)."""

    state: str | None = None
    source: str | None = None
    tag: str | None = None


@dataclass(frozen=True)
class WatchPage:
    """Up to a page of watches, oldest first, with their pending and given-up deliveries
    counted by key, and the cursor of the next page (None: this is the last)."""

    watches: Sequence[Watch]
    undelivered: dict[str, dict[str, int]]
    next_cursor: int | None


#: deliveries with the watch their event is about
_DELIVERY_WATCH = deliveries.join(events, events.c.id == deliveries.c.event_id).join(
    watches, watches.c.id == events.c.watch_id
)


class Browse(Database):
    """Pages of watches for the listener's status page and API."""

    def watch_page(self, where: PageFilter, after: int, limit: int) -> WatchPage:
        """The first `limit` watches with an id above `after` that match `where`."""
        query = sa.select(*WATCH_COLUMNS).where(watches.c.id > after)
        if where.source is not None:
            query = query.where(watches.c.source == where.source)
        if where.tag is not None:
            query = query.where(self._has_tag(where.tag))
        if where.state is not None:
            query = query.where(_in_state(where.state))
        query = query.order_by(watches.c.id).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            found = [watch_from_row(row) for row in rows[:limit]]
        undelivered = self.undelivered_of([watch.key for watch in found])
        more = len(rows) > limit and found
        return WatchPage(found, undelivered, found[-1].id if more else None)

    def undelivered_of(self, keys: Sequence[str]) -> dict[str, dict[str, int]]:
        """Pending and given-up deliveries of these watches: ``{key: {status: count}}``
        (`Outbox.undelivered_by_watch`, for a page's keys only)."""
        with self.engine.connect() as conn:
            counted = conn.execute(
                sa.select(watches.c.key, deliveries.c.status, sa.func.count())
                .select_from(_DELIVERY_WATCH)
                .where(deliveries.c.status.in_(("pending", "given_up")), watches.c.key.in_(keys))
                .group_by(watches.c.key, deliveries.c.status)
            ).all()
        undelivered: dict[str, dict[str, int]] = {}
        for key, status, count in counted:
            undelivered.setdefault(key, {})[status] = count
        return undelivered

    def _has_tag(self, tag: str) -> sa.ColumnElement[bool]:
        """The tags (a JSON list) hold `tag`, exactly, on either database."""
        if self.is_sqlite:
            each = sa.func.json_each(watches.c.tags).table_valued("value")
            return sa.exists(sa.select(1).select_from(each).where(each.c.value == tag))
        return sa.cast(watches.c.tags, JSONB).contains([tag])


def _in_state(state: str) -> sa.ColumnElement[bool]:
    if state == "new":
        return watches.c.state.is_(None)
    if state in ("stalled", "unreachable"):
        return watches.c[state].is_(True)
    if state == "removed":
        return watches.c.removed_at.is_not(None)
    return watches.c.state == state
