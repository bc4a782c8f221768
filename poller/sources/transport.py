"""The transport under every source's `httpx.AsyncClient`: one aiohttp session, bounded.

httpx is the API poller's source adapters speak (requests, responses, `httpx.Auth`, the
exception tree); this transport is what sends the bytes. It is poller's own, on aiohttp,
because httpx's default transport (httpcore) costs about 15 times the CPU of a bare aiohttp
request, and the `httpx-aiohttp` package reports a dropped connection as a connect timeout,
which would blur poller's error categories (README "Performance" has the figures).

What it promises the `Requester` above it:
- the body is read whole and decoded here, never past `max_body` bytes: aiohttp's own
  decoding is off, because it would expand a small compressed answer before the cap could be
  checked (`read_body`);
- every failure is an `httpx.HTTPError` whose class says its category and whose text says why
  in words fit for a user, never with the URL (it may carry a secret): `NameNotResolved`,
  `TLSFailed`, `httpx.ConnectError`, `httpx.RemoteProtocolError` (a dropped connection),
  `httpx.UnsupportedProtocol` (a URL aiohttp cannot send to) and `AnswerRefused` (too big,
  or an encoding that cannot be read);
- cookies are neither kept nor sent, redirects are not followed, proxies from the environment
  are not used, and certificates are always verified.
It has no timers of its own: the `Requester` puts one overall deadline on each request.
"""

from __future__ import annotations

import os
import socket
import ssl
import zlib
from collections.abc import AsyncIterable
from urllib.parse import quote, urlsplit

import aiohttp
import aiohttp.abc
import httpx
import yarl

#: The content codings the transport decodes, and so the only ones it says it accepts.
ACCEPT_ENCODING = "gzip, deflate"
#: Most bytes one decompression step may produce: a compressed answer is expanded in steps of
#: this size, so it never holds much more than its cap even when a step passes the cap.
_DECODE_STEP = 64 * 1024
_READ_CHUNK = 64 * 1024
#: aiohttp's own timers are off: the `Requester` puts one overall deadline on each request.
_NO_TIMEOUTS = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)
#: Headers that describe the body as it came over the wire; the answer holds it decoded.
_WIRE_HEADERS = frozenset((b"content-encoding", b"content-length", b"transfer-encoding"))


class NameNotResolved(httpx.ConnectError):
    """The host name of the URL cannot be resolved."""


class TLSFailed(httpx.ConnectError):
    """The TLS handshake failed (a certificate that does not verify, say); never retried
    without verification."""


class AnswerRefused(httpx.DecodingError):
    """The answer's body is not read: too big, or in an encoding that cannot be decoded."""


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one pooled aiohttp session, made on first use inside the
    running event loop (aiohttp binds its pool to the loop)."""

    def __init__(
        self,
        *,
        max_connections: int = 8,
        max_body: int = 1 << 20,
        resolver: aiohttp.abc.AbstractResolver | None = None,
    ) -> None:
        self.max_body = max_body
        self._max_connections = max_connections
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            ttl_dns_cache=60,
            resolver=self._resolver,
            ssl=True,  # verify certificates; there is no option to turn that off
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"Accept-Encoding": ACCEPT_ENCODING},
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

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` and return its answer with the body read and decoded."""
        session = self._session or self._open()
        try:
            data = request.content
        except httpx.RequestNotRead:
            data = await request.aread()
        try:
            async with session.request(
                request.method,
                _request_url(str(request.url)),
                headers=request.headers.multi_items(),
                data=data or None,
                allow_redirects=False,
            ) as response:
                body = await self._read(response)
                headers = [h for h in response.raw_headers if h[0].lower() not in _WIRE_HEADERS]
                return answer(response.status, headers, body, request)
        except (aiohttp.ClientError, OSError) as exc:
            raise _as_httpx_error(exc, request) from None

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


class _Answer(httpx.Response):
    """A response whose body is already read: the client's `aread` finds it there instead of
    reading it again through httpx's decoder chain (a few µs per request). The body is also
    its stream, so the answer stays a whole `httpx.Response` whatever httpx reads."""

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        request: httpx.Request,
    ) -> None:
        super().__init__(status, headers=headers, stream=httpx.ByteStream(body), request=request)
        self._content = body


def answer(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes | bytearray, request: httpx.Request
) -> httpx.Response:
    """An `httpx.Response` for a body that is already read and decoded."""
    return _Answer(status, headers, bytes(body) if isinstance(body, bytearray) else body, request)


#: What `_request_url` leaves as it is: the URL's delimiters and existing percent-escapes.
_URL_SAFE = "%/:?#[]@!$&'()*+,;="


def _request_url(url: str) -> yarl.URL:
    """`url` for aiohttp with its percent-escapes kept as they are: yarl decodes ``%2E%2E``
    and resolves it like ``..`` unless a URL is marked encoded. httpx has quoted what a URL
    cannot hold as it is; a host name stays as httpx wrote it (IDNA)."""
    if url.isascii():
        return yarl.URL(url, encoded=True)
    scheme, netloc = urlsplit(url)[:2]  # httpx never leaves one, but a transport may be lent
    if not netloc.isascii():
        url = str(yarl.URL(f"{scheme}://{netloc}")) + url[len(scheme) + 3 + len(netloc) :]
    return yarl.URL(quote(url, safe=_URL_SAFE), encoded=True)


def _too_big(cap: int) -> AnswerRefused:
    return AnswerRefused(f"answer too big: more than {cap} bytes")


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
            raise AnswerRefused(f"answer is truncated ({self.coding})")


def _inflater(content_encoding: str | None) -> _Inflater | None:
    """The decoder for a ``Content-Encoding`` (None: the body is as it is)."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return _Inflater("deflate" if codings[0] == "deflate" else "gzip")
    shown = ", ".join(codings)[:100]
    raise AnswerRefused(f"answer has an unsupported encoding: {shown}")


async def read_body(
    chunks: AsyncIterable[bytes], content_encoding: str | None, cap: int
) -> bytearray:
    """An answer's body from its raw `chunks`, decoded as its ``Content-Encoding`` says.

    Raises `AnswerRefused` as soon as the body, decoded or as received, passes `cap` bytes
    (nothing further is read or expanded), for an encoding other than gzip or deflate, and for
    a compressed stream that is corrupt or cut short. So an answer never costs much more
    memory than `cap`, however well it compresses.
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
        raise AnswerRefused(f"answer is not valid {coding}") from None
    return body


def _as_httpx_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx error for an aiohttp or OS failure, worded without the URL."""
    chain = _cause_chain(exc)
    # The order of these checks is the categorisation: a name that cannot be resolved or a TLS
    # failure anywhere in the chain wins over the generic connection error that wraps it.
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or any(
        isinstance(c, socket.gaierror) for c in chain
    ):
        return NameNotResolved("the host name cannot be resolved", request=request)
    if any(isinstance(c, ssl.SSLError | aiohttp.ClientSSLError) for c in chain):
        reasons = (getattr(c, "reason", None) for c in chain if isinstance(c, ssl.SSLError))
        reason = next((r for r in reasons if r), None)
        return TLSFailed(f"TLS error: {reason or 'TLS handshake failed'}", request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        # its text is the URL itself, which may carry a secret
        return httpx.UnsupportedProtocol("the URL is not a valid http(s) URL", request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(f"connection dropped: {_first_line(exc)}", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        # asyncio's text ("Connect call failed (host, port)") does not say why; the errno does
        code = exc.os_error.errno
        why = os.strerror(code).lower() if code else _first_line(exc.os_error)
        return httpx.ConnectError(f"connection failed: {why}", request=request)
    if any(isinstance(c, ConnectionError) for c in chain):
        return httpx.ReadError(f"connection dropped: {_first_line(chain[-1])}", request=request)
    return httpx.NetworkError(f"{type(exc).__name__}: {_first_line(exc)}", request=request)


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


def _first_line(exc: BaseException) -> str:
    text = (getattr(exc, "strerror", None) or str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
