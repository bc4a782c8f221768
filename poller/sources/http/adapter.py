"""Any JSON job-status endpoint, described in the config (`HttpSource`).

One request per job: the ``url`` template (and the string leaves of the optional JSON ``body``
template) are filled with the job's fields (`config.TEMPLATE_FIELDS`: ``id``, ``site``,
``source``, ``key``; URL-quoted in the URL), sent with ``method`` and ``headers``. A job's
``site`` is optional; a source whose templates name ``{site}`` refuses to poll a job without
one (a two-part id such as Airflow's dag and run, ``/dags/{site}/dagRuns/{id}``). In the JSON
answer, the ``state`` JMESPath expression finds the remote state, ``progress`` the percentage,
and each ``detail`` expression a value kept in the details under its name (so that messages
can show it). ``states`` maps remote values, case-insensitively, to poller's states; a value it
does not map is recorded raw and is never terminal. The optional ``status_text`` expression finds
the status shown and recorded instead of the mapped value (Prefect's state name while the map
reads its state type); ``name`` the job's name (details ``job_name``, shown when the watch has
none); ``started_at`` and ``ended_at`` the API's own times (details ``remote_created_at`` and
``remote_completed_at``, in epoch seconds, read as ``time_unit`` says: `read_time`).

Parsing is total: an answer where the state cannot be found, or is not a plain value, is a
poll error for that job; nothing raises out of the adapter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import httpx
from aiohttp.abc import AbstractResolver

from poller.errors import PermanentSourceError, SourceError
from poller.models import JobRef, JsonValue, PollFailure, PollOutcome, PollResult, State
from poller.redact import scrub_outcome
from poller.settings.fields import body_fields, template_fields
from poller.sources import lenient, read_outcome
from poller.sources.auth import JsonLogin, OAuth2ClientCredentials, StaticHeaders
from poller.sources.client import Requester, SourceHealth, path_segment
from poller.sources.http.config import HttpExpressions, HttpSource

if TYPE_CHECKING:
    from jmespath.parser import ParsedResult

__all__ = ["HttpAdapter", "parse_answer", "read_time", "render_body", "render_url"]

#: The longest detail value kept (text, or objects and lists as JSON).
MAX_DETAIL = 1000
#: The longest job name and display status kept.
MAX_NAME = 200
MAX_STATUS = 256
#: Details that are times (`read_time`), however they are given (``started_at``, ``detail``).
_TIMES = frozenset({"remote_created_at", "remote_completed_at"})
#: Times after this (epoch seconds, the year 2286) are not real job times.
_LATEST = 1e10


def _fields(job: JobRef) -> dict[str, str]:
    return {"id": job.job_id, "site": job.site or "", "source": job.source, "key": job.key}


def render_url(template: str, job: JobRef) -> str:
    """The URL of one job: the template with its fields, each URL-quoted."""
    return template.format(**{k: path_segment(v) for k, v in _fields(job).items()})


def render_body(template: JsonValue, job: JobRef) -> JsonValue:
    """The JSON body of one job: every string leaf of the template filled with its fields."""
    fields = _fields(job)
    if isinstance(template, str):
        return template.format(**fields)
    if isinstance(template, Mapping):
        return {key: render_body(value, job) for key, value in template.items()}
    if isinstance(template, list | tuple):
        return [render_body(value, job) for value in template]
    return template


def _search(expression: ParsedResult, body: object) -> object:
    try:
        return expression.search(body)
    except Exception:
        # jmespath raises on functions given the wrong types (length(@) of a number, ...):
        # that is the answer not having the expected shape, like a missing field
        return None


def _remote_value(value: object) -> str | None:
    """The remote state as text: strings as they are, numbers and booleans as JSON spells them."""
    if isinstance(value, str):
        return value.strip()[:256] or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)[:256]
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _detail(value: object) -> bool | int | float | str | None:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return lenient.text(value, MAX_DETAIL)


def read_time(value: object, unit: str = "auto") -> float | None:
    """Epoch seconds from a time an API gave, or None when it is not one.

    ``s`` and ``ms``: an epoch number (or a number written as text) in that unit; ``iso``: an
    ISO 8601 text (naive means UTC); ``auto``: any of these, epoch seconds and milliseconds told
    apart by size (1e11 is the year 5138 in seconds and 1973 in milliseconds, so real times are
    never ambiguous). Times before 1970 or after 2286 are not job times.
    """
    if unit == "auto":
        seconds = lenient.parse_time(value)
    elif unit == "iso":
        seconds = lenient.parse_time(value) if isinstance(value, str) and "-" in value else None
    else:
        if isinstance(value, str):
            value = value.strip()
        epoch = None if isinstance(value, bool) else lenient.number(value)
        seconds = None if epoch is None else epoch / 1000 if unit == "ms" else epoch
    if seconds is None or not (0 < seconds <= _LATEST):
        return None
    return seconds


def parse_answer(
    body: object,
    expressions: HttpExpressions,
    states: Mapping[str, State],
    time_unit: str = "auto",
) -> PollResult:
    """Read one answer; raise `PermanentSourceError` if its state cannot be found.

    `states` is keyed by lower-cased remote values (`HttpSource.states`). The display status
    (``status_text``, when it finds a plain value) replaces the remote value as the status
    recorded, while the state comes from the remote value.
    """
    found = _search(expressions.state, body)
    if found is None:
        raise PermanentSourceError("bad_answer", "the state expression found nothing")
    remote = _remote_value(found)
    if remote is None:
        raise PermanentSourceError("bad_answer", "the state expression found no plain value")
    state = states.get(remote.lower())
    if expressions.status_text is not None:
        shown = _remote_value(_search(expressions.status_text, body))
        if shown is not None:
            remote = lenient.shorten(" ".join(shown.split()), MAX_STATUS)
    progress = None
    if expressions.progress is not None:
        progress = lenient.number(_search(expressions.progress, body))
        if progress is not None:
            progress = min(100.0, max(0.0, progress))
    details = {
        name: read_time(_search(expr, body), time_unit)
        if name in _TIMES
        else _detail(_search(expr, body))
        for name, expr in expressions.detail.items()
    }
    if expressions.name is not None:
        details["job_name"] = lenient.text(_search(expressions.name, body), MAX_NAME)
    if expressions.started_at is not None:
        details["remote_created_at"] = read_time(_search(expressions.started_at, body), time_unit)
    if expressions.ended_at is not None:
        details["remote_completed_at"] = read_time(_search(expressions.ended_at, body), time_unit)
    return PollResult(
        remote_status=remote,
        state=state,
        progress=progress,
        details={k: v for k, v in details.items() if v is not None},
    )


class HttpAdapter:
    """Polls a generic JSON job API, one request per job."""

    def __init__(
        self,
        config: HttpSource,
        *,
        resolver: AbstractResolver | None = None,
        health: SourceHealth | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.expressions: HttpExpressions = config.compiled()
        self.states: Mapping[str, State] = dict(config.states)
        # a template naming {site} (Airflow's /dags/{site}/dagRuns/{id}) needs jobs with one
        self.needs_site = "site" in template_fields(config.url) | (
            set() if config.body is None else body_fields(config.body)
        )
        # with an ``auth``, the headers go with each job request (not the token request)
        self.headers = _headers(config) if config.auth is not None and config.headers else None
        auth = _auth(config)
        self._oauth = auth if isinstance(auth, OAuth2ClientCredentials) else None
        self.requester = Requester(
            auth=auth,
            max_concurrency=config.max_concurrency,
            rate_limit=config.rate_limit,
            deadline=config.request_timeout,
            resolver=resolver,
            transport=transport,
            health=health,
        )

    async def aclose(self) -> None:
        """Release connections."""
        await self.requester.aclose()

    async def poll(self, jobs: Sequence[JobRef]) -> Mapping[str, PollOutcome]:
        """Poll each job (concurrently, within the source's limits)."""
        outcomes = await self.requester.each(self.poll_one, jobs)
        return {job.key: outcome for job, outcome in zip(jobs, outcomes, strict=True)}

    async def poll_one(self, job: JobRef) -> PollOutcome:
        """Poll one job."""
        if self.needs_site and not job.site:
            return PollFailure(
                "config", "the source's url or body names {site}: give the job a site", False
            )
        try:
            url = render_url(self.config.url, job)
            body = None if self.config.body is None else render_body(self.config.body, job)
        except (ValueError, KeyError, IndexError) as exc:
            # the config check refuses such templates; a config built in code may not be checked
            return PollFailure("config", f"cannot fill the templates: {exc}", transient=False)
        try:
            answer = await self.requester.json(
                self.config.method, url, body=body, headers=self.headers
            )
        except SourceError as exc:
            return PollFailure(exc.kind, exc.message, exc.transient, exc.retry_after)
        outcome = read_outcome(self._parse, answer)
        if self._oauth is not None:
            # the daemon scrubs the config's secrets from what is stored; the token is not one
            outcome = scrub_outcome(outcome, self._oauth.secrets)
        return outcome

    def _parse(self, answer: object) -> PollResult:
        return parse_answer(answer, self.expressions, self.states, self.config.time_unit)


def _headers(config: HttpSource) -> dict[str, str]:
    return {name: value.get_secret_value() for name, value in config.headers.items()}


def _auth(config: HttpSource) -> httpx.Auth:
    """The source's ``auth`` (Basic, OAuth 2 or a login), else its ``headers`` on every
    request."""
    if config.auth is None:
        return StaticHeaders(_headers(config))
    auth = config.auth
    if auth.basic is not None:
        return httpx.BasicAuth(auth.basic.username, auth.basic.password.get_secret_value())
    if auth.login is not None:
        login = auth.login
        return JsonLogin(login.url, login.username, login.password.get_secret_value())
    assert auth.oauth2 is not None  # HttpAuth holds exactly one
    oauth = auth.oauth2
    return OAuth2ClientCredentials(
        oauth.token_url,
        oauth.client_id,
        oauth.client_secret.get_secret_value(),
        scope=oauth.scope,
        client_auth=oauth.client_auth,
    )
