"""A receiver for Apprise ``json://`` notifications that records every message (the demo prints
them; tests wait for them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from poller.testing.server import (
    Fault,
    FaultMode,
    HttpServer,
    Request,
    Response,
)

logger = logging.getLogger(__name__)


class SinkTimeout(TimeoutError):
    """`WebhookSink.wait_for` gave up; `messages` holds what had arrived."""

    def __init__(self, wanted: int, messages: list[dict[str, Any]]) -> None:
        got = ", ".join(repr(m.get("title")) for m in messages) or "nothing"
        super().__init__(f"wanted {wanted} message(s), got {len(messages)}: {got}")
        self.messages = messages


class WebhookSink(HttpServer):
    """Receives Apprise ``json://`` notifications and records them.

    Each accepted POST becomes a dict with ``title``, ``message``, ``type``, ``path``,
    ``received_at`` (epoch seconds) and the whole ``payload``. A message is recorded when the
    request reaches the sink: normal answers, 2xx `answer` statuses and the ``delay``,
    ``drip`` and ``truncated`` modes; error statuses, ``hang``, ``refuse`` and ``html`` lose
    it, as a real outage would. The `requests` counter kind is ``hook``.
    """

    def __init__(
        self,
        *,
        path: str = "/hook",
        host: str = "127.0.0.1",
        port: int = 0,
        on_message: Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        self.path = path if path.startswith("/") else "/" + path
        #: called on the server's loop thread with each recorded message
        self.on_message = on_message
        self._messages: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def apprise_url(self) -> str:
        """The Apprise URL of this sink, e.g. ``json://127.0.0.1:PORT/hook``."""
        return self.apprise_url_for(self.path)

    def apprise_url_for(self, path: str) -> str:
        """An Apprise URL of this sink with another path (to tell channels apart)."""
        path = path if path.startswith("/") else "/" + path
        return f"json://{self.host}:{self.port}{path}"

    @property
    def messages(self) -> list[dict[str, Any]]:
        """A snapshot of the messages received so far, oldest first."""
        with self._arrived:
            return list(self._messages)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._arrived:
            self._messages.clear()

    def answer(
        self,
        status: int = 200,
        *,
        times: int | None = None,
        mode: FaultMode = "status",
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        retry_after: float | None = None,
    ) -> Fault | None:
        """Simulate an outage: answer the next `times` POSTs (None: all) with `status`/`mode`.

        Modes are those of `HttpServer.fail` (``refuse``, ``hang``, ``delay`` ...). Called
        without arguments it restores normal service (clears every fault) and returns None.
        """
        normal = status == 200 and mode == "status" and times is None
        if normal and not delay and not headers and retry_after is None:
            self.clear_faults()
            return None
        return self.fail(
            status=status,
            mode=mode,
            headers=headers,
            times=times,
            delay=delay,
            retry_after=retry_after,
        )

    def wait_for(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Block until `n` messages have arrived; returns them (all received so far).

        Raises `SinkTimeout` (a `TimeoutError`) with what arrived. Call it from any thread but
        the server's own loop (use `wait_for_async` there).
        """
        if self._on_loop_thread():
            raise RuntimeError("wait_for would block the sink's own loop; use wait_for_async")
        return self._wait_blocking(n, timeout)

    async def wait_for_async(
        self,
        n: int,
        # mirrors wait_for, and the SinkTimeout it raises carries the messages that arrived
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> list[dict[str, Any]]:
        """`wait_for` for coroutines, on any loop (the sink's own included)."""
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()
        waiter = (loop, arrived)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    with self._arrived:
                        if len(self._messages) >= n:
                            return list(self._messages)
                        arrived.clear()
                        self._async_waiters.append(waiter)
                    await arrived.wait()
        except TimeoutError:
            raise SinkTimeout(n, self.messages) from None
        finally:
            with self._arrived:
                while waiter in self._async_waiters:
                    self._async_waiters.remove(waiter)

    def _wait_blocking(self, n: int, timeout: float) -> list[dict[str, Any]]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._messages) >= n, timeout):
                raise SinkTimeout(n, list(self._messages))
            return list(self._messages)

    def classify(self, request: Request) -> str:
        """Every request to the sink is a ``hook``."""
        return "hook"

    async def handle(self, request: Request) -> Response:
        """Record one Apprise JSON notification."""
        if request.method != "POST":
            return Response(405, {"message": "Method not allowed"}, {"Allow": "POST"})
        try:
            payload = request.json()
        except ValueError:
            return Response(400, {"message": "body is not JSON"})
        if not isinstance(payload, dict):
            return Response(400, {"message": "body is not a JSON object"})
        message: dict[str, Any] = {
            "title": payload.get("title"),
            "message": payload.get("message"),
            "type": payload.get("type"),
            "path": request.path,
            "received_at": time.time(),
            "payload": payload,
        }
        with self._arrived:
            self._messages.append(message)
            self._arrived.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        for loop, event in waiters:
            # a waiter's loop may have closed meanwhile; nobody is left to wake then
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        if self.on_message is not None:
            try:
                self.on_message(message)
            except Exception as exc:
                # the callback is the demo's printer: its bugs must not turn into lost messages
                logger.exception("WebhookSink.on_message failed")
                self.errors.append(exc)
        return Response(200, {"status": "ok"})
