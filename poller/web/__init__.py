"""The daemon's HTTP listener (``http.listen``): health, readiness and Prometheus metrics.

One room, above the engine and the store: it reads the daemon through `reads.DaemonView`
(which `app.Daemon` satisfies), the engines' counts (`engine.stats`) and the database through
the daemon's database thread (`reads.DatabaseReads`). Nothing below it imports it; `app`
starts and stops it.

- `server`: the aiohttp application, its route table, binding and closing;
- `reads`: what the listener reads of the daemon, and bounded, shared database reads;
- `probes`: ``/healthz`` and ``/readyz``;
- `metrics`: ``/metrics``, a custom prometheus-client collector over the engines' counts and
  the database's gauges.
"""

from poller.web.reads import DATABASE_DEADLINE, DaemonView, DatabaseReads, DatabaseUnavailable
from poller.web.server import Listener, start_listener

__all__ = [
    "DATABASE_DEADLINE",
    "DaemonView",
    "DatabaseReads",
    "DatabaseUnavailable",
    "Listener",
    "start_listener",
]
