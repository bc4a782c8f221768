"""The HTTP plumbing of the test kit: `HttpServer`, a loopback aiohttp.web server with fault
injection, which the simulators subclass.

`HttpServer.fail` makes requests go wrong on purpose: error statuses, delays, hung or dripping
answers, dropped connections, HTML pages and truncated JSON. Every public method is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from poller.models import JsonValue

__all__ = [
    "Delivery",
    "Fault",
    "FaultMode",
    "Handler",
    "HttpServer",
    "Request",
    "Response",
    "iso_millis",
    "path_segments",
]

logger = logging.getLogger(__name__)


#: how a response goes out: normally, never (until the client closes), one body byte at a
#: time, or not at all (the connection is closed without an answer)
Delivery = Literal["normal", "hang", "drip", "refuse"]
#: what `HttpServer.fail` does to a matching request; see there
FaultMode = Literal["status", "hang", "drip", "refuse", "html", "truncated", "delay"]
_FAULT_MODES: frozenset[str] = frozenset(
    ("status", "hang", "drip", "refuse", "html", "truncated", "delay")
)

_MAX_BODY = 16 * 1024 * 1024
_HEAD_LIMIT = 64 * 1024
_DEFAULT_DRIP = 0.05
# how long a connection whose client has half-closed stays open for its last answers
_HALF_CLOSED_GRACE = 1.0
# where a request keeps the HTTP version the client sent (its answer always says HTTP/1.1)
_SENT_VERSION = "poller.testing.sent_version"
_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>"
    b"<body><h1>Please sign in to continue</h1>"
    b'<form method="post" action="/login"><input name="user"></form></body></html>\n'
)
_REASONS: dict[int, str] = {s.value: s.phrase for s in HTTPStatus}
# RFC 9110: these statuses never carry a body, whatever the handler returned
_NO_BODY = frozenset((204, 304))


@dataclass(slots=True)
class Request:
    """One parsed HTTP request as a handler sees it."""

    method: str
    #: percent-decoded path without the query string
    path: str
    #: the query string, last value wins for repeated names
    query: dict[str, str]
    #: header names are lower-cased; repeated headers are joined with ", "
    headers: dict[str, str]
    body: bytes = b""
    #: the request target as sent (path and query, not decoded); faults match on this
    target: str = ""

    def json(self) -> JsonValue:
        """The body decoded as JSON (raises `ValueError` if it is not)."""
        value: JsonValue = json.loads(self.body)
        return value


@dataclass(slots=True)
class Response:
    """What a handler answers.

    `body` bytes go out as they are, a `str` as UTF-8 text, anything else as JSON. `headers`
    override the defaults (Content-Type, Connection) case-insensitively; Content-Length is
    always computed. `delay` waits before answering; `mode` selects a faulty delivery and
    `drip_interval` is the pause before each body byte in ``drip`` mode.
    """

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    mode: Delivery = "normal"
    drip_interval: float = _DEFAULT_DRIP
    #: close the connection after this answer even if the client asked for keep-alive
    close: bool = False


Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Fault:
    """A fault registered with `HttpServer.fail`; `hits` counts the requests it has answered."""

    path_contains: str
    mode: FaultMode
    status: int
    body: Any
    headers: dict[str, str]
    delay: float
    #: requests it still applies to; None: until `clear_faults`
    remaining: int | None
    hits: int = 0


def _encode_body(body: object) -> tuple[bytes, str]:
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), "application/octet-stream"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return json.dumps(body, separators=(",", ":")).encode(), "application/json"


def _error_body(status: int) -> dict[str, str]:
    return {"message": _REASONS.get(status, "Error")}


def _retry_headers(headers: Mapping[str, str] | None, retry_after: float | None) -> dict[str, str]:
    merged = dict(headers or {})
    if retry_after is not None:
        merged["Retry-After"] = f"{retry_after:g}"
    return merged


class HttpServer:
    """An aiohttp.web server on 127.0.0.1 with fault injection.

    Give it a `handler` or subclass it and override `handle`; subclasses may also override
    `classify` to name the kind of each request for the `requests` counter. Port 0 picks a
    free port; `port` and `base_url` are known once `start` has returned.
    """

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "",
        log_size: int = 10_000,
    ) -> None:
        self.host = host
        self.prefix = prefix.rstrip("/")
        self._handler = handler
        self._wanted_port = port
        self._port: int | None = None
        self._runner: web.ServerRunner | None = None
        self._closing = False
        # set by `stop`: ends hung, delayed and dripping answers at once
        self._stopping = asyncio.Event()
        self._loop_thread: int | None = None
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._log: deque[tuple[str, str]] = deque(maxlen=log_size)
        #: connections accepted (a client that reuses its connections opens few)
        self.connections = 0
        #: requests received, by kind (see `classify`); faulted requests count too
        self.requests: Counter[str] = Counter()
        #: exceptions raised by handlers or callbacks (each was also answered with a 500)
        self.errors: list[BaseException] = []

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening on the running loop; returns once the port is bound."""
        if self._runner is not None:
            raise RuntimeError("server already started")
        self._closing = False
        self._stopping = asyncio.Event()
        self._loop_thread = threading.get_ident()
        server = _Server(
            self._on_request,
            on_connection=self._count_connection,
            request_factory=_http11_request,
            # a client that hangs up cancels its handler: this is what ends a hung answer
            handler_cancellation=True,
            access_log=None,
            max_line_size=_HEAD_LIMIT,
            max_field_size=_HEAD_LIMIT,
        )
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._wanted_port, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening and close every open connection, hung ones included."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing = True
        self._stopping.set()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound port (after `start`)."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def origin(self) -> str:
        """``http://host:port``, without the prefix."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The URL clients are configured with: the origin plus the API prefix."""
        return self.origin + self.prefix

    # -- what tests use ------------------------------------------------------------------

    def fail(
        self,
        path_contains: str = "",
        *,
        status: int = 500,
        body: object = None,
        headers: Mapping[str, str] | None = None,
        times: int | None = 1,
        mode: FaultMode = "status",
        delay: float = 0.0,
        retry_after: float | None = None,
    ) -> Fault:
        """Make the next `times` requests whose target contains `path_contains` go wrong.

        `times=None` keeps the fault until `clear_faults`. Faults apply in the order they were
        registered, before authentication, like a proxy in front of the API would. Modes:

        - ``status``: answer `status` with `body` (default ``{"message": <reason>}``) and
          `headers`. A 2xx status still lets the request reach the handler (its side effects
          happen) and only replaces the status, and the body when one is given.
        - ``delay``: the real answer after `delay` seconds.
        - ``hang``: no answer until the client closes the connection (or the server stops).
        - ``drip``: the real answer, its body one byte at a time, `delay` seconds before each
          (default 0.05).
        - ``refuse``: the connection is closed without an answer.
        - ``html``: 200 with an HTML sign-in page.
        - ``truncated``: 200 with the first half of the real JSON body (a valid HTTP message).

        Outside ``drip``, a `delay` also waits before the faulty answer. `retry_after` is a
        shortcut for a ``Retry-After`` header (seconds; fractions are non-standard but handy
        for fast tests). Returns the `Fault`, whose `hits` tell how often it answered.
        """
        if mode not in _FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1, or None for until clear_faults()")
        fault = Fault(
            path_contains=path_contains,
            mode=mode,
            status=status,
            body=body,
            headers=_retry_headers(headers, retry_after),
            delay=delay,
            remaining=times,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Forget every registered fault: the server answers normally again."""
        with self._lock:
            self._faults.clear()

    @property
    def request_log(self) -> list[tuple[str, str]]:
        """A snapshot of the last requests as (method, target), target with its query string."""
        with self._lock:
            return list(self._log)

    def reset_counters(self) -> None:
        """Empty `requests` and `request_log` (in place)."""
        with self._lock:
            self.requests.clear()
            self._log.clear()

    def classify(self, request: Request) -> str:
        """The kind of `request` counted in `requests`; subclasses name their endpoints."""
        return "other"

    async def handle(self, request: Request) -> Response:
        """Answer one request: calls the handler given to the constructor, else 404."""
        if self._handler is None:
            return Response(404, {"message": "Not found"})
        return await self._handler(request)

    # -- internals -----------------------------------------------------------------------

    def _count_connection(self) -> None:
        self.connections += 1

    def _on_loop_thread(self) -> bool:
        return self._loop_thread == threading.get_ident()

    def _count_and_take_fault(self, request: Request) -> Fault | None:
        with self._lock:
            kind = self.classify(request)
            self.requests[kind] += 1
            self._log.append((request.method, request.target))
            for fault in self._faults:
                if fault.path_contains in request.target:
                    fault.hits += 1
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    async def _call_handler(self, request: Request) -> Response:
        try:
            return await self.handle(request)
        except Exception as exc:
            logger.exception("simulator handler failed on %s %s", request.method, request.target)
            self.errors.append(exc)
            return Response(500, {"message": f"simulator error: {exc!r}"}, close=True)

    async def _dispatch(self, request: Request) -> Response:
        fault = self._count_and_take_fault(request)
        if fault is None:
            return await self._call_handler(request)
        mode = fault.mode
        if mode == "hang":
            return Response(mode="hang")
        if mode == "refuse":
            return Response(mode="refuse", delay=fault.delay)
        if mode == "html":
            headers = {"Content-Type": "text/html; charset=utf-8", **fault.headers}
            return Response(200, _HTML_PAGE, headers, delay=fault.delay)
        if mode == "status" and not 200 <= fault.status < 300:
            body = _error_body(fault.status) if fault.body is None else fault.body
            return Response(fault.status, body, dict(fault.headers), delay=fault.delay)
        # a copy, because handlers may hand out shared Response objects
        response = replace(await self._call_handler(request))
        if mode == "status":
            response.status = fault.status
            if fault.body is not None:
                response.body = fault.body
        elif mode == "truncated":
            data, content_type = _encode_body(response.body)
            response.status = 200
            response.body = data[: len(data) // 2]
            response.headers = {"Content-Type": content_type, **response.headers}
        elif mode == "drip":
            response.mode = "drip"
            response.drip_interval = fault.delay or _DEFAULT_DRIP
        response.headers = {**response.headers, **fault.headers}
        if mode != "drip":
            response.delay = max(response.delay, fault.delay)
        return response

    async def _on_request(self, raw: web.BaseRequest) -> web.StreamResponse:
        """aiohttp's handler: turn its request into a `Request`, dispatch it, send the answer."""
        if raw[_SENT_VERSION] < HttpVersion10:
            # aiohttp accepts HTTP/0.9 ("GET /x"); the simulators never spoke it
            return self._reject(400, "malformed request line")
        if raw.headers.get("Transfer-Encoding"):
            # the handlers read `body` as one block; refuse rather than misread a chunked body
            return self._reject(501, "chunked request bodies are not supported")
        try:
            request = await self._read_request(raw)
        except web.HTTPRequestEntityTooLarge:
            return self._reject(413, "request body too large")
        response = await self._dispatch(request)
        return await self._deliver(raw, request, response)

    @staticmethod
    async def _read_request(raw: web.BaseRequest) -> Request:
        """The `Request` handlers see, parsed as the simulators always have (not as aiohttp
        decodes paths): the target as sent, the path decoded, the last of repeated names."""
        target = raw.raw_path
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            raw_path, raw_query = parts.path or "/", parts.query
        else:
            raw_path, _, raw_query = target.partition("?")
        headers: dict[str, str] = {}
        for name, value in raw.raw_headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1").strip()
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if raw.can_read_body and headers.get("expect", "").lower() == "100-continue":
            # the low-level aiohttp server leaves Expect to the handler
            await raw.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await raw.read() if raw.can_read_body else b""
        return Request(
            method=raw.method,
            path=unquote(raw_path),
            query=dict(parse_qsl(raw_query, keep_blank_values=True)),
            headers=headers,
            body=body,
            target=target,
        )

    @staticmethod
    def _reject(status: int, message: str) -> web.Response:
        answer = web.Response(status=status, body=json.dumps({"message": message}).encode())
        answer.headers["Content-Type"] = "application/json"
        answer.headers["Connection"] = "close"
        answer.force_close()
        return answer

    def _answer(self, raw: web.BaseRequest, response: Response, body: bytes) -> web.StreamResponse:
        """The head of `response`: its status and headers over the defaults, and whether the
        connection stays open (said in a Connection header, as clients expect)."""
        content_type = _encode_body(response.body)[1]
        keep_alive = raw.keep_alive and not response.close and not self._closing
        if keep_alive and response.headers:
            # a handler that says Connection: close must really close, or clients would hang
            keep_alive = not any(
                name.lower() == "connection" and "close" in value.lower()
                for name, value in response.headers.items()
            )
        answer = web.StreamResponse(status=response.status, reason=_REASONS.get(response.status))
        fields = answer.headers
        fields["Content-Type"] = content_type
        fields["Connection"] = "keep-alive" if keep_alive else "close"
        for name, value in response.headers.items():
            if name.lower() != "content-length":
                fields[name] = value
        if response.status not in _NO_BODY and response.status >= 200:
            fields["Content-Length"] = str(len(body))
        if not keep_alive:
            answer.force_close()
        return answer

    async def _deliver(
        self, raw: web.BaseRequest, request: Request, response: Response
    ) -> web.StreamResponse:
        """Send `response` the way its `mode` says."""
        if response.delay > 0:
            await self._sleep(response.delay)
        if response.mode == "refuse" or self._closing:
            return self._drop(raw)
        if response.mode == "hang":
            # no answer until the client hangs up (aiohttp then cancels this handler) or the
            # server stops
            await self._stopping.wait()
            return self._drop(raw)
        body = _encode_body(response.body)[0]
        answer = self._answer(raw, response, body)
        if response.status in _NO_BODY or response.status < 200 or request.method == "HEAD":
            body = b""
        await answer.prepare(raw)
        if response.mode == "drip" and body:
            for i in range(len(body)):
                await self._sleep(response.drip_interval)
                if self._closing:
                    return self._drop(raw)
                await answer.write(body[i : i + 1])
        elif body:
            await answer.write(body)
        await answer.write_eof()
        return answer

    async def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if the server stops meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    @staticmethod
    def _drop(raw: web.BaseRequest) -> web.StreamResponse:
        """Close the connection without (the rest of) an answer; aiohttp's attempt to send the
        returned placeholder then finds the connection closed and gives up quietly."""
        if raw.transport is not None:
            raw.transport.close()
        return web.Response(status=500)


class _Connection(RequestHandler):
    """aiohttp's connection, except that a client's half-close (EOF after its request) still
    gets the answer, a 400 for a malformed request included, before the connection closes;
    aiohttp would close at once, and the simulators always answered first."""

    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio's protocol says bool
        self.close()
        transport = self.transport
        if transport is not None:
            # nothing more can arrive: whatever is still unanswered (an incomplete head) is
            # dropped after a moment rather than held open forever
            asyncio.get_running_loop().call_later(_HALF_CLOSED_GRACE, transport.close)
        return True


class _Server(web.Server):
    """aiohttp's low-level server, with `_Connection` for each connection, and a callback
    for each connection accepted (aiohttp calls this factory once per connection)."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        on_connection: Callable[[], None],
        **kwargs: Any,  # Any: aiohttp's server options, passed on as aiohttp types them
    ) -> None:
        super().__init__(handler, **kwargs)
        self._on_connection = on_connection

    def __call__(self) -> RequestHandler:
        self._on_connection()
        return _Connection(self, loop=asyncio.get_running_loop(), **self._kwargs)


def _http11_request(
    message: RawRequestMessage,
    payload: StreamReader,
    protocol: RequestHandler,
    writer: AbstractStreamWriter,
    task: asyncio.Task[None],
) -> web.BaseRequest:
    """aiohttp's request, but marked HTTP/1.1 so that every answer says HTTP/1.1 as the
    simulators always have (keep-alive is still decided by what the client sent)."""
    return web.BaseRequest(
        message._replace(version=HttpVersion11),
        payload,
        protocol,
        writer,
        task,
        asyncio.get_running_loop(),
        client_max_size=_MAX_BODY,
        state={_SENT_VERSION: message.version},
    )


def path_segments(request: Request, prefix: str) -> list[str] | None:
    """The decoded path segments after `prefix`, split before decoding (so %2F stays in one)."""
    raw = request.target if request.target.startswith("/") else urlsplit(request.target).path
    raw = raw.partition("?")[0]
    if not raw.startswith(prefix + "/"):
        return None
    return [unquote(part) for part in raw[len(prefix) + 1 :].split("/")]


def iso_millis(moment: datetime) -> str:
    """`moment` as the APIs write times: ISO 8601 in UTC with milliseconds and a ``Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
