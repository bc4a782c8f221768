"""What the daemon's engines share: the database thread, the runtime and the tuning.

The work itself is in `polling.py` (due watches → adapters → decisions → group commits) and
`delivery.py` (outbox → Apprise). All database calls go through one `DbThread`, so the store
sees a single writer and the event loop never blocks on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import ParamSpec, TypeVar

from poller.config import Config
from poller.engine.stats import Stats
from poller.logs import Logger
from poller.notify import Notifier, RuleLike
from poller.sources import Source
from poller.store.repo import Store

P = ParamSpec("P")
T = TypeVar("T")


class DbThread:
    """Runs store calls one at a time in a dedicated thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poller-db")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` in the database thread and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Finish queued calls and stop the thread."""
        self._executor.shutdown(wait=True)


@dataclass
class Runtime:
    """What a reload replaces: the config, its source adapters, channels and rules."""

    config: Config
    sources: Mapping[str, Source]
    notifier: Notifier
    rules: Sequence[RuleLike]

    async def aclose(self) -> None:
        """Close every source's connections."""
        for source in self.sources.values():
            await source.aclose()


@dataclass
class Tuning:
    """Knobs of the engine; defaults suit one machine with up to ~100k watches."""

    #: watches claimed and not yet written back, at most
    max_in_flight: int = 1024
    #: a claim takes the watches due within this many seconds (each polled at its due time)
    claim_ahead: float = 0.25
    #: claims that found nothing more due are this far apart at least
    claim_spacing: float = 0.05
    #: watches of one source polled together (one adapter call), at most
    group_size: int = 256
    #: and within this many seconds of due times
    group_spread: float = 0.05
    #: how long a claim holds without renewal; a dead replica's work is taken over after this
    lease: float = 30.0
    flush_delay: float = 0.02
    max_batch: int = 500
    idle_wait: float = 1.0
    delivery_batch: int = 50
    stop_grace: float = 8.0
    #: the retention duty (`Store.prune`) runs this long after start-up, then every
    #: `prune_every`: a daemon restarted daily still prunes, without slowing its start
    prune_first: float = 60.0
    prune_every: float = 86400.0


def error_line(exc: BaseException) -> str:
    """An error's first line (or its type), short enough for a log line."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


async def nap(wakeup: asyncio.Event, due: float | None, now: float, longest: float) -> None:
    """Sleep until `due` (at most `longest` seconds), or until `wakeup` is set."""
    wait = longest if due is None else min(longest, max(0.0, due - now))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wakeup.wait(), timeout=max(wait, 0.005))


class Engine:
    """What the polling and delivery engines are both built from.

    An engine adds its own state in `_setup`, which the constructor calls last, so that the
    engines take exactly these arguments without repeating them.
    """

    def __init__(
        self,
        db: DbThread,
        runtime: Callable[[], Runtime],
        owner: str,
        *,
        log: Logger,
        tuning: Tuning | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        stats: Stats | None = None,
    ) -> None:
        self.db = db
        self.runtime = runtime
        self.owner = owner
        self.tuning = tuning or Tuning()
        self.clock = clock
        self.rand = rand
        self.log = log
        #: what the engine counts as it works (read by the listener's /metrics)
        self.stats = stats or Stats()
        #: set to make the engine look for work now instead of at its next due time
        self.wakeup = asyncio.Event()
        self._setup()

    def _setup(self) -> None:
        """Set up the engine's own state (an engine overrides this; the base has none)."""

    async def _step(self) -> float | None:
        """One round of the engine's work; returns when the next one is due (None: idle)."""
        raise NotImplementedError

    async def _run_steps(self, name: str, stopping: asyncio.Event) -> None:
        """Run `_step` until `stopping` is set, as the engine's only timer (`run_loop`)."""
        await run_loop(
            name, self._step, self.wakeup, stopping, self.clock, self.tuning.idle_wait, self.log
        )


async def run_loop(
    name: str,
    step: Callable[[], Awaitable[float | None]],
    wakeup: asyncio.Event,
    stopping: asyncio.Event,
    clock: Callable[[], float],
    idle: float,
    log: Logger,
) -> None:
    """Run `step` until `stopping`; each step returns when the next one is due (None: idle).

    A step that fails (most often: the database went away) is retried with backoff up to 30 s
    instead of ending the loop, so a replica rides out a database restart. This loop is the
    engine's only timer: while it backs off, `wakeup` is ignored (only `stopping` ends the
    wait), so the retries are as far apart as the logged `retry_in` says, whoever sets it.
    """
    failures = 0
    while not stopping.is_set():
        wakeup.clear()
        try:
            due = await step()
        except Exception as exc:
            failures += 1
            retry_in = failure_wait(failures)
            log.error(
                f"{name} failed; retrying",
                error=error_line(exc),
                failures=failures,
                retry_in=retry_in,
            )
            await nap(stopping, None, 0.0, retry_in)
            continue
        failures = 0
        await nap(wakeup, due, clock(), idle)


def failure_wait(failures: int) -> float:
    """The backoff after `failures` failed steps in a row: 1, 2, 4, ... up to 30 seconds."""
    return min(30.0, 2.0 ** min(failures - 1, 5))
