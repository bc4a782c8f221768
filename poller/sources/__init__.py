"""Source adapters: one module per job API, registered by name in `SOURCES`.

An adapter turns a batch of watched jobs into one outcome per job. It may answer them with one
request each or with one request for many (where the API allows); either way it never raises
for a job's sake: what went wrong becomes a `PollFailure` for the jobs it concerns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import httpx

from poller.models import JobRef, PollOutcome


@runtime_checkable
class Source(Protocol):
    """What the daemon needs from a job API."""

    async def poll(self, jobs: Sequence[JobRef]) -> Mapping[str, PollOutcome]:
        """Poll these jobs; answer one outcome per job key (a missing key is a poll error)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


#: Builds an adapter from its source config (`config.RulerSource`, ...) and an optional
#: HTTP transport (tests and benchmarks pass one; production uses httpx's default).
SourceFactory = Callable[[Any, httpx.AsyncBaseTransport | None], Source]


def _ruler(config: Any, transport: httpx.AsyncBaseTransport | None) -> Source:
    from poller.sources.ruler import RulerAdapter

    return RulerAdapter(config, transport=transport)


#: The source types this build can poll. Types the config accepts but that are missing here are
#: reported by `poller check` as not yet supported.
SOURCES: Mapping[str, SourceFactory] = {
    "ruler": _ruler,
}


def build_source(config: Any, transport: httpx.AsyncBaseTransport | None = None) -> Source | None:
    """The adapter for one configured source, or None if its type cannot be polled yet."""
    factory = SOURCES.get(config.type)
    return factory(config, transport) if factory else None
