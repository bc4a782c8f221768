"""`SimThread`: runs simulators on an event loop in a daemon thread, for synchronous callers
(the tests and the demo)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from poller.testing.server import HttpServer

__all__ = ["SimThread"]

T = TypeVar("T")


class SimThread:
    """Runs servers on an event loop in a daemon thread, for synchronous tests and the demo.

    ::

        with SimThread(RulerSim(), WebhookSink()) as sims:
            ruler, sink = sims.servers
    """

    def __init__(self, *servers: HttpServer, name: str = "poller-sim") -> None:
        self.servers: tuple[HttpServer, ...] = servers
        self.name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop_requested: asyncio.Event | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the servers run on (while started)."""
        if self._loop is None:
            raise RuntimeError("SimThread not started")
        return self._loop

    def start(self, timeout: float = 10.0) -> Self:
        """Start the thread; returns once every server listens (or raises why one cannot)."""
        if self._thread is not None:
            raise RuntimeError("SimThread already started")
        self._ready.clear()
        self._error = None
        # created here, not in the thread, so that stop() always finds them; an Event rather
        # than loop.stop() because a stop request must never cut the teardown short
        self._loop = loop = asyncio.new_event_loop()
        self._stop_requested = stop_requested = asyncio.Event()
        self._thread = threading.Thread(
            target=self._main, args=(loop, stop_requested), name=self.name, daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError("simulators did not start in time")
        if self._error is not None:
            error = self._error
            self.stop()
            raise error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every server, close the loop and join the thread; idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if thread.ident == threading.get_ident():
            raise RuntimeError("SimThread.stop() called from its own loop")
        event = self._stop_requested
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have closed already
                loop.call_soon_threadsafe(event.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("simulator thread did not stop in time")
        self._thread = None
        self._loop = None
        self._stop_requested = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the simulators' loop from another thread and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _main(self, loop: asyncio.AbstractEventLoop, stop_requested: asyncio.Event) -> None:
        try:
            try:
                loop.run_until_complete(self._start_all())
            except BaseException as exc:
                self._error = exc
            finally:
                self._ready.set()
            if self._error is None:
                loop.run_until_complete(stop_requested.wait())
        finally:
            try:
                loop.run_until_complete(self._stop_all())
                _cancel_remaining(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    async def _start_all(self) -> None:
        for server in self.servers:
            await server.start()

    async def _stop_all(self) -> None:
        for server in self.servers:
            await server.stop()


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel tasks still pending (e.g. a `SimThread.run` coroutine), as `asyncio.run` does."""
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
