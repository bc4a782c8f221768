"""The config of an http source: any JSON job-status endpoint, described by a URL template, an
optional body and JMESPath expressions over the answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from jmespath.parser import ParsedResult
from pydantic import Field, ValidationInfo, field_validator, model_validator

from poller.models import State
from poller.settings.fields import (
    HeaderValue,
    JmesPath,
    Name,
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


#: The detail each of ``name``, ``started_at`` and ``ended_at`` fills: a ``detail`` entry of
#: that name may not be given with it (a ``detail`` entry of a time's name is read as a time).
FILLED_DETAILS = {
    "name": "job_name",
    "started_at": "remote_created_at",
    "ended_at": "remote_completed_at",
}


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
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("body")
    @classmethod
    def _check_body(cls, value: object, info: ValidationInfo) -> object:
        if value is None:
            return None
        if info.data.get("method") == "GET":
            raise ValueError("a body needs method: POST")
        body_fields(value)
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        http_url(value)
        names = template_fields(value)
        if "id" not in names and "body" in info.data:
            body = info.data["body"]
            if body is None or "id" not in body_fields(body):
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
