"""``/metrics``: the daemon's numbers in the Prometheus text format, through prometheus-client.

Three kinds of numbers, read at scrape time:

- **Counted in memory** by the engines as they work (`engine.stats.Stats`: plain ints, dicts
  and bucket lists, because a poll must not pay for a metric object): polls by source and
  outcome, poll durations, events, delivery attempts, group commits, the loop's lag and the
  sources held back by their breaker. A custom collector turns them into metric families
  when Prometheus asks, so the cost is per scrape, not per poll.
- **Fetched from the job APIs** that count their jobs (Immuta's ``/jobs/summary``) by the
  daemon on their own interval (`engine.summaries`), read from memory: a scrape never waits
  for a remote API. Their job types and states are bounded there (at most 32 and 16 per
  source, the rest as ``other``).
- **Read from the database** in two aggregate queries (`store.gauges`) through the database
  thread, bounded by a deadline: watches by source and state, pending deliveries and the age
  of the oldest, the schedule's lateness, this process's leases. If the database does not
  answer in time, the scrape still answers with the in-memory numbers and
  ``poller_database_up 0``.

Each scrape encodes its own collector (`StatsCollector`, made for that scrape, holding that
scrape's reading), never the global registry: several daemons may share a process in tests,
and ``poller_database_up`` always agrees with the gauges beside it. Label values are source,
channel, state, event and outcome names, bounded by the config and the code, and a source's
job types and states, bounded by `engine.summaries`: never a job id or a secret.
"""

from __future__ import annotations

import math
import platform
import re
from collections.abc import Iterable, Iterator, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

import poller
from poller.engine.stats import OK, Timings
from poller.models import Event
from poller.store.repo import GaugeReading
from poller.web.reads import DaemonView, DatabaseReads, DatabaseUnavailable

#: A label value the code or the config chose (an outcome kind, a state); anything else that
#: reached a label (a database written by another version) is shown as ``other``.
_LABEL = re.compile(r"[a-z][a-z0-9_]{0,31}")
#: the state label of a watch no poll has answered yet
NEW = "new"


def _word(value: str | None, default: str = "other") -> str:
    return value if value is not None and _LABEL.fullmatch(value) else default


def _histogram(name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels)


def _bound(seconds: float) -> str:
    """A bucket's ``le`` as Prometheus writes it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if math.isinf(seconds) else repr(float(seconds))


def _add_timings(family: HistogramMetricFamily, labels: list[str], timings: Timings) -> None:
    family.add_metric(
        labels,
        [(_bound(bound), count) for bound, count in timings.cumulative()],
        sum_value=timings.total,
    )


def _counter(
    name: str, doc: str, label: str, counts: Mapping[str, int], known: Iterable[str]
) -> CounterMetricFamily:
    """A counter by one label: every `known` value (0 if not counted yet), then the rest."""
    family = CounterMetricFamily(name, doc, labels=[label])
    values = dict.fromkeys(known, 0) | dict(counts)
    for value, count in sorted(values.items()):
        family.add_metric([value], count)
    return family


def breaker_open(adapter: object) -> bool | None:
    """Whether `adapter`'s breaker is open (or half-open: its pause is over, but no answer
    has closed it yet); None if it has none to read.

    Every built-in adapter's HTTP client carries its source's breaker as
    ``adapter.requester.health`` (`sources.client.SourceHealth`, whose ``open_until`` is 0.0
    while closed); it is read by name, so that an adapter without one is simply left to its
    polls' outcomes.
    """
    health = getattr(getattr(adapter, "requester", None), "health", None)
    open_until = getattr(health, "open_until", None)
    if isinstance(open_until, int | float) and not isinstance(open_until, bool):
        return open_until > 0
    return None


class StatsCollector:
    """The daemon's numbers as metric families for one scrape, made at scrape time.

    `reading` is what the database said for this scrape (None: it did not answer in time).
    A collector is made per scrape and never changed, so that ``poller_database_up`` and the
    database's gauges in one answer always come from the same reading: 1 with every gauge
    of that reading, or 0 with none (two scrapes at once never share a mutable reading).
    """

    def __init__(self, daemon: DaemonView, reading: GaugeReading | None) -> None:
        self.daemon = daemon
        self.reading = reading

    def collect(self) -> Iterator[Metric]:
        """Every metric family (the registry protocol the encoders read)."""
        yield from self._in_memory()
        yield from self._summaries()
        yield from self._from_database(self.reading)

    def _summaries(self) -> Iterator[Metric]:
        """The job counts of the sources whose API counts them, as last fetched (never asked
        for by a scrape: `engine.summaries` fetches them on their own interval)."""
        jobs = GaugeMetricFamily(
            "poller_source_jobs",
            "Jobs as the source's API counts them (Immuta's GET /jobs/summary), by job type "
            "and state, from its last answer; job types past the first 32 by name, and names "
            "that are not plain words, are counted as other.",
            labels=["source", "job_type", "state"],
        )
        up = GaugeMetricFamily(
            "poller_source_summary_up",
            "1 if the last fetch of the source's job counts answered, else 0 (its counts are "
            "then the last answer's, stale).",
            labels=["source"],
        )
        age = GaugeMetricFamily(
            "poller_source_summary_age_seconds",
            "Seconds since the source's job counts were last fetched (none: never yet).",
            labels=["source"],
        )
        now = self.daemon.clock()
        for source, summary in sorted(self.daemon.summaries.latest.items()):
            up.add_metric([source], 0 if summary.stale else 1)
            if summary.fetched_at is not None:
                age.add_metric([source], max(0.0, now - summary.fetched_at))
            for count in summary.counts:
                jobs.add_metric([source, count.job_type, count.state], count.count)
        yield from (jobs, up, age)

    def _in_memory(self) -> Iterator[Metric]:
        daemon, stats = self.daemon, self.daemon.stats
        config = daemon.config
        sources, channels = sorted(config.sources), sorted(config.channels)

        info = GaugeMetricFamily(
            "poller_build_info",
            "poller's version and Python's (always 1).",
            labels=["version", "python"],
        )
        info.add_metric([poller.__version__, platform.python_version()], 1)
        yield info
        yield GaugeMetricFamily(
            "poller_start_time_seconds",
            "When this daemon started, in seconds since the epoch.",
            value=stats.started_at,
        )

        polls = CounterMetricFamily(
            "poller_polls",
            "Polls done by this process, by source and outcome (ok, or the error's kind).",
            labels=["source", "outcome"],
        )
        counted: dict[tuple[str, str], int] = {(source, OK): 0 for source in sources}
        for (source, outcome), count in list(stats.polls.items()):
            key = (source, _word(outcome))
            counted[key] = counted.get(key, 0) + count
        for (source, outcome), count in sorted(counted.items()):
            polls.add_metric([source, outcome], count)
        yield polls

        durations = _histogram(
            "poller_poll_duration_seconds",
            "How long each poll took: the adapter call that answered it (a group of one "
            "source's watches is polled in one call where its API allows), by source.",
            ["source"],
        )
        for source, timings in sorted(stats.poll_seconds.items()):
            _add_timings(durations, [source], timings)
        yield durations

        breaker = GaugeMetricFamily(
            "poller_source_breaker_open",
            "1 from the moment a source's breaker opens (repeated failures, or a Retry-After) "
            "until an answer from its API closes it, else 0.",
            labels=["source"],
        )
        adapters = daemon.adapters()
        for source in sorted({*sources, *stats.held_back}):
            is_open = breaker_open(adapters.get(source))
            if is_open is None:  # no breaker to read: its polls say whether it held them back
                is_open = stats.held_back.get(source, False)
            breaker.add_metric([source], 1 if is_open else 0)
        yield breaker

        yield _counter(
            "poller_events",
            "Events recorded by this process, by kind.",
            "kind",
            {_word(kind): n for kind, n in stats.events.items()},
            (event.value for event in Event),
        )
        yield _counter(
            "poller_deliveries_sent",
            "Deliveries sent by this process, by channel (a digest counts each it covered).",
            "channel",
            stats.sent,
            channels,
        )
        yield _counter(
            "poller_delivery_failures",
            "Failed delivery attempts by this process, by channel (each is retried until "
            "delivery.give_up_after).",
            "channel",
            stats.failed,
            channels,
        )
        yield _counter(
            "poller_deliveries_given_up",
            "Deliveries this process gave up (delivery.give_up_after passed), by channel.",
            "channel",
            stats.given_up,
            channels,
        )

        commits = _histogram(
            "poller_group_commit_duration_seconds",
            "How long each group commit of poll results took in the database thread.",
            [],
        )
        _add_timings(commits, [], stats.group_commits)
        yield commits
        lag = _histogram(
            "poller_event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled 4 times a second): how long every "
            "poll, delivery and request waited for the loop.",
            [],
        )
        _add_timings(lag, [], stats.loop_lag)
        yield lag

        yield GaugeMetricFamily(
            "poller_database_up",
            "1 if the database answered this scrape's reads in time, else 0 (the database's "
            "gauges are then left out).",
            value=0 if self.reading is None else 1,
        )

    def _from_database(self, reading: GaugeReading | None) -> Iterator[Metric]:
        if reading is None:
            return
        now = reading.at
        watches = GaugeMetricFamily(
            "poller_watches",
            "Watches by source and state (new: not answered yet), removed ones left out.",
            labels=["source", "state"],
        )
        unreachable = GaugeMetricFamily(
            "poller_watches_unreachable",
            "Watches still polled that are unreachable (polling failed for error_after).",
            labels=["source"],
        )
        stalled = GaugeMetricFamily(
            "poller_watches_stalled",
            "Watches still polled that are stalled (no progress for stall_after).",
            labels=["source"],
        )
        by_state: dict[tuple[str, str], int] = {}
        flags: dict[str, list[int]] = {}
        for row in reading.watches:
            key = (row.source, _word(row.state, NEW) if row.state is not None else NEW)
            by_state[key] = by_state.get(key, 0) + row.count
            counts = flags.setdefault(row.source, [0, 0])
            counts[0] += row.unreachable
            counts[1] += row.stalled
        for (source, state), count in sorted(by_state.items()):
            watches.add_metric([source, state], count)
        for source, (down, still) in sorted(flags.items()):
            unreachable.add_metric([source], down)
            stalled.add_metric([source], still)
        yield from (watches, unreachable, stalled)

        pending = GaugeMetricFamily(
            "poller_deliveries_pending",
            "Deliveries not sent yet (still retried), by channel.",
            labels=["channel"],
        )
        oldest = GaugeMetricFamily(
            "poller_delivery_oldest_pending_age_seconds",
            "Age of the oldest delivery not sent yet, by channel.",
            labels=["channel"],
        )
        queued = {row.channel: row for row in reading.pending}
        for channel in sorted({*self.daemon.config.channels, *queued}):
            waiting = queued.get(channel)
            pending.add_metric([channel], waiting.count if waiting else 0)
            oldest.add_metric([channel], max(0.0, now - waiting.oldest) if waiting else 0.0)
        yield from (pending, oldest)

        due = reading.oldest_unclaimed_due
        yield GaugeMetricFamily(
            "poller_schedule_lateness_seconds",
            "How overdue the most overdue watch is that no process has claimed yet (0: "
            "every due watch is being polled).",
            value=0.0 if due is None else max(0.0, now - due),
        )
        leases = GaugeMetricFamily(
            "poller_leases_held",
            "Leases this process holds, on watches (being polled) and deliveries (being sent).",
            labels=["kind"],
        )
        leases.add_metric(["watch"], reading.watch_leases)
        leases.add_metric(["delivery"], reading.delivery_leases)
        yield leases


class Metrics:
    """The ``/metrics`` endpoint of one daemon."""

    def __init__(self, daemon: DaemonView, reads: DatabaseReads) -> None:
        self.daemon = daemon
        self.reads = reads

    def routes(self) -> list[web.RouteDef]:
        """The endpoint, for the listener's route table."""
        return [web.get("/metrics", self.scrape)]

    async def reading(self) -> GaugeReading | None:
        """The database's gauges now, or None if it did not answer in time."""
        daemon = self.daemon
        owner, now = daemon.owner, daemon.clock()
        try:
            return await self.reads.read("gauges", lambda store: store.gauges(owner, now))
        except DatabaseUnavailable:
            return None

    async def scrape(self, request: web.Request) -> web.Response:
        """The metrics, in the format the scraper asked for (text 0.0.4 by default)."""
        # a registry of its own per scrape (cheap: without auto_describe, registering calls
        # nothing), holding a collector made for this scrape's reading: nothing another
        # scrape does can change what this one shows
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatsCollector(self.daemon, await self.reading()))
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encode(registry)
        return web.Response(body=body, headers={"Content-Type": content_type})
