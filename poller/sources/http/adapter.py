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

With ``batch``, the jobs are asked ``max_ids`` ids per request instead (`poll_batch`, through
`batching`): the templates are filled with the ids (`batch_fields`), ``items`` finds the list
of jobs in the answer and ``id`` each one's id, and each item is read like one job's answer.
With ``discover``, the adapter lists the jobs of a ``bulk`` entry (`discover`), page after page
by a token or a page number.

Parsing is total: an answer where the state cannot be found, or is not a plain value, is a
poll error for that job; nothing raises out of the adapter's `poll`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import httpx
from aiohttp.abc import AbstractResolver

from poller.errors import PermanentSourceError, SourceError
from poller.models import JobRef, JsonValue, PollFailure, PollOutcome, PollResult, State
from poller.redact import scrub_outcome
from poller.settings.fields import body_fields, template_fields
from poller.sources import lenient, read_outcome
from poller.sources.auth import JsonLogin, OAuth2ClientCredentials, StaticHeaders
from poller.sources.base import MAX_DISCOVERED, Discovered, failure_of
from poller.sources.batching import batch_outcomes, poll_batches
from poller.sources.client import Requester, SourceHealth, path_segment
from poller.sources.http.config import HttpExpressions, HttpSource

if TYPE_CHECKING:
    from jmespath.parser import ParsedResult

__all__ = [
    "HttpAdapter",
    "batch_fields",
    "fill_body",
    "fill_url",
    "parse_answer",
    "read_time",
    "render_body",
    "render_url",
]

#: The longest detail value kept (text, or objects and lists as JSON).
MAX_DETAIL = 1000
#: The longest job name and display status kept.
MAX_NAME = 200
MAX_STATUS = 256
#: Details that are times (`read_time`), however they are given (``started_at``, ``detail``).
_TIMES = frozenset({"remote_created_at", "remote_completed_at"})
#: Times after this (epoch seconds, the year 2286) are not real job times.
_LATEST = 1e10
#: A batch answer may list at most this many items per id asked: more is an API that
#: ignored the batch's filter (every run of a server), refused rather than read.
MAX_ITEMS_PER_ID = 2


class Listing(Protocol):
    """What discovery reads of a config's job entry (a `config.JobConfig`): its ``bulk``,
    the value of the ``discover`` templates' ``{bulk}``."""

    @property
    def bulk(self) -> str | None:
        """The entry's bulk (an MLflow experiment, a Prefect deployment...), or None."""
        ...


def _fields(job: JobRef) -> dict[str, str]:
    return {"id": job.job_id, "site": job.site or "", "source": job.source, "key": job.key}


def _text(value: JsonValue) -> str:
    """A field's value as text in a template: a list joined by commas, null as nothing."""
    if isinstance(value, list):
        return ",".join(_text(item) for item in value)
    return "" if value is None else str(value)


def fill_url(template: str, fields: Mapping[str, JsonValue]) -> str:
    """A URL template filled with `fields`, each URL-quoted (a list's items one by one)."""

    def quoted(value: JsonValue) -> str:
        if isinstance(value, list):
            return ",".join(quoted(item) for item in value)
        return path_segment(_text(value))

    return template.format(**{k: quoted(v) for k, v in fields.items()})


def fill_body(template: JsonValue, fields: Mapping[str, JsonValue]) -> JsonValue:
    """A JSON body template filled with `fields`: a string leaf that is one field alone
    (``"{ids}"``) becomes its value as it is (a list, a number, null), any other string leaf
    is filled with the fields as text."""
    if isinstance(template, str):
        whole = template[1:-1] if template[:1] == "{" and template[-1:] == "}" else None
        if whole is not None and whole in fields:
            return fields[whole]
        return template.format(**{k: _text(v) for k, v in fields.items()})
    if isinstance(template, Mapping):
        return {key: fill_body(value, fields) for key, value in template.items()}
    if isinstance(template, list | tuple):
        return [fill_body(value, fields) for value in template]
    return template


def render_url(template: str, job: JobRef) -> str:
    """The URL of one job: the template with its fields, each URL-quoted."""
    return fill_url(template, _fields(job))


def render_body(template: JsonValue, job: JobRef) -> JsonValue:
    """The JSON body of one job: every string leaf of the template filled with its fields."""
    return template if template is None else fill_body(template, _fields(job))


def batch_fields(ids: Sequence[str]) -> dict[str, JsonValue]:
    """The fields of a batch request's templates (`config.BATCH_FIELDS`): the ids, and the
    same ids quoted for a filter expression (``'a','b'``, a quote in an id doubled as SQL does)."""
    quoted = ",".join("'" + job_id.replace("'", "''") + "'" for job_id in ids)
    return {"ids": list(ids), "quoted_ids": quoted}


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
    """Polls a generic JSON job API, one request per job or per ``batch``, and lists the jobs
    of ``bulk`` entries with ``discover``."""

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
        self._batch = config.batch.compiled() if config.batch is not None else None
        self._discover = config.discover.compiled() if config.discover is not None else None
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
        """Poll each job (concurrently, within the source's limits): with ``batch``,
        ``max_ids`` jobs per request, else one request per job."""
        batch = self.config.batch
        if batch is not None:
            return await poll_batches(jobs, batch.max_ids, self.poll_batch, self.requester.each)
        outcomes = await self.requester.each(self.poll_one, jobs)
        return {job.key: outcome for job, outcome in zip(jobs, outcomes, strict=True)}

    async def poll_batch(self, job_ids: list[str]) -> Mapping[str, PollOutcome]:
        """Poll these jobs with one ``batch`` request; raises `SourceError` if it fails.

        Each item of the answer is read with the source's expressions, as one job's answer.
        An answer whose items are not a list, or are more than `MAX_ITEMS_PER_ID` per id
        asked (an API that ignored the filter), costs this batch only.
        """
        batch, expressions = self.config.batch, self._batch
        assert batch is not None and expressions is not None  # `poll` batches only then
        answer = await self._send(
            batch.method, batch.url, batch.body, batch_fields(job_ids), "batch"
        )
        items = self._items(answer, expressions.items, "batch")
        if len(items) > MAX_ITEMS_PER_ID * len(job_ids):
            raise PermanentSourceError(
                "bad_answer",
                f"the batch answer lists {len(items)} items for {len(job_ids)} ids "
                "(does the API apply the batch's filter?)",
            )
        entries: dict[str, object] = {}
        for item in items:
            job_id = lenient.identifier(_search(expressions.id, item))
            if job_id is not None:
                entries.setdefault(job_id, item)
        outcomes = batch_outcomes(entries, job_ids, self._parse, "the batch answer")
        return {k: self._scrubbed(outcome) for k, outcome in outcomes.items()}

    async def discover(self, job: Listing) -> Discovered:
        """The jobs the ``discover`` listing gives for a job entry's ``bulk``, every page of
        them (up to ``max_pages``, and `MAX_DISCOVERED` jobs): each id with its state as
        listed (read with the source's expressions; None if that fails). `complete` if the
        last page was reached and every item had an id.

        Raises `SourceError` if a page cannot be had or is not a list of items.
        """
        spec, expressions = self.config.discover, self._discover
        if spec is None or expressions is None or job.bulk is None:
            # the config check refuses a bulk on a source without discover
            return Discovered({}, complete=False)
        found: dict[str, PollResult | None] = {}
        seen: set[str] = set()  # every id listed, kept or filtered out
        fields: dict[str, JsonValue] = {"bulk": job.bulk}
        token: JsonValue = None
        tokens: set[str] = set()
        offset = 0
        left_out = False  # an item without an id: the listing is not complete
        for page in range(spec.max_pages):
            fields.update(next=token, page=page, offset=offset)
            answer = await self._send(spec.method, spec.url, spec.body, fields, "discover")
            items = self._items(answer, expressions.items, "discover")
            before = len(seen)
            for item in items:
                job_id = lenient.identifier(_search(expressions.id, item))
                left_out = left_out or job_id is None
                if job_id is None or job_id in seen:
                    continue
                seen.add(job_id)
                wanted = expressions.filter
                if wanted is None or _true(_search(wanted, item)):
                    found[job_id] = self._listed(item)
                    if len(found) >= MAX_DISCOVERED:
                        return Discovered(found, complete=False)
            offset += len(items)
            if expressions.next is not None:
                token = _token(_search(expressions.next, answer))
                if token is None:
                    return Discovered(found, complete=not left_out)  # the last page
                if str(token) in tokens:
                    break  # a server pointing back at a page it gave
                tokens.add(str(token))
            elif not spec.paged or not items:
                return Discovered(found, complete=not left_out)  # one page, or the end
            elif len(seen) == before:
                break  # a page without new items: it may ignore paging
        return Discovered(found, complete=False)

    def _listed(self, item: object) -> PollResult | None:
        outcome = read_outcome(self._parse, item)
        return outcome if isinstance(outcome, PollResult) else None

    async def _send(
        self,
        method: str,
        url: str,
        body: JsonValue,
        fields: Mapping[str, JsonValue],
        what: str,
    ) -> object:
        """One ``batch`` or ``discover`` request's answer; raises `SourceError`."""
        try:
            target = fill_url(url, fields)
            sent = None if body is None else fill_body(body, fields)
        except (ValueError, KeyError, IndexError) as exc:
            # the config check refuses such templates; a config built in code may not be checked
            raise PermanentSourceError(
                "config", f"cannot fill the {what} templates: {exc}"
            ) from None
        # partial: an item that cannot be read costs its job only, not the whole answer
        return await self.requester.json(
            method, target, body=sent, headers=self.headers, partial=True
        )

    @staticmethod
    def _items(answer: object, expression: ParsedResult, what: str) -> list[object]:
        items = _search(expression, answer)
        if not isinstance(items, list):
            found = "nothing" if items is None else f"a {type(items).__name__}, not a list"
            raise PermanentSourceError("bad_answer", f"the {what} items expression found {found}")
        return items

    def _scrubbed(self, outcome: PollOutcome) -> PollOutcome:
        if self._oauth is not None:
            # the daemon scrubs the config's secrets from what is stored; the token is not one
            return scrub_outcome(outcome, self._oauth.secrets)
        return outcome

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
            return failure_of(exc)
        return self._scrubbed(read_outcome(self._parse, answer))

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


def _token(value: object) -> JsonValue:
    """A next-page token as the answer gave it (text or a whole number), None if there is
    none: the last page."""
    if isinstance(value, str):
        return value[:2000] if value.strip() else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _true(value: object) -> bool:
    """Whether JMESPath takes `value` for true: anything but null, false and empty text,
    lists and objects (0 is true)."""
    if value is None or value is False:
        return False
    return not isinstance(value, str | list | dict) or bool(value)
