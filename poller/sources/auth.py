"""How a source proves who it is: an `httpx.Auth` per source.

The static headers of the built-in sources (a bearer token, Immuta's API key, the generic
source's `headers`) are one `StaticHeaders`; Basic authentication is `httpx.BasicAuth`. Each is
applied by the source's `httpx.AsyncClient` to every request it sends, so an adapter never
handles a secret itself.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping

import httpx


class StaticHeaders(httpx.Auth):
    """Sets the same headers on every request (an API key, a bearer token)."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._items = list(headers.items())

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Set the headers, then send the request once."""
        headers = request.headers
        for name, value in self._items:  # one at a time: cheaper than merging a Headers
            headers[name] = value
        yield request


def bearer(token: str) -> StaticHeaders:
    """``Authorization: Bearer TOKEN``."""
    return StaticHeaders({"Authorization": f"Bearer {token}"})
