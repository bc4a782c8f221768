"""What a source type is, and the one registry of them.

A source type is declared once, as a `SourceType`: its name (the config's ``type``), its
pydantic config model (a `SourceConfig` subclass), how to build its adapter, and what its jobs
take (a ``site``; bulks and searches). Everything else that used to list the types by hand
reads this registry: the config's source union and its list of type names, the cross-checks of
a job's keys, the CLI's ``--site`` check and the daemon's factory.

This module is low on purpose: `poller.config` imports it to derive its source union and each
type's package imports it to register itself, so it imports neither the config, nor a type's
package, nor any adapter (only the building blocks of `poller.settings`). A type's `build`
imports its adapter's module when it is called (`lazy_build`), which keeps the import graph
free of cycles.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Protocol, TypeVar, Union, runtime_checkable

from pydantic import Field

from poller.errors import SourceError
from poller.models import JobRef, PollFailure, PollOutcome, PollResult
from poller.settings.fields import Count, PositiveDuration, Rate
from poller.settings.polling import Frozen, PollingOverrides

if TYPE_CHECKING:
    from aiohttp.abc import AbstractResolver

    from poller.sources.client import SourceHealth

A = TypeVar("A")
#: the config entry a `Discoverer` lists jobs for (a `config.JobConfig`)
J_contra = TypeVar("J_contra", contravariant=True)


class SourceConfig(Frozen):
    """What every source has: limits on the requests poller sends it and polling overrides.

    The base of every source type's config model (`SourceType.model`), which adds its own
    settings and a ``type`` field typed ``Literal[its name]``. ``rate_limit`` is in requests
    per second (None: no limit); ``request_timeout`` is the overall deadline of one request,
    in seconds.
    """

    if TYPE_CHECKING:
        # each source type's model sets it, as ``Literal[its name]``
        type: str

    max_concurrency: Annotated[Count, Field(ge=1)] = 8
    rate_limit: Rate = None
    request_timeout: PositiveDuration = 30.0
    polling: PollingOverrides = Field(default_factory=PollingOverrides)

    @property
    def continuous(self) -> bool:
        """Whether this source keeps a request outstanding for its jobs (a long poll): then a
        job is asked again as soon as an answer about it came back, whatever ``interval``
        says. False unless a type says otherwise."""
        return False


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
class Discoverer(Protocol[J_contra]):
    """An adapter that can list the jobs a config entry names without ids (bulks, searches)."""

    async def discover(self, job: J_contra) -> Mapping[str, PollResult | None]:
        """The jobs `job` (a `config.JobConfig`) stands for: each id with its state as the
        listing gave it (None if it gave none); raises `SourceError`."""
        ...


@dataclass(frozen=True)
class JobCount:
    """How many of a source's jobs of one type are in one state (the API's own state name)."""

    job_type: str
    state: str
    count: int


@dataclass(frozen=True)
class JobSummary:
    """The counts of a source's jobs by type and state (`Summarizer.summary`); `truncated`
    if the answer listed more than poller reads of it."""

    counts: tuple[JobCount, ...]
    truncated: bool = False


@runtime_checkable
class Summarizer(Protocol):
    """An adapter whose API counts its jobs by type and state (Immuta's ``/jobs/summary``)."""

    async def summary(self, job_types: Sequence[str], since: float | None) -> JobSummary:
        """The counts of the jobs of `job_types` (all if empty) created since `since` (epoch
        seconds; None: all); raises `SourceError` if they cannot be had."""
        ...


@runtime_checkable
class Splitter(Protocol):
    """An adapter that says how a poll group is best cut into requests answered on their own
    (Immuta's long polls: one long job must not hold others' answers back)."""

    def split(self, jobs: Sequence[JobRef]) -> list[list[JobRef]]:
        """`jobs` cut into groups, each polled (and written back) as soon as it is answered."""
        ...


#: The most jobs one discovery of a config entry keeps (a listing that never ends stops here).
MAX_DISCOVERED = 10_000


class Discovered(dict[str, PollResult | None]):
    """What `Discoverer.discover` may answer: the jobs, and whether the listing was
    `complete` (every page read to its end, no job left out for a cap or an unreadable
    entry). Only a complete listing may drop a pruned job's tombstone: a plain mapping
    counts as incomplete."""

    def __init__(self, jobs: Mapping[str, PollResult | None], *, complete: bool) -> None:
        super().__init__(jobs)
        self.complete = complete


def failure_of(exc: SourceError) -> PollFailure:
    """The `PollFailure` a `SourceError` describes."""
    return PollFailure(exc.kind, exc.message, exc.transient, exc.retry_after)


def read_outcome(read: Callable[[A], PollOutcome], answer: A) -> PollOutcome:
    """`read(answer)` for one job, or that job's `PollFailure`; never raises.

    A `SourceError` becomes the failure it describes. Any other exception is one job's data
    that its parser did not foresee (a value of an absurd size or shape): it costs that job's
    poll, as a ``bad_answer``, and not the other jobs polled with it.
    """
    try:
        return read(answer)
    except SourceError as exc:
        return failure_of(exc)
    except Exception as exc:  # see the docstring
        why = f"answer cannot be read ({type(exc).__name__})"
        return PollFailure("bad_answer", why, transient=False)


class Build(Protocol):
    """Builds an adapter from its source config (the type's `SourceType.model`), an optional
    host-name resolver for its HTTP client (tests pass one to send a source's host name to a
    loopback server, or to make the HTTP layer fail; production uses aiohttp's default) and
    the source's breaker (None: one with the defaults)."""

    def __call__(
        self,
        config: SourceConfig,
        resolver: AbstractResolver | None,
        health: SourceHealth | None = None,
    ) -> Source:
        """The adapter."""
        ...


def lazy_build(target: str) -> Build:
    """A `Build` for the adapter class ``"module:Class"``, imported at the first build.

    The class is called as ``Class(config, resolver=..., health=...)``.
    """
    module_name, _, class_name = target.partition(":")

    def build(
        config: SourceConfig,
        resolver: AbstractResolver | None,
        health: SourceHealth | None = None,
    ) -> Source:
        adapter_class = getattr(importlib.import_module(module_name), class_name)
        adapter: Source = adapter_class(config, resolver=resolver, health=health)
        return adapter

    return build


@dataclass(frozen=True)
class SourceType:
    """One source type: everything poller needs to know about it, in one place.

    `model` is its config model: a `SourceConfig` subclass whose ``type`` field is
    ``Literal[name]``. `needs_site`: its jobs are named by a site and an id (``site`` is
    required for a job with an id, and refused by every type that does not take one).
    `takes_site`: its jobs may have a site, and need not (an http source's ``{site}``, the
    first part of a two-part id such as an Airflow dag run's). `discovers`: the job keys
    whose entries it lists the jobs of (``bulk``, ``search``; its adapter is a `Discoverer`),
    and `discovers_with` the source key without which a source of the type lists none
    (http's ``discover``; None: every source of the type lists them).
    `answer_cap`: the most bytes one of its answers may have, decoded (None: the HTTP client's
    default, `client.MAX_BODY_BYTES`).
    """

    name: str
    model: type[SourceConfig]
    build: Build
    needs_site: bool = False
    takes_site: bool = False
    discovers: tuple[str, ...] = ()
    discovers_with: str | None = None
    answer_cap: int | None = None

    def takes(self, key: str, source: Mapping[str, object] | None = None) -> bool:
        """Whether a job of this type may have `key` (of the keys that depend on the type),
        on `source` (its config as written; None: on some source of the type)."""
        if key == "site":
            return self.needs_site or self.takes_site
        if key in ("bulk", "search"):
            needed = self.discovers_with
            listing = needed is None or source is None or source.get(needed) is not None
            return key in self.discovers and listing
        return True


#: The registered source types by name, in registration order (the built-in ones register
#: themselves in their packages, ``poller/sources/<type>/__init__.py``, which
#: `poller.sources` imports).
_REGISTRY: dict[str, SourceType] = {}
_UNIONS: dict[tuple[str, ...], object] = {}


def register(kind: SourceType) -> SourceType:
    """Add a source type; a name already taken is an error (a type is declared once)."""
    if kind.name in _REGISTRY:
        raise ValueError(f"source type {kind.name!r} is already registered")
    _REGISTRY[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a source type (tests that register a throwaway one)."""
    _REGISTRY.pop(name, None)


def source_types() -> tuple[str, ...]:
    """The names of the registered source types, in registration order."""
    return tuple(_REGISTRY)


def source_type(name: str) -> SourceType | None:
    """The registered source type `name`, or None."""
    return _REGISTRY.get(name)


def registered() -> Mapping[str, SourceType]:
    """Every registered source type, by name (a read-only view)."""
    return _REGISTRY.copy()


def source_union() -> object:
    """The pydantic annotation of one source config of any registered type, told apart by its
    ``type``; the same object for as long as the registry does not change."""
    names = source_types()
    union: object = _UNIONS.get(names)
    if union is None:
        models = tuple(kind.model for kind in _REGISTRY.values())
        # a discriminated union needs two members; with one it is that model alone
        if len(models) > 1:
            union = Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007
        else:
            union = models[0]
        _UNIONS[names] = union
    return union
