"""The job counts of the sources whose API counts its jobs (Immuta's ``GET /jobs/summary``),
fetched by the daemon on each source's ``summary_interval`` and kept for the status page and
``/metrics``, which read them from memory: a scrape or a page never asks the API.

A fetch that fails keeps the last counts, marked stale with the reason (its message with the
source's secrets masked); it never breaks a page or a scrape. One fetch per source is under
way at most, bounded by the source's ``request_timeout``.

What is kept is bounded, because it becomes metric labels: a job type is kept as the API
names it if it looks like a name (`JOB_TYPE`: letters, digits, ``_ . -``, at most 64
characters), and at most `MAX_JOB_TYPES` of them per source (the first by name; Immuta's
job types are an enum of its own); a state is kept lower-cased if it looks like one
(`STATE`), at most `MAX_STATES` per source (Immuta has seven). Everything else is counted
under ``other``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from poller.engine.runtime import error_line
from poller.errors import SourceError
from poller.logs import get_logger
from poller.redact import scrub, secrets_of
from poller.sources import JobCount, JobSummary, Source, Summarizer
from poller.sources.base import SourceConfig

log = get_logger("poller")

#: How often the duty looks for a source whose summary is due.
TICK = 5.0
#: Job types and states kept per source; the rest are counted under `OTHER`.
MAX_JOB_TYPES = 32
MAX_STATES = 16
#: What a job type or a state must look like to be kept as it is.
JOB_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
STATE = re.compile(r"[a-z][a-z0-9_]{0,31}")
OTHER = "other"
#: The longest reason a stale summary shows.
MAX_REASON = 300


@dataclass(frozen=True)
class SourceSummary:
    """What the daemon knows of one source's job counts."""

    #: the counts of the last answer (bounded: module docstring); empty before the first
    counts: tuple[JobCount, ...]
    #: when the API last answered (None: never yet), and when it was last asked
    fetched_at: float | None
    tried_at: float
    #: why the last fetch failed (None: it answered)
    error: str | None
    #: how often it is fetched (seconds)
    interval: float
    #: the API listed more counts than are read (`poller summary` says the same)
    truncated: bool = False

    @property
    def stale(self) -> bool:
        """The counts are not the last fetch's: it failed (or none answered yet)."""
        return self.error is not None or self.fetched_at is None

    @property
    def total(self) -> int:
        """Every job counted."""
        return sum(count.count for count in self.counts)


def bounded(summary: JobSummary) -> tuple[JobCount, ...]:
    """`summary`'s counts with job types and states bounded (module docstring), summed."""
    types = sorted({c.job_type for c in summary.counts if JOB_TYPE.fullmatch(c.job_type)})
    kept_types = frozenset(types[:MAX_JOB_TYPES])
    states = sorted({s for c in summary.counts if STATE.fullmatch(s := c.state.lower())})
    kept_states = frozenset(states[:MAX_STATES])
    sums: dict[tuple[str, str], int] = {}
    for count in summary.counts:
        job_type = count.job_type if count.job_type in kept_types else OTHER
        state = count.state.lower() if count.state.lower() in kept_states else OTHER
        sums[job_type, state] = sums.get((job_type, state), 0) + count.count
    return tuple(JobCount(t, s, n) for (t, s), n in sorted(sums.items()))


def summary_interval(config: SourceConfig) -> float | None:
    """How often a source's summary is fetched (None: never). Only a source type that can
    count its jobs has the setting (Immuta's ``summary_interval``), so it is read by name."""
    value = getattr(config, "summary_interval", None)
    return float(value) if isinstance(value, int | float) and value > 0 else None


class Summaries:
    """The latest summary of each source that has one, and the duty that fetches them."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        #: by source name; read by the listener
        self.latest: dict[str, SourceSummary] = {}
        self._under_way: dict[str, asyncio.Task[None]] = {}

    async def refresh(
        self, adapters: Mapping[str, Source], configs: Mapping[str, SourceConfig]
    ) -> None:
        """The duty (every `TICK`): start a fetch for each source whose summary is due, and
        forget the sources the config no longer has or no longer summarizes."""
        now = self.clock()
        wanted: dict[str, tuple[Summarizer, SourceConfig, float]] = {}
        for name, source in adapters.items():
            config = configs.get(name)
            if config is None or not isinstance(source, Summarizer):
                continue
            interval = summary_interval(config)
            if interval is not None:
                wanted[name] = (source, config, interval)
        for name in set(self.latest) - set(wanted):
            del self.latest[name]
        for name, (summarizer, config, interval) in wanted.items():
            last = self.latest.get(name)
            due = last is None or now - last.tried_at >= interval - TICK / 2
            if due and name not in self._under_way:
                task = asyncio.create_task(self._fetch(name, summarizer, config, interval))
                self._under_way[name] = task
                task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        for name, under_way in list(self._under_way.items()):
            if under_way is task:
                del self._under_way[name]

    async def _fetch(
        self, name: str, adapter: Summarizer, config: SourceConfig, interval: float
    ) -> None:
        tried = self.clock()
        last = self.latest.get(name)
        try:
            # the adapter's own deadline bounds the request; this bounds anything around it
            answer = await asyncio.wait_for(
                adapter.summary([], None), timeout=config.request_timeout + TICK
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, SourceError):
                said = f"{exc.kind}: {exc.message}"
            elif isinstance(exc, TimeoutError):
                said = "timeout: no answer within the request_timeout"
            else:  # an adapter bug costs this fetch, not the daemon
                said = f"error: {error_line(exc)}"
            # an API may echo the token it was sent: never kept
            reason = scrub(said, secrets_of(config))[:MAX_REASON]
            log.warning("summary failed", source=name, error=reason)
            self.latest[name] = SourceSummary(
                counts=last.counts if last else (),
                fetched_at=last.fetched_at if last else None,
                tried_at=tried,
                error=reason,
                interval=interval,
                truncated=last.truncated if last else False,
            )
            return
        self.latest[name] = SourceSummary(
            counts=bounded(answer),
            fetched_at=self.clock(),
            tried_at=tried,
            error=None,
            interval=interval,
            truncated=answer.truncated,
        )

    async def close(self) -> None:
        """Stop the fetches under way (the daemon is stopping)."""
        tasks = list(self._under_way.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
