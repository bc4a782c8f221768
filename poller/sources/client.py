"""HTTP for the source adapters: one long-lived client per source, polite and bounded.

`Requester` wraps an `aiohttp.ClientSession` with what every job API call needs: a per-source
concurrency cap and rate limit, an overall deadline per request (a per-read timeout would let a
server that drips a byte a second stall a poll), a cap on the body size after decoding (gzip and
deflate are decoded here, not by aiohttp, so that a small compressed answer cannot expand past
the cap), and one translation of everything that can go wrong into `TransientSourceError` or
`PermanentSourceError`. Only this module knows about the HTTP library.

Why aiohttp and not the httpx API (the project asked for httpx): measured in the same run
(`bench/daemon.py`, README "Performance"), a GET + JSON costs about 70 µs of CPU with bare
aiohttp and about 190 µs with httpx's API over the same aiohttp pool (`httpx-aiohttp`); request
building, cookie extraction and the response wrappers are the difference. That alone is more
than the 2x budget the daemon has against bare aiohttp for a whole poll.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import aiohttp.abc
import yarl
from aiolimiter import AsyncLimiter

from poller.errors import BACKING_OFF, PermanentSourceError, SourceError, TransientSourceError
from poller.models import MAX_WAIT, JsonValue
from poller.units import parse_retry_after

T = TypeVar("T")
R = TypeVar("R")

#: The longest pause of a whole source (`SourceHealth`) after failed probes; a shorter
#: ``max_interval`` of the source bounds it further.
MAX_PAUSE = 300.0
#: Job-status answers are small; anything bigger is not one and is not read to the end.
MAX_BODY_BYTES = 1 << 20

#: aiohttp's own timers are off: `Requester` puts one overall deadline on each request.
_NO_TIMEOUTS = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)
_READ_CHUNK = 64 * 1024

#: The content codings poller decodes, and so the only ones it says it accepts. aiohttp's own
#: decoding is off: it would expand a whole answer before the cap could be checked.
ACCEPT_ENCODING = "gzip, deflate"
#: Most bytes one decompression step may produce: a compressed answer is expanded in steps of
#: this size, so it never holds much more than its cap even when a step passes the cap.
_DECODE_STEP = 64 * 1024


def _status_error(status: int, headers: Mapping[str, str], now: float) -> SourceError:
    if status in (429, 503):
        retry_after = parse_retry_after(headers.get("Retry-After"), now)
        kind = "rate_limited" if status == 429 else "unavailable"
        return TransientSourceError(kind, f"HTTP {status}", retry_after=retry_after)
    if status >= 500:
        return TransientSourceError("server_error", f"HTTP {status}")
    if status in (401, 403):
        return PermanentSourceError("auth", f"HTTP {status}: credentials refused")
    if status == 404:
        return PermanentSourceError("not_found", "HTTP 404: job not found")
    return PermanentSourceError("http", f"HTTP {status}")


def path_segment(text: str) -> str:
    """`text` quoted as one URL path segment (most ids need no quoting, and `quote` is slow
    next to a whole poll). ``/`` is quoted, and so are the dot-segments ``.`` and ``..``, which
    a URL would otherwise resolve (``/batch/../status`` is ``/status``)."""
    if text.isascii() and text.isalnum():
        return text
    quoted = quote(text, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


#: What `_request_url` leaves as it is: the URL's delimiters and existing percent-escapes.
_URL_SAFE = "%/:?#[]@!$&'()*+,;="
#: A URL that `quote(url, safe=_URL_SAFE)` would leave as it is.
_URL_AS_IS = re.compile(r"[A-Za-z0-9_.~\-%/:?#\[\]@!$&'()*+,;=]*")


def _request_url(url: str) -> yarl.URL:
    """`url` for aiohttp with its percent-escapes kept as they are. yarl decodes ``%2E%2E`` and
    resolves it like ``..`` unless a URL is marked encoded, which would undo `path_segment`;
    so what a URL cannot hold as it is (spaces, other non-ASCII) is quoted here instead."""
    if _URL_AS_IS.fullmatch(url):  # the usual case, and one C call to know it
        return yarl.URL(url, encoded=True)
    if not url.isascii():
        scheme, netloc = urlsplit(url)[:2]
        if not netloc.isascii():
            # a host name is IDNA-encoded, not percent-encoded: yarl does that part
            url = str(yarl.URL(f"{scheme}://{netloc}")) + url[len(scheme) + 3 + len(netloc) :]
    return yarl.URL(quote(url, safe=_URL_SAFE), encoded=True)


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

    The session is made on first use, inside the running event loop (aiohttp binds its pool to
    the loop). Cookies are neither kept nor sent, redirects are not followed, proxies from the
    environment are not used, and certificates are always verified.
    """

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        max_concurrency: int = 8,
        rate_limit: float | None = None,
        deadline: float = 30.0,
        max_body: int = MAX_BODY_BYTES,
        health: SourceHealth | None = None,
        resolver: aiohttp.abc.AbstractResolver | None = None,
    ) -> None:
        self.deadline = deadline
        self.max_body = max_body
        self.health = health or SourceHealth()
        self._headers = {"Accept-Encoding": ACCEPT_ENCODING, **(headers or {})}
        self._max_concurrency = max_concurrency
        self._resolver = resolver
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._limiter = AsyncLimiter(rate_limit, 1.0) if rate_limit else None
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_concurrency,
            limit_per_host=0,
            ttl_dns_cache=60,
            resolver=self._resolver,
            ssl=True,  # verify certificates; there is no option to turn that off
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=_NO_TIMEOUTS,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            raise_for_status=False,
            auto_decompress=False,  # `read_body` decodes, within the cap
        )
        return self._session

    async def aclose(self) -> None:
        """Close the pooled connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

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
        async with self._semaphore:
            if self._limiter is not None:
                await self._limiter.acquire()
            # after the waits: the source may have gone down meanwhile, and only a request
            # that is sent can be the probe
            probe = self.health.admit()
            limit = deadline or self.deadline
            try:
                async with asyncio.timeout(limit):
                    answer = await self._send(method, url, params, body, headers, partial)
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
            except (aiohttp.ClientError, OSError) as exc:
                error = _transport_error(exc)
                if error.transient:
                    self.health.failed(error, probe=probe)
                raise error from None
            finally:
                if probe:  # however it ended (cancelled too), the next request may probe
                    self.health.probe_ended(probe)
            self.health.succeeded()
            return answer

    async def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        body: JsonValue,
        headers: Mapping[str, str] | None,
        partial: bool,
    ) -> object:
        session = self._session or self._open()
        async with session.request(
            method,
            _request_url(url),
            params=params,
            json=body,
            headers=headers,
            allow_redirects=False,
        ) as response:
            status = response.status
            if status >= 400 or status in (204, 304):
                raise _status_error(status, response.headers, time.time())
            if 300 <= status < 400:
                raise PermanentSourceError("http", f"HTTP {status} redirect")
            raw = await self._read(response)
        return load_json(raw, partial=partial)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes | bytearray:
        """The decoded body, refused once it grows past `max_body` (read no further than that)."""
        coding = response.headers.get("Content-Encoding")
        length = response.content_length
        if length is not None and length > self.max_body:
            # even an encoded body of that size is not a job-status answer
            raise _too_big(self.max_body)
        if length is not None and not coding:
            return await response.read()  # the common case: small, plain, and of known size
        return await read_body(response.content.iter_chunked(_READ_CHUNK), coding, self.max_body)


def _too_big(cap: int) -> PermanentSourceError:
    return PermanentSourceError("bad_answer", f"answer too big: more than {cap} bytes")


class _Inflater:
    """Decodes a gzip or deflate body piece by piece, never past a given size."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.started = False
        self._wbits = 16 + zlib.MAX_WBITS  # gzip
        self._zlib = zlib.decompressobj(self._wbits)

    def feed(self, data: bytes, out: bytearray, cap: int) -> None:
        """Append what `data` decodes to onto `out`; raise as soon as `out` passes `cap`."""
        if not self.started and data:
            self.started = True
            if self.coding == "deflate":
                # RFC 9110's deflate is zlib-wrapped; some servers send it raw (as aiohttp
                # allows): the low nibble of a zlib header's first byte is 8
                self._wbits = zlib.MAX_WBITS if data[0] & 0x0F == 8 else -zlib.MAX_WBITS
                self._zlib = zlib.decompressobj(self._wbits)
        while data:
            # max_length bounds what one step can produce: a bomb is stopped one step past
            # the cap, never expanded whole
            out += self._zlib.decompress(data, min(cap - len(out) + 1, _DECODE_STEP))
            if len(out) > cap:
                raise _too_big(cap)
            data = self._zlib.unconsumed_tail
            if not data and self._zlib.eof and self._zlib.unused_data:
                # another gzip member follows (bounded: every member costs input bytes)
                data = self._zlib.unused_data
                self._zlib = zlib.decompressobj(self._wbits)

    def finish(self) -> None:
        """Raise if the body ended in the middle of its compressed stream."""
        if self.started and not self._zlib.eof:
            raise PermanentSourceError("bad_answer", f"answer is truncated ({self.coding})")


def _inflater(content_encoding: str | None) -> _Inflater | None:
    """The decoder for a ``Content-Encoding`` (None: the body is as it is)."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return _Inflater("deflate" if codings[0] == "deflate" else "gzip")
    shown = ", ".join(codings)[:100]
    raise PermanentSourceError("bad_answer", f"answer has an unsupported encoding: {shown}")


async def read_body(
    chunks: AsyncIterable[bytes], content_encoding: str | None, cap: int
) -> bytearray:
    """An answer's body from its raw `chunks`, decoded as its ``Content-Encoding`` says.

    Raises `PermanentSourceError` (``bad_answer``) as soon as the body, decoded or as received,
    passes `cap` bytes (nothing further is read or expanded), for an encoding other than
    gzip or deflate, and for a compressed stream that is corrupt or cut short. So an answer
    never costs much more memory than `cap`, however well it compresses.
    """
    inflater = _inflater(content_encoding)
    body = bytearray()
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > cap:
                raise _too_big(cap)
            if inflater is None:
                body += chunk
            else:
                inflater.feed(chunk, body, cap)
        if inflater is not None:
            inflater.finish()
    except zlib.error:
        coding = inflater.coding if inflater else "?"
        raise PermanentSourceError("bad_answer", f"answer is not valid {coding}") from None
    return body


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
    if b"\\u" in raw or b"\xed" in raw or json.detect_encoding(raw) != "utf-8":
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


def _transport_error(exc: BaseException) -> SourceError:
    """Categorise a transport failure, without the URL (which may carry a secret)."""
    chain = _cause_chain(exc)
    # The order of these checks is the categorisation: a name that cannot be resolved or a TLS
    # failure anywhere in the chain wins over the generic connection error that wraps it.
    error = _resolution_or_tls_error(exc, chain)
    if error is not None:
        return error
    if isinstance(exc, aiohttp.InvalidURL):
        # its text is the URL itself, which may carry a secret
        return PermanentSourceError("config", "the URL is not a valid http(s) URL")
    error = _connection_error(exc, chain)
    if error is not None:
        return error
    return TransientSourceError("network", f"{type(exc).__name__}: {_first_line(exc)}")


def _cause_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it, outermost first, at most 8 deep.

    aiohttp wraps the OS error that says why (a resolver or TLS failure) in its own exceptions,
    sometimes only as `os_error`; the bound stops a cyclic chain from looping.
    """
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__ or getattr(cause, "os_error", None)
    return chain


def _resolution_or_tls_error(exc: BaseException, chain: list[BaseException]) -> SourceError | None:
    """The error for a host name that cannot be resolved or a TLS failure, else None."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or any(
        isinstance(c, socket.gaierror) for c in chain
    ):
        return TransientSourceError("dns", "the host name cannot be resolved")
    if any(isinstance(c, ssl.SSLError | aiohttp.ClientSSLError) for c in chain):
        reasons = (getattr(c, "reason", None) for c in chain if isinstance(c, ssl.SSLError))
        reason = next((r for r in reasons if r), None)
        # Never retried without verification: a TLS failure stays a failure.
        return PermanentSourceError("tls", f"TLS error: {reason or 'TLS handshake failed'}")
    return None


def _connection_error(exc: BaseException, chain: list[BaseException]) -> SourceError | None:
    """The error for a connection that failed or dropped, else None."""
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return TransientSourceError("network", f"connection dropped: {_first_line(exc)}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        # asyncio's text ("Connect call failed (host, port)") does not say why; the errno does
        code = exc.os_error.errno
        why = os.strerror(code).lower() if code else _first_line(exc.os_error)
        return TransientSourceError("network", f"connection failed: {why}")
    if any(isinstance(c, ConnectionError) for c in chain):
        return TransientSourceError("network", f"connection dropped: {_first_line(chain[-1])}")
    return None


def _first_line(exc: BaseException) -> str:
    text = (getattr(exc, "strerror", None) or str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
