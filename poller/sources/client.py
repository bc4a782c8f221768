"""HTTP for the source adapters: one long-lived httpx client per source, polite and bounded.

`Requester` sends every job-API request through an `httpx.AsyncClient` (over poller's own
`AiohttpTransport`, `transport.py`) with what every call needs: a per-source concurrency cap
and rate limit, a circuit breaker (`SourceHealth`), an overall deadline per request (a
per-read timeout would let a server that drips a byte a second stall a poll), and one
translation of everything that can go wrong into `TransientSourceError` or
`PermanentSourceError`. The body cap and its decoding are the transport's.

httpx costs CPU per request (README "Performance" has the figures), so the hot path takes its
cheap roads: requests are built whole (`build_request`, `whole_url`: no URL merging, no body
encoding for a GET) and sent with `client.send`; the client keeps no cookies; the transport
hands back the body already read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp.abc
import httpx
from aiolimiter import AsyncLimiter
from httpx import _urlparse

from poller.errors import BACKING_OFF, PermanentSourceError, SourceError, TransientSourceError
from poller.models import MAX_WAIT, JsonValue
from poller.sources.errortext import api_says
from poller.sources.transport import AiohttpTransport, NameNotResolved, TLSFailed
from poller.units import parse_retry_after

T = TypeVar("T")
R = TypeVar("R")

#: The longest pause of a whole source (`SourceHealth`) after failed probes; a shorter
#: ``max_interval`` of the source bounds it further.
MAX_PAUSE = 300.0
#: Job-status answers are small; anything bigger is not one and is not read to the end.
MAX_BODY_BYTES = 1 << 20


def _status_error(
    status: int, headers: Mapping[str, str], now: float, said: str = ""
) -> SourceError:
    """The error an answer's status is; `said` (`errortext.api_says`) is appended in quotes:
    the category stays the status's, the API's words only explain it."""
    tail = f'; the API says: "{said}"' if said else ""
    if status in (429, 503):
        retry_after = parse_retry_after(headers.get("Retry-After"), now)
        kind = "rate_limited" if status == 429 else "unavailable"
        return TransientSourceError(kind, f"HTTP {status}{tail}", retry_after=retry_after)
    if status >= 500:
        return TransientSourceError("server_error", f"HTTP {status}{tail}")
    if status in (401, 403):
        return PermanentSourceError("auth", f"HTTP {status}: credentials refused{tail}")
    if status == 404:
        return PermanentSourceError("not_found", f"HTTP 404: job not found{tail}")
    return PermanentSourceError("http", f"HTTP {status}{tail}")


def path_segment(text: str) -> str:
    """`text` quoted as one URL path segment (most ids need no quoting, and `quote` is slow
    next to a whole poll). ``/`` is quoted, and so are the dot-segments ``.`` and ``..``, which
    a URL would otherwise resolve (``/batch/../status`` is ``/status``)."""
    if text.isascii() and text.isalnum():
        return text
    quoted = quote(text, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


#: The characters httpx keeps as they are in a path segment, and in a query.
_SEGMENT_CHAR = r"[A-Za-z0-9_.~!$&'()*+,;=:@-]"
_QUERY_CHAR = r"[A-Za-z0-9_.~!$&'()*+,;=:@/?-]"
#: A URL that `whole_url` can take apart without httpx's parser: http(s), a lower-case host
#: name or IPv4 address, an optional port, and a path and query of characters that httpx keeps
#: as they are. The path has no dot-segment (httpx would resolve it) and no fragment. A run
#: of plain characters is one repeat of its class, broken only by percent-escapes (``c*(%XX
#: c*)*``, not ``(c|%XX)*``): the same URLs, matched in a third of the time.
_PLAIN_URL = re.compile(
    r"(https?)://"
    r"((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
    r"|(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]))"
    r"(?::([1-9][0-9]{0,4}))?"
    rf"((?:/(?!\.\.?(?:[/?]|$)){_SEGMENT_CHAR}*(?:%[0-9A-F]{{2}}{_SEGMENT_CHAR}*)*)*)"
    rf"(?:\?({_QUERY_CHAR}*(?:%[0-9A-F]{{2}}{_QUERY_CHAR}*)*))?"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def whole_url(url: str) -> httpx.URL:
    """`url` as an `httpx.URL`, equal to ``httpx.URL(url)``.

    A plain URL (`_PLAIN_URL`, which is what job APIs use) is taken apart here with one
    regular expression: httpx's own parser, written in Python, was about a third of the cost
    of building a request. Anything else goes through httpx. `_PLAIN_OK` checks at import
    that this httpx keeps URLs where this module puts them; if not, every URL goes through
    httpx.
    """
    match = _PLAIN_URL.fullmatch(url) if _PLAIN_OK else None
    if match is None:
        return httpx.URL(url)
    scheme, host, port, path, query = match.groups()
    number = int(port) if port else None
    if number is not None and (number > 65535 or number == _DEFAULT_PORTS[scheme]):
        return httpx.URL(url)  # httpx refuses the one and drops the other
    parts = _urlparse.ParseResult(scheme, "", host, number, path, query, None)
    made = httpx.URL.__new__(httpx.URL)
    made._uri_reference = parts
    return made


def _plain_url_works() -> bool:
    """Whether `whole_url`'s shortcut gives what httpx gives, on this version of httpx."""
    try:
        sample = "https://api.example.com:8443/v1/jobs/a%2Fb?x=1&y=%20"
        parts = _urlparse.ParseResult(
            "https", "", "api.example.com", 8443, "/v1/jobs/a%2Fb", "x=1&y=%20", None
        )
        made = httpx.URL.__new__(httpx.URL)
        made._uri_reference = parts
        return (
            made == httpx.URL(sample)
            and str(made) == sample
            and made.raw_path == b"/v1/jobs/a%2Fb?x=1&y=%20"
        )
    except Exception:  # any change in httpx's internals: take the slow path
        return False


_PLAIN_OK = _plain_url_works()


class SourceHealth:
    """Whether a whole source is worth asking right now: a circuit breaker.

    After `threshold` transient failures in a row (any watch), or a `Retry-After`, the source
    is paused until `open_until`: requests fail fast with `backing_off`, so 1,000 watches on a
    dead host cost one request per pause instead of 1,000. Once the pause is over, the first
    request is let through as the probe and decides alone: the others still fail fast while it
    is under way (without counting as failures), a failed probe pauses the source again for
    twice as long (with jitter, from `base` up to `cap`), and any answer from the API closes
    the breaker. Requests that were already sent when it opened do not lengthen the pause:
    it grows per failed probe, not per failed request.

    A fast failure names the failure that paused the source (`cause`), so that what a user
    reads is the real trouble (``network: connection failed ...``), not only that poller held
    back.
    """

    def __init__(
        self,
        *,
        threshold: int = 3,
        base: float = 2.0,
        cap: float = MAX_PAUSE,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.threshold, self.cap = threshold, cap
        self.base = min(base, cap)
        self.clock, self.rand = clock, rand
        #: transient failures in a row while closed
        self.failures = 0
        #: failed probes since the breaker opened; the pause doubles with each
        self.probes_failed = 0
        #: until when requests fail fast; 0.0 while closed
        self.open_until = 0.0
        #: the number of the probe under way (0: none); a number, not a flag, so that a probe
        #: that ends after the breaker closed and opened again is not taken for the new one
        self.probe = 0
        self._probes_sent = 0
        #: the latest transient failure, shown by every request that fails fast
        self.cause: SourceError | None = None

    def wait_left(self) -> float:
        """Seconds until the source may be asked again (0: now)."""
        return max(0.0, self.open_until - self.clock())

    def pause(self) -> float:
        """The length of the current pause before jitter: `base` doubled per failed probe."""
        return min(self.base * 2.0 ** min(self.probes_failed, 30), self.cap)

    def check(self) -> None:
        """Raise `backing_off` while the source is paused or its probe is under way."""
        if not self.open_until:  # closed: no clock to read
            return
        left = self.open_until - self.clock()
        if left > 0:
            wait = f"asked again in {math.ceil(left)}s"
            raise self._fast_failure(f"the source is paused; {wait}", left)
        if self.probe:
            # retry_after 0: the watch comes back within its interval (`rules.polling.decide`)
            raise self._fast_failure("the source is paused; one request checks it is back", 0.0)

    def admit(self) -> int:
        """`check`, then let this request be sent.

        Returns 0, or the probe's number if this request is the probe (the source's pause is
        over): its outcome must then be reported with that number, and `probe_ended` called
        however it ends.
        """
        if not self.open_until:
            return 0
        self.check()
        self._probes_sent += 1
        self.probe = self._probes_sent
        return self.probe

    def succeeded(self) -> None:
        """A request got an answer from the API: close the breaker."""
        self.failures = self.probes_failed = self.probe = 0
        self.open_until = 0.0
        self.cause = None

    def failed(self, error: SourceError, *, probe: int = 0) -> None:
        """A transient failure of a request (of probe number `probe`, if not 0)."""
        self.cause = error
        now = self.clock()
        if probe and probe == self.probe:
            self.probe = 0
            self.probes_failed += 1
            self._open(now)
        elif not self.open_until:
            self.failures += 1
            if self.failures >= self.threshold:
                self._open(now)
        # else: a request sent before the breaker opened; its failure is no news
        if error.retry_after is not None:
            self.open_until = max(self.open_until, now + min(error.retry_after, MAX_WAIT))

    def probe_ended(self, probe: int) -> None:
        """Probe number `probe` ended, maybe without an outcome (cancelled, or a failure that
        says nothing about the source): the next request may probe."""
        if probe == self.probe:
            self.probe = 0

    def _open(self, now: float) -> None:
        self.open_until = max(self.open_until, now + self.pause() * (0.5 + 0.5 * self.rand()))

    def _fast_failure(self, why: str, left: float) -> TransientSourceError:
        cause = self.cause
        said = f"{cause.kind}: {cause.message}" if cause else "repeated failures"
        return TransientSourceError(BACKING_OFF, f"{said} ({why})", retry_after=left)


class Requester:
    """One source's HTTP client: limits, deadline, capped body, errors translated.

    Every request goes through one `httpx.AsyncClient` over an `AiohttpTransport` (or the
    transport given, `httpx.MockTransport` in adapter tests), with the source's `auth`. The
    transport reads and decodes the body within `max_body`; cookies are neither kept nor sent,
    redirects are not followed, proxies from the environment are not used, and certificates
    are always verified.
    """

    def __init__(
        self,
        *,
        auth: httpx.Auth | None = None,
        max_concurrency: int = 8,
        rate_limit: float | None = None,
        deadline: float = 30.0,
        max_body: int = MAX_BODY_BYTES,
        health: SourceHealth | None = None,
        resolver: aiohttp.abc.AbstractResolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.deadline = deadline
        self.max_body = max_body
        self.health = health or SourceHealth()
        self._max_concurrency = max_concurrency
        self._slots = _Slots(max_concurrency)
        self._limiter = AsyncLimiter(rate_limit, 1.0) if rate_limit else None
        transport = transport or AiohttpTransport(
            max_connections=max_concurrency, max_body=max_body, resolver=resolver
        )
        self.client = http_client(transport, auth)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self.client.aclose()

    async def each(self, fn: Callable[[T], Awaitable[R]], items: Sequence[T]) -> list[R]:
        """`fn(item)` for every item, at most `max_concurrency` at a time; results in order.

        A task per item would mostly queue on the source's semaphore (a poll group holds
        hundreds of jobs); a few workers taking items in turn cost less CPU per request.
        """
        if len(items) == 1:
            return [await fn(items[0])]
        results: list[Any] = [None] * len(items)
        queue = iter(enumerate(items))

        async def worker() -> None:
            for i, item in queue:
                results[i] = await fn(item)

        await asyncio.gather(*(worker() for _ in range(min(self._max_concurrency, len(items)))))
        return results

    async def json(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: JsonValue = None,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
        partial: bool = False,
    ) -> object:
        """Send one request and return its decoded JSON body, or raise a `SourceError`.

        With `partial` (an answer about many jobs), values that cannot be read are replaced
        by `Unreadable` instead of failing the whole answer (see `load_json`).
        """
        self.health.check()
        try:
            request = build_request(method, url, params=params, body=body, headers=headers)
        except httpx.InvalidURL:
            # its text may hold the URL, which may carry a secret
            raise PermanentSourceError("config", "the URL is not a valid http(s) URL") from None
        slots = self._slots
        if not slots.take_now():
            await slots.take()
        try:
            if self._limiter is not None:
                await self._limiter.acquire()
            # after the waits: the source may have gone down meanwhile, and only a request
            # that is sent can be the probe
            probe = self.health.admit()
            limit = deadline or self.deadline
            try:
                async with asyncio.timeout(limit):
                    response = await self.client.send(request)
                answer = _answer_json(response, partial)
            except SourceError as exc:
                if exc.transient:
                    self.health.failed(exc, probe=probe)
                else:
                    self.health.succeeded()  # the API answered, if unhappily
                raise
            except TimeoutError:
                timeout = TransientSourceError("timeout", f"no complete answer within {limit:g}s")
                self.health.failed(timeout, probe=probe)
                raise timeout from None
            except httpx.HTTPError as exc:
                error = _transport_error(exc)
                if error.transient:
                    self.health.failed(error, probe=probe)
                raise error from None
            finally:
                if probe:  # however it ended (cancelled too), the next request may probe
                    self.health.probe_ended(probe)
            self.health.succeeded()
            return answer
        finally:
            slots.give()


class _Slots:
    """At most `size` holders at a time, served in the order they came: the contract of
    `asyncio.Semaphore`, for less CPU per request.

    A free slot is taken without a coroutine (`take_now`). A slot given back goes straight
    to the first waiter: nothing scans the waiters already woken, as the semaphore does on
    every release, nor searches the queue to remove a waiter that was served.
    """

    def __init__(self, size: int) -> None:
        #: slots free; never above 0 while anyone waits
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_now(self) -> bool:
        """Take a free slot if there is one."""
        if self.free:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot, behind those already waiting."""
        if self.take_now():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # a slot was handed over as this waiter was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Give a slot back: to the first waiter still waiting, else to the free ones."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


def _answer_json(response: httpx.Response, partial: bool) -> object:
    """The JSON of a successful answer, or the `SourceError` its status says."""
    status = response.status_code
    if status >= 400:
        raise _status_error(status, response.headers, time.time(), api_says(response))
    if status in (204, 304):
        raise _status_error(status, response.headers, time.time())
    if 300 <= status < 400:
        raise PermanentSourceError("http", f"HTTP {status} redirect")
    return load_json(response.content, partial=partial)


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: job APIs are called with credentials, not sessions,
    and reading the cookies of every answer costs about a tenth of a request's CPU."""

    def extract_cookies(self, response: httpx.Response) -> None:
        """Keep nothing."""

    def set_cookie_header(self, request: httpx.Request) -> None:
        """Send nothing."""


class _Client(httpx.AsyncClient):
    """`httpx.AsyncClient` with `_NoCookies` for a jar, whatever it is given, and answers
    that the garbage collector need not look at."""

    async def send(self, request: httpx.Request, **options: Any) -> httpx.Response:
        """`httpx.AsyncClient.send`; a read answer lets go of its stream.

        httpx wraps an answer's stream in one that points back at the answer: a reference
        cycle per request (17 objects with the request, headers and URL), which only the
        garbage collector frees. In the daemon that doubled the collector's CPU per poll.
        Once the body is read (`content`), the stream is not needed.
        """
        response = await super().send(request, **options)
        if not options.get("stream"):
            response.stream = _READ
        return response

    @property
    def cookies(self) -> httpx.Cookies:
        """The jar that keeps nothing."""
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        pass  # the client sets its jar when it is made; it stays `_NO_COOKIES`


_NO_COOKIES = _NoCookies()
#: the stream of an answer whose body is read: it is in `httpx.Response.content`
_READ = httpx.ByteStream(b"")


def http_client(
    transport: httpx.AsyncBaseTransport, auth: httpx.Auth | None = None
) -> httpx.AsyncClient:
    """The `httpx.AsyncClient` of one source: its `transport` and `auth`, no cookies, no
    redirects, no proxies from the environment, no timers (the `Requester` has one deadline
    per request)."""
    return _Client(
        transport=transport,
        auth=auth,
        follow_redirects=False,
        trust_env=False,
        timeout=None,
    )


#: No timers in httpx: the `Requester` puts one overall deadline on each request.
_NO_TIMEOUT = httpx.Timeout(None).as_dict()
_NO_BODY = httpx.ByteStream(b"")


def build_request(
    method: str,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    body: JsonValue = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Request:
    """An `httpx.Request` for a job API, built without URL merging (the URL is whole).

    Raises `httpx.InvalidURL` for a URL that is not one.
    """
    if params is not None or body is not None:
        return httpx.Request(
            method,
            whole_url(url),
            params=params,
            json=body,
            headers=headers,
            extensions={"timeout": _NO_TIMEOUT},
        )
    # no body: the empty stream spares httpx's body encoding and its default headers (the
    # transport sends Host and Content-Length as the body needs)
    request = httpx.Request(
        method,
        whole_url(url),
        headers=headers,
        extensions={"timeout": _NO_TIMEOUT},
        stream=_NO_BODY,
    )
    request.read()
    return request


class Unreadable:
    """Stands in a partly read answer for a value that cannot be read; `why` says what it was.

    The source adapters turn an entry holding one into a ``bad_answer`` for that entry's job.
    """

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"<unreadable: {self.why}>"


#: Lists and objects nested deeper than this in a partly read answer are not read. No job API
#: nests anywhere near this deep; Python's parser itself gives up at about 1,000.
MAX_DEPTH = 100
_TOO_DEEP = Unreadable(f"lists or objects nested more than {MAX_DEPTH} deep")
_TOO_LONG = Unreadable("a number too long to read")
#: What a too-deep part of an answer is rewritten to before it is parsed: a float that no
#: server writes, which `_salvage_float` turns into `_TOO_DEEP`.
_DEEP_MARK = "-0.0E-271828182"
#: The strings and brackets of a JSON text (numbers and literals hold no brackets).
_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def load_json(raw: bytes | bytearray, *, partial: bool = False) -> object:
    """A decoded JSON answer; raises `PermanentSourceError` (``bad_answer``) if it is not one.

    Python's parser refuses some valid JSON: integers of more than 4,300 digits (ValueError)
    and deep nesting (RecursionError). Such an answer is a ``bad_answer`` like any other
    unreadable one; with `partial` it is read again with those parts replaced by `Unreadable`,
    so that an answer about many jobs loses only the entries that hold them. The second
    reading only ever happens to such answers: others cost one `json.loads`.
    """
    text: bytes | bytearray | str = raw
    if b"\\u" in raw or b"\xed" in raw or not _plain_utf8(raw):
        text = _without_surrogates(raw)
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        snippet = "empty" if not raw.strip() else "not JSON"
        raise PermanentSourceError("bad_answer", f"answer is {snippet}") from None
    except RecursionError:
        why = "lists or objects nested too deep"
    except ValueError:  # an integer longer than Python converts
        why = _TOO_LONG.why
    if partial:
        try:
            if not isinstance(text, str):
                text = bytes(text).decode(json.detect_encoding(text), "surrogatepass")
            return json.loads(
                _flatten(text, MAX_DEPTH),
                parse_int=_salvage_int,
                parse_float=_salvage_float,
            )
        except (RecursionError, ValueError):
            pass  # unbalanced brackets, say: nothing of it can be read
    raise PermanentSourceError("bad_answer", f"answer cannot be read: {why}")


#: What a JSON object or list starts with: no BOM, no zero byte (see `_plain_utf8`).
_OPENERS = (b"{", b"[")


def _plain_utf8(raw: bytes | bytearray) -> bool:
    """``json.detect_encoding(raw) == "utf-8"``, without its Python steps for an answer that
    opens with ``{`` or ``[`` and has no zero byte second: no BOM starts so, and only a zero
    byte among the first ones makes `detect_encoding` say UTF-16 or UTF-32."""
    if raw[:1] in _OPENERS and raw[1:2] != b"\x00":
        return True
    return json.detect_encoding(raw) == "utf-8"


#: A lone UTF-16 surrogate, as an escape (a pair is one character) or as a character (raw
#: bytes that `json` decodes with "surrogatepass"): valid JSON, but text that no database
#: driver can encode, so one job's answer would fail the group commit of every watch in it.
_ESCAPED_SURROGATE = re.compile(
    r"(\\+)u[dD]([89a-fA-F])[0-9a-fA-F]{2}(\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_surrogates(raw: bytes | bytearray) -> bytes | bytearray | str:
    """The answer with every lone surrogate replaced by U+FFFD (`raw` itself if it has none)."""
    try:
        text = bytes(raw).decode(json.detect_encoding(raw), "surrogatepass")
    except UnicodeDecodeError:
        return raw  # not text: `json.loads` says so
    cleaned = _SURROGATE.sub("\ufffd", text)
    if "\\u" in cleaned:
        cleaned = _ESCAPED_SURROGATE.sub(_escape_without_surrogates, cleaned)
    return raw if cleaned == text and json.detect_encoding(raw) == "utf-8" else cleaned


def _escape_without_surrogates(match: re.Match[str]) -> str:
    slashes, first, low = match.group(1), match.group(2).lower(), match.group(3)
    whole = match.group(0)
    if len(slashes) % 2 == 0:  # an escaped backslash, then plain "u...": not an escape
        return whole[: len(whole) - len(low)] + "\\ufffd" if low else whole
    if first in "89ab" and low:
        return whole  # a high and a low surrogate: one character
    return slashes[:-1] + "\\ufffd" + ("\\ufffd" if low else "")


def _flatten(text: str, limit: int) -> str:
    """`text` with every list or object nested deeper than `limit` replaced by `_DEEP_MARK`."""
    if text.count("[") + text.count("{") <= limit:
        return text
    parts: list[str] = []
    depth = 0
    start = done = -1
    for match in _STRUCTURE.finditer(text):
        char = text[match.start()]
        if char == '"':
            continue
        if char in "[{":
            depth += 1
            if depth == limit + 1:
                start = match.start()
        else:
            if depth == limit + 1 and start >= 0:
                parts += (text[done + 1 : start], _DEEP_MARK)
                done = match.end() - 1
                start = -1
            depth -= 1
    parts.append(text[done + 1 :])
    return "".join(parts)


def _salvage_int(digits: str) -> int | Unreadable:
    try:
        return int(digits)
    except ValueError:
        return _TOO_LONG


def _salvage_float(digits: str) -> float | Unreadable:
    return _TOO_DEEP if digits == _DEEP_MARK else float(digits)


def _transport_error(exc: httpx.HTTPError) -> SourceError:
    """Categorise a transport failure; the transport's text says why without the URL."""
    if isinstance(exc, NameNotResolved):
        return TransientSourceError("dns", str(exc))
    if isinstance(exc, TLSFailed):
        return PermanentSourceError("tls", str(exc))
    if isinstance(exc, httpx.UnsupportedProtocol):
        return PermanentSourceError("config", "the URL is not a valid http(s) URL")
    if isinstance(exc, httpx.DecodingError):
        return PermanentSourceError("bad_answer", str(exc))
    if isinstance(exc, httpx.TimeoutException):
        return TransientSourceError("timeout", "no complete answer in time")
    text = str(exc).strip()
    return TransientSourceError("network", text.splitlines()[0] if text else type(exc).__name__)
