"""A page of watches, filtered, as the status page and the API read them: bounded however
many watches there are (keyset paging on the id, never the whole table).

The filter is `poller status`'s own (`reports.WatchFilter`, by condition, source and tag) and
the watches are read through the same `Reports.list_watches`, so that the page, the API and
the CLI agree on which watches a filter shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from poller.models import Watch
from poller.store.reports import Reports, WatchFilter


@dataclass(frozen=True)
class WatchPage:
    """Up to a page of watches, oldest first, with their pending and given-up deliveries
    counted by key, and the cursor of the next page (None: this is the last)."""

    watches: Sequence[Watch]
    undelivered: dict[str, dict[str, int]]
    next_cursor: int | None


class Browse(Reports):
    """Pages of watches for the listener's status page and API."""

    def watch_page(self, where: WatchFilter, after: int, limit: int) -> WatchPage:
        """The first `limit` watches with an id above `after` that match `where`."""
        # one more than the page: whether there is a next page, without counting them all
        rows = self.list_watches(where, limit=limit + 1, after=after)
        found = rows[:limit]
        undelivered = self.undelivered_by_watch([watch.key for watch in found])
        more = len(rows) > limit and found
        return WatchPage(found, undelivered, found[-1].id if more else None)
