"""The cross-checks: what one part of a config says about another that pydantic cannot see.

A rule's channels and sources, a job's source and the keys its source type allows, the same
job listed twice, and polling timings that clash once a source's or a job's overrides are
merged. They run once per load, on the parsed file (so that a file with broken parts still
gets every other part checked), or on a model built directly (`Config`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from poller.settings.fields import as_text
from poller.settings.paths import KeyPath
from poller.sources.base import registered, source_type
from poller.units import format_duration

_Kind = TypeVar("_Kind")

if TYPE_CHECKING:
    from poller.settings.polling import PollingDefaults, PollingOverrides
    from poller.sources.base import SourceConfig


class _PolledJob(Protocol):
    """What `policy_problems` reads of a job (a `config.JobConfig`, which sits above this
    module: the models call these checks)."""

    @property
    def source(self) -> str:
        """The job's source name."""
        ...

    @property
    def polling(self) -> PollingOverrides:
        """The job's own polling overrides."""
        ...


def _choices(what: str, known: Iterable[str]) -> str:
    names = sorted(known)
    return f"expected one of: {', '.join(names)}" if names else f"no {what}s are configured"


def _references(value: object) -> Iterator[tuple[KeyPath, str]]:
    """The names in a one-or-many field, with their index (none for a single string)."""
    if isinstance(value, str):
        yield (), value
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if isinstance(item, str):
                yield (index,), item


#: How a name is shown in a message, given its path ("" if it must not be shown).
Quote = Callable[[KeyPath, str], str]


def reference_problems(
    data: Mapping[str, Any],
    source_types: Collection[str],
    *,
    quote: Quote = lambda path, name: f" {name!r}",
    line_of: Callable[[KeyPath], int | None] = lambda path: None,
) -> list[tuple[KeyPath, str]]:
    """What one part of the config says about another that is not there or does not fit.

    Works on plain data (the parsed YAML, or a model dump) so that a file with broken parts
    still gets every other part checked; `quote` renders a name for a message ("" if it must
    not be shown). A source whose type is not one of `source_types` is reported by its own
    check, so its jobs are not checked against it.
    """

    def section(name: str, kind: type[_Kind]) -> _Kind:
        value = data.get(name)
        return value if isinstance(value, kind) else kind()

    sources: dict[str, Any] = section("sources", dict)
    types = {
        name: value.get("type") if isinstance(value, Mapping) else None
        for name, value in sources.items()
    }
    channels: dict[str, Any] = section("channels", dict)
    found = _rule_problems("rules", section("rules", list), channels, types, quote)
    found += _rule_problems("reports", section("reports", list), channels, types, quote)
    named: dict[str, int] = {}
    for i, report in enumerate(section("reports", list)):
        name = report.get("name") if isinstance(report, Mapping) else None
        if not isinstance(name, str):
            continue
        if name in named:
            found.append((("reports", i, "name"), f"reports[{named[name]}] has this name too"))
        named.setdefault(name, i)

    seen: dict[tuple[str | None, ...], int] = {}
    for i, job in enumerate(section("jobs", list)):
        if not isinstance(job, Mapping) or not isinstance(job.get("source"), str):
            continue
        source = job["source"]
        if source not in types:
            path: KeyPath = ("jobs", i, "source")
            found.append(
                (path, f"unknown source{quote(path, source)}; {_choices('source', types)}")
            )
            continue
        kind = types[source]
        if kind not in source_types:
            continue  # the source itself is reported
        source_config = sources[source]
        found += _kind_problems(
            i, job, str(kind), source_config if isinstance(source_config, Mapping) else {}
        )
        identity = _identity(job, source)
        if identity is None:
            continue
        if identity in seen:
            first = seen[identity]
            line = line_of(("jobs", first))
            where = f"jobs[{first}]" + (f" (line {line})" if line else "")
            found.append((("jobs", i), f"the same job as {where}; list each job once"))
        else:
            seen[identity] = i
    return found


def _rule_problems(
    kind: str,
    rules: list[Any],
    channels: Mapping[str, Any],
    types: Mapping[str, Any],
    quote: Quote,
) -> list[tuple[KeyPath, str]]:
    """The channels and sources rules (or reports: `kind`) name that are not configured."""
    found: list[tuple[KeyPath, str]] = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, Mapping):
            continue
        for key, known, what in (("notify", channels, "channel"), ("sources", types, "source")):
            for sub, name in _references(rule.get(key)):
                if name not in known:
                    path: KeyPath = (kind, i, key, *sub)
                    found.append(
                        (path, f"unknown {what}{quote(path, name)}; {_choices(what, known)}")
                    )
    return found


def _kind_problems(
    i: int, job: Mapping[str, Any], name: str, source: Mapping[str, Any]
) -> list[tuple[KeyPath, str]]:
    """The keys of job `i` that its source's type (registered as `name`) requires or does not
    take: a ``site`` for a type whose jobs need one, ``bulk`` and ``search`` for a type (and
    a `source`, as written) that discovers jobs (`sources.base.SourceType`)."""

    def given(key: str) -> bool:
        return job.get(key) is not None

    kind = source_type(name)
    if kind is None:
        return []  # the source itself is reported
    found: list[tuple[KeyPath, str]] = []
    if kind.needs_site and not given("site") and not given("bulk") and not given("search"):
        found.append((("jobs", i, "site"), f"required for {a_source(name)}"))
    for key in ("site", "bulk", "search"):
        if given(key) and kind.takes(key) and not kind.takes(key, source):
            needs = f"needs its source to have {kind.discovers_with}"
            why = f"{a_source(name)} lists no jobs without it"
            found.append((("jobs", i, key), f"{needs} ({why})"))
        elif given(key) and not kind.takes(key):
            takers = [n for n, other in registered().items() if other.takes(key)]
            found.append((("jobs", i, key), f"only for {a_source(*takers)}; this one is {name}"))
    return found


def a_source(*names: str) -> str:
    """``a ruler source``, ``an immuta source``, ``a ruler or x source``: for messages."""
    # "an http source": the name is read letter by letter
    article = "an" if names and (names[0][:1] in "aeiou" or names[0] == "http") else "a"
    return f"{article} {' or '.join(names)} source"


def _identity(job: Mapping[str, Any], source: str) -> tuple[str | None, ...] | None:
    """What makes a listed job the same as another: its id (and site), or its bulk."""
    job_id, site, bulk = (as_text(job.get(k)) for k in ("id", "site", "bulk"))
    if isinstance(job_id, str):
        return ("id", source, site if isinstance(site, str) else None, job_id)
    if isinstance(bulk, str):
        return ("bulk", source, bulk)
    return None


def policy_problems(
    polling: PollingDefaults | None,
    sources: Mapping[str, SourceConfig],
    jobs: Sequence[tuple[int, _PolledJob]],
) -> list[tuple[KeyPath, str]]:
    """max_interval below interval once a source's or a job's overrides are merged."""
    if polling is None:
        return []
    found: list[tuple[KeyPath, str]] = []

    def check(prefix: KeyPath, base: dict[str, float], own: PollingOverrides) -> None:
        merged = base | own.as_dict()
        # both set on one level is already reported by that level's own check
        if (own.interval is None) == (own.max_interval is None):
            return
        if merged["max_interval"] < merged["interval"]:
            key = "interval" if own.interval is not None else "max_interval"
            found.append(
                (
                    (*prefix, "polling", key),
                    f"makes max_interval ({format_duration(merged['max_interval'])}) shorter "
                    f"than interval ({format_duration(merged['interval'])})",
                )
            )

    defaults = polling.model_dump()
    for name, source in sources.items():
        check(("sources", name), defaults, source.polling)
    for i, job in jobs:
        own_source = sources.get(job.source)
        base = defaults | (own_source.polling.as_dict() if own_source is not None else {})
        check(("jobs", i), base, job.polling)
    return found
