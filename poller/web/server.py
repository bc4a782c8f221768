"""The listener: one aiohttp.web server on the daemon's event loop, at ``http.listen``.

The route table is the endpoints each part of the listener offers (`PARTS`: `Probes`,
`Metrics`, `StatusPage`, `Api`); a new page or API is one more class with a ``routes()`` that
reads the daemon through `DaemonView` and the database through the shared `DatabaseReads`.

What bounds it: aiohttp's own limits on a request line and headers (8 KiB each, 128
headers), a 64 KiB body at most (only the API's ``POST`` takes one; 413 beyond), a
connection that sends nothing for `IDLE_TIMEOUT` closed, every database read bounded by
`DatabaseReads`, and handlers that do nothing slow on the loop. It has no TLS: it listens on
loopback unless told otherwise, and a reverse proxy in front of it serves other hosts
(README "Monitoring over HTTP"). Only the API's writes ask for a token (`api`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from poller.engine.stats import watch_loop_lag
from poller.errors import ListenError
from poller.settings.fields import split_address
from poller.web.api import MAX_BODY, Api
from poller.web.metrics import Metrics
from poller.web.page import StatusPage
from poller.web.probes import Probes
from poller.web.reads import DaemonView, DatabaseReads


class Part(Protocol):
    """A part of the listener: some endpoints, over the daemon and its shared reads."""

    def routes(self) -> list[web.RouteDef]:
        """Its endpoints, for the route table."""
        ...


#: The route table's parts, each made with the daemon and the shared database reads: a new
#: page or API is one more class here.
PARTS: tuple[Callable[[DaemonView, DatabaseReads], Part], ...] = (
    Probes,
    Metrics,
    StatusPage,
    Api,
)

#: How long a stop waits for requests being answered.
SHUTDOWN_GRACE = 1.0
#: A connection that sends nothing (idle between requests, or a request left half-sent) is
#: closed after this many seconds, so that slow or idle clients cannot hold sockets forever.
IDLE_TIMEOUT = 15.0


#: Every answer's Content-Security-Policy: the page loads its script, style and icon from
#: the listener itself and nothing else (no inline script or style, no other host, no frame).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


async def _harden(request: web.Request, response: web.StreamResponse) -> None:
    """Headers on every answer, errors included: never cached, never sniffed as another type,
    never framed, nothing loaded from elsewhere, no referrer sent on."""
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")


class Listener:
    """The daemon's HTTP listener, serving from `start` until `close`."""

    def __init__(self, address: str, daemon: DaemonView) -> None:
        self.address = address
        self.daemon = daemon
        self.reads = DatabaseReads(daemon)
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.on_response_prepare.append(_harden)
        parts = [part(daemon, self.reads) for part in PARTS]
        self.app.add_routes([route for part in parts for route in part.routes()])
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._lag: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind the address and serve; `ListenError` naming the address and why if it cannot
        be bound (taken, not this host's, not allowed), with nothing left open."""
        host, port = split_address(self.address)
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE,
            keepalive_timeout=IDLE_TIMEOUT,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            # asyncio's message repeats the address; the errno's own words say it plainly
            errno = exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else None
            why = os.strerror(errno) if errno else exc.strerror or str(exc) or type(exc).__name__
            raise ListenError(f"cannot listen on {self.address} (http.listen): {why}") from None
        self._runner = runner
        self._lag = asyncio.create_task(
            watch_loop_lag(self.daemon.stats, self._closing), name="loop-lag"
        )

    @property
    def ports(self) -> list[int]:
        """The ports it listens on (one per bound socket)."""
        if self._runner is None:
            return []
        return [addr[1] for addr in self._runner.addresses if isinstance(addr, tuple)]

    async def close(self) -> None:
        """Stop listening, let requests under way finish briefly, and stop measuring."""
        self._closing.set()
        if self._lag is not None:
            self._lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag
        await self.reads.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


async def start_listener(address: str, daemon: DaemonView) -> Listener:
    """A `Listener` for `daemon`, serving at `address`; `ListenError` if it cannot bind."""
    listener = Listener(address, daemon)
    await listener.start()
    return listener
