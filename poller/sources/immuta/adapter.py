"""The Immuta jobs API: many jobs per statuses request, optional long-polling, and discovery.

Endpoints: ``POST {base_url}/jobs/statuses`` with ``{"jobIds": [...], "wait": s,
"pollInterval": s}`` answers many jobs at once, keyed by job id; ``GET {base_url}/jobs?bulkId=``
lists the jobs of a bulk; ``GET {base_url}/jobs/search`` finds jobs by ``jobType``, ``state``,
``startDate`` and ``endDate``, a page at a time (``offset``/``size``, answer ``jobs`` and
``next``); ``GET {base_url}/jobs/summary`` (``jobType``, ``startDate``) counts jobs by type
and state. The API key goes as it is in ``Authorization``.

Polling: the watched jobs of a poll group are sent in chunks of ``batch_size`` ids, one request
per chunk. A job the answer does not mention is a poll error for that job alone. ``wait: -1``
(wait for ever) is never sent: without ``long_poll`` it is ``wait: 0``.

Long polls (``long_poll``): the API answers a waiting request when *every* job in it has ended,
or when the wait is over. So one request about many jobs would hold each end back until the
last one, and requests are kept small instead (`split`, which the poll engine asks): a job gets
a request of its own that waits up to ``long_poll`` (the API checks every second and answers
when it ends), while the source has a request slot to spare for it (`long_slots`: all but two
of ``max_concurrency``, so that other requests and discovery never queue behind long waits).
The jobs beyond that share requests of ``batch_size`` ids that wait one second (`ROLL_WAIT`):
each is answered within about a second and sent again at once. The request deadline is made
longer than the wait. A job's first poll does not wait, so that a new watch learns its
state at once.

Parsing is lenient (key case, a state given as a bare string, wrapped answers, several date
formats) and total: any answer becomes a `PollResult` or a `PollFailure` per job, and only the
states Immuta documents as terminal make a job terminal. ``output`` is kept, truncated, in
``details["output"]``, so that a failure message can show it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlencode, urljoin, urlsplit

import httpx
from aiohttp.abc import AbstractResolver

from poller.errors import PermanentSourceError, SourceError
from poller.models import JobRef, PollFailure, PollOutcome, PollResult, State
from poller.sources import JobCount, JobSummary, lenient, read_outcome
from poller.sources.auth import StaticHeaders
from poller.sources.base import MAX_DISCOVERED, Discovered, failure_of
from poller.sources.batching import batch_outcomes, poll_batches
from poller.sources.client import Requester, SourceHealth
from poller.sources.immuta.config import ImmutaSource, SearchSpec

__all__ = [
    "IMMUTA_STATES",
    "ImmutaAdapter",
    "Listing",
    "parse_job",
    "parse_page",
    "parse_statuses",
    "parse_summary",
]


class Listing(Protocol):
    """What discovery reads of a config's job entry (a `config.JobConfig`): its bulk or its
    search. A protocol, so that this package needs nothing above `poller.sources`."""

    @property
    def bulk(self) -> str | None:
        """The id of the bulk whose jobs are listed, or None."""
        ...

    @property
    def search(self) -> SearchSpec | None:
        """The filters of the search whose jobs are listed, or None."""
        ...


#: Immuta's job states and poller's states (the README's state table).
IMMUTA_STATES: Mapping[str, State] = {
    "created": State.PENDING,
    "active": State.RUNNING,
    "retry": State.RUNNING,
    "completed": State.SUCCEEDED,
    "failed": State.FAILED,
    "cancelled": State.CANCELLED,
    "expired": State.EXPIRED,
}

#: How often a long-polling server re-checks the jobs: a job's end is seen within about this.
POLL_INTERVAL = 1.0
#: A long-polling request about several jobs waits at most this long (see the module
#: docstring): each of their ends is then seen within about this.
ROLL_WAIT = 1.0
#: A long-polling request may take this much longer than its wait before it is given up.
LONG_POLL_GRACE = 5.0
#: The longest `output` kept in the details.
MAX_OUTPUT = 1000
#: The most (job type, state) counts a summary is read for; the rest are left out, said so.
MAX_SUMMARY_ROWS = 1000
#: Discovery pages: jobs asked for per page, pages followed at most (and at most
#: `MAX_DISCOVERED` jobs kept).
PAGE_SIZE = 100
MAX_PAGES = 500

_WRAPPERS = ("statuses", "jobs", "data", "results", "items")
_ID_KEYS = ("id", "jobid", "job_id")
_CREATED_KEYS = ("createdon", "createdat", "created", "createddate", "createddatetime")
_STARTED_KEYS = ("startedon", "startedat", "started", "starteddate")
_COMPLETED_KEYS = (
    "completedon",
    "completedat",
    "completed",
    "completeddate",
    "completeddatetime",
    "finishedon",
    "finishedat",
    "endedat",
)
_NO_MARKER = object()


def _wait_value(seconds: float) -> int | float:
    """Whole seconds as a JSON integer, as a server expecting integers would want them."""
    return int(seconds) if float(seconds).is_integer() else round(seconds, 3)


def parse_job(entry: object) -> PollResult:
    """One job of a statuses answer; raise `PermanentSourceError` if it has no state.

    A bare string is taken for the state. An object needs ``state`` (or ``status``) as a
    string; an object with only an error says why the job could not be answered.
    """
    if isinstance(entry, str):
        entry = {"state": entry}
    if not isinstance(entry, dict):
        raise PermanentSourceError("bad_answer", "the job's entry is not an object")
    found = lenient.fields(entry)
    state = lenient.first(found, ("state", "status"))
    if not isinstance(state, str) or not state.strip():
        error = lenient.text(lenient.first(found, ("error", "message", "errormessage")), 200)
        if error:
            raise PermanentSourceError("bad_answer", f"the API answered for this job: {error}")
        raise PermanentSourceError("bad_answer", "the job's entry has no state")
    remote = state.strip()[:256]
    output = found.get("output")
    reason = None
    if isinstance(output, dict):
        # a failed job's output is usually its error: {"message": ..., "stack": ...}
        reason = lenient.text(lenient.first(lenient.fields(output), ("message", "error")), 500)
    reason = reason or lenient.text(
        lenient.first(found, ("error", "errormessage", "failurereason", "reason")), 500
    )
    progress = lenient.number(found.get("progress"))
    details: dict[str, Any] = {
        "output": lenient.text(output, MAX_OUTPUT),
        "failure_reason": reason,
        "job_type": lenient.text(lenient.first(found, ("jobtype", "type", "name")), 200),
        "bulk_id": lenient.text(found.get("bulkid"), 200),
        "retry_count": lenient.count(found.get("retrycount")),
        "remote_created_at": lenient.parse_time(lenient.first(found, _CREATED_KEYS)),
        "remote_started_at": lenient.parse_time(lenient.first(found, _STARTED_KEYS)),
        "remote_completed_at": lenient.parse_time(lenient.first(found, _COMPLETED_KEYS)),
    }
    return PollResult(
        remote_status=remote,
        state=IMMUTA_STATES.get(remote.lower()),
        progress=None if progress is None else min(100.0, max(0.0, progress)),
        details={k: v for k, v in details.items() if v is not None},
    )


def _keyed(body: object, job_ids: Sequence[str]) -> dict[str, object] | None:
    """The answer as a mapping of job id to entry, unwrapped and re-keyed where needed."""
    for _ in range(3):
        if isinstance(body, list):
            keyed: dict[str, object] = {}
            for item in body:
                job_id = lenient.identifier(lenient.first(lenient.fields(item), _ID_KEYS))
                if job_id is not None:
                    keyed.setdefault(job_id, item)
            return keyed
        if not isinstance(body, dict):
            return None
        if any(job_id in body for job_id in job_ids):
            return {str(k): v for k, v in body.items()}
        inner = lenient.first(lenient.fields(body), _WRAPPERS)
        if not isinstance(inner, dict | list):
            return {str(k): v for k, v in body.items()}
        body = inner
    return None


def parse_statuses(body: object, job_ids: Sequence[str]) -> dict[str, PollOutcome]:
    """One outcome per requested job id from a statuses answer; never raises.

    The answer is an object keyed by job id (a list of jobs with ids, or either wrapped in
    ``statuses``/``data``..., is read too). Keys are matched exactly, then ignoring case.
    """
    keyed = _keyed(body, job_ids)
    if keyed is None:
        failure = PollFailure("bad_answer", "answer is not an object of job statuses", False)
        return dict.fromkeys(job_ids, failure)
    return batch_outcomes(keyed, job_ids, parse_job, "the statuses answer")


def _summary_rows(body: object) -> list[tuple[object, object, object]]:
    """(job type, state, count) as the answer gives them, in any of the shapes read:
    ``{"jobTypes": [{"jobType", "states": {state: n}}]}`` (wrapped or not, or a list of such
    entries), a list of ``{"jobType", "state", "count"}``, or ``{type: {state: n}}``."""
    found = lenient.fields(body)
    inner = lenient.first(found, ("jobtypes", "summary", "data", "results", "items"))
    entries = body if isinstance(body, list) else inner
    if isinstance(entries, list):
        rows: list[tuple[object, object, object]] = []
        for entry in entries:
            item = lenient.fields(entry)
            job_type = lenient.first(item, ("jobtype", "type", "name"))
            states = lenient.first(item, ("states", "counts", "bystate"))
            if isinstance(states, dict):
                rows.extend((job_type, state, n) for state, n in states.items())
            elif item:
                state = lenient.first(item, ("state", "status"))
                rows.append((job_type, state, lenient.first(item, ("count", "total", "jobs"))))
            if len(rows) > MAX_SUMMARY_ROWS:
                break
        return rows
    keyed = inner if isinstance(inner, dict) else body
    if isinstance(keyed, dict) and keyed and all(isinstance(v, dict) for v in keyed.values()):
        return [
            (job_type, state, n)
            for job_type, states in keyed.items()
            for state, n in states.items()
        ]
    raise PermanentSourceError("bad_answer", "answer is not a summary of jobs by type and state")


def parse_summary(body: object) -> JobSummary:
    """The counts of a ``/jobs/summary`` answer; raises `PermanentSourceError` if it is not
    one. Counts that are not whole numbers of at least 0, and entries without a type or a
    state, are left out; only the first `MAX_SUMMARY_ROWS` counts are read."""
    counts: dict[tuple[str, str], int] = {}
    rows = _summary_rows(body)
    for job_type, state, n in rows[:MAX_SUMMARY_ROWS]:
        name, status = lenient.text(job_type, 200), lenient.text(state, 200)
        number = lenient.count(n, strings=False, maximum=2**53)
        if not name or not status or number is None or isinstance(n, bool):
            continue
        counts[name, status] = counts.get((name, status), 0) + number
    return JobSummary(
        tuple(JobCount(t, st, n) for (t, st), n in sorted(counts.items())),
        truncated=len(rows) > MAX_SUMMARY_ROWS,
    )


def parse_page(body: object) -> tuple[list[str], object]:
    """The job ids of one page of a job listing, and its ``next`` marker.

    The marker is what ``next`` said, or `_NO_MARKER` if the answer has none. Raises
    `PermanentSourceError` if the answer is not a page of jobs.
    """
    entries, marker, _left_out = _page(body)
    return [job_id for job_id, _item in entries], marker


def listed_state(item: object) -> PollResult | None:
    """A listing entry read as a job (its state as listed), or None if it has none."""
    if not isinstance(item, dict):
        return None
    outcome = read_outcome(parse_job, item)
    return outcome if isinstance(outcome, PollResult) else None


def _page(body: object) -> tuple[list[tuple[str, object]], object, bool]:
    """`parse_page`, with each id's entry as the page gave it, and whether an entry was left
    out (no id could be read from it)."""
    if isinstance(body, list):
        items: object = body
        marker: object = _NO_MARKER
    else:
        found = lenient.fields(body)
        if not found:
            raise PermanentSourceError("bad_answer", "answer is not a list of jobs")
        items = lenient.first(found, ("jobs", "data", "items", "results"))
        marker = found.get("next", _NO_MARKER)
        if items is None and marker is not _NO_MARKER:
            items = []
    if not isinstance(items, list):
        raise PermanentSourceError("bad_answer", "answer is not a list of jobs")
    entries: list[tuple[str, object]] = []
    for item in items:
        if isinstance(item, dict):
            job_id = lenient.identifier(lenient.first(lenient.fields(item), _ID_KEYS))
        else:
            job_id = lenient.identifier(item)
        if job_id is not None:
            entries.append((job_id, item))
    return entries, marker, len(entries) < len(items)


class ImmutaAdapter:
    """Polls Immuta jobs in batches, and lists the jobs of bulks and searches."""

    def __init__(
        self,
        config: ImmutaSource,
        *,
        resolver: AbstractResolver | None = None,
        health: SourceHealth | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = str(config.base_url).rstrip("/")
        self.batch_size = config.batch_size
        self.long_poll: float | None = config.long_poll or None
        self._deadline = config.request_timeout
        # a long-polling request must be given longer than it is asked to wait (the
        # client's overall deadline included); other requests keep theirs
        self._poll_deadline = (
            max(self._deadline, self.long_poll + LONG_POLL_GRACE)
            if self.long_poll
            else self._deadline
        )
        #: requests that may wait the whole `long_poll` at once: all but two of the slots
        self.long_slots = max(0, config.max_concurrency - 2) if self.long_poll else 0
        self._long_waits = 0  # such requests in flight
        self.requester = Requester(
            # Immuta takes the API key as it is, without a scheme
            auth=StaticHeaders({"Authorization": config.token.get_secret_value()}),
            max_concurrency=config.max_concurrency,
            rate_limit=config.rate_limit,
            deadline=self._poll_deadline,
            resolver=resolver,
            transport=transport,
            health=health,
        )

    async def aclose(self) -> None:
        """Release connections."""
        await self.requester.aclose()

    def statuses_body(self, job_ids: Sequence[str], *, wait: float | None = None) -> dict[str, Any]:
        """The body of one statuses request that waits `wait` seconds (None: ``long_poll``,
        or 0 without it)."""
        body: dict[str, Any] = {"jobIds": list(job_ids)}
        wait = self.long_poll if wait is None else wait
        if wait:
            body["wait"] = _wait_value(wait)
            body["pollInterval"] = _wait_value(min(POLL_INTERVAL, wait))
        else:
            body["wait"] = 0
        return body

    def split(self, jobs: Sequence[JobRef]) -> list[list[JobRef]]:
        """A poll group cut into requests answered on their own (the module docstring): with
        ``long_poll``, a job each while long-wait slots are free, then `batch_size` chunks."""
        if not self.long_poll:
            return [list(jobs)]
        # a job never polled is asked without waiting: its state is wanted now, not at its end
        new = [job for job in jobs if job.last_polled is None]
        known = [job for job in jobs if job.last_polled is not None]
        free = max(0, self.long_slots - self._long_waits)
        alone = [[job] for job in known[:free]]
        shared = [
            part[i : i + self.batch_size]
            for part in (known[free:], new)
            for i in range(0, len(part), self.batch_size)
        ]
        return alone + shared

    async def poll(self, jobs: Sequence[JobRef]) -> Mapping[str, PollOutcome]:
        """Poll these jobs: one statuses request per `batch_size` job ids.

        With ``long_poll``, a lone job waits ``long_poll`` if a long-wait slot is free, and
        several jobs wait `ROLL_WAIT` (an answer comes only when all of them have ended); jobs
        never polled before do not wait.
        """
        job_ids = list(dict.fromkeys(job.job_id for job in jobs))
        first = all(job.last_polled is None for job in jobs)
        if (
            self.long_poll
            and not first
            and len(job_ids) == 1
            and self._long_waits < self.long_slots
        ):
            # decided and counted at once, with no await between, so slots are never overdrawn
            self._long_waits += 1
            try:
                by_id = await self._poll_chunk(job_ids, self.long_poll)
            finally:
                self._long_waits -= 1
            return {job.key: by_id[job.job_id] for job in jobs}
        wait = min(ROLL_WAIT, self.long_poll) if self.long_poll and not first else 0.0
        return await poll_batches(
            jobs, self.batch_size, lambda chunk: self._poll_chunk(chunk, wait), self.requester.each
        )

    async def _poll_chunk(self, job_ids: list[str], wait: float) -> dict[str, PollOutcome]:
        try:
            body = await self.requester.json(
                "POST",
                f"{self.base_url}/jobs/statuses",
                body=self.statuses_body(job_ids, wait=wait),
                deadline=self._poll_deadline,
                partial=True,  # an entry that cannot be read costs its job only
            )
        except SourceError as exc:
            return dict.fromkeys(job_ids, failure_of(exc))
        return parse_statuses(body, job_ids)

    # -- summary -----------------------------------------------------------------------

    async def summary(self, job_types: Sequence[str], since: float | None) -> JobSummary:
        """``GET /jobs/summary``: the counts of jobs by type and state (`parse_summary`),
        of `job_types` (all if empty), created since `since`; raises `SourceError`."""
        query = [("jobType", str(t)) for t in job_types]
        if since is not None:
            moment = datetime.fromtimestamp(since, UTC)
            query.append(("startDate", moment.isoformat(timespec="milliseconds")))
        target = f"{self.base_url}/jobs/summary" + (f"?{urlencode(query)}" if query else "")
        return parse_summary(await self.requester.json("GET", target, deadline=self._deadline))

    # -- discovery ---------------------------------------------------------------------

    async def discover(self, job: Listing) -> Discovered:
        """The jobs a config entry's ``bulk`` or ``search`` finds, every page of them: each
        id with its state as listed (`listed_state`; None if the listing gives none).

        Raises `SourceError` if a page cannot be had; stops after `MAX_DISCOVERED` jobs
        (the listing is then not `Discovered.complete`).
        """
        if job.bulk is not None:
            return await self._list("/jobs", [("bulkId", str(job.bulk))])
        if job.search is not None:
            params: list[tuple[str, str]] = []
            for name in ("jobType", "state"):
                params.extend((name, str(value)) for value in getattr(job.search, name) or ())
            for name in ("startDate", "endDate"):
                value = getattr(job.search, name)
                if value is not None:
                    params.append((name, str(value)))
            return await self._list("/jobs/search", params)
        return Discovered({}, complete=False)

    async def _list(self, path: str, params: list[tuple[str, str]]) -> Discovered:
        """Follow a listing's pages to the end: by ``next`` when given, else by offset."""
        found: dict[str, PollResult | None] = {}
        complete = False  # a listing cut short by MAX_PAGES is not
        left_out = False  # an entry without a readable id: the listing is not complete
        offset = 0
        url: str | None = None  # a next-page URL the server gave
        token: str | None = None  # an opaque next-page token the server gave
        seen: set[tuple[str | None, str | None, int]] = set()
        largest = 0  # the longest page so far: the server's page size if it caps ours
        for _ in range(MAX_PAGES):
            if (url, token, offset) in seen:
                break  # a server that points back at a page it gave: stop, not loop
            seen.add((url, token, offset))
            if url is not None:
                target = url
            else:
                query = [*params, ("offset", str(offset)), ("size", str(PAGE_SIZE))]
                if token is not None:
                    query.append(("next", token))
                target = f"{self.base_url}{path}?{urlencode(query)}"
            entries, marker, skipped = _page(
                # partial: a job that cannot be read is left out, not the whole page
                await self.requester.json("GET", target, deadline=self._deadline, partial=True)
            )
            left_out = left_out or skipped
            ids = [job_id for job_id, _item in entries]
            before = len(found)
            for job_id, item in entries:
                found.setdefault(job_id, listed_state(item))
            if len(found) >= MAX_DISCOVERED or len(found) == before:
                # an empty page ends a listing; a repeated one or a cap may hide more
                complete = not ids and not left_out
                break  # an empty page, or one the server gave before (it ignores offset)
            step = self._next_page(marker, offset, len(ids), largest)
            largest = max(largest, len(ids))
            if step is None:
                complete = not left_out and len(found) < MAX_DISCOVERED
                break
            url, token, offset = step
        return Discovered(dict(list(found.items())[:MAX_DISCOVERED]), complete=complete)

    def _next_page(
        self, marker: object, offset: int, got: int, largest: int
    ) -> tuple[str | None, str | None, int] | None:
        """Where the next page is, from a ``next`` marker: (url, token, offset), or None.

        Without a marker, a page shorter than asked for and than an earlier page is the last
        (a server may cap the page size below ours); otherwise the next offset is tried.
        """
        if marker is _NO_MARKER:
            last = got < PAGE_SIZE and got < largest
            return None if last else (None, None, offset + got)
        if marker is None or marker is False or marker == "":
            return None
        if marker is True:
            return None, None, offset + got
        number = lenient.number(marker)
        if number is not None and not isinstance(marker, dict | list):
            return (None, None, int(number)) if number > offset else None
        if isinstance(marker, dict):
            inner = lenient.fields(marker)
            next_offset = lenient.count(inner.get("offset"))
            if next_offset is not None and next_offset > offset:
                return None, None, next_offset
            return None
        if isinstance(marker, str):
            text = marker.strip()
            if text.startswith(("http://", "https://", "/")):
                absolute = urljoin(self.base_url + "/", text)
                # the API key goes with every request: never to another host
                if urlsplit(absolute)[:2] != urlsplit(self.base_url)[:2]:
                    raise PermanentSourceError("bad_answer", "next page is on another host")
                return absolute, None, offset + got
            return None, text[:1000], offset + got
        return None
