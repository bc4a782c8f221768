"""The field types of a config and the values they read: durations, rates, database URLs,
listen addresses.

Each field type is an ``Annotated`` pydantic type whose validator reads what a person writes
(``5m``, ``300/m``, ``0123`` as text) and says in words what was expected. A `ShownValueError`
marks a message about a value that is never a secret, so that a problem may quote it
(`poller.config.problems`). Writing a duration back is `poller.units.format_duration`.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Annotated
from urllib.parse import urlsplit

import apprise
import jmespath
from jmespath.exceptions import EmptyExpressionError, IncompleteExpressionError, JMESPathError
from jmespath.parser import ParsedResult
from pydantic import AfterValidator, BeforeValidator, Field, SecretStr
from sqlalchemy.engine.url import make_url

from poller.models import Event, State, line_problem, text_problem
from poller.notify import quiet_apprise
from poller.settings.paths import AS_WRITTEN

#: The fields an http source's url and body templates may name.
TEMPLATE_FIELDS = ("id", "site", "source", "key")
_TARGET_STATES = tuple(s.value for s in State if s is not State.UNKNOWN)


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


class ShownValueError(ValueError):
    """A ValueError about a value that is never a secret (a duration, a rate, a state...):
    a config problem quotes the value it was given, unless it came from the environment or a
    file."""


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like ``500ms``, ``1.5s``, ``5m``, ``1h30m``.

    Raises ValueError (whose message never quotes the value) for anything else, for negative
    durations and for infinities.
    """
    if isinstance(value, bool):
        raise ShownValueError(_DURATION_HINT)
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
            raise ShownValueError(_DURATION_HINT)
    except OverflowError:
        raise ShownValueError("expected a finite duration") from None
    if not math.isfinite(seconds):
        raise ShownValueError("expected a finite duration")
    if seconds < 0:
        raise ShownValueError("a duration cannot be negative")
    return seconds


def parse_rate(value: object) -> float:
    """Requests per second from ``5/s``, ``300/m``, ``1000/h``, ``10/d`` or a bare number."""
    if isinstance(value, bool):
        raise ShownValueError(_RATE_HINT)
    rate: float
    try:
        if isinstance(value, int | float):
            rate = float(value)
        elif isinstance(value, str) and (match := _RATE.fullmatch(value)):
            period = _RATE_PERIOD[(match.group(2) or "s").lower()]
            rate = float(match.group(1)) / period
        else:
            raise ShownValueError(_RATE_HINT)
    except OverflowError:
        raise ShownValueError(_RATE_HINT) from None
    if not math.isfinite(rate):
        raise ShownValueError(_RATE_HINT)
    if rate <= 0:
        raise ShownValueError("must be more than 0 requests")
    return rate


# --- database URLs ---------------------------------------------------------------------------


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


# --- listen addresses ------------------------------------------------------------------------

_LISTEN_HINT = (
    "expected an address to listen on as host:port, like 127.0.0.1:9180, [::1]:9180 "
    "or localhost:9180"
)
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def split_address(value: str) -> tuple[str, int]:
    """The host and port of a listen address (``127.0.0.1:9180``, ``[::1]:9180``,
    ``localhost:9180``); ValueError for anything else.

    The host is required: a listener on every interface must be asked for by name
    (``0.0.0.0:9180``), never by leaving the host out.
    """
    host, colon, port_text = value.strip().rpartition(":")
    if not colon or not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise ShownValueError(_LISTEN_HINT)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ShownValueError("the port must be from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ShownValueError(_LISTEN_HINT) from None
        return host, port
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if ":" in host or not _HOST_NAME.fullmatch(host):
            raise ShownValueError(_LISTEN_HINT) from None
    return host, port


def _listen_address(value: str) -> str:
    split_address(value)
    return value.strip()


# --- one line of text ------------------------------------------------------------------------


def control_character(text: str) -> tuple[int, str] | None:
    """The line (from 1) and code (``U+000A``) of the first control character in `text`."""
    for index, char in enumerate(text):
        if unicodedata.category(char) == "Cc":
            return text.count("\n", 0, index) + 1, f"U+{ord(char):04X}"
    return None


def one_line(text: str) -> None:
    """ValueError if a secret or a URL holds a control character (an HTTP header, a URL or
    a password cannot carry one, and a request would fail at every poll instead)."""
    found = control_character(text)
    if found is not None:
        raise ValueError(
            f"holds a control character ({found[1]}); a secret or a URL is one line of text"
        )


# --- field types -----------------------------------------------------------------------------


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ShownValueError("must be longer than 0s")
    return seconds


def _optional_positive_duration(value: object) -> float | None:
    return None if value is None else _positive_duration(value)


def _optional_duration(value: object) -> float | None:
    return None if value is None else parse_duration(value)


def _backoff(value: object) -> float:
    hint = "expected a number of at least 1, like 1.5"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ShownValueError(hint)
    try:
        factor = float(value)
    except (ValueError, OverflowError):
        raise ShownValueError(hint) from None
    if not math.isfinite(factor) or factor < 1:
        raise ShownValueError(hint)
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


def one_or_many(value: object) -> object:
    """Lets a list of one be written as its single item."""
    return (value,) if isinstance(value, str | Event | State) else value


def as_text(value: object) -> object:
    """Job ids and sites are text even when YAML (or a caller) gives a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _one_line_name(value: str) -> str:
    # a name ends up in titles, keys and the database (PostgreSQL refuses NUL): the same
    # check, in the same words, as a watch's parts (`watch_part`)
    problem = line_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _non_empty_secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    one_line(value.get_secret_value())
    return value


def _header_value(value: SecretStr) -> SecretStr:
    one_line(value.get_secret_value())
    return value


def http_url(value: str) -> str:
    """`value` without its trailing slashes; ValueError unless it is one http(s) URL."""
    one_line(value)  # urlsplit would drop a newline or a tab without a word
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
    one_line(value)
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
    one_line(url)
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
def compile_jmespath(expression: str) -> ParsedResult:
    """`expression` compiled, once per process (an http source searches with it every poll)."""
    return jmespath.compile(expression)


def _check_jmespath(value: str) -> str:
    try:
        compile_jmespath(value)
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
    raise ShownValueError(f"unknown state; expected one of: {', '.join(_TARGET_STATES)}")


def template_fields(template: str, known: Sequence[str] = TEMPLATE_FIELDS) -> set[str]:
    """The fields a ``str.format`` template names; ValueError if it names others than
    `known`."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        # the message is Python's ("Single '}' encountered...") and quotes no value
        raise ValueError(f"malformed template: {exc}; write {{{{ and }}}} for braces") from None
    names = set()
    allowed = ", ".join(f"{{{name}}}" for name in known)
    for _literal, name, _spec, _conversion in parsed:
        if name is None:
            continue
        if name not in known:
            shown = name if name else "{}"
            raise ValueError(f"template names unknown field {shown}; expected {allowed}")
        names.add(name)
    return names


def body_fields(
    body: object, where: str = "body", known: Sequence[str] = TEMPLATE_FIELDS
) -> set[str]:
    """The template fields a JSON body names; ValueError if it is not JSON or names others
    than `known`."""
    if isinstance(body, str):
        try:
            return template_fields(body, known)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if isinstance(body, Mapping):
        names: set[str] = set()
        for key, item in body.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: JSON object keys must be strings")
            names |= body_fields(item, f"{where}.{key}", known)
        return names
    if isinstance(body, list | tuple):
        names = set()
        for index, item in enumerate(body):
            names |= body_fields(item, f"{where}[{index}]", known)
        return names
    if body is None or isinstance(body, bool | int):
        return set()
    if isinstance(body, float) and math.isfinite(body):
        return set()
    raise ValueError(f"{where}: not a JSON value (quote dates and other text)")


def watch_part(part: str) -> AfterValidator:
    """The check of one part of a watch (`text_problem`): the same rule as `poller add`
    and discovery, and the store's limits, so the config cannot hold what a database refuses."""

    def check(value: str) -> str:
        problem = text_problem(part, value)
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
#: Text kept as written where YAML would read a number, a boolean or a date.
Written = Annotated[str, AS_WRITTEN]
Token = Annotated[SecretStr, AS_WRITTEN, AfterValidator(_non_empty_secret)]
HeaderValue = Annotated[SecretStr, AS_WRITTEN, AfterValidator(_header_value)]
HttpUrl = Annotated[Written, AfterValidator(http_url)]
JmesPath = Annotated[Written, AfterValidator(_check_jmespath)]
TargetState = Annotated[State, BeforeValidator(_target_state)]
ChannelUrl = Annotated[SecretStr, AfterValidator(_apprise_url)]
Name = Annotated[Written, AfterValidator(_one_line_name)]
Text = Annotated[Written, BeforeValidator(as_text), AfterValidator(_one_line_name)]
Names = Annotated[tuple[Name, ...], BeforeValidator(one_or_many)]
NonEmptyNames = Annotated[tuple[Name, ...], BeforeValidator(one_or_many), Field(min_length=1)]
OptionalNames = Annotated[
    tuple[Name, ...] | None, BeforeValidator(one_or_many), Field(min_length=1)
]
DatabaseUrl = Annotated[str, AfterValidator(_database_url)]
#: ``host:port`` for a listener (`split_address`); text as written.
ListenAddress = Annotated[Written, AfterValidator(_listen_address)]
