"""The config of an http source: any JSON job-status endpoint, described by a URL template, an
optional body and JMESPath expressions over the answer; optionally a ``batch`` endpoint that
answers many jobs per request and a ``discover`` listing that finds the jobs to watch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from jmespath.parser import ParsedResult
from pydantic import Field, ValidationInfo, field_validator, model_validator

from poller.models import State
from poller.settings.fields import TEMPLATE_FIELDS as JOB_FIELDS
from poller.settings.fields import (
    Count,
    HeaderValue,
    JmesPath,
    Name,
    PositiveDuration,
    TargetState,
    Text,
    Token,
    Written,
    body_fields,
    compile_jmespath,
    http_url,
    one_line,
    template_fields,
)
from poller.settings.polling import Frozen
from poller.sources.base import SourceConfig


class HttpExpressions(NamedTuple):
    """The compiled JMESPath expressions of an `HttpSource`."""

    state: ParsedResult
    progress: ParsedResult | None
    detail: Mapping[str, ParsedResult]
    name: ParsedResult | None = None
    status_text: ParsedResult | None = None
    started_at: ParsedResult | None = None
    ended_at: ParsedResult | None = None


class ListExpressions(NamedTuple):
    """The compiled JMESPath expressions of a ``batch`` or ``discover`` request."""

    items: ParsedResult
    id: ParsedResult
    filter: ParsedResult | None = None
    next: ParsedResult | None = None


#: The detail each of ``name``, ``started_at`` and ``ended_at`` fills: a ``detail`` entry of
#: that name may not be given with it (a ``detail`` entry of a time's name is read as a time).
FILLED_DETAILS = {
    "name": "job_name",
    "started_at": "remote_created_at",
    "ended_at": "remote_completed_at",
}


#: The fields of a ``batch`` request's templates: the batch's ids (a whole string leaf of the
#: body that is ``"{ids}"`` is the JSON list of them; in text they are joined by commas),
#: and the same ids quoted for a filter expression (``'a','b'``).
BATCH_FIELDS = ("ids", "quoted_ids")
#: The fields of a ``discover`` request's templates: the job entry's ``bulk``, the next page's
#: token (``next``; empty, or null as a whole leaf, on the first page), the page's number
#: from 0 and the items read so far (``offset``; both numbers as whole leaves).
DISCOVER_FIELDS = ("bulk", "next", "page", "offset")


def _check_method(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


def _check_body(value: object, method: object, known: Sequence[str]) -> object:
    """A body template, checked: JSON whose strings name only `known` fields, with POST."""
    if value is None:
        return None
    if method == "GET":
        raise ValueError("a body needs method: POST")
    body_fields(value, known=known)
    return value


def _named(url: str, data: Mapping[str, Any], known: Sequence[str]) -> set[str]:
    """The fields a request's ``url`` and (already checked) ``body`` templates name;
    ValueError if the url is not an http(s) URL or a template names another field."""
    http_url(url)
    body = data.get("body")
    return template_fields(url, known) | (set() if body is None else body_fields(body, known=known))


def _token_url(value: str) -> str:
    http_url(value)
    return value  # as written: a token endpoint may need its trailing slash


class BasicCredentials(Frozen):
    """``auth: {basic: {username, password}}``: HTTP Basic authentication (`httpx.BasicAuth`)."""

    username: Name
    password: Token

    @field_validator("username")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("must not contain ':' (Basic authentication cannot carry it)")
        return value


class OAuth2Credentials(Frozen):
    """``auth: {oauth2: {...}}``: OAuth 2 client credentials, the token fetched from
    ``token_url`` (`auth.OAuth2ClientCredentials`). ``client_auth`` is how the client proves
    itself to the token endpoint: HTTP Basic (``basic``, RFC 6749's default) or the form
    (``post``)."""

    token_url: Written
    client_id: Text
    client_secret: Token
    scope: Text | None = None
    client_auth: Literal["basic", "post"] = "basic"

    @field_validator("token_url")
    @classmethod
    def _check_token_url(cls, value: str) -> str:
        return _token_url(value)


class LoginCredentials(Frozen):
    """``auth: {login: {url, username, password}}``: a bearer token from a login endpoint that
    takes a JSON ``{"username", "password"}`` and answers ``{"access_token"}`` (Airflow 3's
    ``POST /auth/token``), kept and fetched again like an OAuth 2 token (`auth.JsonLogin`)."""

    url: Written
    username: Text
    password: Token

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _token_url(value)


class HttpAuth(Frozen):
    """``auth``: how an http source proves who it is, one of ``basic``, ``oauth2`` and
    ``login``."""

    basic: BasicCredentials | None = None
    oauth2: OAuth2Credentials | None = None
    login: LoginCredentials | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> HttpAuth:
        if [self.basic, self.oauth2, self.login].count(None) != 2:
            raise ValueError("give exactly one of basic, oauth2 and login")
        return self


class _Request(Frozen):
    """A request of its own an http source sends (``batch``, ``discover``): its ``method``,
    ``body`` and ``url`` templates over `FIELDS`, and the JMESPath expression of the list of
    ``items`` in its answer and of each item's ``id``."""

    FIELDS: ClassVar[tuple[str, ...]] = ()

    method: Literal["GET", "POST"] = "POST"
    # body comes before url so that the url's check can see the fields the body names
    body: Any = None
    url: Written
    items: JmesPath
    id: JmesPath

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: object) -> object:
        return _check_method(value)

    @field_validator("body")
    @classmethod
    def _check_body(cls, value: object, info: ValidationInfo) -> object:
        return _check_body(value, info.data.get("method"), cls.FIELDS)

    def compiled(self) -> ListExpressions:
        """``items``, ``id`` (and a ``discover``'s ``filter`` and ``next``), compiled."""
        return ListExpressions(
            compile_jmespath(self.items),
            compile_jmespath(self.id),
            _compiled(getattr(self, "filter", None)),
            _compiled(getattr(self, "next", None)),
        )


class HttpBatch(_Request):
    """``batch``: one request answers many jobs. The ``url`` and ``body`` name ``{ids}`` or
    ``{quoted_ids}`` (`BATCH_FIELDS`); ``items`` finds the list of jobs in the answer, ``id``
    each one's id, and each item is read with the source's own expressions (``state``...).
    At most ``max_ids`` ids go in one request."""

    FIELDS: ClassVar[tuple[str, ...]] = BATCH_FIELDS

    max_ids: Annotated[Count, Field(ge=1, le=1000)] = 100

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        named = _named(value, info.data, cls.FIELDS)
        if "body" in info.data and not {"ids", "quoted_ids"} & named:
            raise ValueError("must name {ids} or {quoted_ids} (or the body must)")
        return value


class HttpDiscover(_Request):
    """``discover``: the listing of the jobs a job entry's ``bulk`` stands for (`DISCOVER_FIELDS`
    in its templates). ``items`` finds the list of jobs in a page, ``id`` each one's id,
    ``filter`` (optional) keeps the items for which it is true; ``next`` finds the next page's
    token (the last page has none), or else the templates name ``{page}`` or ``{offset}`` and
    a page without new items is the last. At most ``max_pages`` pages are read per listing,
    every ``interval``."""

    FIELDS: ClassVar[tuple[str, ...]] = DISCOVER_FIELDS

    method: Literal["GET", "POST"] = "GET"
    filter: JmesPath | None = None
    next: JmesPath | None = None
    max_pages: Annotated[Count, Field(ge=1, le=1000)] = 100
    interval: PositiveDuration = 60.0

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        _named(value, info.data, cls.FIELDS)
        return value

    @model_validator(mode="after")
    def _paging(self) -> HttpDiscover:
        named = _named(self.url, {"body": self.body}, self.FIELDS)
        if self.next is not None and "next" not in named:
            raise ValueError("next is given: the url or the body must name {next}")
        if self.next is None and "next" in named:
            raise ValueError("the url or the body names {next}: give next, the expression of it")
        return self

    @property
    def paged(self) -> bool:
        """Whether more pages than the first are asked for."""
        named = _named(self.url, {"body": self.body}, self.FIELDS)
        return self.next is not None or bool({"page", "offset"} & named)


class HttpSource(SourceConfig):
    """Any JSON job-status endpoint, described by templates and JMESPath expressions.

    ``url`` and the string leaves of ``body`` are ``str.format`` templates over
    `TEMPLATE_FIELDS` (``{{``/``}}`` for literal braces). ``states`` maps remote values,
    lower-cased (compare ``str(value).lower()``), to poller's states. ``name``,
    ``status_text``, ``started_at`` and ``ended_at`` are optional expressions for the job's
    name, its display status and the API's own times (read as ``time_unit`` says); ``auth``
    replaces an ``Authorization`` header with Basic or OAuth 2 client credentials. `compiled`
    gives the JMESPath expressions ready to search a body with (compiled once per process).
    """

    type: Literal["http"] = "http"
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, HeaderValue] = Field(default_factory=dict)
    auth: HttpAuth | None = None
    # body comes before url so that the url's check can see whether the body names {id}
    body: Any = None
    url: Written
    state: JmesPath
    progress: JmesPath | None = None
    detail: dict[str, JmesPath] = Field(default_factory=dict)
    name: JmesPath | None = None
    status_text: JmesPath | None = None
    started_at: JmesPath | None = None
    ended_at: JmesPath | None = None
    time_unit: Literal["auto", "s", "ms", "iso"] = "auto"
    states: dict[str, TargetState]
    batch: HttpBatch | None = None
    discover: HttpDiscover | None = None

    @property
    def discovery_interval(self) -> float:
        """How often the jobs of ``bulk`` entries are listed again (``discover.interval``)."""
        return self.discover.interval if self.discover is not None else 60.0

    @field_validator("detail")
    @classmethod
    def _detail_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name.strip() or len(name) > 60:
                raise ValueError("a detail name must have 1 to 60 characters")
            one_line(name)
        return value

    @model_validator(mode="after")
    def _one_authorization(self) -> HttpSource:
        for key, detail in FILLED_DETAILS.items():
            if getattr(self, key) is not None and detail in self.detail:
                raise ValueError(f"{key} fills the detail {detail}: give one of them, not both")
        if self.auth is not None and any(h.lower() == "authorization" for h in self.headers):
            raise ValueError("auth and an Authorization header cannot both be given")
        return self

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: object) -> object:
        return _check_method(value)

    @field_validator("body")
    @classmethod
    def _check_body(cls, value: object, info: ValidationInfo) -> object:
        return _check_body(value, info.data.get("method"), JOB_FIELDS)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        named = _named(value, info.data, JOB_FIELDS)
        if "body" in info.data and "id" not in named:
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
            state=compile_jmespath(self.state),
            progress=compile_jmespath(self.progress) if self.progress is not None else None,
            detail={name: compile_jmespath(expr) for name, expr in self.detail.items()},
            name=_compiled(self.name),
            status_text=_compiled(self.status_text),
            started_at=_compiled(self.started_at),
            ended_at=_compiled(self.ended_at),
        )


def _compiled(expression: str | None) -> ParsedResult | None:
    return compile_jmespath(expression) if expression is not None else None
