"""The pydantic models of a config: the typed, frozen view the rest of poller reads.

`load_config` builds them from a file; they may also be built directly (tests, ``poller add``)
and validate the same way, only without line numbers.

A config's sources are validated against every registered source type (`poller.sources`,
whose packages hold each built-in type's model and register it); the other parts' models
are here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_validator,
)

from poller.config.crosschecks import policy_problems, reference_problems
from poller.config.problems import adapter
from poller.engine.scheduling import CronTrigger, cron_trigger, zone
from poller.models import Event, Policy, key_problem, watch_key
from poller.notify import MessageTemplate, check_template, compile_template
from poller.settings.fields import (
    ChannelUrl,
    Count,
    DatabaseUrl,
    Duration,
    ListenAddress,
    NonEmptyNames,
    OptionalNames,
    PositiveDuration,
    Text,
    Token,
    Written,
    as_text,
    default_database_url,
    one_or_many,
    resolve_database_url,
    watch_part,
)
from poller.settings.paths import Pattern, as_written, format_path
from poller.settings.polling import Frozen, PollingDefaults, PollingOverrides

# importing the sources package registers the built-in source types (one package each)
from poller.sources import SourceConfig
from poller.sources.base import source_types, source_union
from poller.sources.immuta import SearchSpec
from poller.units import format_duration

#: The most watches one section of a report may name (``max_jobs``): a message stays a message.
MAX_REPORT_JOBS = 200

#: The validation context key that tells `Config` its parts were cross-checked already
#: (`load_config` checks the file itself, so that each problem has its line): the checks
#: run once per load.
CROSS_CHECKED = "cross_checked"


#: The built-in source types' names (`sources.base.source_types()` has those registered since).
SOURCE_TYPES = source_types()
#: the `Policy` fields a job's or a source's ``polling`` may set (not ``continuous``)
_OVERRIDABLE = frozenset(f.name for f in dataclasses.fields(Policy)) - {"continuous"}
#: One source of a built-in type, told apart by its ``type`` (`sources.base.source_union()`
#: has those registered since).
AnySource = source_union()


def _one_source(value: object) -> object:
    """A source's mapping validated as its registered type's model (a model passes as is)."""
    if isinstance(value, SourceConfig):
        return value
    return adapter(source_union()).validate_python(value)


#: A source of any registered type, in a `Config`. The union is read from the registry when a
#: config is validated, so that a type registered after this module was imported is accepted.
RegisteredSource = Annotated[SerializeAsAny[SourceConfig], BeforeValidator(_one_source)]


class TemplateConfig(Frozen):
    """A message template: Jinja2 (sandboxed) `title` and/or `body` over the documented
    variables (`notify.TEMPLATE_VARIABLES`); what it leaves out is poller's own text.

    ``format`` is how the body is written: ``text``, or ``markdown`` (variables are then
    escaped for Markdown). Each template is compiled and tried on sample events when the config
    is loaded, so that a mistake is a config error, not a missing message.
    """

    format: Literal["text", "markdown"] = "text"
    title: Written | None = None
    body: Written | None = None

    @field_validator("title", "body")
    @classmethod
    def _check(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("must not be empty (leave it out for poller's own text)")
        check_template(value, str(info.field_name), info.data.get("format", "text"))
        return value

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.title is None and self.body is None:
            raise ValueError("give a title, a body or both")
        return self

    def compiled(self) -> MessageTemplate:
        """The compiled template (compiled once per process)."""
        return _compiled_template(self.title, self.body, self.format)


@functools.lru_cache(maxsize=256)
def _compiled_template(title: str | None, body: str | None, fmt: str) -> MessageTemplate:
    return compile_template(title, body, "markdown" if fmt == "markdown" else "text")


class ChannelConfig(Frozen):
    """A channel written as a mapping: its Apprise URL and a message template for it."""

    url: ChannelUrl
    template: TemplateConfig | None = None


class DigestConfig(Frozen):
    """Storm control: many events for one channel go out as one digest message.

    A lone event for a quiet channel goes out at once; events that come together, or follow a
    message to the channel within ``wait``, wait ``wait`` for others to join them. When more
    than ``threshold`` events would reach a channel within ``window``, those due go out as one
    digest, and the channel gets at most one message per ``window`` until the storm passes. A
    digest names up to ``max_jobs`` jobs and counts the rest.
    """

    enabled: bool = True
    threshold: Annotated[Count, Field(ge=1)] = 10
    window: PositiveDuration = 60.0
    wait: Duration = 2.0
    max_jobs: Annotated[Count, Field(ge=1)] = 200


class DeliveryConfig(Frozen):
    """How notifications are sent: per-send timeout, retries and storm control; in seconds.

    A failed send is retried after ``retry_initial``, doubling (with jitter) up to
    ``retry_max``; a 429 or 503 with ``Retry-After`` waits at least that long. A delivery that
    still fails ``give_up_after`` after its event is given up, logged as an error and shown by
    ``poller status``.
    """

    timeout: PositiveDuration = 30.0
    retry_initial: PositiveDuration = 5.0
    retry_max: PositiveDuration = 900.0
    give_up_after: PositiveDuration = 86400.0
    digest: DigestConfig = Field(default_factory=DigestConfig)

    @field_validator("retry_max")
    @classmethod
    def _max_after_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("retry_initial")
        if initial is not None and value < initial:
            raise ValueError(
                f"must be at least retry_initial ({format_duration(initial)}), "
                f"not {format_duration(value)}"
            )
        return value


#: The events rules route: every one but ``report`` (a report names its own channels).
RULE_EVENTS: tuple[str, ...] = tuple(e.value for e in Event if e is not Event.REPORT)


def _rule_event(value: object) -> object:
    if isinstance(value, str) and value not in RULE_EVENTS:
        raise ValueError(f"expected one of: {', '.join(RULE_EVENTS)}; got {value!r}")
    return value


RuleEvent = Annotated[Event, BeforeValidator(_rule_event)]


class Rule(Frozen):
    """Which events go to which channels, optionally only for some sources or tags, and
    optionally with a message template for them."""

    on: Annotated[tuple[RuleEvent, ...], BeforeValidator(one_or_many), Field(min_length=1)]
    notify: NonEmptyNames
    sources: OptionalNames = None
    tags: OptionalNames = None
    template: TemplateConfig | None = None

    def matches(self, event: Event, source: str, tags: Iterable[str]) -> bool:
        """Whether the event of a watch of `source` with `tags` goes to this rule's channels."""
        if event not in self.on:
            return False
        if self.sources is not None and source not in self.sources:
            return False
        return self.tags is None or not set(self.tags).isdisjoint(tags)


def _cron(value: object) -> object:
    """A cron expression: 5 crontab fields, or 6 with seconds first (`cron_trigger`)."""
    if isinstance(value, str):
        cron_trigger(value)
    return value


def _time_zone(value: object) -> object:
    if isinstance(value, str):
        zone(value)
    return value


class ReportConfig(Frozen):
    """A report sent on a schedule (README "Reports"): at each time of ``cron`` (in
    ``timezone``), one message to each channel of ``notify`` about the watches of ``sources``
    and ``tags`` (all, when not given): what ended in the last ``window``, what is still
    running, stalled or unreachable, and the deliveries given up in the window. Each section
    names at most ``max_jobs`` watches and counts the rest."""

    name: Annotated[Written, watch_part("name")]
    cron: Annotated[Written, AfterValidator(_cron)]
    notify: NonEmptyNames
    window: PositiveDuration = 86400.0
    timezone: Annotated[Written, AfterValidator(_time_zone)] = "UTC"
    sources: OptionalNames = None
    tags: OptionalNames = None
    max_jobs: Annotated[Count, Field(ge=1, le=MAX_REPORT_JOBS)] = 20

    def trigger(self) -> CronTrigger:
        """The APScheduler trigger of ``cron`` in ``timezone``."""
        return cron_trigger(self.cron, self.timezone)


class JobConfig(Frozen):
    """A job listed in the config: one job (``id``), a bulk (Immuta's, or what an http
    source's ``discover`` lists for it) or an Immuta search."""

    source: Annotated[Written, watch_part("source")]
    id: Annotated[Written, BeforeValidator(as_text), watch_part("job_id")] | None = None
    bulk: Text | None = None
    search: SearchSpec | None = None
    site: Annotated[Written, BeforeValidator(as_text), watch_part("site")] | None = None
    name: Annotated[Written, watch_part("name")] | None = None
    tags: Annotated[
        tuple[Annotated[Written, watch_part("tag")], ...], BeforeValidator(one_or_many)
    ] = ()
    polling: PollingOverrides = Field(default_factory=PollingOverrides)
    #: a bulk's or a search's first listing notifies the jobs that had already ended too
    notify_existing: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if sum(x is not None for x in (self.id, self.bulk, self.search)) != 1:
            raise ValueError("give exactly one of id, bulk or search")
        if self.notify_existing and self.id is not None:
            raise ValueError("notify_existing is for a bulk or a search, not a job with an id")
        if self.key is not None and (problem := key_problem(self.key)):
            raise ValueError(problem)
        return self

    @property
    def key(self) -> str | None:
        """The key of the watch of an ``id`` job; None for a bulk or a search."""
        return watch_key(self.source, self.id, self.site) if self.id is not None else None


class ReplicasConfig(Frozen):
    """How processes sharing one database hand work to each other (PostgreSQL replicas).

    A claim on a watch or a delivery lasts ``lease`` unless its process renews it (every third
    of it, while it works); a replica that dies has its work taken over after at most that.
    """

    lease: PositiveDuration = 30.0


class HttpConfig(Frozen):
    """The daemon's HTTP listener (`poller.web`): ``/healthz``, ``/readyz``, ``/metrics``,
    the status page and the JSON API.

    ``listen`` is ``host:port`` (``127.0.0.1:9180``); without it there is no listener, so
    that several daemons on one host never fight over a port. There is no TLS: put a reverse
    proxy in front of it to reach it from another host (README "Monitoring over HTTP").
    ``token`` (written ``token_file``, like every secret) turns on the API's writes
    (``POST``/``DELETE /api/v1/watches``) for requests that bring it as a Bearer token;
    without it the API only reads.
    """

    listen: ListenAddress | None = None
    token: Token | None = None


def _log_level(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


LogLevel = Literal["debug", "info", "warning", "error"]
#: The levels ``log.level`` and ``POLLER_LOG_LEVEL`` take.
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)


class LogConfig(Frozen):
    """Log level and format (``auto``: JSON lines unless stdout is a terminal)."""

    level: Annotated[LogLevel, BeforeValidator(_log_level)] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(Frozen):
    """A whole config, validated; `load_config` builds it from a file.

    Every field is a top-level key of the file (`TOP_LEVEL_KEYS`) but those in
    `NOT_IN_FILE`, which `load_config` fills itself.
    """

    NOT_IN_FILE: ClassVar[frozenset[str]] = frozenset({"path", "channel_templates"})

    path: str
    #: with no ``database``, poller.db next to the config file; a relative SQLite path is
    #: relative to the config file (README "Config reference")
    database: DatabaseUrl = ""
    sources: dict[str, RegisteredSource] = Field(default_factory=dict)
    channels: dict[str, ChannelUrl] = Field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    polling: PollingDefaults = Field(default_factory=PollingDefaults)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    replicas: ReplicasConfig = Field(default_factory=ReplicasConfig)
    jobs: tuple[JobConfig, ...] = ()
    reports: tuple[ReportConfig, ...] = ()
    log: LogConfig = Field(default_factory=LogConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    #: how long an ended watch and its history are kept (README "Retention"); 0 keeps them
    retention: Duration = 90 * 86400.0
    #: templates of the channels written as a mapping with a ``template``
    channel_templates: dict[str, TemplateConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _place_database(self) -> Self:
        # one rule for the daemon and every command, wherever they run (README "Config
        # reference"); the model is frozen, so the resolved URL is set through __dict__
        url = self.database or default_database_url(self.path)
        self.__dict__["database"] = resolve_database_url(url, self.path)
        return self

    @model_validator(mode="after")
    def _cross_check(self, info: ValidationInfo) -> Self:
        if info.context is not None and info.context.get(CROSS_CHECKED):
            # load_config ran these checks on the file, where a problem gets its line
            return self
        view = {
            "sources": {name: {"type": s.type} for name, s in self.sources.items()},
            "channels": dict.fromkeys(self.channels),
            "rules": [rule.model_dump() for rule in self.rules],
            "jobs": [job.model_dump() for job in self.jobs],
            "reports": [report.model_dump() for report in self.reports],
        }
        found = reference_problems(view, source_types())
        found += policy_problems(self.polling, self.sources, list(enumerate(self.jobs)))
        found += [
            (("channel_templates", name), "not a configured channel")
            for name in self.channel_templates
            if name not in self.channels
        ]
        if found:
            raise ValueError("; ".join(f"{format_path(p)}: {m}" for p, m in found))
        return self

    def policy_for(self, source: str, overrides: Mapping[str, float] | None = None) -> Policy:
        """The timings of a watch of `source`: defaults < ``polling`` < the source's < overrides.

        `overrides` are keyed by `Policy` field name; other keys, and values that are not
        positive finite numbers, are ignored, so that overrides stored by another version never
        stop polling. max_interval is raised to
        interval if a merge left it below.
        """
        values = dataclasses.asdict(Policy())
        values.update(self.polling.model_dump())
        found = self.sources.get(source)
        if found is not None:
            values.update(found.polling.as_dict())
        if overrides:
            for name, value in overrides.items():
                try:
                    number = float(value) if name in _OVERRIDABLE else math.nan
                except (TypeError, ValueError, OverflowError):
                    continue  # stored as text by another version, or absurd: ignored too
                if 0 < number < math.inf:
                    values[name] = number
        values["max_interval"] = max(values["max_interval"], values["interval"])
        # a property of the source, never of a job's overrides
        values["continuous"] = found is not None and found.continuous
        return Policy(**values)

    def template_for(
        self, channel: str, event: Event, source: str, tags: Iterable[str]
    ) -> TemplateConfig | None:
        """The template of a message about `event` to `channel`, None for poller's own.

        The first matching rule that notifies `channel` and has a template wins; else the
        channel's own template.
        """
        tag_list = list(tags)
        for rule in self.rules:
            if (
                rule.template is not None
                and channel in rule.notify
                and rule.matches(event, source, tag_list)
            ):
                return rule.template
        return self.channel_templates.get(channel)


#: The type of each top-level key of a config file as the file writes it, in the order the
#: README documents them: the fields of `Config` but those `load_config` fills itself, and a
#: channel may be a mapping with its own template.
FILE_TYPES: dict[str, Any] = {
    name: dict[str, ChannelUrl | ChannelConfig]
    if name == "channels"
    # the built-in types' places kept as written (a runtime annotation, not a static type)
    else dict[str, AnySource]  # type: ignore[valid-type]
    if name == "sources"
    else field.annotation
    for name, field in Config.model_fields.items()
    if name not in Config.NOT_IN_FILE
}
TOP_LEVEL_KEYS = tuple(FILE_TYPES)
#: Where a plain scalar that YAML reads as a number, a boolean or a date is meant as text, so
#: the document keeps it as written (``id: 0123`` is "0123", not 83): the fields whose type
#: is marked `AS_WRITTEN`.
TEXT_AS_WRITTEN: tuple[Pattern, ...] = tuple(
    (key, *place) for key, annotation in FILE_TYPES.items() for place in as_written(annotation)
)
