"""Source adapters: one module per job API, registered by name in `SOURCES`.

An adapter turns a batch of watched jobs into one outcome per job. It may answer them with one
request each or with one request for many (where the API allows); either way it never raises
for a job's sake: what went wrong becomes a `PollFailure` for the jobs it concerns.

An adapter whose API can list jobs (Immuta's bulks and searches) is also a `Discoverer`:
`poller.discovery` asks it which jobs a config entry stands for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from aiohttp.abc import AbstractResolver

from poller.errors import SourceError
from poller.models import JobRef, PollFailure, PollOutcome
from poller.sources.client import MAX_PAUSE, SourceHealth

A = TypeVar("A")


@runtime_checkable
class Source(Protocol):
    """What the daemon needs from a job API."""

    async def poll(self, jobs: Sequence[JobRef]) -> Mapping[str, PollOutcome]:
        """Poll these jobs; answer one outcome per job key (a missing key is a poll error)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class Discoverer(Protocol):
    """An adapter that can list the jobs a config entry names without ids (bulks, searches)."""

    async def discover(self, job: Any) -> list[str]:
        """The ids of the jobs `job` (a `config.JobConfig`) stands for; raises `SourceError`."""
        ...


def read_outcome(read: Callable[[A], PollOutcome], answer: A) -> PollOutcome:
    """`read(answer)` for one job, or that job's `PollFailure`; never raises.

    A `SourceError` becomes the failure it describes. Any other exception is one job's data
    that its parser did not foresee (a value of an absurd size or shape): it costs that job's
    poll, as a ``bad_answer``, and not the other jobs polled with it.
    """
    try:
        return read(answer)
    except SourceError as exc:
        return PollFailure(exc.kind, exc.message, exc.transient, exc.retry_after)
    except Exception as exc:  # see the docstring
        why = f"answer cannot be read ({type(exc).__name__})"
        return PollFailure("bad_answer", why, transient=False)


class SourceFactory(Protocol):
    """Builds an adapter from its source config (`config.RulerSource`, ...), an optional
    host-name resolver for its HTTP client (tests pass one to send a source's host name to a
    loopback server, or to make the HTTP layer fail; production uses aiohttp's default) and
    the source's breaker (None: one with the defaults)."""

    def __call__(
        self, config: Any, resolver: AbstractResolver | None, health: SourceHealth | None = None
    ) -> Source:
        """The adapter."""
        ...


def _ruler(
    config: Any, resolver: AbstractResolver | None, health: SourceHealth | None = None
) -> Source:
    from poller.sources.ruler import RulerAdapter

    return RulerAdapter(config, resolver=resolver, health=health)


def _immuta(
    config: Any, resolver: AbstractResolver | None, health: SourceHealth | None = None
) -> Source:
    from poller.sources.immuta import ImmutaAdapter

    return ImmutaAdapter(config, resolver=resolver, health=health)


def _http(
    config: Any, resolver: AbstractResolver | None, health: SourceHealth | None = None
) -> Source:
    from poller.sources.http import HttpAdapter

    return HttpAdapter(config, resolver=resolver, health=health)


#: The source types this build can poll. Types the config accepts but that are missing here are
#: reported by `poller check` as not yet supported.
SOURCES: Mapping[str, SourceFactory] = {
    "ruler": _ruler,
    "immuta": _immuta,
    "http": _http,
}


def answer_cap(source_type: str) -> int:
    """The most bytes one answer of a source of this type may have, decoded."""
    if source_type == "ruler":  # a site's job list is bigger than one status
        from poller.sources.ruler import MAX_BODY_BYTES

        return MAX_BODY_BYTES
    from poller.sources.client import MAX_BODY_BYTES as default

    return default


def answer_memory(sources: Mapping[str, Any]) -> int:
    """The most answer bytes the daemon can hold at once (decoded, before parsing): each
    polled source's cap times its ``max_concurrency`` (its requests in flight), summed."""
    return sum(
        answer_cap(s.type) * s.max_concurrency for s in sources.values() if s.type in SOURCES
    )


def build_source(
    config: Any, resolver: AbstractResolver | None = None, *, max_pause: float = MAX_PAUSE
) -> Source | None:
    """The adapter for one configured source, or None if its type cannot be polled yet.

    `max_pause` bounds how long the source's breaker may pause it after failed probes: the
    source's ``max_interval``, so that no watch is held longer than its user allowed (and
    never longer than `MAX_PAUSE`).
    """
    from poller.redact import register_logged, secrets_of

    # its token and header values stay out of every log line, whatever library logs them
    register_logged(secrets_of(config))
    factory = SOURCES.get(config.type)
    if factory is None:
        return None
    return factory(config, resolver, SourceHealth(cap=min(max_pause, MAX_PAUSE)))
