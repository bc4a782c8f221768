"""What the listener reads of the daemon, and its database reads, each bounded by a deadline.

The listener runs on the daemon's event loop, beside polling: a handler may never block it or
queue work without bound. So every database read goes through the daemon's one database thread
(`engine.runtime.DbThread`), waits for it at most a deadline, and is shared: while a read of
one kind is under way (or stuck behind a slow group commit), every request that wants the
same kind awaits that one instead of queueing another. A stuck database thus holds at most one
read of each kind, however often the endpoints are asked, and at most `MAX_UNDER_WAY` reads and
writes in all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from sqlalchemy.engine.url import make_url

from poller.config import Config
from poller.engine.runtime import DbThread, error_line
from poller.engine.stats import Stats
from poller.engine.summaries import Summaries
from poller.redact import pieces, scrub, scrub_logged
from poller.sources import Source
from poller.store.repo import Store
from poller.units import format_duration

T = TypeVar("T")

#: How long a request waits for the database thread before it answers without it.
DATABASE_DEADLINE = 2.0
#: The most reads of different kinds (a page of watches per filter and cursor, one watch's
#: history per key) and writes under way at once; one more is refused at once, so that many
#: different requests cannot pile work up behind a slow database.
MAX_UNDER_WAY = 8


class DaemonView(Protocol):
    """What the listener reads of the daemon it serves (`app.Daemon` is one)."""

    #: this process's name among replicas (host, pid, a random part)
    owner: str
    #: the config in force (replaced on reload)
    config: Config
    #: set once the daemon has started (config loaded, jobs synced, engines running)
    ready: asyncio.Event
    #: set when the daemon was asked to stop
    stopping: asyncio.Event
    #: what the engines counted
    stats: Stats
    #: the job counts of the sources that have them (Immuta's /jobs/summary), from memory
    summaries: Summaries

    def clock(self) -> float:
        """The daemon's clock (wall-clock seconds, as the database's times are)."""
        ...

    def database(self) -> DbThread | None:
        """The database thread, or None while the database is not open (yet, or any more)."""
        ...

    def adapters(self) -> Mapping[str, Source]:
        """The source adapters in force, by source name (none before the start)."""
        ...


class DatabaseUnavailable(Exception):
    """The database did not answer a read in time, or failed it; the message says which,
    with no secret in it."""


class DatabaseReads:
    """Reads through the daemon's database thread, bounded and shared (module docstring)."""

    def __init__(self, daemon: DaemonView, deadline: float = DATABASE_DEADLINE) -> None:
        self.daemon = daemon
        self.deadline = deadline
        self._under_way: dict[str, asyncio.Future[Any]] = {}
        self._writes = 0

    async def read(self, kind: str, fn: Callable[[Store], T]) -> T:
        """`fn(store)` in the database thread, or `DatabaseUnavailable` after the deadline.

        `kind` names the read: a request that wants a read of a kind already under way shares
        its answer (so `fn` must not depend on who asks).
        """
        future = self._under_way.get(kind)
        if future is None:
            future = self._start(kind, fn)
        return await self._wait(future)

    async def write(self, kind: str, fn: Callable[[Store], T]) -> T:
        """`fn(store)` in the database thread, never shared with another request (a write);
        `DatabaseUnavailable` after the deadline (the write may still be done: the thread
        runs it in turn)."""
        self._writes += 1
        return await self._wait(self._start(f"{kind} #{self._writes}", fn))

    def _start(self, kind: str, fn: Callable[[Store], T]) -> asyncio.Future[T]:
        if len(self._under_way) >= MAX_UNDER_WAY:
            raise DatabaseUnavailable(
                f"busy: {len(self._under_way)} database reads under way; try again"
            )
        db = self.daemon.database()
        if db is None:
            raise DatabaseUnavailable("the database is not open")
        future = asyncio.ensure_future(db.call(fn, db.store))
        self._under_way[kind] = future
        future.add_done_callback(lambda done: self._forget(kind, done))
        return future

    async def _wait(self, future: asyncio.Future[T]) -> T:
        try:
            result: T = await asyncio.wait_for(asyncio.shield(future), timeout=self.deadline)
        except TimeoutError:
            raise DatabaseUnavailable(
                f"the database did not answer within {format_duration(self.deadline)}"
            ) from None
        except Exception as exc:
            raise DatabaseUnavailable(f"the database cannot be read: {self._said(exc)}") from None
        return result

    async def close(self) -> None:
        """Stop waiting for reads still under way (the listener is closing)."""
        under_way = list(self._under_way.values())
        for future in under_way:
            future.cancel()
        if under_way:
            await asyncio.wait(under_way)

    def _forget(self, kind: str, done: asyncio.Future[Any]) -> None:
        if self._under_way.get(kind) is done:
            del self._under_way[kind]
        if not done.cancelled():
            done.exception()  # retrieved: an error nobody awaited any more is not "lost"

    def _said(self, exc: BaseException) -> str:
        """The first line of a database error, with every known secret masked (a driver's
        message names the host and the user; it should not hold the password, but if it
        ever did, it would not be shown)."""
        text = error_line(getattr(exc, "orig", None) or exc)
        try:
            password = make_url(self.daemon.config.database).password
        except Exception:
            password = None
        if password:
            text = scrub(text, sorted(pieces(str(password)), key=len, reverse=True))
        return scrub_logged(text)
