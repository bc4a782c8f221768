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
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import functools
import math
import os
import re
import stat
import string
import types
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal, NamedTuple, Self, Union, get_args, get_origin
from urllib.parse import urlsplit

import apprise
import jmespath
import yaml
from jmespath.exceptions import EmptyExpressionError, IncompleteExpressionError, JMESPathError
from jmespath.parser import ParsedResult
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine.url import make_url
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from poller import models
from poller.errors import ConfigError, Problem
from poller.models import Event, Policy, State
from poller.notify import (
    MessageTemplate,
    TemplateProblem,
    check_template,
    compile_template,
    quiet_apprise,
)
from poller.units import format_duration

__all__ = [
    "TEMPLATE_FIELDS",
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

#: A place in the config: mapping keys and list indexes from the root.
KeyPath = tuple[str | int, ...]

TOP_LEVEL_KEYS = (
    "database",
    "sources",
    "channels",
    "rules",
    "polling",
    "delivery",
    "replicas",
    "jobs",
    "log",
)
SOURCE_TYPES = ("ruler", "immuta", "http")
LOG_LEVELS = ("debug", "info", "warning", "error")
#: The fields an http source's url and body templates may name.
TEMPLATE_FIELDS = ("id", "site", "source", "key")
_TARGET_STATES = tuple(s.value for s in State if s is not State.UNKNOWN)
#: The most poller reads of a file a ``x_file`` key names (a secret or a template) and of the
#: config file itself (README "Config reference"); anything larger is a config error.
VALUE_FILE_LIMIT = 64 * 1024
CONFIG_FILE_LIMIT = 1024 * 1024


# --- durations and rates ---------------------------------------------------------------------

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)")
_DURATION = re.compile(rf"\s*(?:{_NUMBER}\s*(?:ms|s|m|h|d)\s*)+")
_BARE_NUMBER = re.compile(rf"\s*{_NUMBER}\s*")
_DURATION_HINT = "expected a duration like 30s, 5m, 2h (seconds, or a number with ms, s, m, h, d)"

_RATE = re.compile(
    rf"\s*({_NUMBER})\s*(?:/\s*(s|sec|second|m|min|minute|h|hour|d|day))?\s*", re.IGNORECASE
)
_RATE_PERIOD = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}  # fmt: skip
_RATE_HINT = "expected a rate like 5/s, 300/m or 1000/h (requests per second if a bare number)"


class _ShownValueError(ValueError):
    """A ValueError about a value that is never a secret (a duration, a rate, a state...):
    a config problem quotes the value it was given, unless it came from the environment or a
    file."""


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like ``500ms``, ``1.5s``, ``5m``, ``1h30m``.

    Raises ValueError (whose message never quotes the value) for anything else, for negative
    durations and for infinities.
    """
    if isinstance(value, bool):
        raise _ShownValueError(_DURATION_HINT)
    try:
        if isinstance(value, int | float) or (
            isinstance(value, str) and _BARE_NUMBER.fullmatch(value)
        ):
            seconds = float(value)
        elif isinstance(value, str) and _DURATION.fullmatch(value):
            seconds = math.fsum(
                float(number) * _UNIT_SECONDS[unit]
                for number, unit in _DURATION_PART.findall(value)
            )
        else:
            raise _ShownValueError(_DURATION_HINT)
    except OverflowError:
        raise _ShownValueError("expected a finite duration") from None
    if not math.isfinite(seconds):
        raise _ShownValueError("expected a finite duration")
    if seconds < 0:
        raise _ShownValueError("a duration cannot be negative")
    return seconds


def parse_rate(value: object) -> float:
    """Requests per second from ``5/s``, ``300/m``, ``1000/h``, ``10/d`` or a bare number."""
    if isinstance(value, bool):
        raise _ShownValueError(_RATE_HINT)
    rate: float
    try:
        if isinstance(value, int | float):
            rate = float(value)
        elif isinstance(value, str) and (match := _RATE.fullmatch(value)):
            period = _RATE_PERIOD[(match.group(2) or "s").lower()]
            rate = float(match.group(1)) / period
        else:
            raise _ShownValueError(_RATE_HINT)
    except OverflowError:
        raise _ShownValueError(_RATE_HINT) from None
    if not math.isfinite(rate):
        raise _ShownValueError(_RATE_HINT)
    if rate <= 0:
        raise _ShownValueError("must be more than 0 requests")
    return rate


def default_database_url(config_path: str | os.PathLike[str]) -> str:
    """``sqlite:///`` + the absolute path of ``poller.db`` next to the config file.

    The daemon and every command read the same config, so they find the same database
    wherever they are run from (the current directory and the environment play no part).
    """
    directory = os.path.dirname(os.path.abspath(os.fspath(config_path)))
    return f"sqlite:///{os.path.join(directory, 'poller.db')}"


def resolve_database_url(url: str, config_path: str | os.PathLike[str]) -> str:
    """`url` with a relative SQLite path made absolute against the config file's directory.

    Other URLs (absolute SQLite paths, ``:memory:``, PostgreSQL) are returned as they are.
    """
    parsed = make_url(url)
    database = parsed.database
    if (
        parsed.get_backend_name() != "sqlite"
        or not database
        or database == ":memory:"
        or database.startswith("file:")
        or os.path.isabs(database)
    ):
        return url
    directory = os.path.dirname(os.path.abspath(os.fspath(config_path)))
    absolute = os.path.normpath(os.path.join(directory, database))
    return parsed.set(database=absolute).render_as_string(hide_password=False)


# --- files the config names ------------------------------------------------------------------


class _Unreadable(Exception):
    """Why a file the config names cannot be used: a reason in words, never its content."""


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _read_small_file(path: str, limit: int) -> bytes:
    """The content of the regular file at `path`, if it holds at most `limit` bytes.

    Raises `_Unreadable` for anything else. The file is opened non-blocking, so that a FIFO
    without a writer cannot hang the caller, and its type is checked on the open descriptor
    before a byte is read, so that a device (``/dev/zero``) or a directory is refused
    instead of read without end. Reading stops one byte past `limit`, whatever size the
    file claims.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _Unreadable(exc.strerror or type(exc).__name__) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _Unreadable(f"{_file_kind(mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise _Unreadable(f"larger than {_format_size(limit)}")
        return b"".join(chunks)
    except OSError as exc:
        raise _Unreadable(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)


def _format_size(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB" if size % (1024 * 1024) == 0 else f"{size // 1024} KiB"


def _control_character(text: str) -> tuple[int, str] | None:
    """The line (from 1) and code (``U+000A``) of the first control character in `text`."""
    for index, char in enumerate(text):
        if unicodedata.category(char) == "Cc":
            return text.count("\n", 0, index) + 1, f"U+{ord(char):04X}"
    return None


def _one_line(text: str) -> None:
    """ValueError if a secret or a URL holds a control character (an HTTP header, a URL or
    a password cannot carry one, and a request would fail at every poll instead)."""
    found = _control_character(text)
    if found is not None:
        raise ValueError(
            f"holds a control character ({found[1]}); a secret or a URL is one line of text"
        )


# --- field types -----------------------------------------------------------------------------


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise _ShownValueError("must be longer than 0s")
    return seconds


def _optional_positive_duration(value: object) -> float | None:
    return None if value is None else _positive_duration(value)


def _optional_duration(value: object) -> float | None:
    return None if value is None else parse_duration(value)


def _backoff(value: object) -> float:
    hint = "expected a number of at least 1, like 1.5"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _ShownValueError(hint)
    try:
        factor = float(value)
    except (ValueError, OverflowError):
        raise _ShownValueError(hint) from None
    if not math.isfinite(factor) or factor < 1:
        raise _ShownValueError(hint)
    return factor


def _optional_backoff(value: object) -> float | None:
    return None if value is None else _backoff(value)


def _optional_rate(value: object) -> float | None:
    return None if value is None else parse_rate(value)


def _whole_number(value: object) -> object:
    # pydantic's lax mode would read `true` as 1
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    return value


def _one_or_many(value: object) -> object:
    """Lets a list of one be written as its single item."""
    return (value,) if isinstance(value, str | Event | State) else value


def _text(value: object) -> object:
    """Job ids and sites are text even when YAML (or a caller) gives a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    found = _control_character(value)
    if found is not None:
        # a name or an id ends up in titles, keys and the database (PostgreSQL refuses NUL)
        raise ValueError(f"holds a control character ({found[1]}); a name is one line of text")
    return value


def _non_empty_secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    _one_line(value.get_secret_value())
    return value


def _header_value(value: SecretStr) -> SecretStr:
    _one_line(value.get_secret_value())
    return value


def _http_url(value: str) -> str:
    _one_line(value)  # urlsplit would drop a newline or a tab without a word
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http:// or https:// URL")
    return value.rstrip("/")


#: The databases poller stores in, by SQLAlchemy dialect and driver; ``postgresql://``
#: alone would ask for psycopg2, which poller does not ship, so it is read as psycopg 3.
_DATABASE_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}
_DATABASE_HINT = (
    "expected a database URL like sqlite:////var/lib/poller/poller.db "
    "or postgresql+psycopg://user@host/poller"
)


def _database_url(value: str) -> str:
    _one_line(value)
    if not re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://", value):
        raise ValueError(_DATABASE_HINT)
    try:
        parsed = make_url(value)
    except Exception:  # SQLAlchemy's message quotes the URL, password included
        raise ValueError(_DATABASE_HINT) from None
    driver = _DATABASE_DRIVERS.get(parsed.drivername)
    if driver is None:
        # the scheme is never a secret; the rest of the URL may be
        raise ValueError(
            f"unsupported database {parsed.drivername!r}; poller stores in SQLite "
            "(sqlite:////var/lib/poller/poller.db) or PostgreSQL "
            "(postgresql+psycopg://user@host/poller)"
        )
    if driver == parsed.drivername:
        return value
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def _apprise_url(value: SecretStr) -> SecretStr:
    url = value.get_secret_value()
    if not url.strip():
        raise ValueError("must not be empty")
    _one_line(url)
    with quiet_apprise():
        try:
            plugin = apprise.Apprise.instantiate(url)
        except Exception:
            plugin = None
    if plugin is None:
        raise ValueError(
            "not an Apprise URL Apprise understands (see https://github.com/caronc/apprise/wiki)"
        )
    return value


@functools.lru_cache(maxsize=512)
def _jmespath(expression: str) -> ParsedResult:
    return jmespath.compile(expression)


def _check_jmespath(value: str) -> str:
    try:
        _jmespath(value)
    except EmptyExpressionError:
        raise ValueError("must not be empty") from None
    except IncompleteExpressionError:
        raise ValueError("not a valid JMESPath expression (it ends too early)") from None
    except JMESPathError as exc:
        # jmespath's own message quotes the expression; only its position is kept
        position = getattr(exc, "lex_position", None)
        where = f" (at character {position + 1})" if isinstance(position, int) else ""
        raise ValueError(f"not a valid JMESPath expression{where}") from None
    return value


def _target_state(value: object) -> State:
    if isinstance(value, str):
        try:
            state = State(value.strip().lower())
        except ValueError:
            state = State.UNKNOWN
        if state is not State.UNKNOWN:
            return state
    raise _ShownValueError(f"unknown state; expected one of: {', '.join(_TARGET_STATES)}")


def _log_level(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _template_fields(template: str) -> set[str]:
    """The fields a ``str.format`` template names; ValueError if it names others."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        # the message is Python's ("Single '}' encountered...") and quotes no value
        raise ValueError(f"malformed template: {exc}; write {{{{ and }}}} for braces") from None
    names = set()
    allowed = ", ".join(f"{{{name}}}" for name in TEMPLATE_FIELDS)
    for _literal, name, _spec, _conversion in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            shown = name if name else "{}"
            raise ValueError(f"template names unknown field {shown}; expected {allowed}")
        names.add(name)
    return names


def _body_fields(body: object, where: str = "body") -> set[str]:
    """The template fields a JSON body names; ValueError if it is not JSON or names others."""
    if isinstance(body, str):
        try:
            return _template_fields(body)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if isinstance(body, Mapping):
        names: set[str] = set()
        for key, item in body.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: JSON object keys must be strings")
            names |= _body_fields(item, f"{where}.{key}")
        return names
    if isinstance(body, list | tuple):
        names = set()
        for index, item in enumerate(body):
            names |= _body_fields(item, f"{where}[{index}]")
        return names
    if body is None or isinstance(body, bool | int):
        return set()
    if isinstance(body, float) and math.isfinite(body):
        return set()
    raise ValueError(f"{where}: not a JSON value (quote dates and other text)")


def _watch_part(part: str) -> AfterValidator:
    """The check of one part of a watch (`models.text_problem`): the same rule as `poller add`
    and discovery, and the store's limits, so the config cannot hold what a database refuses."""

    def check(value: str) -> str:
        problem = models.text_problem(part, value)
        if problem is not None:
            raise ValueError(problem)
        return value

    return AfterValidator(check)


PositiveDuration = Annotated[float, BeforeValidator(_positive_duration)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
OptionalPositiveDuration = Annotated[float | None, BeforeValidator(_optional_positive_duration)]
OptionalDuration = Annotated[float | None, BeforeValidator(_optional_duration)]
Backoff = Annotated[float, BeforeValidator(_backoff)]
OptionalBackoff = Annotated[float | None, BeforeValidator(_optional_backoff)]
Rate = Annotated[float | None, BeforeValidator(_optional_rate)]
Count = Annotated[int, BeforeValidator(_whole_number)]
Token = Annotated[SecretStr, AfterValidator(_non_empty_secret)]
HeaderValue = Annotated[SecretStr, AfterValidator(_header_value)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
JmesPath = Annotated[str, AfterValidator(_check_jmespath)]
TargetState = Annotated[State, BeforeValidator(_target_state)]
ChannelUrl = Annotated[SecretStr, AfterValidator(_apprise_url)]
Name = Annotated[str, AfterValidator(_non_empty)]
Text = Annotated[str, BeforeValidator(_text), AfterValidator(_non_empty)]
Names = Annotated[tuple[Name, ...], BeforeValidator(_one_or_many)]
NonEmptyNames = Annotated[tuple[Name, ...], BeforeValidator(_one_or_many), Field(min_length=1)]
OptionalNames = Annotated[
    tuple[Name, ...] | None, BeforeValidator(_one_or_many), Field(min_length=1)
]
DatabaseUrl = Annotated[str, AfterValidator(_database_url)]


# --- models ----------------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_interval_order(interval: float | None, max_interval: float | None) -> None:
    if interval is not None and max_interval is not None and max_interval < interval:
        raise ValueError(
            f"must be at least interval ({format_duration(interval)}), "
            f"not {format_duration(max_interval)}"
        )


class PollingDefaults(_Frozen):
    """Polling timings for every watch (SPEC.md, ``polling``); durations in seconds."""

    interval: PositiveDuration = 30.0
    backoff: Backoff = 1.5
    max_interval: PositiveDuration = 600.0
    timeout: PositiveDuration = 86400.0
    stall_after: PositiveDuration = 7200.0
    error_after: Duration = 900.0

    @field_validator("max_interval")
    @classmethod
    def _max_after_interval(cls, value: float, info: ValidationInfo) -> float:
        _check_interval_order(info.data.get("interval"), value)
        return value


class PollingOverrides(_Frozen):
    """A source's or a job's changes to `PollingDefaults`; None keeps the value from above."""

    interval: OptionalPositiveDuration = None
    backoff: OptionalBackoff = None
    max_interval: OptionalPositiveDuration = None
    timeout: OptionalPositiveDuration = None
    stall_after: OptionalPositiveDuration = None
    error_after: OptionalDuration = None

    @field_validator("max_interval")
    @classmethod
    def _max_after_interval(cls, value: float | None, info: ValidationInfo) -> float | None:
        _check_interval_order(info.data.get("interval"), value)
        return value

    def as_dict(self) -> dict[str, float]:
        """The timings that are set, by `models.Policy` field name."""
        return {name: value for name, value in self if value is not None}


class SourceConfig(_Frozen):
    """What every source has: limits on the requests poller sends it and polling overrides.

    ``rate_limit`` is in requests per second (None: no limit); ``request_timeout`` is the
    overall deadline of one request, in seconds.
    """

    max_concurrency: Annotated[Count, Field(ge=1)] = 8
    rate_limit: Rate = None
    request_timeout: PositiveDuration = 30.0
    polling: PollingOverrides = Field(default_factory=PollingOverrides)


class RulerSource(SourceConfig):
    """The Ruler batch API. From ``list_threshold`` watched jobs of one site on, poller polls
    the site's job list instead of each job."""

    type: Literal["ruler"] = "ruler"
    base_url: HttpUrl = "https://rest.rulerapi.com/v1"
    token: Token
    list_threshold: Annotated[Count, Field(ge=1)] = 2


class ImmutaSource(SourceConfig):
    """The Immuta jobs API. ``long_poll`` (seconds, None: off) lets one statuses request wait
    for jobs to end; ``discovery_interval`` is how often bulks and searches are listed again."""

    type: Literal["immuta"] = "immuta"
    base_url: HttpUrl
    token: Token
    batch_size: Annotated[Count, Field(ge=1, le=1000)] = 100
    long_poll: OptionalDuration = None
    discovery_interval: PositiveDuration = 60.0

    @field_validator("long_poll")
    @classmethod
    def _long_poll_within_request(cls, value: float | None, info: ValidationInfo) -> float | None:
        if not value:
            # 0 disables long polling just as leaving it out does
            return None
        deadline = info.data.get("request_timeout")
        if deadline is not None and value >= deadline:
            raise _ShownValueError(
                f"must be shorter than request_timeout ({format_duration(deadline)}), "
                "the deadline of the request that waits"
            )
        return value


class HttpExpressions(NamedTuple):
    """The compiled JMESPath expressions of an `HttpSource`."""

    state: ParsedResult
    progress: ParsedResult | None
    detail: Mapping[str, ParsedResult]


class HttpSource(SourceConfig):
    """Any JSON job-status endpoint, described by templates and JMESPath expressions.

    ``url`` and the string leaves of ``body`` are ``str.format`` templates over
    `TEMPLATE_FIELDS` (``{{``/``}}`` for literal braces). ``states`` maps remote values,
    lower-cased (compare ``str(value).lower()``), to poller's states. `compiled` gives the
    JMESPath expressions ready to search a body with (compiled once per process).
    """

    type: Literal["http"] = "http"
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, HeaderValue] = Field(default_factory=dict)
    # body comes before url so that the url's check can see whether the body names {id}
    body: Any = None
    url: str
    state: JmesPath
    progress: JmesPath | None = None
    detail: dict[str, JmesPath] = Field(default_factory=dict)
    states: dict[str, TargetState]

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("body")
    @classmethod
    def _check_body(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        if info.data.get("method") == "GET":
            raise ValueError("a body needs method: POST")
        _body_fields(value)
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        _http_url(value)
        names = _template_fields(value)
        if "id" not in names and "body" in info.data:
            body = info.data["body"]
            if body is None or "id" not in _body_fields(body):
                raise ValueError("must name {id} (or the body must)")
        return value

    @field_validator("states")
    @classmethod
    def _lower_states(cls, value: dict[str, State]) -> dict[str, State]:
        if not value:
            raise ValueError("must map at least one remote state to a poller state")
        lowered: dict[str, State] = {}
        for remote, state in value.items():
            key = remote.lower()
            if lowered.get(key, state) is not state:
                raise ValueError("two remote states that differ only in case map differently")
            lowered[key] = state
        return lowered

    def compiled(self) -> HttpExpressions:
        """The ``state``, ``progress`` and ``detail`` expressions, compiled."""
        return HttpExpressions(
            state=_jmespath(self.state),
            progress=_jmespath(self.progress) if self.progress is not None else None,
            detail={name: _jmespath(expr) for name, expr in self.detail.items()},
        )


#: One source of any type, told apart by its ``type``.
AnySource = Annotated[RulerSource | ImmutaSource | HttpSource, Field(discriminator="type")]


class TemplateConfig(_Frozen):
    """A message template: Jinja2 (sandboxed) `title` and/or `body` over the documented
    variables (`notify.TEMPLATE_VARIABLES`); what it leaves out is poller's own text.

    ``format`` is how the body is written: ``text``, or ``markdown`` (variables are then
    escaped for Markdown). Each template is compiled and tried on sample events when the config
    is loaded, so that a mistake is a config error, not a missing message.
    """

    format: Literal["text", "markdown"] = "text"
    title: str | None = None
    body: str | None = None

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


class ChannelConfig(_Frozen):
    """A channel written as a mapping: its Apprise URL and a message template for it."""

    url: ChannelUrl
    template: TemplateConfig | None = None


class DigestConfig(_Frozen):
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


class DeliveryConfig(_Frozen):
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


class Rule(_Frozen):
    """Which events go to which channels, optionally only for some sources or tags, and
    optionally with a message template for them."""

    on: Annotated[tuple[Event, ...], BeforeValidator(_one_or_many), Field(min_length=1)]
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


class SearchSpec(_Frozen):
    """The filters of an Immuta job search; every job it finds is watched."""

    jobType: OptionalNames = None  # the API's names
    state: OptionalNames = None
    startDate: Name | None = None
    endDate: Name | None = None


class JobConfig(_Frozen):
    """A job listed in the config: one job (``id``), an Immuta bulk or an Immuta search."""

    source: Annotated[str, _watch_part("source")]
    id: Annotated[str, BeforeValidator(_text), _watch_part("job_id")] | None = None
    bulk: Text | None = None
    search: SearchSpec | None = None
    site: Annotated[str, BeforeValidator(_text), _watch_part("site")] | None = None
    name: Annotated[str, _watch_part("name")] | None = None
    tags: Annotated[
        tuple[Annotated[str, _watch_part("tag")], ...], BeforeValidator(_one_or_many)
    ] = ()
    polling: PollingOverrides = Field(default_factory=PollingOverrides)

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if sum(x is not None for x in (self.id, self.bulk, self.search)) != 1:
            raise ValueError("give exactly one of id, bulk or search")
        if self.key is not None and (problem := models.key_problem(self.key)):
            raise ValueError(problem)
        return self

    @property
    def key(self) -> str | None:
        """The key of the watch of an ``id`` job; None for a bulk or a search."""
        return models.watch_key(self.source, self.id, self.site) if self.id is not None else None


class ReplicasConfig(_Frozen):
    """How processes sharing one database hand work to each other (PostgreSQL replicas).

    A claim on a watch or a delivery lasts ``lease`` unless its process renews it (every third
    of it, while it works); a replica that dies has its work taken over after at most that.
    """

    lease: PositiveDuration = 30.0


class LogConfig(_Frozen):
    """Log level and format (``auto``: JSON lines unless stdout is a terminal)."""

    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_log_level)] = (
        "info"
    )
    format: Literal["auto", "json", "console"] = "auto"


class Config(_Frozen):
    """A whole config, validated; `load_config` builds it from a file."""

    path: str
    #: with no ``database``, poller.db next to the config file; a relative SQLite path is
    #: relative to the config file (README "Config reference")
    database: DatabaseUrl = ""
    sources: dict[str, AnySource] = Field(default_factory=dict)
    channels: dict[str, ChannelUrl] = Field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    polling: PollingDefaults = Field(default_factory=PollingDefaults)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    replicas: ReplicasConfig = Field(default_factory=ReplicasConfig)
    jobs: tuple[JobConfig, ...] = ()
    log: LogConfig = Field(default_factory=LogConfig)
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
    def _cross_check(self) -> Self:
        view = {
            "sources": {name: {"type": s.type} for name, s in self.sources.items()},
            "channels": dict.fromkeys(self.channels),
            "rules": [rule.model_dump() for rule in self.rules],
            "jobs": [job.model_dump() for job in self.jobs],
        }
        found = _reference_problems(view)
        found += _policy_problems(self.polling, self.sources, list(enumerate(self.jobs)))
        found += [
            (("channel_templates", name), "not a configured channel")
            for name in self.channel_templates
            if name not in self.channels
        ]
        if found:
            raise ValueError("; ".join(f"{_format_path(p)}: {m}" for p, m in found))
        return self

    def policy_for(self, source: str, overrides: Mapping[str, float] | None = None) -> Policy:
        """The timings of a watch of `source`: defaults < ``polling`` < the source's < overrides.

        `overrides` are keyed by `models.Policy` field name; other keys, and values that are not
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
                    number = float(value) if name in values else math.nan
                except (TypeError, ValueError, OverflowError):
                    continue  # stored as text by another version, or absurd: ignored too
                if 0 < number < math.inf:
                    values[name] = number
        values["max_interval"] = max(values["max_interval"], values["interval"])
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


# --- cross-checks ----------------------------------------------------------------------------


def _format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


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


def _reference_problems(
    data: Mapping[str, Any],
    *,
    quote: Callable[[KeyPath, str], str] = lambda path, name: f" {name!r}",
    line_of: Callable[[KeyPath], int | None] = lambda path: None,
) -> list[tuple[KeyPath, str]]:
    """What one part of the config says about another that is not there or does not fit.

    Works on plain data (the parsed YAML, or a model dump) so that a file with broken parts
    still gets every other part checked; `quote` renders a name for a message ("" if it must
    not be shown).
    """
    found: list[tuple[KeyPath, str]] = []

    def section(name: str, kind: type) -> Any:
        value = data.get(name)
        return value if isinstance(value, kind) else kind()

    sources: dict[str, Any] = section("sources", dict)
    types = {
        name: value.get("type") if isinstance(value, Mapping) else None
        for name, value in sources.items()
    }
    channels: dict[str, Any] = section("channels", dict)

    for i, rule in enumerate(section("rules", list)):
        if not isinstance(rule, Mapping):
            continue
        for key, known, what in (("notify", channels, "channel"), ("sources", types, "source")):
            for sub, name in _references(rule.get(key)):
                if name not in known:
                    path: KeyPath = ("rules", i, key, *sub)
                    found.append(
                        (path, f"unknown {what}{quote(path, name)}; {_choices(what, known)}")
                    )

    seen: dict[tuple[str | None, ...], int] = {}
    for i, job in enumerate(section("jobs", list)):
        if not isinstance(job, Mapping) or not isinstance(job.get("source"), str):
            continue
        source = job["source"]
        if source not in types:
            path = ("jobs", i, "source")
            found.append(
                (path, f"unknown source{quote(path, source)}; {_choices('source', types)}")
            )
            continue
        kind = types[source]
        if kind not in SOURCE_TYPES:
            continue  # the source itself is reported

        def given(key: str, job: Mapping[str, Any] = job) -> bool:
            return job.get(key) is not None

        if kind == "ruler" and not given("site") and not given("bulk") and not given("search"):
            found.append((("jobs", i, "site"), "required for a ruler source"))
        if kind != "ruler" and given("site"):
            found.append((("jobs", i, "site"), f"only for a ruler source; this one is {kind}"))
        for key in ("bulk", "search"):
            if given(key) and kind != "immuta":
                found.append((("jobs", i, key), f"only for an immuta source; this one is {kind}"))

        identity: tuple[str | None, ...] | None = None
        job_id, site, bulk = (_text(job.get(k)) for k in ("id", "site", "bulk"))
        if isinstance(job_id, str):
            identity = ("id", source, site if isinstance(site, str) else None, job_id)
        elif isinstance(bulk, str):
            identity = ("bulk", source, bulk)
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


def _policy_problems(
    polling: PollingDefaults | None,
    sources: Mapping[str, SourceConfig],
    jobs: Sequence[tuple[int, JobConfig]],
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


# --- YAML with lines -------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false are, so ``on`` and ``no`` are text."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)

_ENV_REFERENCE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|(\{))")
#: Far more than any real config; stops alias bombs from expanding without end.
_MAX_NODES = 100_000


def _matches(path: KeyPath, pattern: tuple[object, ...]) -> bool:
    if len(path) != len(pattern):
        return False
    for part, want in zip(path, pattern, strict=True):
        if want is str or want is int:
            if type(part) is not want:
                return False
        elif isinstance(want, tuple):
            if part not in want:
                return False
        elif part != want:
            return False
    return True


#: Where a plain scalar that YAML reads as a number, a boolean or a date is meant as text, so
#: it is kept as written (``id: 0123`` is "0123", not 83).
_TEXTUAL: tuple[tuple[object, ...], ...] = (
    ("jobs", int, ("id", "site", "bulk", "name", "source")),
    ("jobs", int, "tags"),
    ("jobs", int, "tags", int),
    ("jobs", int, "search", str),
    ("jobs", int, "search", str, int),
    ("rules", int, ("notify", "sources", "tags")),
    ("rules", int, ("notify", "sources", "tags"), int),
    ("sources", str, ("token", "url", "base_url", "state", "progress")),
    ("sources", str, ("headers", "detail"), str),
    ("rules", int, "template", ("title", "body")),
    ("channels", str, "template", ("title", "body")),
)


def _is_data(path: KeyPath) -> bool:
    """Mappings whose keys are the user's data, not config keys: ``x_file`` means nothing there."""
    return len(path) >= 3 and path[0] == "sources" and path[2] in ("states", "detail", "body")


class _TooBig(Exception):
    pass


class _Document:
    """A YAML file read into plain data, with the line of every key and item."""

    def __init__(self, file: str, environ: Mapping[str, str]) -> None:
        self.file = file
        self.environ = environ
        self.data: Any = None
        self.lines: dict[KeyPath, int] = {(): 1}
        self.problems: list[tuple[KeyPath, int | None, str]] = []
        #: paths whose value is already reported broken; later problems there are noise
        self.broken: set[KeyPath] = set()
        #: paths whose value came from the environment or a file
        self.tainted: set[KeyPath] = set()
        self.secrets: set[str] = set()
        #: ``x`` paths that were written as ``x_file``
        self.renamed: dict[KeyPath, KeyPath] = {}
        #: the path of the file each ``x_file`` value was read from, by ``x`` path
        self.file_values: dict[KeyPath, str] = {}
        #: where each scalar value starts (line) and its YAML style ("|", '"', None...)
        self.scalars: dict[KeyPath, tuple[int, str | None]] = {}
        self._nodes = 0
        self._active: set[int] = set()
        self._loader: _Loader | None = None
        #: how many problems reading found (the rest come from validation)
        self.read_problems = 0

    def problem(self, path: KeyPath, message: str, line: int | None = None) -> None:
        self.problems.append((path, line if line is not None else self.line_of(path), message))

    def template_place(self, path: KeyPath, problem: TemplateProblem) -> tuple[int | None, str]:
        """The config line and message of a problem in the template at `path`.

        A template in a literal block (``|``) maps line for line onto the file; one read from
        an ``x_file`` is reported with that file's own line; otherwise the line of the value is
        given and the message says which line of the template it is.
        """
        inner = problem.line
        if path in self.file_values:
            where = self.file_values[path] + (f":{inner}" if inner else "")
            return self.line_of(path), f"in {where}: {problem.message}"
        start, style = self.scalars.get(path, (None, None))
        if start is None:
            return self.line_of(path), problem.message
        if inner is None:
            return start, problem.message
        if style == "|":
            return start + inner, problem.message
        if inner == 1:
            return start, problem.message
        return start, f"{problem.message} (line {inner} of the template)"

    def line_of(self, path: KeyPath) -> int | None:
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def read(self) -> bool:
        """Parses the file; False if nothing more can be checked."""
        try:
            raw = _read_small_file(self.file, CONFIG_FILE_LIMIT)
        except _Unreadable as exc:
            self.problems.append(((), None, f"cannot read the config file: {exc}"))
            return False
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            self.problems.append(((), line, "not UTF-8 text"))
            return False
        try:
            loader = _Loader(text)
        except yaml.reader.ReaderError as exc:
            # YAML allows no control character but tab and newlines, not even in quotes
            line = text.count("\n", 0, max(exc.position, 0)) + 1
            code = f"U+{exc.character:04X}" if isinstance(exc.character, int) else "one"
            self.problems.append(
                (
                    (),
                    line,
                    f"invalid YAML: control character {code} is not allowed "
                    '(write it as an escape such as "\\x07" in a double-quoted string)',
                )
            )
            return False
        self._loader = loader
        try:
            node = loader.get_single_node()
            self.data = None if node is None else self._build(node, ())
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = mark.line + 1 if mark is not None else None
            what = exc.problem or exc.context or "cannot be parsed"
            if exc.context and exc.problem and exc.problem.startswith("but "):
                what = f"{exc.context}, {exc.problem}"
            self.problems.append(((), where, f"invalid YAML: {what}"))
            return False
        except yaml.YAMLError:
            self.problems.append(((), None, "invalid YAML"))
            return False
        except (_TooBig, RecursionError):
            self.problems.append(((), None, "too deeply nested or too many aliases"))
            return False
        finally:
            loader.dispose()
            self.read_problems = len(self.problems)
        return True

    def _build(self, node: Node, path: KeyPath) -> Any:
        self._nodes += 1
        if self._nodes > _MAX_NODES or id(node) in self._active:
            raise _TooBig
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                items = []
                for index, item in enumerate(node.value):
                    self.lines[(*path, index)] = item.start_mark.line + 1
                    items.append(self._build(item, (*path, index)))
                return items
            return self._scalar(node, path)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        assert self._loader is not None
        own = {id(key) for key, _ in node.value}
        # merge keys (<<: *defaults) are expanded in place; their keys may then be overridden
        self._loader.flatten_mapping(node)
        result: dict[str, Any] = {}
        merged: set[str] = set()
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode):
                self.problem(path, "keys must be plain strings", line)
                continue
            key = str(key_node.value)
            key_path = (*path, key)
            from_merge = id(key_node) not in own
            if key in result:
                if from_merge and key not in merged:
                    continue  # an explicit key wins over a merged one
                if key not in merged:
                    self.problem(
                        key_path, f"duplicate key (first at line {self.lines[key_path]})", line
                    )
                    continue
                del result[key]
            self.lines[key_path] = line
            result[key] = self._build(value_node, key_path)
            if from_merge:
                merged.add(key)
            else:
                merged.discard(key)
        return result if _is_data(path) else self._read_files(result, path)

    def _scalar(self, node: Node, path: KeyPath) -> Any:
        assert self._loader is not None
        try:
            value = self._loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            self.problem(
                path, "a value YAML cannot read (unsupported tag?)", node.start_mark.line + 1
            )
            self.broken.add(path)
            return None
        if isinstance(value, str):
            self.scalars[path] = (node.start_mark.line + 1, getattr(node, "style", None))
            return self._substitute(value, path, node.start_mark.line + 1)
        plain = isinstance(node, ScalarNode) and node.style is None
        if (
            plain
            and value is not None
            and (isinstance(value, dt.date) or any(_matches(path, p) for p in _TEXTUAL))
        ):
            return str(node.value)
        return value

    def _substitute(self, text: str, path: KeyPath, line: int) -> str:
        is_file_path = bool(path) and str(path[-1]).endswith("_file")

        def replace(match: re.Match[str]) -> str:
            if match.group(1):
                return "$"
            if match.group(4):
                self.problem(
                    path, "malformed ${...}: use ${VAR} or ${VAR:-default}, $$ for $", line
                )
                self.broken.add(path)
                return match.group(0)
            name, default = match.group(2), match.group(3)
            value = self.environ.get(name)
            # like the shell, :- also replaces a variable that is set but empty
            if value is None or (default is not None and value == ""):
                if default is not None:
                    return default
                self.problem(path, f"environment variable {name} is not set", line)
                self.broken.add(path)
                return ""
            self.tainted.add(path)
            if not is_file_path:
                self.secrets.add(value)
            return value

        return _ENV_REFERENCE.sub(replace, text) if "$" in text else text

    def _read_files(self, mapping: dict[str, Any], path: KeyPath) -> dict[str, Any]:
        if not any(k.endswith("_file") and len(k) > 5 for k in mapping):
            return mapping
        result: dict[str, Any] = {}
        for key, value in mapping.items():
            if not (key.endswith("_file") and len(key) > 5):
                result[key] = value
                continue
            base = key[: -len("_file")]
            file_path, base_path = (*path, key), (*path, base)
            if base in mapping:
                self.problem(file_path, f"give either {base} or {key}, not both")
                continue
            self.lines[base_path] = self.lines[file_path]
            self.renamed[base_path] = file_path
            if isinstance(value, str):
                self.file_values[base_path] = value
            self.tainted.add(base_path)
            if file_path in self.broken:  # its ${VAR} is unset: already reported
                self.broken.add(base_path)
                result[base] = ""
                continue
            if not isinstance(value, str) or not value:
                self.problem(file_path, "expected the path of a file")
                self.broken.add(base_path)
                result[base] = ""
                continue
            content, reason = _value_file(value, template=path[-1:] == ("template",))
            if reason is not None:
                self.problem(file_path, f"cannot read {value}: {reason}")
                self.broken.add(base_path)
            else:
                self.secrets.add(content)
            result[base] = content
        return result


def _value_file(path: str, *, template: bool) -> tuple[str, str | None]:
    """The value an ``x_file`` key names, stripped, and None; or "" and why it cannot be used.

    A template may span lines; any other value (a token, a password, a URL) is one line: a
    trailing newline is dropped, a control character inside is refused rather than sent.
    """
    try:
        content = _read_small_file(path, VALUE_FILE_LIMIT).decode("utf-8").strip()
    except _Unreadable as exc:
        return "", str(exc)
    except UnicodeDecodeError:
        return "", "not UTF-8 text"
    found = None if template else _control_character(content)
    if found is None:
        return content, None
    line, code = found
    if code in ("U+000A", "U+000D"):
        return (
            "",
            "holds more than one line; the value must be one line (a trailing newline is fine)",
        )
    return "", f"line {line} holds a control character ({code}); the value must be one line"


# --- pydantic errors -------------------------------------------------------------------------


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _step(annotation: Any, part: str | int) -> Any:
    """The type found at `part` inside a value of type `annotation` (pydantic's loc steps)."""
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return field.annotation if field is not None else None
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin in (tuple, list) and args:
        return args[0]
    if args:  # a union of models: pydantic's loc names the member by its tag
        for member in args:
            member = _unwrap(member)
            if isinstance(member, type) and issubclass(member, BaseModel):
                tag = member.model_fields.get("type")
                if tag is not None and tag.default == part:
                    return member
    return None


def _expected_keys(root: Any, loc: Sequence[str | int]) -> list[str] | None:
    annotation = root
    for part in loc[:-1]:
        annotation = _step(annotation, part)
        if annotation is None:
            return None
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [name for name in annotation.model_fields if name != "path"]
    return None


def _unknown_key(key: str, expected: Sequence[str]) -> str:
    message = f"unknown key; expected one of: {', '.join(expected)}"
    close = difflib.get_close_matches(key, expected, n=1)
    return f"{message} (did you mean {close[0]}?)" if close else message


#: pydantic's error kinds about a value that is never a secret (a choice, a number): their
#: problems quote the value given
_SHOWN_KINDS = frozenset(
    {
        "union_tag_invalid",
        "literal_error",
        "enum",
        "int_parsing",
        "int_from_float",
        "float_parsing",
        "bool_parsing",
        "greater_than_equal",
        "greater_than",
        "less_than_equal",
        "less_than",
    }
)


def _shown_value(error: Mapping[str, Any]) -> str | None:
    """The value an error is about, quoted, if it may be shown; else None.

    Only choices, numbers, durations, rates and states are quoted (never a token, a URL or a
    header), and only short one-line values.
    """
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = ctx.get("tag") if kind == "union_tag_invalid" else error.get("input")
    shown = kind in _SHOWN_KINDS or isinstance(ctx.get("error"), _ShownValueError)
    if not shown or isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = repr(value)
    if len(text) > 60 or _control_character(str(value)) is not None:
        return None
    return text


def _with_value(message: str, shown: str | None) -> str:
    """`message` naming the value: ``unknown X 'v'; expected...`` or ``...; got 'v'``."""
    if shown is None:
        return message
    head, sep, tail = message.partition(";")
    if head.startswith("unknown ") and sep:
        return f"{head} {shown};{tail}"
    return f"{message}; got {shown}"


def _message(error: Mapping[str, Any], root: Any) -> str:
    """What was expected, in words, from pydantic's error; its input is never used."""
    kind = error["type"]
    loc = error["loc"]
    ctx = error.get("ctx") or {}
    msg = str(error["msg"])
    if kind == "missing":
        hint = f" (or {loc[-1]}_file)" if loc and loc[-1] == "token" else ""
        return f"required{hint}"
    if kind == "extra_forbidden":
        keys = _expected_keys(root, loc)
        return _unknown_key(str(loc[-1]), keys) if keys else "unknown key"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        what = "unknown source type" if kind == "union_tag_invalid" else "required"
        return f"{what}; expected one of: {', '.join(SOURCE_TYPES)}"
    if kind in ("literal_error", "enum"):
        choices = str(ctx.get("expected", "")).replace("' or '", "', '")
        return f"expected one of: {choices.replace(chr(39), '')}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "assertion_error":
        return msg.removeprefix("Assertion failed, ")
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "expected a mapping (key: value)"
    if kind in ("tuple_type", "list_type", "iterable_type"):
        return "expected a list"
    if kind == "string_type":
        return "expected a string"
    if kind in ("bool_type", "bool_parsing"):
        return "expected true or false"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "expected a whole number"
    if kind in ("float_type", "float_parsing"):
        return "expected a number"
    if kind == "too_short":
        return "must not be empty"
    bounds = {
        "greater_than_equal": ("ge", "at least"),
        "greater_than": ("gt", "more than"),
        "less_than_equal": ("le", "at most"),
        "less_than": ("lt", "less than"),
    }
    if kind in bounds:
        name, words = bounds[kind]
        return f"must be {words} {ctx.get(name)}"
    return msg


class _Checker:
    """Validates the parts of a read document and collects every problem."""

    def __init__(self, document: _Document) -> None:
        self.doc = document

    def validate(self, adapter: TypeAdapter[Any], value: Any, prefix: KeyPath, root: Any) -> Any:
        """The validated value, or None after recording each of pydantic's errors."""
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        tag = value.get("type") if isinstance(value, Mapping) else None
        for error in errors:
            loc = tuple(error["loc"])
            message = _message(error, root)
            if error["type"].startswith("union_tag"):
                loc = ("type",)
            elif root is AnySource and loc and loc[0] == tag:
                loc = loc[1:]
            if (*prefix, *loc) not in self.doc.tainted:  # else from the environment or a file
                message = _with_value(message, _shown_value(error))
            cause = (error.get("ctx") or {}).get("error")
            if isinstance(cause, TemplateProblem):
                line, message = self.doc.template_place((*prefix, *loc), cause)
                self.doc.problem((*prefix, *loc), message, line)
                continue
            self.doc.problem((*prefix, *loc), message)
        return None

    def section(self, data: Mapping[str, Any], key: str, kind: type, hint: str) -> Any:
        value = data.get(key)
        if value is None:
            return kind()
        if not isinstance(value, kind):
            self.doc.problem((key,), hint)
            return kind()
        return value


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
    doc = _Document(file, environ)
    if doc.read():
        config = _check(doc, environ)
        if config is not None and not doc.problems:
            return config
    raise ConfigError(_problems(doc))


def _check_name(doc: _Document, part: str, path: KeyPath) -> None:
    """A source or channel name the store could not hold (`models.text_problem`)."""
    name = path[-1]
    problem = models.text_problem(part, name) if isinstance(name, str) else None
    if problem is not None:
        doc.problem(path, f"the {part} name {problem}")


def _check(doc: _Document, environ: Mapping[str, str]) -> Config | None:
    checker = _Checker(doc)
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        doc.problem((), f"expected a mapping with the keys {', '.join(TOP_LEVEL_KEYS)}")
        return None
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            doc.problem((key,), _unknown_key(key, TOP_LEVEL_KEYS))

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

    for found_path, message in _reference_problems(data, quote=quote, line_of=doc.line_of):
        doc.problem(found_path, message)
    valid_sources = {n: s for n, s in sources.items() if s is not None}
    valid_jobs = [(i, job) for i, job in enumerate(jobs) if job is not None]
    for found_path, message in _policy_problems(polling, valid_sources, valid_jobs):
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
        return Config(
            path=doc.file,
            # none given: Config puts it next to the config file
            **({"database": database} if database is not None else {}),
            sources=sources,
            channels=channels,
            rules=tuple(rules),
            polling=polling,
            delivery=delivery,
            replicas=replicas,
            jobs=tuple(jobs),
            log=log,
            channel_templates=channel_templates,
        )
    except ValidationError as exc:
        # the checks above are Config's own, part by part; this is only a safety net
        for error in exc.errors(include_url=False, include_input=False):
            doc.problem(tuple(error["loc"]), _message(error, Config))
        return None


def _problems(doc: _Document) -> list[Problem]:
    """The document's problems as `Problem`s: noise dropped, ordered by line, secrets masked."""
    kept: list[tuple[KeyPath, int | None, str]] = []
    for index, (path, line, message) in enumerate(doc.problems):
        # a value already reported while reading (unset variable, unreadable file) is not
        # reported again for what validation then makes of it
        later = index >= doc.read_problems
        if later and any(path[: len(b)] == b for b in doc.broken):
            continue
        kept.append((path, line, message))
    kept.sort(key=lambda p: (p[1] is None, p[1] or 0))
    secrets = sorted((s for s in doc.secrets if len(s) >= 4), key=len, reverse=True)
    result = []
    for path, line, message in kept:
        shown = _format_path(doc.renamed.get(path, path))
        for secret in secrets:
            message = message.replace(secret, "***")
            shown = shown.replace(secret, "***")
        result.append(Problem(doc.file, line, shown, message))
    return result
