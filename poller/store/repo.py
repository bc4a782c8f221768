"""The repository: every read and write poller makes, in synchronous SQLAlchemy Core.

One `Store` per process. The daemon calls it from a single writer thread (see `engine/runtime.py`),
so SQLite sees one writer; CLI commands call it directly.

`Store` is one class composed of the store's rooms, each a mixin over `db.Database` (the
engine, the schema revision, the daemon lock and the write transactions):

- `watches.Watches`: registering watches (add, config sync, discovery, removal);
- `reports.Reports`: what `poller status` and `history` show (filtered, sorted, limited
  lists and counts, all in SQL);
- `retention.Retention`: deleting watches ended longer ago than `retention`;
- `claims.Claims`: leasing due watches and writing their polls back (fenced group commits);
- `outbox.Outbox`: the deliveries, as the delivery engine claims, renews, releases and
  finishes them (one lease verb each);
- `gauges.Gauges`: the aggregate reads of monitoring (``/metrics``, ``/readyz``);
- `browse.Browse`: pages of watches by cursor (the status page and the API), over `Reports`'
  filtered lists (``Reports`` is among the bases through it).

The names other modules import from here (`Store`, `WriteBack`, `safe_url`, ...) stay here.
"""

from __future__ import annotations

from poller.store.browse import Browse, WatchPage
from poller.store.claims import Claims, WriteBack, WriteReport
from poller.store.db import HEAD_REVISION, MIGRATIONS, safe_url
from poller.store.gauges import GaugeReading, Gauges
from poller.store.outbox import Outbox, Undelivered
from poller.store.reports import (
    CONDITIONS,
    ChannelBacklog,
    HistoryEntry,
    WatchFilter,
    WatchOrder,
)
from poller.store.retention import Pruned, Retention
from poller.store.watches import Added, SyncReport, Watches

__all__ = [
    "CONDITIONS",
    "HEAD_REVISION",
    "MIGRATIONS",
    "Added",
    "ChannelBacklog",
    "GaugeReading",
    "HistoryEntry",
    "Pruned",
    "Store",
    "SyncReport",
    "Undelivered",
    "WatchFilter",
    "WatchOrder",
    "WatchPage",
    "WriteBack",
    "WriteReport",
    "safe_url",
]


class Store(Watches, Browse, Retention, Claims, Outbox, Gauges):
    """Access to one poller database (SQLite file or PostgreSQL)."""
