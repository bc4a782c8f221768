"""HTTP for the source adapters: one long-lived client per source, polite and bounded.

`Requester` wraps an `httpx.AsyncClient` with what every job API call needs: a per-source
concurrency cap and rate limit, an overall deadline per request (httpx's timeouts are per read,
so a server that drips a byte a second would otherwise stall a poll), a cap on the body size,
and one translation of everything that can go wrong into `TransientSourceError` or
`PermanentSourceError`. Only this module knows about httpx.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import httpx
from aiolimiter import AsyncLimiter
from httpx_aiohttp import AiohttpTransport

from poller.errors import PermanentSourceError, SourceError, TransientSourceError

#: No server may park a whole source for longer than this with one Retry-After.
MAX_RETRY_AFTER = 3600.0
#: Job-status answers are small; anything bigger is not one and is not read to the end.
MAX_BODY_BYTES = 1 << 20

# httpx logs every request URL at INFO; URLs of generic sources may carry secrets.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def _status_error(response: httpx.Response, now: float) -> SourceError:
    status = response.status_code
    if status in (429, 503):
        retry_after = parse_retry_after(response.headers.get("retry-after"), now)
        kind = "rate_limited" if status == 429 else "unavailable"
        return TransientSourceError(kind, f"HTTP {status}", retry_after=retry_after)
    if status >= 500:
        return TransientSourceError("server_error", f"HTTP {status}")
    if status in (401, 403):
        return PermanentSourceError("auth", f"HTTP {status}: credentials refused")
    if status == 404:
        return PermanentSourceError("not_found", "HTTP 404: job not found")
    return PermanentSourceError("http", f"HTTP {status}")


class SourceHealth:
    """Whether a whole source is worth asking right now.

    After `threshold` transient failures in a row (any watch), or a `Retry-After`, requests to
    the source fail fast until `open_until`: 1,000 watches on a dead host then cost a few
    requests per backoff step instead of 1,000. The step doubles with every further failure,
    with jitter, up to `cap`; one success closes it again.
    """

    def __init__(
        self,
        *,
        threshold: int = 3,
        base: float = 2.0,
        cap: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.threshold, self.base, self.cap = threshold, base, cap
        self.clock, self.rand = clock, rand
        self.failures = 0
        self.open_until = 0.0

    def wait_left(self) -> float:
        """Seconds until the source may be asked again (0: now)."""
        return max(0.0, self.open_until - self.clock())

    def succeeded(self) -> None:
        """A request got an answer from the API: close the breaker."""
        self.failures = 0
        self.open_until = 0.0

    def failed(self, retry_after: float | None) -> None:
        """A transient failure; `retry_after` is what the server asked for, if anything."""
        self.failures += 1
        now = self.clock()
        if self.failures >= self.threshold:
            step = min(self.base * 2.0 ** min(self.failures - self.threshold, 30), self.cap)
            self.open_until = max(self.open_until, now + step * (0.5 + 0.5 * self.rand()))
        if retry_after is not None:
            self.open_until = max(self.open_until, now + min(retry_after, MAX_RETRY_AFTER))

    def check(self) -> None:
        """Raise instead of sending while the source is backing off."""
        left = self.wait_left()
        if left > 0:
            raise TransientSourceError(
                "backing_off",
                f"the source failed repeatedly; not asked again for {left:.0f}s",
                retry_after=left,
            )


class Requester:
    """One source's HTTP client: limits, deadline, capped body, errors translated."""

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        max_concurrency: int = 8,
        rate_limit: float | None = None,
        deadline: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_body: int = MAX_BODY_BYTES,
        health: SourceHealth | None = None,
    ) -> None:
        self.deadline = deadline
        self.max_body = max_body
        self.health = health or SourceHealth()
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._limiter = AsyncLimiter(rate_limit, 1.0) if rate_limit else None
        limits = httpx.Limits(
            max_connections=max_concurrency, max_keepalive_connections=max_concurrency
        )
        if transport is None:
            # httpx's API over aiohttp's connection pool: measured at about a sixth of the CPU
            # per request of httpx's own transport (README, "Performance").
            transport = AiohttpTransport(limits=limits, trust_env=False, verify=True)
        self._client = httpx.AsyncClient(
            headers=dict(headers or {}),
            timeout=httpx.Timeout(deadline),
            limits=limits,
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            # Certificates are always verified: there is no option to turn that off.
            verify=True,
        )

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    async def json(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> Any:
        """Send one request and return its decoded JSON body, or raise a `SourceError`."""
        self.health.check()
        async with self._semaphore:
            # The source may have gone down while this request queued.
            self.health.check()
            if self._limiter is not None:
                await self._limiter.acquire()
            try:
                async with asyncio.timeout(deadline or self.deadline):
                    answer = await self._send(method, url, params, body, headers)
            except SourceError as exc:
                if exc.transient:
                    self.health.failed(exc.retry_after)
                else:
                    self.health.succeeded()  # the API answered, if unhappily
                raise
            except TimeoutError:
                self.health.failed(None)
                raise TransientSourceError(
                    "timeout", f"no complete answer within {deadline or self.deadline:g}s"
                ) from None
            except httpx.TransportError as exc:
                self.health.failed(None)
                raise _transport_error(exc) from None
            self.health.succeeded()
            return answer

    async def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        body: Any,
        headers: Mapping[str, str] | None,
    ) -> Any:
        request = self._client.build_request(method, url, params=params, json=body, headers=headers)
        response = await self._client.send(request, stream=True)
        try:
            if response.status_code >= 400 or response.status_code in (204, 304):
                raise _status_error(response, time.time())
            if 300 <= response.status_code < 400:
                raise PermanentSourceError("http", f"HTTP {response.status_code} redirect")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_body:
                    raise PermanentSourceError(
                        "bad_answer", f"answer larger than {self.max_body} bytes"
                    )
                chunks.append(chunk)
        finally:
            await response.aclose()
        raw = b"".join(chunks)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            snippet = "empty" if not raw.strip() else "not JSON"
            raise PermanentSourceError("bad_answer", f"answer is {snippet}") from None


def _transport_error(exc: httpx.TransportError) -> SourceError:
    """Categorise a transport failure, without the URL (which may carry a secret)."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(c, socket.gaierror) for c in chain):
        return TransientSourceError("dns", "the host name cannot be resolved")
    if any(isinstance(c, ssl.SSLError) for c in chain):
        reason = next((c for c in chain if isinstance(c, ssl.SSLError)), None)
        detail = getattr(reason, "reason", None) or "TLS handshake failed"
        # Never retried without verification: a TLS failure stays a failure.
        return PermanentSourceError("tls", f"TLS error: {detail}")
    last = chain[-1]
    detail = str(last).splitlines()[0] if str(last) else type(last).__name__
    dropped = (httpx.RemoteProtocolError, httpx.ReadError, aiohttp.ServerDisconnectedError)
    if any(isinstance(c, dropped) for c in chain):
        return TransientSourceError("network", f"connection dropped: {detail}")
    if any(isinstance(c, ConnectionError) for c in chain):
        return TransientSourceError("network", f"connection failed: {detail}")
    if isinstance(exc, httpx.TimeoutException):
        return TransientSourceError("timeout", f"the request timed out: {detail}")
    return TransientSourceError("network", f"{type(last).__name__}: {detail}")
