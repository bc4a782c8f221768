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
import time
from collections.abc import Mapping
from typing import Any

import httpx
from aiolimiter import AsyncLimiter

from poller.errors import PermanentSourceError, SourceError, TransientSourceError

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
    ) -> None:
        self.deadline = deadline
        self.max_body = max_body
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._limiter = AsyncLimiter(rate_limit, 1.0) if rate_limit else None
        self._client = httpx.AsyncClient(
            headers=dict(headers or {}),
            timeout=httpx.Timeout(deadline),
            limits=httpx.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
            transport=transport,
            follow_redirects=False,
            trust_env=False,
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
        async with self._semaphore:
            if self._limiter is not None:
                await self._limiter.acquire()
            try:
                async with asyncio.timeout(deadline or self.deadline):
                    return await self._send(method, url, params, body, headers)
            except TimeoutError:
                raise TransientSourceError(
                    "timeout", f"no complete answer within {deadline or self.deadline:g}s"
                ) from None
            except httpx.TimeoutException:
                raise TransientSourceError("timeout", "the request timed out") from None
            except httpx.TransportError as exc:
                raise TransientSourceError("network", _transport_message(exc)) from None

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


def _transport_message(exc: httpx.TransportError) -> str:
    """Describe a transport failure without the URL (which may carry a secret)."""
    name = type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    detail = str(cause or exc).splitlines()[0] if str(cause or exc) else ""
    return f"{name}: {detail}" if detail else name
