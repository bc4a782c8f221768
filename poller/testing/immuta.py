"""The Immuta jobs API, simulated on loopback: keyed statuses with long-polling, bulk listings and
paged searches, with jobs that tests add, change or script on a clock."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from poller.models import JsonValue
from poller.testing.script import Script, ordered_steps
from poller.testing.server import (
    HttpServer,
    Request,
    Response,
    iso_millis,
    path_segments,
)

_IMMUTA_TERMINAL = frozenset(("completed", "failed", "cancelled", "expired"))
_IMMUTA_FIELDS = frozenset(("state", "output", "job_type", "bulk_id", "retry_count", "extra"))
#: how `ImmutaSim` tells a client where the next page is
NextStyle = Literal["offset", "url", "absent"]


@dataclass
class _ImmutaJob:
    job_id: str
    job_type: str
    created: datetime
    state: str = "created"
    bulk_id: str | None = None
    output: Any = None
    retry_count: int = 0
    started: datetime | None = None
    completed: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    script: Script = field(default_factory=Script)

    @property
    def terminal(self) -> bool:
        return self.state in _IMMUTA_TERMINAL

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.job_id,
            "jobType": self.job_type,
            "state": self.state,
            "bulkId": self.bulk_id,
            "createdOn": iso_millis(self.created),
        }

    def doc(self) -> dict[str, Any]:
        doc = self.summary()
        doc.update(
            {
                "output": self.output,
                "retryCount": self.retry_count,
                "startedOn": iso_millis(self.started) if self.started else None,
                "completedOn": iso_millis(self.completed) if self.completed else None,
            }
        )
        doc.update(self.extra)
        return doc


def _check_immuta_fields(fields: Iterable[str]) -> None:
    unknown = sorted(set(fields) - _IMMUTA_FIELDS)
    if unknown:
        raise TypeError(f"unknown job field(s) {unknown}; known: {sorted(_IMMUTA_FIELDS)}")


def _values(request: Request, name: str) -> list[str]:
    """Every value of a query parameter, repeated (``a=1&a=2``) or comma-separated."""
    values: list[str] = []
    for key, value in parse_qsl(urlsplit(request.target).query, keep_blank_values=True):
        if key == name:
            values.extend(v.strip() for v in value.split(",") if v.strip())
    return values


def _parse_iso(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.strip())
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _search_matches(
    job: _ImmutaJob,
    types: set[str],
    states: set[str],
    start: datetime | None,
    end: datetime | None,
) -> bool:
    """Whether `job` passes a ``/jobs/search`` query's filters.

    An empty `types` or `states` set, or a missing date, means that filter was not given
    and lets every job through; values in the sets are already lower-cased.
    """
    return not (
        (types and job.job_type.lower() not in types)
        or (states and job.state.lower() not in states)
        or (start is not None and job.created < start)
        or (end is not None and job.created > end)
    )


class ImmutaSim(HttpServer):
    """The Immuta jobs API under ``{base_url}`` = ``http://127.0.0.1:PORT/api``.

    Endpoints (``Authorization: {api key}``, the key as it is):

    - ``POST /jobs/statuses`` with ``{"jobIds": [...], "wait": s, "pollInterval": s}``: an object
      keyed by job id (unknown ids are left out). With ``wait`` > 0 the answer waits, checking
      every ``pollInterval`` (default 1 s), until every requested job is terminal or ``wait``
      has passed, as Immuta documents it; ``wait: -1`` waits until they all end, however long
      that is. More than `max_ids`
      ids is a 400.
    - ``GET /jobs?bulkId=`` and ``GET /jobs/search`` (``jobType`` and ``state``, repeated or
      comma-separated; ``startDate``/``endDate`` on the creation date): a page of job summaries,
      ``{"jobs": [...], "next": ...}``, paged by ``offset``/``size`` (at most `max_page_size`).
      ``next`` is the next offset (``next_style="offset"``), a URL (``"url"``), or left out
      (``"absent"``); null on the last page.
    - ``GET /jobs/{id}``: one job.
    - ``GET /jobs/summary`` (``jobType``, repeated or comma-separated; ``startDate`` on the
      creation date, a 400 if it is not ISO 8601): the counts of jobs by type and state,
      ``{"jobTypes": [{"jobType": t, "total": n, "states": {state: n}}], "total": n,
      "startDate": ...}``.

    Job documents have ``id``, ``jobType``, ``state`` (any string, so that unknown states can be
    tested), ``bulkId``, ``output``, ``retryCount``, ``createdOn``, ``startedOn`` and
    ``completedOn``. The `requests` counter kinds are ``statuses``, ``jobs``, ``search``,
    ``summary``, ``job`` and ``other``; `statuses_bodies` keeps the last statuses request bodies.
    """

    def __init__(
        self,
        token: str = "test-api-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "/api",
        clock: Callable[[], float] = time.monotonic,
        max_page_size: int = 100,
        max_ids: int = 1000,
        next_style: NextStyle = "offset",
    ) -> None:
        super().__init__(host=host, port=port, prefix=prefix)
        self.token = token
        self.max_page_size = max_page_size
        self.max_ids = max_ids
        self.next_style: NextStyle = next_style
        self._clock = clock
        self._jobs: dict[str, _ImmutaJob] = {}
        self._bodies: deque[Any] = deque(maxlen=1000)

    # -- test API ------------------------------------------------------------------------

    def add_job(
        self,
        job_id: str,
        *,
        state: str = "created",
        job_type: str = "policyUpdate",
        bulk_id: str | None = None,
        output: JsonValue = None,
        created: datetime | None = None,
    ) -> dict[str, Any]:
        """Create (or replace) a job; returns its document. `created` defaults to now."""
        job = _ImmutaJob(
            job_id=job_id,
            job_type=job_type,
            created=created or datetime.now(UTC),
            bulk_id=bulk_id,
        )
        with self._lock:
            self._apply(job, {"state": state, "output": output}, job.created)
            self._jobs[job_id] = job
            return job.doc()

    def set_job(self, job_id: str, **fields: object) -> dict[str, Any]:
        """Change a job now; returns its document.

        Fields: state, output, job_type, bulk_id, retry_count, and `extra` (merged over the
        document, for odd answers). startedOn is set when it first turns active, completedOn
        when it turns terminal (cleared by a non-terminal state).
        """
        _check_immuta_fields(fields)
        with self._lock:
            job = self._get(job_id)
            self._advance(job)
            self._apply(job, fields, datetime.now(UTC))
            return job.doc()

    def script_job(self, job_id: str, steps: Iterable[tuple[float, Mapping[str, Any]]]) -> None:
        """Schedule changes: each step is (seconds after now on the clock, fields of `set_job`).

        Steps apply lazily when the job is read, long-polls included. A missing job is created
        with the `add_job` defaults. A new script replaces the old one.
        """
        ordered = ordered_steps(steps, _check_immuta_fields)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                job = _ImmutaJob(job_id=job_id, job_type="policyUpdate", created=datetime.now(UTC))
                self._jobs[job_id] = job
            job.script = Script(ordered, self._clock())

    def job(self, job_id: str) -> dict[str, Any]:
        """The job's current document, as the statuses endpoint would answer it."""
        with self._lock:
            job = self._get(job_id)
            self._advance(job)
            return job.doc()

    def remove_job(self, job_id: str) -> None:
        """Forget a job: the statuses answer leaves it out from now on."""
        with self._lock:
            self._jobs.pop(job_id, None)

    @property
    def statuses_bodies(self) -> list[Any]:
        """The bodies of the last statuses requests (decoded JSON, or None), oldest first."""
        with self._lock:
            return list(self._bodies)

    # -- internals -----------------------------------------------------------------------

    def _get(self, job_id: str) -> _ImmutaJob:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"no Immuta job {job_id}") from None

    def _advance(self, job: _ImmutaJob) -> None:
        for fields, when in job.script.due(self._clock):
            self._apply(job, fields, when)

    @staticmethod
    def _apply(job: _ImmutaJob, fields: Mapping[str, Any], when: datetime) -> None:
        _check_immuta_fields(fields)
        for name, value in fields.items():
            if name == "extra":
                job.extra.update(value)
            else:
                setattr(job, name, value)
        if "state" in fields:
            if job.state in ("active", "retry") or job.terminal:
                job.started = job.started or when
            if job.terminal:
                job.completed = job.completed or when
            else:
                job.completed = None

    def _route(self, request: Request) -> tuple[str, str]:
        """(kind, job id) of a request; kind ``other`` for none of the endpoints."""
        parts = path_segments(request, self.prefix)
        if parts is None:
            return "other", ""
        if parts == ["jobs"]:
            return "jobs", ""
        if parts == ["jobs", "search"]:
            return "search", ""
        if parts == ["jobs", "statuses"]:
            return "statuses", ""
        if parts == ["jobs", "summary"]:
            return "summary", ""
        if len(parts) == 2 and parts[0] == "jobs" and parts[1]:
            return "job", parts[1]
        return "other", ""

    def classify(self, request: Request) -> str:
        """``statuses``, ``jobs``, ``search``, ``summary``, ``job`` or ``other``."""
        return self._route(request)[0]

    async def handle(self, request: Request) -> Response:
        """Answer one Immuta API request."""
        kind, job_id = self._route(request)
        if kind == "other":
            return Response(404, {"message": "Not found"})
        method = "POST" if kind == "statuses" else "GET"
        if request.method != method:
            return Response(405, {"message": "Method not allowed"}, {"Allow": method})
        if request.headers.get("authorization") != self.token:
            return Response(401, {"message": "Unauthorized"})
        if kind == "statuses":
            return await self._statuses(request)
        if kind == "summary":
            return self._summary(request)
        if kind == "job":
            with self._lock:
                found = self._jobs.get(job_id)
                if found is None:
                    return Response(404, {"message": "Job not found"})
                self._advance(found)
                return Response(200, found.doc())
        return self._listing(request, kind)

    async def _statuses(self, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError:
            body = None
        with self._lock:
            self._bodies.append(body)
        if not isinstance(body, dict) or not isinstance(job_ids := body.get("jobIds"), list):
            return Response(400, {"message": "body must be an object with jobIds"})
        ids = [str(i) for i in job_ids]
        if len(ids) > self.max_ids:
            return Response(400, {"message": f"at most {self.max_ids} jobIds per request"})
        wait, interval = body.get("wait", 0), body.get("pollInterval", 1)
        if (
            not isinstance(wait, int | float)
            or not isinstance(interval, int | float)
            or isinstance(wait, bool)
            or isinstance(interval, bool)
        ):
            return Response(400, {"message": "wait and pollInterval must be numbers"})
        loop = asyncio.get_running_loop()
        deadline = None if wait < 0 else loop.time() + wait
        while True:
            with self._lock:
                answer = {}
                for job_id in ids:
                    job = self._jobs.get(job_id)
                    if job is not None:
                        self._advance(job)
                        answer[job_id] = job.doc()
                # as the vendor documents it: a wait ends when every job in it has ended
                done = all(self._jobs[i].terminal for i in answer)
            now = loop.time()
            if done or (deadline is not None and now >= deadline):
                return Response(200, answer)
            pause = max(0.01, float(interval))
            await asyncio.sleep(pause if deadline is None else min(pause, deadline - now))

    def _summary(self, request: Request) -> Response:
        """Counts of jobs by type and state, of the jobs created since ``startDate`` (if
        given) of the types ``jobType`` names (if given)."""
        try:
            start = _parse_iso(request.query["startDate"]) if "startDate" in request.query else None
        except ValueError:
            return Response(400, {"message": "startDate must be an ISO 8601 date"})
        types = {t.lower() for t in _values(request, "jobType")}
        counts: dict[str, dict[str, int]] = {}
        with self._lock:
            for job in self._jobs.values():
                self._advance(job)
                if _search_matches(job, types, set(), start, None):
                    states = counts.setdefault(job.job_type, {})
                    states[job.state] = states.get(job.state, 0) + 1
        rows = [
            {"jobType": job_type, "total": sum(states.values()), "states": states}
            for job_type, states in sorted(counts.items())
        ]
        answer: dict[str, Any] = {"jobTypes": rows, "total": sum(r["total"] for r in rows)}
        if start is not None:
            answer["startDate"] = iso_millis(start)
        return Response(200, answer)

    def _listing(self, request: Request, kind: str) -> Response:
        parsed = self._listing_window(request)
        if isinstance(parsed, Response):
            return parsed
        offset, size, start, end = parsed
        bulk = request.query.get("bulkId")
        types = {t.lower() for t in _values(request, "jobType")}
        states = {s.lower() for s in _values(request, "state")}
        with self._lock:
            matching = []
            for job in sorted(self._jobs.values(), key=lambda j: (j.created, j.job_id)):
                # Every job advances, listed or not, so any listing moves every job's script on.
                self._advance(job)
                if kind == "jobs" and bulk is not None and job.bulk_id != bulk:
                    continue
                if kind == "search" and not _search_matches(job, types, states, start, end):
                    continue
                matching.append(job.summary())
        page = matching[offset : offset + size]
        answer: dict[str, Any] = {"jobs": page}
        self._set_next(answer, request, offset, size, more=offset + size < len(matching))
        return Response(200, answer)

    def _listing_window(
        self, request: Request
    ) -> tuple[int, int, datetime | None, datetime | None] | Response:
        """A listing's ``(offset, size, startDate, endDate)``, or the 400 `Response` for bad ones.

        ``size`` is capped at `max_page_size`, as the real API caps it, rather than refused.
        """
        try:
            offset = int(request.query.get("offset", "0"))
            size = min(self.max_page_size, int(request.query.get("size", "20")))
            start = _parse_iso(request.query["startDate"]) if "startDate" in request.query else None
            end = _parse_iso(request.query["endDate"]) if "endDate" in request.query else None
        except ValueError:
            return Response(400, {"message": "bad offset, size or date"})
        if offset < 0 or size < 1:
            return Response(400, {"message": "bad offset or size"})
        return offset, size, start, end

    def _set_next(
        self, answer: dict[str, Any], request: Request, offset: int, size: int, *, more: bool
    ) -> None:
        """Put the next-page pointer in `answer` in this simulator's `next_style`.

        ``"absent"`` leaves ``next`` out altogether, so clients must cope with no pointer.
        """
        if self.next_style == "offset":
            answer["next"] = offset + size if more else None
        elif self.next_style == "url":
            # Keep every other parameter as the client sent it; only the offset moves on.
            query = [(k, v) for k, v in parse_qsl(urlsplit(request.target).query) if k != "offset"]
            query.append(("offset", str(offset + size)))
            answer["next"] = f"{request.path}?{urlencode(query)}" if more else None
