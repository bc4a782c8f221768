"""Loopback simulators of the remote APIs poller talks to, for the demo, the tests and benchmarks.

Everything here is standard library only (asyncio streams), so that it starts in milliseconds and
serves thousands of requests per second on one core:

- `HttpServer`: a small HTTP/1.1 server (keep-alive, Content-Length bodies) with fault injection
  (`fail`): error statuses, delays, hung or dripping answers, refused connections, HTML pages
  and truncated JSON.
- `RulerSim`: the Ruler batch-status API (status, job list and failures), with jobs that tests
  add, change or script on a clock.
- `ImmutaSim`: the Immuta jobs API (keyed statuses with long-polling, bulk listings, paged
  searches), with jobs that tests add, change or script on a clock.
- `JsonJobSim`: a generic JSON job-status API whose answer shape tests choose, for the
  ``http`` source type.
- `WebhookSink`: a receiver for Apprise ``json://`` notifications that records every message.
- `SimThread`: runs any of them on an event loop in a daemon thread, for synchronous callers.

Every public method of the simulators is thread-safe: a test on the main thread may drive a
server that runs on a `SimThread`. A server can also run on the caller's own loop
(``async with RulerSim() as sim: ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

__all__ = [
    "Delivery",
    "Fault",
    "FaultMode",
    "Handler",
    "HttpServer",
    "ImmutaSim",
    "JsonJobSim",
    "NextStyle",
    "Request",
    "Response",
    "RulerSim",
    "SimThread",
    "SinkTimeout",
    "WebhookSink",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

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

    def json(self) -> Any:
        """The body decoded as JSON (raises `ValueError` if it is not)."""
        return json.loads(self.body)


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


class _BadRequest(Exception):
    """A request that cannot be parsed; answered with `status` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _encode_body(body: Any) -> tuple[bytes, str]:
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


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Split a request head into method, target, version and lower-cased headers."""
    lines = head[:-4].split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise _BadRequest(400, "malformed request line") from None
    if not method.isalpha() or not version.startswith("HTTP/1.") or not target:
        raise _BadRequest(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        # a name with whitespace would be an obs-fold or request smuggling attempt: refuse it
        if not sep or not name or name != name.strip() or b" " in name:
            raise _BadRequest(400, "malformed header line")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return method, target, version, headers


class HttpServer:
    """A small asyncio HTTP/1.1 server on 127.0.0.1 with fault injection.

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
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._loop_thread: int | None = None
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._log: deque[tuple[str, str]] = deque(maxlen=log_size)
        #: requests received, by kind (see `classify`); faulted requests count too
        self.requests: Counter[str] = Counter()
        #: exceptions raised by handlers or callbacks (each was also answered with a 500)
        self.errors: list[BaseException] = []

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening on the running loop; returns once the port is bound."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._closing = False
        self._loop_thread = threading.get_ident()
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self._wanted_port, limit=_HEAD_LIMIT, backlog=1024
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every open connection, hung ones included."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing = True
        server.close()
        # connections accepted just before close() start their task on the next iteration;
        # let them, so that they are cancelled below rather than left pending
        await asyncio.sleep(0)
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

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
        body: Any = None,
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

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if not self._closing:
                await self._serve(reader, writer)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            # stop() ends connections by cancelling them; the stream machinery must not see a
            # cancelled task (it would log it), and a client hanging up is no error
            pass
        except Exception as exc:
            logger.exception("simulator connection failed")
            self.errors.append(exc)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    await self._reject(writer, 400, "incomplete request")
                return
            except asyncio.LimitOverrunError:
                await self._reject(writer, 400, "request head too large")
                return
            try:
                request, keep_alive = await self._read_request(head, reader, writer)
            except _BadRequest as exc:
                await self._reject(writer, exc.status, str(exc))
                return
            response = await self._dispatch(request)
            if not await self._deliver(reader, writer, request, response, keep_alive):
                return

    async def _read_request(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[Request, bool]:
        method, target, version, headers = _parse_head(head)
        if "transfer-encoding" in headers:
            raise _BadRequest(501, "chunked request bodies are not supported")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise _BadRequest(400, "bad Content-Length")
        length = int(length_text)
        if length > _MAX_BODY:
            raise _BadRequest(413, "request body too large")
        if length and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(length) if length else b""
        if target.startswith("/"):
            raw_path, _, raw_query = target.partition("?")
        elif target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            raw_path, raw_query = parts.path or "/", parts.query
        else:
            raise _BadRequest(400, "bad request target")
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            keep_alive = "keep-alive" in connection
        else:
            keep_alive = "close" not in connection
        request = Request(
            method=method,
            path=unquote(raw_path),
            query=dict(parse_qsl(raw_query, keep_blank_values=True)),
            headers=headers,
            body=body,
            target=target,
        )
        return request, keep_alive

    async def _reject(self, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        body = json.dumps({"message": message}).encode()
        writer.write(self._head(status, "application/json", len(body), {}, keep_alive=False) + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    @staticmethod
    def _head(
        status: int,
        content_type: str,
        length: int,
        headers: Mapping[str, str],
        *,
        keep_alive: bool,
        send_length: bool = True,
    ) -> bytes:
        fields: dict[str, tuple[str, str]] = {
            "content-type": ("Content-Type", content_type),
            "connection": ("Connection", "keep-alive" if keep_alive else "close"),
        }
        for name, value in headers.items():
            lower = name.lower()
            if lower != "content-length":
                fields[lower] = (name, value)
        if send_length:
            fields["content-length"] = ("Content-Length", str(length))
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        lines.extend(f"{name}: {value}" for name, value in fields.values())
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")

    async def _deliver(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: Request,
        response: Response,
        keep_alive: bool,
    ) -> bool:
        """Send `response`; True if the connection may serve another request."""
        if response.delay > 0:
            await asyncio.sleep(response.delay)
        if response.mode == "refuse":
            return False
        if response.mode == "hang":
            # keep reading so that the client closing is noticed (EOF) and ends the wait
            while await reader.read(65536):
                pass
            return False
        keep_alive = keep_alive and not response.close and not self._closing
        if keep_alive and response.headers:
            # a handler that says Connection: close must really close, or clients would hang
            keep_alive = not any(
                name.lower() == "connection" and "close" in value.lower()
                for name, value in response.headers.items()
            )
        body, content_type = _encode_body(response.body)
        status = response.status
        no_body = status in _NO_BODY or status < 200
        head = self._head(
            status,
            content_type,
            len(body),
            response.headers,
            keep_alive=keep_alive,
            send_length=status != 204 and status >= 200,
        )
        if no_body or request.method == "HEAD":
            body = b""
        if response.mode == "drip" and body:
            writer.write(head)
            await writer.drain()
            for i in range(len(body)):
                await asyncio.sleep(response.drip_interval)
                writer.write(body[i : i + 1])
                await writer.drain()
        else:
            writer.write(head + body)
            await writer.drain()
        return keep_alive


# -- Ruler ------------------------------------------------------------------------------------

_RULER_TERMINAL = frozenset(("complete", "partialcomplete", "failed"))
_JOB_FIELDS = frozenset(
    (
        "status",
        "processed_rows",
        "success_count",
        "failure_count",
        "failure_reason",
        "failures",
        "total_rows",
        "job_type",
        "extra",
    )
)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class _RulerJob:
    site: str
    job_id: str
    job_type: str
    total_rows: int
    created: datetime
    status: str = "pending"
    processed_rows: int = 0
    success_count: int = 0
    failure_count: int = 0
    failure_reason: str | None = None
    failures: list[dict[str, Any]] | None = None
    completed: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    script: deque[tuple[float, dict[str, Any]]] = field(default_factory=deque)
    script_start: float = 0.0
    script_wall: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def terminal(self) -> bool:
        return self.status in _RULER_TERMINAL

    def progress(self) -> int:
        if self.total_rows <= 0:
            return 100 if self.status in ("complete", "partialcomplete") else 0
        # floor, so that 100 only shows once every row is processed
        return max(0, min(100, self.processed_rows * 100 // self.total_rows))

    def status_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "jobId": self.job_id,
            "jobType": self.job_type,
            "status": self.status,
            "totalRows": self.total_rows,
            "processedRows": self.processed_rows,
            "percentageProgress": self.progress(),
            "successCount": self.success_count,
            "failureCount": self.failure_count,
            "createdDateTime": _iso(self.created),
            "completedDateTime": _iso(self.completed) if self.completed else None,
        }
        if self.status == "failed":
            doc["failureReason"] = self.failure_reason
        doc.update(self.extra)
        return doc

    def list_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "jobId": self.job_id,
            "jobType": self.job_type,
            "status": self.status,
            "percentageProgress": self.progress(),
        }
        if self.status == "failed":
            doc["failureReason"] = self.failure_reason
        return doc

    def failure_rows(self) -> list[dict[str, Any]]:
        if self.failures is not None:
            return self.failures
        count = min(self.failure_count, 1000)
        return [
            {"rowNumber": n, "errorMessage": f"Row {n}: simulated validation error"}
            for n in range(1, count + 1)
        ]


def _check_fields(fields: Iterable[str]) -> None:
    unknown = sorted(set(fields) - _JOB_FIELDS)
    if unknown:
        raise TypeError(f"unknown job field(s) {unknown}; known: {sorted(_JOB_FIELDS)}")


class RulerSim(HttpServer):
    """The Ruler batch-status API under ``{base_url}`` = ``http://127.0.0.1:PORT/v1``.

    Endpoints (GET, ``Authorization: Bearer {token}``): ``/{site}/batch/{job}/status``,
    ``/{site}/batch/jobs`` and ``/{site}/batch/{job}/failures?format=json`` (CSV without
    ``format``). Jobs are kept per (site, job id); any status string is accepted, so that
    unknown statuses can be tested. The `requests` counter kinds are ``status``, ``jobs``,
    ``failures`` and ``other``.
    """

    def __init__(
        self,
        token: str = "test-token",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "/v1",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(host=host, port=port, prefix=prefix)
        self.token = token
        self._clock = clock
        self._jobs: dict[tuple[str, str], _RulerJob] = {}

    # -- test API ------------------------------------------------------------------------

    def add_job(
        self,
        site: str,
        job_id: str,
        *,
        status: str = "pending",
        total_rows: int = 100,
        job_type: str = "revenueUpload",
        failure_reason: str | None = None,
        failures: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Create (or replace) a job created now; returns its status document.

        `failures` are the rows of the failures endpoint (``{"rowNumber", "errorMessage"}``);
        without them, a job with a `failure_count` gets that many made-up rows.
        """
        job = _RulerJob(
            site=site,
            job_id=job_id,
            job_type=job_type,
            total_rows=total_rows,
            created=datetime.now(UTC),
        )
        fields: dict[str, Any] = {"status": status}
        if failure_reason is not None:
            fields["failure_reason"] = failure_reason
        if failures is not None:
            fields["failures"] = failures
        with self._lock:
            self._apply(job, fields, job.created)
            self._jobs[site, job_id] = job
            return job.status_doc()

    def set_job(self, site: str, job_id: str, **fields: Any) -> dict[str, Any]:
        """Change a job now; returns its status document.

        Fields: status, processed_rows, success_count, failure_count, failure_reason,
        failures, total_rows, job_type, and `extra` (a dict merged over the status document,
        for odd answers such as a string progress). Derived on the way: percentageProgress
        from the rows; completedDateTime when a terminal status is set (cleared by a
        non-terminal one); processed_rows = total_rows when complete or partialcomplete is set
        without them; successCount = processed - failures unless given; at least one failure
        on partialcomplete; a default failureReason on failed.
        """
        _check_fields(fields)
        with self._lock:
            job = self._get(site, job_id)
            self._advance(job)
            self._apply(job, fields, datetime.now(UTC))
            return job.status_doc()

    def script_job(
        self, site: str, job_id: str, steps: Iterable[tuple[float, Mapping[str, Any]]]
    ) -> None:
        """Schedule changes: each step is (seconds after now, fields as for `set_job`).

        Steps are applied lazily when the job is read (by a request or `job`), so no task
        runs in the background; a step's completedDateTime is its scheduled time. A missing
        job is created with the `add_job` defaults. A new script replaces the old one.
        """
        ordered = sorted(((float(at), dict(fields)) for at, fields in steps), key=lambda s: s[0])
        for _, fields in ordered:
            _check_fields(fields)
        with self._lock:
            job = self._jobs.get((site, job_id))
            if job is None:
                job = _RulerJob(
                    site=site,
                    job_id=job_id,
                    job_type="revenueUpload",
                    total_rows=100,
                    created=datetime.now(UTC),
                )
                self._jobs[site, job_id] = job
            job.script = deque(ordered)
            job.script_start = self._clock()
            job.script_wall = datetime.now(UTC)

    def job(self, site: str, job_id: str) -> dict[str, Any]:
        """The job's current status document, as the status endpoint would answer it."""
        with self._lock:
            job = self._get(site, job_id)
            self._advance(job)
            return job.status_doc()

    def remove_job(self, site: str, job_id: str) -> None:
        """Forget a job: the API answers 404 for it from now on."""
        with self._lock:
            self._jobs.pop((site, job_id), None)

    # -- internals -----------------------------------------------------------------------

    def _get(self, site: str, job_id: str) -> _RulerJob:
        try:
            return self._jobs[site, job_id]
        except KeyError:
            raise KeyError(f"no Ruler job {site}/{job_id}") from None

    def _advance(self, job: _RulerJob) -> None:
        if not job.script:
            return
        elapsed = self._clock() - job.script_start
        while job.script and job.script[0][0] <= elapsed:
            at, fields = job.script.popleft()
            self._apply(job, fields, job.script_wall + timedelta(seconds=at))

    @staticmethod
    def _apply(job: _RulerJob, fields: Mapping[str, Any], when: datetime) -> None:
        _check_fields(fields)
        for name, value in fields.items():
            if name == "extra":
                job.extra.update(value)
            elif name == "failures" and value is not None:
                job.failures = list(value)
            else:
                setattr(job, name, value)
        if "status" in fields:
            if job.terminal:
                job.completed = job.completed or when
                if job.status != "failed" and "processed_rows" not in fields:
                    job.processed_rows = job.total_rows
                if job.status == "partialcomplete" and job.failure_count <= 0:
                    job.failure_count = max(1, len(job.failures or ()))
                if job.status == "failed" and job.failure_reason is None:
                    job.failure_reason = "Batch job failed"
            else:
                job.completed = None
        touched = {"status", "processed_rows", "failure_count"} & fields.keys()
        if touched and "success_count" not in fields:
            job.success_count = max(0, job.processed_rows - job.failure_count)

    def _route(self, request: Request) -> tuple[str, str, str] | None:
        """(kind, site, job id) for a Ruler path, None if it is none of the endpoints; split
        before decoding, so an id with a quoted ``/`` is one segment, as Ruler reads it."""
        parts = _segments(request, self.prefix)
        if parts is None:
            return None
        if len(parts) == 3 and parts[1] == "batch" and parts[2] == "jobs":
            return "jobs", parts[0], ""
        if len(parts) == 4 and parts[1] == "batch" and parts[3] in ("status", "failures"):
            return parts[3], parts[0], parts[2]
        return None

    def classify(self, request: Request) -> str:
        """``status``, ``jobs``, ``failures`` or ``other``."""
        route = self._route(request)
        return route[0] if route else "other"

    async def handle(self, request: Request) -> Response:
        """Answer one Ruler API request."""
        route = self._route(request)
        if route is None:
            return Response(404, {"message": "Not found"})
        if request.method not in ("GET", "HEAD"):
            return Response(405, {"message": "Method not allowed"}, {"Allow": "GET"})
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token != self.token:
            return Response(401, {"message": "Unauthorized"})
        kind, site, job_id = route
        with self._lock:
            if kind == "jobs":
                docs = []
                for job in self._jobs.values():
                    if job.site == site:
                        self._advance(job)
                        docs.append(job.list_doc())
                return Response(200, {"jobs": docs})
            found = self._jobs.get((site, job_id))
            if found is None:
                return Response(404, {"message": "Batch job not found"})
            self._advance(found)
            if kind == "status":
                return Response(200, found.status_doc())
            if not found.terminal:
                return Response(409, {"message": "job not finished"})
            rows = found.failure_rows()
        fmt = request.query.get("format", "csv").lower()
        if fmt == "json":
            return Response(200, {"failures": rows})
        if fmt == "csv":
            lines = ["rowNumber,errorMessage"]
            for row in rows:
                message = str(row.get("errorMessage", "")).replace('"', '""')
                lines.append(f'{row.get("rowNumber", "")},"{message}"')
            return Response(200, "\r\n".join(lines) + "\r\n", {"Content-Type": "text/csv"})
        return Response(400, {"message": f"Unsupported format {fmt!r}"})


# -- Immuta -----------------------------------------------------------------------------------

_IMMUTA_TERMINAL = frozenset(("completed", "failed", "cancelled", "expired"))
_IMMUTA_FIELDS = frozenset(("state", "output", "job_type", "bulk_id", "retry_count", "extra"))
#: how `ImmutaSim` tells a client where the next page is
NextStyle = Literal["offset", "url", "absent"]


@dataclass
class _ImmutaJob:
    job_id: str
    job_type: str
    created: datetime
    state: str = "created"
    bulk_id: str | None = None
    output: Any = None
    retry_count: int = 0
    started: datetime | None = None
    completed: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    script: deque[tuple[float, dict[str, Any]]] = field(default_factory=deque)
    script_start: float = 0.0
    script_wall: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def terminal(self) -> bool:
        return self.state in _IMMUTA_TERMINAL

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.job_id,
            "jobType": self.job_type,
            "state": self.state,
            "bulkId": self.bulk_id,
            "createdOn": _iso(self.created),
        }

    def doc(self) -> dict[str, Any]:
        doc = self.summary()
        doc.update(
            {
                "output": self.output,
                "retryCount": self.retry_count,
                "startedOn": _iso(self.started) if self.started else None,
                "completedOn": _iso(self.completed) if self.completed else None,
            }
        )
        doc.update(self.extra)
        return doc


def _check_immuta_fields(fields: Iterable[str]) -> None:
    unknown = sorted(set(fields) - _IMMUTA_FIELDS)
    if unknown:
        raise TypeError(f"unknown job field(s) {unknown}; known: {sorted(_IMMUTA_FIELDS)}")


def _values(request: Request, name: str) -> list[str]:
    """Every value of a query parameter, repeated (``a=1&a=2``) or comma-separated."""
    values: list[str] = []
    for key, value in parse_qsl(urlsplit(request.target).query, keep_blank_values=True):
        if key == name:
            values.extend(v.strip() for v in value.split(",") if v.strip())
    return values


def _segments(request: Request, prefix: str) -> list[str] | None:
    """The decoded path segments after `prefix`, split before decoding (so %2F stays in one)."""
    raw = request.target if request.target.startswith("/") else urlsplit(request.target).path
    raw = raw.partition("?")[0]
    if not raw.startswith(prefix + "/"):
        return None
    return [unquote(part) for part in raw[len(prefix) + 1 :].split("/")]


def _parse_iso(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.strip())
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class ImmutaSim(HttpServer):
    """The Immuta jobs API under ``{base_url}`` = ``http://127.0.0.1:PORT/api``.

    Endpoints (``Authorization: {api key}``, the key as it is):

    - ``POST /jobs/statuses`` with ``{"jobIds": [...], "wait": s, "pollInterval": s}``: an object
      keyed by job id (unknown ids are left out). With ``wait`` > 0 the answer waits, checking
      every ``pollInterval`` (default 1 s), until a requested job is terminal or ``wait`` has
      passed; ``wait: -1`` waits until a job ends, however long that is. More than `max_ids`
      ids is a 400.
    - ``GET /jobs?bulkId=`` and ``GET /jobs/search`` (``jobType`` and ``state``, repeated or
      comma-separated; ``startDate``/``endDate`` on the creation date): a page of job summaries,
      ``{"jobs": [...], "next": ...}``, paged by ``offset``/``size`` (at most `max_page_size`).
      ``next`` is the next offset (``next_style="offset"``), a URL (``"url"``), or left out
      (``"absent"``); null on the last page.
    - ``GET /jobs/{id}``: one job.

    Job documents have ``id``, ``jobType``, ``state`` (any string, so that unknown states can be
    tested), ``bulkId``, ``output``, ``retryCount``, ``createdOn``, ``startedOn`` and
    ``completedOn``. The `requests` counter kinds are ``statuses``, ``jobs``, ``search``,
    ``job`` and ``other``; `statuses_bodies` keeps the last statuses request bodies.
    """

    def __init__(
        self,
        token: str = "test-api-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "/api",
        clock: Callable[[], float] = time.monotonic,
        max_page_size: int = 100,
        max_ids: int = 1000,
        next_style: NextStyle = "offset",
    ) -> None:
        super().__init__(host=host, port=port, prefix=prefix)
        self.token = token
        self.max_page_size = max_page_size
        self.max_ids = max_ids
        self.next_style: NextStyle = next_style
        self._clock = clock
        self._jobs: dict[str, _ImmutaJob] = {}
        self._bodies: deque[Any] = deque(maxlen=1000)

    # -- test API ------------------------------------------------------------------------

    def add_job(
        self,
        job_id: str,
        *,
        state: str = "created",
        job_type: str = "policyUpdate",
        bulk_id: str | None = None,
        output: Any = None,
        created: datetime | None = None,
    ) -> dict[str, Any]:
        """Create (or replace) a job; returns its document. `created` defaults to now."""
        job = _ImmutaJob(
            job_id=job_id,
            job_type=job_type,
            created=created or datetime.now(UTC),
            bulk_id=bulk_id,
        )
        with self._lock:
            self._apply(job, {"state": state, "output": output}, job.created)
            self._jobs[job_id] = job
            return job.doc()

    def set_job(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Change a job now; returns its document.

        Fields: state, output, job_type, bulk_id, retry_count, and `extra` (merged over the
        document, for odd answers). startedOn is set when it first turns active, completedOn
        when it turns terminal (cleared by a non-terminal state).
        """
        _check_immuta_fields(fields)
        with self._lock:
            job = self._get(job_id)
            self._advance(job)
            self._apply(job, fields, datetime.now(UTC))
            return job.doc()

    def script_job(self, job_id: str, steps: Iterable[tuple[float, Mapping[str, Any]]]) -> None:
        """Schedule changes: each step is (seconds after now on the clock, fields of `set_job`).

        Steps apply lazily when the job is read, long-polls included. A missing job is created
        with the `add_job` defaults. A new script replaces the old one.
        """
        ordered = sorted(((float(at), dict(fields)) for at, fields in steps), key=lambda s: s[0])
        for _, fields in ordered:
            _check_immuta_fields(fields)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                job = _ImmutaJob(job_id=job_id, job_type="policyUpdate", created=datetime.now(UTC))
                self._jobs[job_id] = job
            job.script = deque(ordered)
            job.script_start = self._clock()
            job.script_wall = datetime.now(UTC)

    def job(self, job_id: str) -> dict[str, Any]:
        """The job's current document, as the statuses endpoint would answer it."""
        with self._lock:
            job = self._get(job_id)
            self._advance(job)
            return job.doc()

    def remove_job(self, job_id: str) -> None:
        """Forget a job: the statuses answer leaves it out from now on."""
        with self._lock:
            self._jobs.pop(job_id, None)

    @property
    def statuses_bodies(self) -> list[Any]:
        """The bodies of the last statuses requests (decoded JSON, or None), oldest first."""
        with self._lock:
            return list(self._bodies)

    # -- internals -----------------------------------------------------------------------

    def _get(self, job_id: str) -> _ImmutaJob:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"no Immuta job {job_id}") from None

    def _advance(self, job: _ImmutaJob) -> None:
        if not job.script:
            return
        elapsed = self._clock() - job.script_start
        while job.script and job.script[0][0] <= elapsed:
            at, fields = job.script.popleft()
            self._apply(job, fields, job.script_wall + timedelta(seconds=at))

    @staticmethod
    def _apply(job: _ImmutaJob, fields: Mapping[str, Any], when: datetime) -> None:
        _check_immuta_fields(fields)
        for name, value in fields.items():
            if name == "extra":
                job.extra.update(value)
            else:
                setattr(job, name, value)
        if "state" in fields:
            if job.state in ("active", "retry") or job.terminal:
                job.started = job.started or when
            if job.terminal:
                job.completed = job.completed or when
            else:
                job.completed = None

    def _route(self, request: Request) -> tuple[str, str]:
        """(kind, job id) of a request; kind ``other`` for none of the endpoints."""
        parts = _segments(request, self.prefix)
        if parts is None:
            return "other", ""
        if parts == ["jobs"]:
            return "jobs", ""
        if parts == ["jobs", "search"]:
            return "search", ""
        if parts == ["jobs", "statuses"]:
            return "statuses", ""
        if len(parts) == 2 and parts[0] == "jobs" and parts[1]:
            return "job", parts[1]
        return "other", ""

    def classify(self, request: Request) -> str:
        """``statuses``, ``jobs``, ``search``, ``job`` or ``other``."""
        return self._route(request)[0]

    async def handle(self, request: Request) -> Response:
        """Answer one Immuta API request."""
        kind, job_id = self._route(request)
        if kind == "other":
            return Response(404, {"message": "Not found"})
        method = "POST" if kind == "statuses" else "GET"
        if request.method != method:
            return Response(405, {"message": "Method not allowed"}, {"Allow": method})
        if request.headers.get("authorization") != self.token:
            return Response(401, {"message": "Unauthorized"})
        if kind == "statuses":
            return await self._statuses(request)
        if kind == "job":
            with self._lock:
                found = self._jobs.get(job_id)
                if found is None:
                    return Response(404, {"message": "Job not found"})
                self._advance(found)
                return Response(200, found.doc())
        return self._listing(request, kind)

    async def _statuses(self, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError:
            body = None
        with self._lock:
            self._bodies.append(body)
        if not isinstance(body, dict) or not isinstance(body.get("jobIds"), list):
            return Response(400, {"message": "body must be an object with jobIds"})
        ids = [str(i) for i in body["jobIds"]]
        if len(ids) > self.max_ids:
            return Response(400, {"message": f"at most {self.max_ids} jobIds per request"})
        wait, interval = body.get("wait", 0), body.get("pollInterval", 1)
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in (wait, interval)
        ):
            return Response(400, {"message": "wait and pollInterval must be numbers"})
        loop = asyncio.get_running_loop()
        deadline = None if wait < 0 else loop.time() + wait
        while True:
            with self._lock:
                answer = {}
                for job_id in ids:
                    job = self._jobs.get(job_id)
                    if job is not None:
                        self._advance(job)
                        answer[job_id] = job.doc()
                done = any(self._jobs[i].terminal for i in answer)
            now = loop.time()
            if done or (deadline is not None and now >= deadline):
                return Response(200, answer)
            pause = max(0.01, float(interval))
            await asyncio.sleep(pause if deadline is None else min(pause, deadline - now))

    def _listing(self, request: Request, kind: str) -> Response:
        try:
            offset = int(request.query.get("offset", "0"))
            size = min(self.max_page_size, int(request.query.get("size", "20")))
            start = _parse_iso(request.query["startDate"]) if "startDate" in request.query else None
            end = _parse_iso(request.query["endDate"]) if "endDate" in request.query else None
        except ValueError:
            return Response(400, {"message": "bad offset, size or date"})
        if offset < 0 or size < 1:
            return Response(400, {"message": "bad offset or size"})
        bulk = request.query.get("bulkId")
        types = {t.lower() for t in _values(request, "jobType")}
        states = {s.lower() for s in _values(request, "state")}
        with self._lock:
            matching = []
            for job in sorted(self._jobs.values(), key=lambda j: (j.created, j.job_id)):
                self._advance(job)
                if kind == "jobs" and bulk is not None and job.bulk_id != bulk:
                    continue
                if kind == "search" and (
                    (types and job.job_type.lower() not in types)
                    or (states and job.state.lower() not in states)
                    or (start is not None and job.created < start)
                    or (end is not None and job.created > end)
                ):
                    continue
                matching.append(job.summary())
        page = matching[offset : offset + size]
        answer: dict[str, Any] = {"jobs": page}
        more = offset + size < len(matching)
        if self.next_style == "offset":
            answer["next"] = offset + size if more else None
        elif self.next_style == "url":
            query = [(k, v) for k, v in parse_qsl(urlsplit(request.target).query) if k != "offset"]
            query.append(("offset", str(offset + size)))
            answer["next"] = f"{request.path}?{urlencode(query)}" if more else None
        return Response(200, answer)


# -- a generic JSON job API -------------------------------------------------------------------


def _default_shape(job: Mapping[str, Any]) -> Any:
    return {"data": dict(job)}


class JsonJobSim(HttpServer):
    """A generic JSON job-status API, for the ``http`` source type.

    ``GET {base_url}/jobs/{id}`` and ``POST {base_url}/jobs/query`` (body ``{"id": ...}``)
    answer ``shape(job)``, where a job is a dict of its fields with its ``id``; the default
    shape is ``{"data": {"id": ..., **fields}}``. Auth: ``Authorization: Bearer {token}``. The
    `requests` counter kinds are ``job``, ``query`` and ``other``.
    """

    def __init__(
        self,
        token: str = "test-token",
        *,
        shape: Callable[[Mapping[str, Any]], Any] = _default_shape,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "/v2",
    ) -> None:
        super().__init__(host=host, port=port, prefix=prefix)
        self.token = token
        self.shape = shape
        self._jobs: dict[str, dict[str, Any]] = {}

    def add_job(self, job_id: str, **fields: Any) -> Any:
        """Create (or replace) a job with these fields; returns its answer."""
        with self._lock:
            self._jobs[job_id] = {"id": job_id, **fields}
            return self.shape(self._jobs[job_id])

    def set_job(self, job_id: str, **fields: Any) -> Any:
        """Change some fields of a job; returns its answer."""
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(f"no job {job_id}")
            self._jobs[job_id].update(fields)
            return self.shape(self._jobs[job_id])

    def job(self, job_id: str) -> Any:
        """The job's current answer."""
        with self._lock:
            return self.shape(self._jobs[job_id])

    def remove_job(self, job_id: str) -> None:
        """Forget a job: the API answers 404 for it from now on."""
        with self._lock:
            self._jobs.pop(job_id, None)

    def _route(self, request: Request) -> tuple[str, str]:
        parts = _segments(request, self.prefix)
        if parts is None:
            return "other", ""
        if parts == ["jobs", "query"]:
            return "query", ""
        if len(parts) == 2 and parts[0] == "jobs" and parts[1]:
            return "job", parts[1]
        return "other", ""

    def classify(self, request: Request) -> str:
        """``job``, ``query`` or ``other``."""
        return self._route(request)[0]

    async def handle(self, request: Request) -> Response:
        """Answer one request."""
        kind, job_id = self._route(request)
        if kind == "other":
            return Response(404, {"message": "Not found"})
        method = "POST" if kind == "query" else "GET"
        if request.method != method:
            return Response(405, {"message": "Method not allowed"}, {"Allow": method})
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Response(401, {"message": "Unauthorized"})
        if kind == "query":
            try:
                body = request.json()
            except ValueError:
                return Response(400, {"message": "body is not JSON"})
            job_id = str(body.get("id")) if isinstance(body, dict) else ""
        with self._lock:
            found = self._jobs.get(job_id)
            if found is None:
                return Response(404, {"message": "Job not found"})
            return Response(200, self.shape(found))


# -- Apprise webhook sink ---------------------------------------------------------------------


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


# -- running on a thread ----------------------------------------------------------------------


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
