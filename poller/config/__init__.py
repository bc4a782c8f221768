"""Loading and validating the config file (SPEC.md, "The config file").

`load_config` reads the YAML, replaces ``${VAR}`` references in values, reads ``x_file`` keys
(except in ``states``, ``detail`` and ``body``, whose keys are the user's data), validates
every part with pydantic and then the cross-references pydantic cannot see (a job's source, a
rule's channels, duplicate jobs...). It returns a frozen `Config` or raises one `ConfigError`
that lists every problem with its ``file:line``, its key path and what was expected.

The models are the typed view the rest of poller reads. They may also be built directly (tests,
``poller add``); they validate the same way, only without line numbers.

Secrets: a problem quotes only values that are never secrets (choices, numbers, durations,
rates, states and names), and only when they were written in the file; as a last guard, every
value that came from the environment or from an ``x_file`` is masked in every problem before it
is raised. Every file the config names is read only if it is a regular file, up to a limit
(`VALUE_FILE_LIMIT`, `CONFIG_FILE_LIMIT`).

One room per job: `units` (durations, rates and the field types), `models` (the pydantic
models), `crosschecks` (what one part says about another), `document` (the YAML read with
its lines, ``${VAR}`` and ``x_file``), `problems` (pydantic's errors in words) and, here, the
orchestration of a load and the names the rest of poller imports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from poller.config.crosschecks import policy_problems, reference_problems
from poller.config.document import CONFIG_FILE_LIMIT, VALUE_FILE_LIMIT, Document
from poller.config.models import (
    CROSS_CHECKED,
    LOG_LEVELS,
    SOURCE_TYPES,
    TEXT_AS_WRITTEN,
    TOP_LEVEL_KEYS,
    AnySource,
    ChannelConfig,
    Config,
    DeliveryConfig,
    DigestConfig,
    HttpExpressions,
    HttpSource,
    ImmutaSource,
    JobConfig,
    LogConfig,
    PollingDefaults,
    PollingOverrides,
    ReplicasConfig,
    Rule,
    RulerSource,
    SearchSpec,
    SourceConfig,
    TemplateConfig,
)
from poller.config.paths import KeyPath
from poller.config.problems import Checker, describe_error, final_problems, unknown_key
from poller.config.units import (
    TEMPLATE_FIELDS,
    ChannelUrl,
    DatabaseUrl,
    default_database_url,
    format_duration,
    parse_duration,
    parse_rate,
    resolve_database_url,
)
from poller.errors import ConfigError
from poller.models import text_problem

__all__ = [
    "CONFIG_FILE_LIMIT",
    "SOURCE_TYPES",
    "TEMPLATE_FIELDS",
    "VALUE_FILE_LIMIT",
    "AnySource",
    "ChannelConfig",
    "Config",
    "DeliveryConfig",
    "DigestConfig",
    "HttpExpressions",
    "HttpSource",
    "ImmutaSource",
    "JobConfig",
    "LogConfig",
    "PollingDefaults",
    "PollingOverrides",
    "ReplicasConfig",
    "Rule",
    "RulerSource",
    "SearchSpec",
    "SourceConfig",
    "TemplateConfig",
    "default_database_url",
    "format_duration",
    "load_config",
    "parse_duration",
    "parse_rate",
    "resolve_database_url",
]


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    if annotation not in _ADAPTERS:
        _ADAPTERS[annotation] = TypeAdapter(annotation)
    return _ADAPTERS[annotation]


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Config:
    """Reads and validates the config file at `path`.

    `environ` (default: ``os.environ``) provides ``${VAR}`` references and
    ``POLLER_LOG_LEVEL``. The database is ``poller.db`` next to the file unless ``database``
    says otherwise; a relative SQLite path there is relative to the file too. Raises
    `ConfigError` listing every problem, ordered by line.
    """
    environ = os.environ if environ is None else environ
    file = os.fspath(path)
    doc = Document(file, environ, TEXT_AS_WRITTEN)
    if doc.read():
        config = _check(doc, environ)
        if config is not None and not doc.problems:
            return config
    raise ConfigError(final_problems(doc))


def _check_name(doc: Document, part: str, path: KeyPath) -> None:
    """A source or channel name the store could not hold (`poller.models.text_problem`)."""
    name = path[-1]
    problem = text_problem(part, name) if isinstance(name, str) else None
    if problem is not None:
        doc.problem(path, f"the {part} name {problem}")


def _check(doc: Document, environ: Mapping[str, str]) -> Config | None:
    checker = Checker(doc)
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        doc.problem((), f"expected a mapping with the keys {', '.join(TOP_LEVEL_KEYS)}")
        return None
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            doc.problem((key,), unknown_key(key, TOP_LEVEL_KEYS))

    database = data.get("database")
    if database is not None:
        database = checker.validate(_adapter(DatabaseUrl), database, ("database",), DatabaseUrl)

    sources: dict[str, Any] = {}
    raw_sources = checker.section(data, "sources", dict, "expected a mapping of source names")
    for name, value in raw_sources.items():
        _check_name(doc, "source", ("sources", name))
        sources[name] = checker.validate(_adapter(AnySource), value, ("sources", name), AnySource)

    channels: dict[str, Any] = {}
    channel_templates: dict[str, TemplateConfig] = {}
    raw_channels = checker.section(data, "channels", dict, "expected a mapping of channel names")
    for name, value in raw_channels.items():
        _check_name(doc, "channel", ("channels", name))
        if isinstance(value, Mapping):
            channel = checker.validate(
                _adapter(ChannelConfig), value, ("channels", name), ChannelConfig
            )
            channels[name] = channel.url if channel is not None else None
            if channel is not None and channel.template is not None:
                channel_templates[name] = channel.template
        else:
            channels[name] = checker.validate(
                _adapter(ChannelUrl), value, ("channels", name), ChannelUrl
            )

    rules = [
        checker.validate(_adapter(Rule), value, ("rules", i), Rule)
        for i, value in enumerate(checker.section(data, "rules", list, "expected a list of rules"))
    ]
    polling = checker.validate(
        _adapter(PollingDefaults),
        checker.section(data, "polling", dict, "expected a mapping of polling timings"),
        ("polling",),
        PollingDefaults,
    )
    delivery = checker.validate(
        _adapter(DeliveryConfig),
        checker.section(data, "delivery", dict, "expected a mapping of delivery settings"),
        ("delivery",),
        DeliveryConfig,
    )
    replicas = checker.validate(
        _adapter(ReplicasConfig),
        checker.section(data, "replicas", dict, "expected a mapping with lease"),
        ("replicas",),
        ReplicasConfig,
    )
    jobs = [
        checker.validate(_adapter(JobConfig), value, ("jobs", i), JobConfig)
        for i, value in enumerate(checker.section(data, "jobs", list, "expected a list of jobs"))
    ]
    log = checker.validate(
        _adapter(LogConfig),
        checker.section(data, "log", dict, "expected a mapping with level and format"),
        ("log",),
        LogConfig,
    )
    level = environ.get("POLLER_LOG_LEVEL", "").strip().lower()
    if level and level not in LOG_LEVELS:
        doc.problems.append(
            (("POLLER_LOG_LEVEL",), None, f"expected one of: {', '.join(LOG_LEVELS)}")
        )
    elif level and log is not None:
        log = log.model_copy(update={"level": level})

    def quote(path: KeyPath, name: str) -> str:
        return "" if path in doc.tainted else f" {name!r}"

    for found_path, message in reference_problems(
        data, SOURCE_TYPES, quote=quote, line_of=doc.line_of
    ):
        doc.problem(found_path, message)
    valid_sources = {n: s for n, s in sources.items() if s is not None}
    valid_jobs = [(i, job) for i, job in enumerate(jobs) if job is not None]
    for found_path, message in policy_problems(polling, valid_sources, valid_jobs):
        doc.problem(found_path, message)

    parts = (
        polling,
        delivery,
        replicas,
        log,
        *sources.values(),
        *channels.values(),
        *rules,
        *jobs,
    )
    if doc.problems or any(part is None for part in parts):
        return None
    try:
        return Config.model_validate(
            {
                "path": doc.file,
                # none given: Config puts it next to the config file
                **({"database": database} if database is not None else {}),
                "sources": sources,
                "channels": channels,
                "rules": tuple(rules),
                "polling": polling,
                "delivery": delivery,
                "replicas": replicas,
                "jobs": tuple(jobs),
                "log": log,
                "channel_templates": channel_templates,
            },
            # the cross-checks ran above, on the file, with lines
            context={CROSS_CHECKED: True},
        )
    except ValidationError as exc:
        # the checks above are Config's own, part by part; this is only a safety net
        for error in exc.errors(include_url=False, include_input=False):
            doc.problem(tuple(error["loc"]), describe_error(error, Config))
        return None
