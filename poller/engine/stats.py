"""What the engines count as they work, in plain ints and dicts.

The polling engine runs thousands of polls a second, so counting one must cost no more than a
dict update: no locks, no metric objects, no label lookups. The listener's ``/metrics``
(`poller.web.metrics`) reads these numbers when it is scraped and turns them into Prometheus
metric families there; nothing here knows about Prometheus.

Every label a count is kept under is bounded by the config, never by the data: a source name,
a channel name, an event kind, an outcome kind (``ok`` or a `PollFailure.kind`, which the code
names). A job id or anything an API answered is never a key.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

#: The outcome a poll that got an answer is counted under (a failure: its `kind`).
OK = "ok"

#: Upper bounds (seconds) of the poll-duration buckets: a loopback answer to a slow API.
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: ... of the group-commit buckets: a batch of schedule updates to a stuck database.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
#: ... of the event-loop lag buckets: unnoticeable to a stalled loop.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Timings:
    """A histogram in plain numbers: a count per bucket (not cumulative), their sum and total.

    `observe` is a bisect and three additions; `cumulative` gives what Prometheus wants.
    """

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        #: observations per bucket; the last one is above every bound (``+Inf``)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float, times: int = 1) -> None:
        """Count `times` observations of `seconds` (a group of polls answered by one call)."""
        self.counts[bisect_left(self.bounds, seconds)] += times
        self.count += times
        self.total += seconds * times

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) per bucket, ``inf`` last."""
        running, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass
class Stats:
    """The counts of one daemon since it started; its engines add to them as they work.

    One per daemon (tests run several daemons in one process): the app makes it and hands it
    to each engine.
    """

    #: polls by (source, outcome): `OK` or the failure's kind
    polls: dict[tuple[str, str], int] = field(default_factory=dict)
    #: per source, how long the adapter call that answered each poll took
    poll_seconds: dict[str, Timings] = field(default_factory=dict)
    #: per source, whether its latest polls were held back by its breaker (``backing_off``):
    #: what ``/metrics`` shows of a source whose adapter has no breaker it can read
    held_back: dict[str, bool] = field(default_factory=dict)
    #: events recorded (committed) by kind
    events: dict[str, int] = field(default_factory=dict)
    #: deliveries marked sent, by channel (a digest counts each delivery it covered)
    sent: dict[str, int] = field(default_factory=dict)
    #: failed send attempts, by channel (a digest's failure counts once per delivery)
    failed: dict[str, int] = field(default_factory=dict)
    #: deliveries given up, by channel
    given_up: dict[str, int] = field(default_factory=dict)
    #: how long each group commit took
    group_commits: Timings = field(default_factory=lambda: Timings(COMMIT_BUCKETS))
    #: how late the event loop ran a timer (`watch_loop_lag`)
    loop_lag: Timings = field(default_factory=lambda: Timings(LAG_BUCKETS))
    #: when the daemon started (wall clock)
    started_at: float = field(default_factory=time.time)

    def poll_timings(self, source: str) -> Timings:
        """The poll-duration histogram of `source` (made at its first poll)."""
        found = self.poll_seconds.get(source)
        if found is None:
            found = self.poll_seconds[source] = Timings(POLL_BUCKETS)
        return found


def add(counts: dict[str, int], key: str, n: int = 1) -> None:
    """``counts[key] += n``, from 0."""
    counts[key] = counts.get(key, 0) + n


async def watch_loop_lag(stats: Stats, stopping: asyncio.Event, every: float = 0.25) -> None:
    """Until `stopping`, sleep `every` seconds at a time and record how much later than asked
    the loop woke up: the time every callback on the loop (a poll, a handler) waited."""
    loop = asyncio.get_running_loop()
    while not stopping.is_set():
        asked = loop.time() + every
        await asyncio.sleep(every)
        stats.loop_lag.observe(max(0.0, loop.time() - asked))
