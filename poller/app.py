"""The composition root: builds the daemon from a config, runs it, reloads it, stops it.

Collaborators that tests and benchmarks swap (the clock, the HTTP resolver, the engine's
tuning) are passed in here; production code below this module has no test hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from functools import partial
from typing import TypeVar

from aiohttp.abc import AbstractResolver

from poller.config import Config, load_config
from poller.engine.delivery import DeliveryEngine
from poller.engine.discovery import Discovery, discovery_interval, entry_keys
from poller.engine.polling import PollEngine
from poller.engine.reporting import due_run, queue_report
from poller.engine.runtime import DbThread, Engine, Runtime, Tuning, error_line
from poller.engine.scheduling import Duties
from poller.engine.stats import Stats, add
from poller.engine.summaries import TICK as SUMMARY_TICK
from poller.engine.summaries import Summaries
from poller.errors import ConfigError, PollerError
from poller.logs import get_logger
from poller.models import Event, WatchSpec
from poller.notify import Notifier
from poller.sources import Source, answer_memory, build_source
from poller.store.repo import Store, safe_url
from poller.systemd import SystemdNotifier
from poller.web import start_listener

log = get_logger("poller")
E = TypeVar("E", bound=Engine)


#: The first discovery run holds READY back this long at most (issue 3).
FIRST_DISCOVERY = 30.0
#: logged when a reload's config is in force but its jobs could not be written
#: the names of the report duties: this, then the report's name
REPORT_DUTY = "report:"
RELOAD_REFUSED = "reload refused; keeping the old config"
RELOAD_INCOMPLETE = "reload incomplete: deliveries could not follow renamed channels; SIGHUP again"


def _report_failure(what: str, task: asyncio.Task[None]) -> None:
    """A background task's done-callback: log its error (or nothing if it ended well)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error(f"{what} failed", error=f"{type(exc).__name__}: {error_line(exc)}")


def config_watch_specs(config: Config) -> list[WatchSpec]:
    """The watches the config file asks for (single jobs; bulks and searches are discovered)."""
    return [
        WatchSpec(
            source=job.source,
            job_id=job.id,
            site=job.site,
            name=job.name,
            tags=tuple(job.tags),
            overrides=job.polling.as_dict(),
            origin="config",
        )
        for job in config.jobs
        if job.id is not None
    ]


def channel_urls(config: Config) -> dict[str, str]:
    """The config's channels: name -> Apprise URL (secret; never logged)."""
    return {name: url.get_secret_value() for name, url in config.channels.items()}


def build_runtime(config: Config, resolver: AbstractResolver | None = None) -> Runtime:
    """Source adapters, channels and rules for one config."""
    sources: dict[str, Source] = {
        name: build_source(source_config, resolver, max_pause=config.policy_for(name).max_interval)
        for name, source_config in config.sources.items()
    }
    notifier = Notifier(channel_urls(config))
    return Runtime(config, sources, notifier, config.rules)


def open_store(config: Config, *, daemon: bool = False) -> Store:
    """Open the config's database.

    Only `poller run` passes `daemon`: it takes the single-daemon lock of a SQLite file first
    (so that a refused daemon writes nothing), creates the database if there is none and
    brings its schema up to date. Every other command needs a database `poller run` made,
    and fails with a `StoreError` saying where it looked, creating nothing.
    """
    store = Store(config.database, create=daemon)
    try:
        if daemon:
            store.acquire_daemon_lock()
            store.migrate()
        else:
            store.require_schema()
    except PollerError:
        store.close()
        raise
    return store


class Daemon:
    """`poller run`: polls, records and notifies until SIGTERM."""

    def __init__(
        self,
        config: Config,
        *,
        resolver: AbstractResolver | None = None,
        clock: Callable[[], float] = time.time,
        tuning: Tuning | None = None,
        systemd: SystemdNotifier | None = None,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.clock = clock
        # The lease is a user setting (`replicas.lease`); the rest of the tuning is not.
        self.tuning = dataclasses.replace(tuning or Tuning(), lease=config.replicas.lease)
        self.systemd = systemd or SystemdNotifier()
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        #: what the engines count, for the listener's /metrics
        self.stats = Stats()
        #: the job counts of the sources that have them (Immuta's /jobs/summary), fetched on
        #: their ``summary_interval`` for the status page and /metrics
        self.summaries = Summaries(clock)
        self._runtime: Runtime | None = None
        self._db: DbThread | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._reloading = asyncio.Lock()
        #: the periodic duties and the discovery duty, once running (a reload reschedules it)
        self._duties: Duties | None = None
        self._discover: Callable[[], Coroutine[object, object, None]] | None = None

    def runtime(self) -> Runtime:
        """The runtime in force (replaced on reload)."""
        assert self._runtime is not None
        return self._runtime

    def adapters(self) -> Mapping[str, Source]:
        """The source adapters in force (none before the start); the listener reads their
        breakers."""
        return self._runtime.sources if self._runtime is not None else {}

    def database(self) -> DbThread | None:
        """The database thread while the database is open (the listener reads through it)."""
        return self._db

    def stop(self) -> None:
        """Ask the daemon to stop gracefully (what SIGTERM does)."""
        if not self.stopping.is_set():
            log.info("stopping")
            self.systemd.stopping()
            self.stopping.set()

    async def run(self) -> int:
        """Run until stopped; returns the exit code.

        The HTTP listener (``http.listen``) is bound first, so that an address that cannot be
        bound stops the daemon before it touches the database (`ListenError`); it answers
        "starting" on /readyz until the daemon is ready and serves until the very end.
        """
        address = self.config.http.listen
        listener = await start_listener(address, self) if address else None
        if listener is not None:
            log.info("listening", address=address, ports=listener.ports)
        try:
            return await self._run()
        finally:
            if listener is not None:
                await listener.close()

    def _open_store(self) -> Store:
        """The daemon's store, locked, migrated and cleared of a crashed predecessor's leases
        (SQLite)."""
        store = open_store(self.config, daemon=True)
        try:
            if store.is_sqlite:
                store.release(None)  # leases of a crashed predecessor; we are the only owner
        except PollerError:
            store.close()
            raise
        return store

    async def _run(self) -> int:
        # off the loop: a database that is slow to open (locked, migrating, far away) must not
        # stop the listener from answering /healthz, and /readyz "starting"
        store = await asyncio.to_thread(self._open_store)
        db = self._db = DbThread(store)
        self._runtime = build_runtime(self.config, self.resolver)
        polls, deliveries = self._engine(PollEngine, db), self._engine(DeliveryEngine, db)
        polls.on_deliveries = deliveries.wakeup.set
        self.polls, self.deliveries = polls, deliveries
        duties = Duties()
        loop = asyncio.get_running_loop()
        try:
            report = await db.call(
                store.sync_config_jobs, config_watch_specs(self.config), self.clock()
            )
            # the watches of bulks and searches the config no longer has stop
            await db.call(store.stop_discovered, entry_keys(self.config), self.clock())
            # deliveries kept while their channel was missing go out now if it is back
            await deliveries.follow_channels({}, channel_urls(self.config))
            log.info(
                "started",
                database=safe_url(self.config.database),
                watches_added=len(report.added),
                watches_stopped=len(report.removed),
                owner=self.owner,
                # the bound on answers held at once (README "HTTP"), whatever they expand to
                answer_memory_mib=round(answer_memory(self.config.sources) / (1 << 20), 1),
            )
            # -- discovery of Immuta bulks and searches (issue 3): once before READY, then
            # every discovery_interval; a slow API only delays start-up by FIRST_DISCOVERY.
            discover = self._discoverer(db, polls)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(discover(), timeout=FIRST_DISCOVERY)
            duties.every(discovery_interval(self.config), discover, "discovery")
            self._duties, self._discover = duties, discover
            # The engines wake themselves (each step says when the next is due, at most
            # `idle_wait` apart): a second timer here would defeat their backoff when the
            # database is away.
            duties.every(self.tuning.lease / 3, self._renewer(db), "lease-renewal")
            duties.every(SUMMARY_TICK, self._summarize, "summaries", first_in=0.1)
            duties.every(
                self.tuning.prune_every,
                self._pruner(db),
                "retention",
                first_in=self.tuning.prune_first,
            )
            self._schedule_reports(db, self.config)
            if self.systemd.watchdog_interval:
                duties.every(self.systemd.watchdog_interval, self.systemd.watchdog, "watchdog")
            duties.start()
            # a run missed while no daemon ran (down at 09:00) goes out now, within the hour
            for scheduled in self.config.reports:
                self._spawn(self._report_due(db, scheduled.name), "report")
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload(db), "reload"))
            tasks = [
                asyncio.create_task(polls.run(self.stopping), name="dispatch"),
                asyncio.create_task(deliveries.run(self.stopping), name="deliver"),
            ]
            self.systemd.ready(f"watching; database {safe_url(self.config.database)}")
            self.ready.set()
            await self.stopping.wait()
            polls.wakeup.set()
            deliveries.wakeup.set()
            _done, slow = await asyncio.wait(tasks, timeout=self.tuning.stop_grace / 2)
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
            await polls.drain(self.tuning.stop_grace / 2)
            try:
                await db.call(store.release, self.owner)
            except Exception as exc:  # a full disk at stop: the leases expire instead
                log.error("leases not given back; they expire", error=error_line(exc))
            log.info("stopped", polls=polls.polls, delivered=deliveries.sent)
            return 0
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            duties.shutdown()
            if self._closing:
                await asyncio.gather(*self._closing, return_exceptions=True)
            await self.summaries.close()
            await self.runtime().aclose()
            self._db = None
            db.close()
            store.close()

    def _engine(self, kind: type[E], db: DbThread) -> E:
        """An engine of `kind` with this daemon's database, config, tuning, clock and counts."""
        return kind(
            db,
            self.runtime,
            self.owner,
            tuning=self.tuning,
            clock=self.clock,
            log=log,
            stats=self.stats,
        )

    async def _summarize(self) -> None:
        """The summaries duty, over the sources in force (a reload may change them)."""
        await self.summaries.refresh(self.adapters(), self.config.sources)

    def _renewer(self, db: DbThread) -> Callable[[], Awaitable[None]]:
        """A duty that keeps this process's leases alive while it works."""

        async def renew() -> None:
            until = self.clock() + self.tuning.lease
            try:
                await db.call(db.store.renew, self.owner, until)
            except Exception as exc:  # the engines report database trouble; keep trying
                log.warning("lease renewal failed", error=error_line(exc))

        return renew

    def _schedule_reports(self, db: DbThread, config: Config) -> None:
        """One cron duty per report of `config`, replacing those of the config before."""
        if self._duties is None:
            return
        self._duties.remove(REPORT_DUTY)
        for report in config.reports:
            self._duties.cron(
                report.trigger(),
                partial(self._report_due, db, report.name),
                REPORT_DUTY + report.name,
            )

    async def _report_due(self, db: DbThread, name: str) -> None:
        """Queue the latest run of report `name` due within the hour, unless it is queued
        already (by this process or another replica): at its time, and at start."""
        report = next((r for r in self.runtime().config.reports if r.name == name), None)
        now = self.clock()
        scheduled = due_run(report, now) if report is not None else None
        if report is None or scheduled is None:
            return
        try:
            queued = await db.call(queue_report, db.store, report, scheduled, now)
        except Exception as exc:  # the database may be away: the next start makes it up
            log.error("report not queued", report=name, error=error_line(exc))
            return
        if queued:
            log.info("report queued", report=name, scheduled_at=scheduled, channels=report.notify)
            add(self.stats.events, Event.REPORT.value)  # poller_events{kind="report"}
            self.deliveries.wakeup.set()

    def _pruner(self, db: DbThread) -> Callable[[], Awaitable[None]]:
        """The retention duty: deletes watches ended longer ago than `retention` (the value
        in force, so a reload that changes it counts; 0 stops pruning)."""

        async def prune() -> None:
            retention = self.runtime().config.retention
            if not retention:
                return
            try:
                pruned = await db.call(db.store.prune, self.clock() - retention)
            except Exception as exc:  # the database may be away; tomorrow's run tries again
                log.warning("prune failed", error=error_line(exc))
                return
            if pruned.watches:
                log.info(
                    "pruned",
                    watches=pruned.watches,
                    transitions=pruned.transitions,
                    events=pruned.events,
                    deliveries=pruned.deliveries,
                    tombstones=pruned.tombstones,
                )

        return prune

    def _discoverer(
        self, db: DbThread, polls: PollEngine
    ) -> Callable[[], Coroutine[object, object, None]]:
        """The discovery duty: lists bulks and searches of the config in force (issue 3)."""
        discovery = Discovery(_StoreLedger(db, self.clock), log=log)

        async def discover() -> None:
            runtime = self.runtime()
            try:
                report = await discovery.run(runtime.config, runtime.sources)
            except Exception as exc:  # the database may be away; the next run tries again
                log.warning("discovery failed", error=error_line(exc))
                return
            if report.added:
                polls.wakeup.set()

        return discover

    def _spawn(self, coro: Coroutine[object, object, None], what: str) -> None:
        """Run `coro` in the background; if it fails, say so at once (no one awaits it)."""
        task = asyncio.create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        task.add_done_callback(partial(_report_failure, what))

    async def reload(self, db: DbThread) -> None:
        """Re-read the config file; keep the old one if the new one is wrong.

        Whatever goes wrong (an invalid config, an unreadable file, a source that cannot be
        built, the database away while the jobs are synced) is logged as "reload refused"
        with its reason, the old config stays in force and systemd hears READY=1 again: a
        reload never ends the daemon or leaves systemd waiting. Reloads run one at a time.
        """
        async with self._reloading:
            self.systemd.reloading()
            try:
                old = await self._reload(db)
            except ConfigError as exc:
                log.error(
                    "reload refused: the new config is invalid; keeping the old one",
                    problems=[str(p) for p in exc.problems],
                )
                self.systemd.ready("reload refused; old config kept")
                return
            except Exception as exc:
                log.error(RELOAD_REFUSED, error=f"{type(exc).__name__}: {error_line(exc)}")
                self.systemd.ready("reload refused; old config kept")
                return
            self.systemd.ready("reloaded")
        # Polls in flight still use the old clients: close those once the polls are done.
        longest = max((s.request_timeout for s in old.config.sources.values()), default=0.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=longest)
        await old.aclose()

    async def _reload(self, db: DbThread) -> Runtime:
        """Put the config file's new content in force; returns the runtime it replaced.

        On any exception the old config and runtime are still in force.
        """
        # off the event loop: the file (or a secret file it names) may be slow to read
        new = await asyncio.to_thread(load_config, self.config.path)
        if new.database != self.config.database:
            log.warning("a new database takes a restart; still using the old one")
        if new.http.listen != self.config.http.listen:
            log.warning(
                "a new http.listen takes a restart; still listening as before",
                listening=self.config.http.listen,
            )
        old_config, old = self.config, self.runtime()
        runtime = build_runtime(new, self.resolver)
        self._runtime, self.config = runtime, new
        try:
            report = await db.call(db.store.sync_config_jobs, config_watch_specs(new), self.clock())
            stopped = await db.call(db.store.stop_discovered, entry_keys(new), self.clock())
        except BaseException:
            # the watches table still matches the old config: keep it in force
            self._runtime, self.config = old, old_config
            await runtime.aclose()
            raise
        log.info(
            "reloaded",
            added=list(report.added),
            stopped=list(report.removed),
            discovered_stopped=stopped[:20],
        )
        if self._duties is not None and self._discover is not None:
            # a changed discovery_interval takes effect now; new bulks and searches are
            # listed at once rather than an interval later
            self._duties.every(discovery_interval(new), self._discover, "discovery")
            self._spawn(self._discover(), "discovery")
        self._schedule_reports(db, new)
        try:
            await self.deliveries.follow_channels(channel_urls(old_config), channel_urls(new))
        except Exception as exc:  # the new config is in force; the deliveries wait as kept
            log.error(RELOAD_INCOMPLETE, error=f"{type(exc).__name__}: {error_line(exc)}")
        return old


class _StoreLedger:
    """Discovery's `Ledger` on the daemon's database thread."""

    def __init__(self, db: DbThread, clock: Callable[[], float]) -> None:
        self.db, self.clock = db, clock

    async def listed(self, entries: Sequence[str]) -> set[str]:
        """`Store.listed_entries`."""
        return await self.db.call(self.db.store.listed_entries, entries)

    async def add(self, specs: Sequence[WatchSpec]) -> Sequence[str]:
        """`Store.add_new_watches`, now."""
        return await self.db.call(self.db.store.add_new_watches, specs, self.clock())

    async def mark_listed(self, entries: Sequence[str]) -> None:
        """`Store.mark_listed`, now."""
        await self.db.call(self.db.store.mark_listed, entries, self.clock())

    async def drop_tombstones(self, complete: Collection[str], listed: Collection[str]) -> int:
        """`Store.drop_tombstones`."""
        return await self.db.call(self.db.store.drop_tombstones, complete, listed)


#: The collector's first threshold in `poller run` (CPython's default is 700). The daemon keeps
#: thousands of objects alive for a moment (claimed batches, results waiting for their group
#: commit, requests in flight), so the default collected every few polls and walked the whole
#: heap often: a quarter of the daemon's CPU per poll, measured in `bench/daemon.py`. Garbage
#: in reference cycles waits a little longer for its collection; nothing else changes.
GC_THRESHOLD = 10_000


def runner() -> asyncio.Runner:
    """The event loop `poller run` runs the daemon on, in a process set up for it: the
    default asyncio loop, and the collector's threshold at `GC_THRESHOLD`."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, older, oldest)
    return asyncio.Runner()
