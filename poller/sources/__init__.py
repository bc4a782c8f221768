"""Source types: one package per job API (its config model, its adapter and its registration
in `poller.sources.base`), and the daemon's way to build an adapter for a configured source.

An adapter turns a batch of watched jobs into one outcome per job. It may answer them with one
request each or with one request for many (where the API allows); either way it never raises
for a job's sake: what went wrong becomes a `PollFailure` for the jobs it concerns.

An adapter whose API can list jobs (Immuta's bulks and searches, an http source's
``discover``) is also a `Discoverer`:
`poller.engine.discovery` asks it which jobs a config entry stands for. One that long-polls
(Immuta with ``long_poll``) is also a `Splitter`: the poll engine asks it how to cut a poll
group into requests that are answered, and written back, each on its own. One whose API
counts its jobs by type and state is a `Summarizer` (``poller summary``).

Adding a source type: a package ``poller/sources/<type>/`` with its config model
(``config.py``, a `SourceConfig` subclass), its adapter (``adapter.py``) and, in its
``__init__.py``, one `base.register(SourceType(...))`; and one import line below. The
config, the cross-checks, the CLI and the daemon read the registry.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from aiohttp.abc import AbstractResolver

from poller.sources.base import (
    Build,
    Discoverer,
    JobCount,
    JobSummary,
    Source,
    SourceConfig,
    SourceType,
    Splitter,
    Summarizer,
    read_outcome,
    registered,
    source_type,
)
from poller.sources.client import MAX_BODY_BYTES, MAX_PAUSE, SourceHealth

# The built-in source types, in the order they register (the order `SOURCE_TYPES` lists and
# messages name them in). Each package imports its config model; its adapter is imported at
# the first build. A new type is one more line here.
# isort: off
from poller.sources import ruler as ruler
from poller.sources import immuta as immuta
from poller.sources import http as http
# isort: on

__all__ = [
    "SOURCES",
    "Discoverer",
    "JobCount",
    "JobSummary",
    "Source",
    "SourceConfig",
    "SourceType",
    "Splitter",
    "Summarizer",
    "answer_cap",
    "answer_memory",
    "build_source",
    "read_outcome",
]


class _Builders(Mapping[str, Build]):
    """Each registered source type's `build`, by type name; follows the registry."""

    def __getitem__(self, name: str) -> Build:
        kind = source_type(name)
        if kind is None:
            raise KeyError(name)
        return kind.build

    def __iter__(self) -> Iterator[str]:
        return iter(registered())

    def __len__(self) -> int:
        return len(registered())


#: The source types this build can poll: every registered one.
SOURCES: Mapping[str, Build] = _Builders()


def _kind(name: str) -> SourceType:
    # the config accepts only registered types, so a config's source always has one
    kind = source_type(name)
    if kind is None:
        raise LookupError(f"source type {name!r} is not registered")
    return kind


def answer_cap(type_name: str) -> int:
    """The most bytes one answer of a source of this type may have, decoded."""
    cap = _kind(type_name).answer_cap
    return MAX_BODY_BYTES if cap is None else cap


def answer_memory(sources: Mapping[str, SourceConfig]) -> int:
    """The most answer bytes the daemon can hold at once (decoded, before parsing): each
    polled source's cap times its ``max_concurrency`` (its requests in flight), summed."""
    return sum(answer_cap(s.type) * s.max_concurrency for s in sources.values())


def build_source(
    config: SourceConfig,
    resolver: AbstractResolver | None = None,
    *,
    max_pause: float = MAX_PAUSE,
) -> Source:
    """The adapter for one configured source (a config of a registered type).

    `max_pause` bounds how long the source's breaker may pause it after failed probes: the
    source's ``max_interval``, so that no watch is held longer than its user allowed (and
    never longer than `MAX_PAUSE`).
    """
    from poller.redact import register_logged, secrets_of

    # its token and header values stay out of every log line, whatever library logs them
    register_logged(secrets_of(config))
    build = _kind(config.type).build
    return build(config, resolver, SourceHealth(cap=min(max_pause, MAX_PAUSE)))
