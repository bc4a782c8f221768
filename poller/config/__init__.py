"""Loading and validating the config file (README "Config reference", config.example.yaml).

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

One room per job: `models` (the pydantic models of the config's parts), `crosschecks` (what
one part says about another), `document` (the YAML read with its lines, ``${VAR}`` and
``x_file``), `problems` (pydantic's errors in words) and, here, the orchestration of a load
and the names the rest of poller imports. The building blocks of the models (field types, key
paths, polling timings) are in `poller.settings`; each source type's model is in its own
package of `poller.sources`, which this package imports so that the built-in types are
registered.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar, overload

from pydantic import BaseModel, ValidationError

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
    HttpConfig,
    JobConfig,
    LogConfig,
    ReplicasConfig,
    ReportConfig,
    Rule,
    TemplateConfig,
)
from poller.config.problems import Checker, adapter, describe_error, final_problems, unknown_key
from poller.errors import ConfigError
from poller.models import text_problem
from poller.settings.fields import (
    TEMPLATE_FIELDS,
    ChannelUrl,
    DatabaseUrl,
    Duration,
    default_database_url,
    parse_duration,
    parse_rate,
    resolve_database_url,
)
from poller.settings.paths import KeyPath
from poller.settings.polling import PollingDefaults, PollingOverrides
from poller.sources.base import source_types, source_union
from poller.units import format_duration

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
    "HttpConfig",
    "JobConfig",
    "LogConfig",
    "PollingDefaults",
    "PollingOverrides",
    "ReplicasConfig",
    "ReportConfig",
    "Rule",
    "TemplateConfig",
    "default_database_url",
    "format_duration",
    "load_config",
    "parse_duration",
    "parse_rate",
    "resolve_database_url",
]


_Model = TypeVar("_Model", bound=BaseModel)


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
    """The `Config` of a read document, or None with its problems recorded in `doc`."""
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
        database = _validate(checker, DatabaseUrl, database, ("database",))
    sources = _sources(checker, data)
    channels, channel_templates = _channels(checker, data)
    rules = _list(checker, data, "rules", Rule, "expected a list of rules")
    polling = _mapping(
        checker, data, "polling", PollingDefaults, "expected a mapping of polling timings"
    )
    delivery = _mapping(
        checker, data, "delivery", DeliveryConfig, "expected a mapping of delivery settings"
    )
    replicas = _mapping(checker, data, "replicas", ReplicasConfig, "expected a mapping with lease")
    http = _mapping(
        checker, data, "http", HttpConfig, "expected a mapping with listen and token_file"
    )
    jobs = _list(checker, data, "jobs", JobConfig, "expected a list of jobs")
    reports = _list(checker, data, "reports", ReportConfig, "expected a list of reports")
    log = _mapping(checker, data, "log", LogConfig, "expected a mapping with level and format")
    log = _environment_level(doc, environ, log)
    retention = data.get("retention")
    if retention is not None:
        retention = _validate(checker, Duration, retention, ("retention",))
    _cross_check(doc, data, polling, sources, jobs)

    parts = (
        polling,
        delivery,
        replicas,
        http,
        log,
        *sources.values(),
        *channels.values(),
        *rules,
        *jobs,
        *reports,
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
                "http": http,
                "jobs": tuple(jobs),
                "reports": tuple(reports),
                "log": log,
                **({"retention": retention} if retention is not None else {}),
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


@overload
def _validate(
    checker: Checker, annotation: type[_Model], value: object, prefix: KeyPath
) -> _Model | None: ...
@overload
def _validate(checker: Checker, annotation: object, value: object, prefix: KeyPath) -> object: ...
def _validate(checker: Checker, annotation: object, value: object, prefix: KeyPath) -> object:
    """`value` validated as `annotation`, or None with its problems recorded."""
    return checker.validate(adapter(annotation), value, prefix, annotation)


def _mapping(
    checker: Checker, data: Mapping[str, Any], key: str, model: type[_Model], hint: str
) -> _Model | None:
    """The top-level mapping `key` validated as `model` (absent: its defaults), or None."""
    value = checker.section(data, key, dict, hint)
    validated: _Model | None = _validate(checker, model, value, (key,))
    return validated


def _list(
    checker: Checker, data: Mapping[str, Any], key: str, model: type[_Model], hint: str
) -> list[_Model | None]:
    """Each item of the top-level list `key` validated as `model` (None where it is not)."""
    items = checker.section(data, key, list, hint)
    return [_validate(checker, model, value, (key, i)) for i, value in enumerate(items)]


def _sources(checker: Checker, data: Mapping[str, Any]) -> dict[str, Any]:
    """Each source by name, validated as its type's model (None where it is not)."""
    sources: dict[str, Any] = {}
    raw = checker.section(data, "sources", dict, "expected a mapping of source names")
    for name, value in raw.items():
        _check_name(checker.doc, "source", ("sources", name))
        sources[name] = _validate(checker, source_union(), value, ("sources", name))
    return sources


def _channels(
    checker: Checker, data: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, TemplateConfig]]:
    """Each channel's URL by name (None where it is not valid), and the channels' templates.

    A channel is its Apprise URL, or a mapping with its URL and a template.
    """
    channels: dict[str, Any] = {}
    templates: dict[str, TemplateConfig] = {}
    raw = checker.section(data, "channels", dict, "expected a mapping of channel names")
    for name, value in raw.items():
        _check_name(checker.doc, "channel", ("channels", name))
        if not isinstance(value, Mapping):
            channels[name] = _validate(checker, ChannelUrl, value, ("channels", name))
            continue
        channel = _validate(checker, ChannelConfig, value, ("channels", name))
        channels[name] = channel.url if channel is not None else None
        if channel is not None and channel.template is not None:
            templates[name] = channel.template
    return channels, templates


def _environment_level(
    doc: Document, environ: Mapping[str, str], log: LogConfig | None
) -> LogConfig | None:
    """`log` with the level ``POLLER_LOG_LEVEL`` gives, which wins over the file's."""
    level = environ.get("POLLER_LOG_LEVEL", "").strip().lower()
    if level and level not in LOG_LEVELS:
        doc.problems.append(
            (("POLLER_LOG_LEVEL",), None, f"expected one of: {', '.join(LOG_LEVELS)}")
        )
    elif level and log is not None:
        log = log.model_copy(update={"level": level})
    return log


def _cross_check(
    doc: Document,
    data: Mapping[str, Any],
    polling: PollingDefaults | None,
    sources: Mapping[str, Any],
    jobs: list[Any],
) -> None:
    """Records what one part of the file says about another (`crosschecks`), with lines.

    They run on the file's data, so that a file with broken parts still gets every other part
    checked, and only here: `Config` is then told not to run them again.
    """

    def quote(path: KeyPath, name: str) -> str:
        return "" if path in doc.tainted else f" {name!r}"

    for found_path, message in reference_problems(
        data, source_types(), quote=quote, line_of=doc.line_of
    ):
        doc.problem(found_path, message)
    valid_sources = {n: s for n, s in sources.items() if s is not None}
    valid_jobs = [(i, job) for i, job in enumerate(jobs) if job is not None]
    for found_path, message in policy_problems(polling, valid_sources, valid_jobs):
        doc.problem(found_path, message)
