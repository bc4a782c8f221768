"""Discovery: the jobs of the config's bulks and searches become watches.

A config entry with ``bulk`` or ``search`` names jobs without their ids (Immuta's bulks and
searches; on an http source with ``discover``, whatever its listing finds for the ``bulk``).
`Discovery.run` asks the entry's source adapter (a `sources.Discoverer`) for the ids it stands
for now, and adds a watch for each job that has none yet: origin ``discovered``, with the
entry's name, tags and polling overrides, and its own key. From then on it is polled and
notified like any other.
Jobs that appear later in a bulk or a search are picked up by the next run (the daemon runs it
at start-up, before READY, and then every `discovery_interval`).

Quiet first listings: the first time an entry is listed (ever: the database remembers which
entries were listed, `discovery_entries`), the jobs it finds that had already ended (by the
state the listing gives) are recorded as ended, never polled, and notified to no one, unless
the entry says ``notify_existing: true``. Later listings add their new jobs as watches due at
once, which are notified as any other. Each discovered watch remembers its entry
(`entry_key`): when the entry leaves the config, its watches stop (`Store.stop_discovered`,
from the config sync at start and reload).

Retention prunes ended discovered watches, leaving a tombstone (entry and watch key): a
tombstoned job is never added again, so its end is not notified twice. Each complete listing
(`Discovered.complete`: not failed, cut short or missing an entry) drops the tombstones of
its entry whose jobs no listing of the run holds.

A watch that exists is never touched again (not relabelled, not re-activated after
``poller remove``): an update would bump its version and fence off a poll in flight. Failures
(an API that cannot be listed, a source that cannot discover) are logged and retried at the
next run; they never stop the daemon.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from poller.config import Config, JobConfig
from poller.errors import SourceError
from poller.logs import Logger
from poller.models import TERMINAL_STATES, PollResult, State, WatchSpec
from poller.sources import Discoverer, Source
from poller.sources.base import Discovered

__all__ = [
    "DEFAULT_INTERVAL",
    "Discovery",
    "DiscoveryReport",
    "Ledger",
    "discovery_entries",
    "discovery_interval",
    "entry_key",
    "entry_keys",
]

#: How often bulks and searches are listed when no source says otherwise.
DEFAULT_INTERVAL = 60.0
#: The longest entry key kept as it is written; a longer one (or a search) is hashed.
_MAX_PLAIN_KEY = 400


class Ledger(Protocol):
    """What discovery keeps in the database: watches, and which entries were ever listed."""

    async def listed(self, entries: Sequence[str]) -> set[str]:
        """Which of these entries (`entry_key`) have been listed before."""
        ...

    async def add(self, specs: Sequence[WatchSpec]) -> Sequence[str]:
        """Add the watches of these specs that do not exist yet; the keys added."""
        ...

    async def mark_listed(self, entries: Sequence[str]) -> None:
        """Remember that these entries have been listed."""
        ...

    async def drop_tombstones(self, complete: Collection[str], listed: Collection[str]) -> int:
        """Forget the pruned jobs of the entries listed completely (`complete`) that no
        listing holds (`listed`: the watch keys listed); how many."""
        ...


@dataclass(frozen=True)
class DiscoveryReport:
    """What one run found: jobs listed, watches added (of which recorded as already ended,
    without a poll or a message), entries that could not be listed."""

    found: int = 0
    added: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    recorded: tuple[str, ...] = ()


def entry_key(job: JobConfig) -> str:
    """What names a bulk or search entry across reloads and restarts: its source and bulk
    id, or its source and a digest of its filters (so changed filters are a new entry)."""
    if job.bulk is not None:
        plain = f"{job.source}/bulk/{job.bulk}"
        if len(plain) <= _MAX_PLAIN_KEY:
            return plain
        what, spec = "bulk", job.bulk
    else:
        what = "search"
        spec = json.dumps(job.search.model_dump(mode="json") if job.search else {}, sort_keys=True)
    return f"{job.source}/{what}/{hashlib.sha256(spec.encode()).hexdigest()[:32]}"


def entry_keys(config: Config) -> list[str]:
    """The `entry_key` of every bulk and search of `config`."""
    return [entry_key(job) for _index, job in discovery_entries(config)]


def discovery_entries(config: Config) -> list[tuple[int, JobConfig]]:
    """The config's job entries that name a bulk or a search, with their index in ``jobs``."""
    return [
        (index, job)
        for index, job in enumerate(config.jobs)
        if job.bulk is not None or job.search is not None
    ]


def discovery_interval(config: Config) -> float:
    """The shortest ``discovery_interval`` of the sources that have bulks or searches.

    Sources without one (and configs without bulks or searches) count as `DEFAULT_INTERVAL`.
    """
    intervals = [
        float(getattr(config.sources.get(job.source), "discovery_interval", DEFAULT_INTERVAL))
        for _index, job in discovery_entries(config)
    ]
    return min(intervals, default=DEFAULT_INTERVAL)


def _describe(index: int, job: JobConfig) -> str:
    what = f"bulk {job.bulk}" if job.bulk is not None else "search"
    return f"jobs[{index}] ({what} on {job.source})"


class Discovery:
    """Lists bulks and searches and adds watches for the jobs not yet watched.

    It remembers the keys it has seen exist, so that a run only sends new jobs to the store.
    """

    def __init__(self, ledger: Ledger, *, log: Logger) -> None:
        self.ledger = ledger
        self.log = log
        self._known: set[str] = set()
        self._refused: set[tuple[int, str]] = set()

    async def run(self, config: Config, sources: Mapping[str, Source]) -> DiscoveryReport:
        """List every bulk and search of `config` once; add watches for the new jobs."""
        entries = discovery_entries(config)
        if not entries:
            return DiscoveryReport()
        listed = await asyncio.gather(
            *(self._list(index, job, sources.get(job.source)) for index, job in entries)
        )
        specs: dict[str, WatchSpec] = {}
        listed_keys: set[str] = set()
        complete: list[str] = []  # the entries listed to their end
        failed: list[str] = []
        found = 0
        keys = [entry_key(job) for _index, job in entries]
        answered = [key for key, jobs in zip(keys, listed, strict=True) if jobs is not None]
        first = set(answered) - await self.ledger.listed(answered)
        for (index, job), key, jobs in zip(entries, keys, listed, strict=True):
            if jobs is None:
                failed.append(_describe(index, job))
                continue
            found += len(jobs)
            # a first listing records the jobs that had already ended, without a message
            quiet = key in first and not job.notify_existing
            if jobs.complete:
                complete.append(key)
            for job_id, as_listed in jobs.items():
                spec = WatchSpec(
                    source=job.source,
                    job_id=job_id,
                    name=job.name,
                    tags=tuple(job.tags),
                    overrides=job.polling.as_dict(),
                    origin="discovered",
                    entry=key,
                    ended_as=_ended(as_listed) if quiet else None,
                )
                problems = spec.problems()
                if problems:
                    # the store could not hold it (and nor could a config): that one job is
                    # skipped, every other job of the bulk or search is still watched
                    self._skip(index, job, job_id, problems)
                    continue
                listed_keys.add(spec.key)
                if spec.key not in self._known:
                    specs.setdefault(spec.key, spec)
        added: Sequence[str] = ()
        if specs:
            added = await self.ledger.add(list(specs.values()))
        if first:
            # after the watches: an entry whose jobs were not all added is listed as first again
            await self.ledger.mark_listed(sorted(first))
        if complete:
            await self.ledger.drop_tombstones(complete, listed_keys)
        # Only keys listed now need remembering (plus, while an entry fails, the old ones):
        # the memory follows what the bulks and searches hold, not every job ever seen.
        self._known = listed_keys | self._known if failed else listed_keys
        recorded = tuple(k for k in added if specs[k].ended_as is not None)
        if added:
            self.log.info(
                "discovered",
                added=len(added),
                keys=list(added[:20]),
                recorded_as_ended=len(recorded),
            )
        return DiscoveryReport(
            found=found, added=tuple(added), failed=tuple(failed), recorded=recorded
        )

    def _skip(self, index: int, job: JobConfig, job_id: str, problems: Sequence[str]) -> None:
        """Log a listed job that cannot be watched (say, an id too long), once per process."""
        where = (index, job_id)
        if where in self._refused:
            return
        self._refused.add(where)
        self.log.warning(
            "discovered job not watched",
            entry=_describe(index, job),
            job_id=job_id[:300],
            problems=list(problems),
        )

    async def _list(self, index: int, job: JobConfig, source: Source | None) -> Discovered | None:
        """The jobs an entry stands for, each with its state as listed, or None (logged) if
        they cannot be had now."""
        where = _describe(index, job)
        if not isinstance(source, Discoverer):
            self.log.warning("cannot discover: the source lists no jobs", entry=where)
            return None
        try:
            jobs = await source.discover(job)
            # a type that lists bare ids (no states) is read too: none is taken for ended;
            # a listing that does not say it is complete is taken for incomplete
            listed = jobs if isinstance(jobs, Mapping) else dict.fromkeys(jobs)
            return Discovered(listed, complete=getattr(jobs, "complete", False) is True)
        except SourceError as exc:
            self.log.warning("discovery failed", entry=where, kind=exc.kind, error=exc.message)
        except Exception as exc:  # an adapter bug costs this run, not the daemon
            self.log.exception("discovery crashed", entry=where, error=type(exc).__name__)
        return None


def _ended(as_listed: PollResult | None) -> tuple[State, str] | None:
    """(state, remote status) of a job the listing says has ended, else None (a listing
    without a state, or with one poller does not know, is never taken for an end)."""
    if as_listed is None or as_listed.state not in TERMINAL_STATES:
        return None
    return as_listed.state, as_listed.remote_status
