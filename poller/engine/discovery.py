"""Discovery: the jobs of the config's Immuta bulks and searches become watches.

A config entry with ``bulk`` or ``search`` names jobs without their ids. `Discovery.run` asks
the entry's source adapter (a `sources.Discoverer`) for the ids it stands for now, and adds a
watch for each job that has none yet: origin ``discovered``, with the entry's name, tags and
polling overrides, and its own key. From then on it is polled and notified like any other.
Jobs that appear later in a bulk or a search are picked up by the next run (the daemon runs it
at start-up, before READY, and then every `discovery_interval`).

A watch that exists is never touched again (not relabelled, not re-activated after
``poller remove``): an update would bump its version and fence off a poll in flight. Failures
(an API that cannot be listed, a source that cannot discover) are logged and retried at the
next run; they never stop the daemon.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from poller.config import Config, JobConfig
from poller.errors import SourceError
from poller.logs import Logger
from poller.models import WatchSpec
from poller.sources import Discoverer, Source

__all__ = [
    "DEFAULT_INTERVAL",
    "AddWatches",
    "Discovery",
    "DiscoveryReport",
    "discovery_entries",
    "discovery_interval",
]

#: How often bulks and searches are listed when no source says otherwise.
DEFAULT_INTERVAL = 60.0

#: Adds the watches of these specs that do not exist yet; answers the keys it added.
AddWatches = Callable[[Sequence[WatchSpec]], Awaitable[Sequence[str]]]


@dataclass(frozen=True)
class DiscoveryReport:
    """What one run found: jobs listed, watches added, entries that could not be listed."""

    found: int = 0
    added: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


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

    def __init__(self, add_watches: AddWatches, *, log: Logger) -> None:
        self.add_watches = add_watches
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
        failed: list[str] = []
        found = 0
        for (index, job), ids in zip(entries, listed, strict=True):
            if ids is None:
                failed.append(_describe(index, job))
                continue
            found += len(ids)
            for job_id in ids:
                spec = WatchSpec(
                    source=job.source,
                    job_id=job_id,
                    name=job.name,
                    tags=tuple(job.tags),
                    overrides=job.polling.as_dict(),
                    origin="discovered",
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
            added = await self.add_watches(list(specs.values()))
        # Only keys listed now need remembering (plus, while an entry fails, the old ones):
        # the memory follows what the bulks and searches hold, not every job ever seen.
        self._known = listed_keys | self._known if failed else listed_keys
        if added:
            self.log.info("discovered", added=len(added), keys=list(added[:20]))
        return DiscoveryReport(found=found, added=tuple(added), failed=tuple(failed))

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

    async def _list(self, index: int, job: JobConfig, source: Source | None) -> list[str] | None:
        """The ids an entry stands for, or None (logged) if they cannot be had now."""
        where = _describe(index, job)
        if not isinstance(source, Discoverer):
            self.log.warning("cannot discover: the source lists no jobs", entry=where)
            return None
        try:
            return list(await source.discover(job))
        except SourceError as exc:
            self.log.warning("discovery failed", entry=where, kind=exc.kind, error=exc.message)
        except Exception as exc:  # an adapter bug costs this run, not the daemon
            self.log.exception("discovery crashed", entry=where, error=type(exc).__name__)
        return None
