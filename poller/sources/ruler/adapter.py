"""The Ruler batch API: job status, a site's job list, and the rows a job failed on.

Three endpoints: ``GET {base_url}/{siteId}/batch/{jobId}/status`` answers one job
with its counts; ``GET {base_url}/{siteId}/batch/jobs`` lists every job of a site with its status
and progress; ``GET {base_url}/{siteId}/batch/{jobId}/failures?format=json`` gives the rows a
finished job failed on.

Polling at scale: when a site has `list_threshold` or more watched jobs (in the poll group, or
recently asked for by earlier groups, since watches drift apart in time), one list request
answers all of them, and a job's ``/status`` is fetched only the first time and whenever the
list shows its status changed. Progress alone moving does not cost a request: it is read from
the list, and the row counts of the last status answer are dropped once the progress has moved
past them (they would be stale). A list fetched moments ago (`LIST_REUSE`) answers later groups
too, as long as it is newer than their jobs' previous polls; groups that ask at once share one
request. One job per site keeps using ``/status``.

Partial and failed jobs: the failing rows are fetched once, the first few put in
``details["failed_rows"]`` (row number and message, truncated); if that call fails, the result
goes out anyway with ``details["failed_rows_error"]`` saying why.

Parsing is lenient (unknown fields ignored, key case ignored, numbers as strings accepted,
dates with or without offset) and total: any answer becomes a `PollResult` or a `PollFailure`,
and only a status Ruler documents as terminal ever makes a job terminal.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from aiohttp.abc import AbstractResolver

from poller.errors import PermanentSourceError, SourceError
from poller.models import JobRef, PollFailure, PollOutcome, PollResult, State
from poller.sources import lenient, read_outcome
from poller.sources.auth import bearer
from poller.sources.client import Requester, SourceHealth, path_segment
from poller.sources.lenient import MAX_TEXT, parse_time
from poller.sources.ruler.config import RulerSource

__all__ = [
    "MAX_TEXT",
    "RULER_STATES",
    "ListEntry",
    "RulerAdapter",
    "parse_failures",
    "parse_job_list",
    "parse_status",
    "parse_time",
]

#: Ruler's statuses and poller's states (the README's state table).
RULER_STATES: Mapping[str, State] = {
    "pending": State.PENDING,
    "processing": State.RUNNING,
    "complete": State.SUCCEEDED,
    "partialcomplete": State.PARTIAL,
    "failed": State.FAILED,
}

_TERMINAL = frozenset(RULER_STATES[s] for s in ("complete", "partialcomplete", "failed"))

#: Failing rows shown in a message, and the longest message kept of each.
MAX_FAILED_ROWS = 5
MAX_ROW_MESSAGE = 200
#: The failures call is a nicety: it may delay a terminal result this long, never more.
FAILURES_DEADLINE = 5.0
#: Seconds a site's job list may keep answering later poll groups. Watches of one site are due
#: at different moments; without reuse each of them would fetch the whole list. A list is only
#: reused for jobs last polled before it was fetched, so every poll of a job sees news.
LIST_REUSE = 10.0
#: How long a job is remembered after it was last asked for (the longest wait between polls).
MEMORY_TTL = 3600.0
#: After the list endpoint refused (404, unreadable), the site is polled job by job this long.
LIST_UNSUPPORTED_FOR = 600.0
#: A site's job list grows with its jobs (~100 bytes each): a bigger cap than one status needs.
MAX_BODY_BYTES = RulerSource.ANSWER_CAP

_COUNT_FIELDS = ("processed_rows", "success_count", "failure_count")
_LIST_KEYS = ("jobs", "data", "items", "results", "batchjobs")
_FAILURE_KEYS = ("failures", "rows", "data", "items", "errors", "results")


def parse_status(body: object) -> PollResult:
    """Read a Ruler status answer; raise `PermanentSourceError` if it is not one."""
    if not isinstance(body, dict):
        raise PermanentSourceError("bad_answer", "answer is not a JSON object")
    found = lenient.fields(body)
    if "status" not in found and isinstance(body.get("data"), dict):
        found = lenient.fields(body["data"])
    status = found.get("status")
    if not isinstance(status, str) or not status.strip():
        raise PermanentSourceError("bad_answer", "answer has no status")
    remote = status.strip()[:256]
    state = RULER_STATES.get(remote.lower())

    total = lenient.count(found.get("totalrows"))
    processed = lenient.count(found.get("processedrows"))
    progress = lenient.number(found.get("percentageprogress"))
    if progress is None and total and processed is not None:
        progress = 100.0 * processed / total
    if progress is not None:
        progress = min(100.0, max(0.0, progress))

    details: dict[str, Any] = {
        "total_rows": total,
        "processed_rows": processed,
        "success_count": lenient.count(found.get("successcount")),
        "failure_count": lenient.count(found.get("failurecount")),
        "failure_reason": lenient.text(found.get("failurereason")),
        "job_type": lenient.text(found.get("jobtype")),
        "remote_created_at": parse_time(found.get("createddatetime")),
        "remote_completed_at": parse_time(found.get("completeddatetime")),
    }
    return PollResult(
        remote_status=remote,
        state=state,
        progress=progress,
        details={k: v for k, v in details.items() if v is not None},
    )


@dataclass(frozen=True)
class ListEntry:
    """One job as a site's job list shows it."""

    job_id: str
    status: str
    progress: float | None = None
    failure_reason: str | None = None
    job_type: str | None = None


def _items(body: object, keys: Sequence[str]) -> list[object] | None:
    """The list in an answer: the answer itself, or under one of `keys` (at most two deep)."""
    for _ in range(3):
        if isinstance(body, list):
            return body
        found = lenient.fields(body)
        inner = lenient.first(found, keys)
        if inner is None:
            return None
        body = inner
    return None


def parse_job_list(body: object) -> dict[str, ListEntry]:
    """Read a site's job list, by job id; raise `PermanentSourceError` if it is not one.

    Entries without an id or a status, or that cannot be read, are skipped: their jobs are
    asked for one by one (and a job whose own answer cannot be read is a ``bad_answer``).
    """
    items = _items(body, _LIST_KEYS)
    if items is None:
        raise PermanentSourceError("bad_answer", "answer is not a job list")
    entries: dict[str, ListEntry] = {}
    for item in items:
        try:
            entry = _list_entry(item)
        except Exception:  # one entry's data costs that entry, not the list
            continue
        if entry is not None:
            entries[entry.job_id] = entry
    return entries


def _list_entry(item: object) -> ListEntry | None:
    if lenient.unreadable(item) is not None:
        return None
    found = lenient.fields(item)
    job_id = lenient.identifier(lenient.first(found, ("jobid", "id")))
    status = found.get("status")
    if job_id is None or not isinstance(status, str) or not status.strip():
        return None
    progress = lenient.number(found.get("percentageprogress"))
    return ListEntry(
        job_id=job_id,
        status=status.strip()[:256],
        progress=None if progress is None else min(100.0, max(0.0, progress)),
        failure_reason=lenient.text(found.get("failurereason")),
        job_type=lenient.text(found.get("jobtype")),
    )


def parse_failures(body: object, limit: int = MAX_FAILED_ROWS) -> list[dict[str, Any]]:
    """The first `limit` failing rows as ``{"row": n, "message": "..."}``.

    Raises `PermanentSourceError` if the answer is not a list of rows. Rows without a message,
    or that cannot be read, are skipped; a row number that is not a whole number is None.
    """
    items = _items(body, _FAILURE_KEYS)
    if items is None:
        raise PermanentSourceError("bad_answer", "answer is not a list of failed rows")
    rows: list[dict[str, Any]] = []
    for item in items:
        if len(rows) >= limit:
            break
        try:
            row = _failure_row(item)
        except Exception:  # one row's data costs that row
            continue
        if row is not None:
            rows.append(row)
    return rows


def _failure_row(item: object) -> dict[str, Any] | None:
    if lenient.unreadable(item) is not None:
        return None
    found = lenient.fields(item)
    message = lenient.first(
        found, ("errormessage", "message", "error", "reason", "errors", "description")
    )
    shown = lenient.text(message, MAX_ROW_MESSAGE * 4)
    if not shown or not shown.strip():
        return None
    row = lenient.count(lenient.first(found, ("rownumber", "row", "rowindex", "line")))
    return {"row": row, "message": lenient.shorten(" ".join(shown.split()), MAX_ROW_MESSAGE)}


@dataclass(slots=True)
class _Known:
    """What the adapter remembers of one job between polls (one per job polled in the last
    hour: slots, not a dict per job, and a new one per status answer)."""

    #: lower-cased status of the last status answer
    status: str
    progress: float | None
    details: Mapping[str, Any]
    #: when it was last polled (clock seconds), to forget jobs no longer watched
    at: float
    #: ``failed_rows`` or ``failed_rows_error``, once fetched
    failed_rows: Mapping[str, Any] | None = None


@dataclass
class _SiteList:
    at: float
    entries: Mapping[str, ListEntry]


@dataclass
class _Memory:
    """The adapter's memory: jobs seen, when each was last asked for, lists fetched."""

    known: dict[tuple[str, str], _Known] = field(default_factory=dict)
    asked: dict[str, dict[str, float]] = field(default_factory=dict)
    lists: dict[str, _SiteList] = field(default_factory=dict)
    fetching: dict[str, asyncio.Future[Mapping[str, ListEntry]]] = field(default_factory=dict)
    no_list_until: dict[str, float] = field(default_factory=dict)
    pruned_at: float = 0.0


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Every waiter may have been cancelled: read the outcome so that asyncio does not log it.
    if not future.cancelled():
        future.exception()


class RulerAdapter:
    """Polls Ruler jobs: site lists when many jobs of a site are watched, else job statuses."""

    def __init__(
        self,
        config: RulerSource,
        *,
        resolver: AbstractResolver | None = None,
        clock: Callable[[], float] = time.time,
        health: SourceHealth | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = str(config.base_url).rstrip("/")
        self.list_threshold = config.list_threshold
        # wall-clock seconds: compared with `JobRef.last_polled`, the database's poll times
        self.clock = clock
        self.requester = Requester(
            auth=bearer(config.token.get_secret_value()),
            max_concurrency=config.max_concurrency,
            rate_limit=config.rate_limit,
            deadline=config.request_timeout,
            resolver=resolver,
            transport=transport,
            max_body=MAX_BODY_BYTES,
            health=health,
        )
        self._failures_deadline = min(FAILURES_DEADLINE, config.request_timeout)
        self._memory = _Memory()

    async def aclose(self) -> None:
        """Release connections."""
        await self.requester.aclose()

    async def poll(self, jobs: Sequence[JobRef]) -> Mapping[str, PollOutcome]:
        """Poll these jobs: per site, one list request or one status request per job."""
        now = self.clock()
        self._prune(now)
        outcomes: dict[str, PollOutcome] = {}
        by_site: dict[str, list[JobRef]] = {}
        #: per site, when the group's jobs were last polled (the latest of them)
        previous: dict[str, float] = {}
        for job in jobs:
            if not job.site:
                outcomes[job.key] = PollFailure(
                    "config", "a ruler watch needs a site", transient=False
                )
                continue
            by_site.setdefault(job.site, []).append(job)
            asked = self._memory.asked.setdefault(job.site, {})
            # Another replica may have polled the job since this one did: the database's
            # time of the last poll counts too, or a list fetched in between would answer
            # older news than the replica already committed.
            last = max(asked.get(job.job_id, -math.inf), job.last_polled or -math.inf)
            previous[job.site] = max(previous.get(job.site, -math.inf), last)
            asked[job.job_id] = now

        # The poll's parts, taken in turn by the Requester's workers: a site that its list
        # answers, or a job of a site polled job by job (the usual case: its status request
        # is then not wrapped in a group of its site's).
        parts: list[str | JobRef] = []
        for site, refs in by_site.items():
            if self._use_list(site, now):
                parts.append(site)
            else:
                parts.extend(refs)

        async def poll_part(part: str | JobRef) -> Mapping[str, PollOutcome]:
            if isinstance(part, JobRef):
                return {part.key: await self.poll_one(part)}
            return await self._poll_site(part, by_site[part], now, previous[part])

        for group in await self.requester.each(poll_part, parts):
            outcomes.update(group)
        for job in jobs:
            outcome = outcomes.get(job.key)
            if isinstance(outcome, PollResult) and outcome.state in _TERMINAL and job.site:
                # it will not be asked for again: it no longer counts as watched on its site
                self._memory.asked.get(job.site, {}).pop(job.job_id, None)
        return outcomes

    async def poll_one(self, job: JobRef) -> PollOutcome:
        """Poll one job's status (and, once it ended partial or failed, its failing rows)."""
        if not job.site:
            return PollFailure("config", "a ruler watch needs a site", transient=False)
        url = f"{self._site_url(job.site)}/batch/{path_segment(job.job_id)}/status"
        try:
            answer = await self.requester.json("GET", url)
        except SourceError as exc:
            return PollFailure(exc.kind, exc.message, exc.transient, exc.retry_after)
        result = read_outcome(parse_status, answer)
        if not isinstance(result, PollResult):
            return result
        key = (job.site, job.job_id)
        known = self._memory.known.get(key)
        failed_rows = known.failed_rows if known is not None else None
        if result.state in (State.PARTIAL, State.FAILED) and failed_rows is None:
            failed_rows = await self._failed_rows(job.site, job.job_id)
        self._memory.known[key] = _Known(
            status=result.remote_status.lower(),
            progress=result.progress,
            details=result.details,
            at=self.clock(),
            failed_rows=failed_rows,
        )
        if failed_rows and result.state in (State.PARTIAL, State.FAILED):
            result = replace(result, details={**result.details, **failed_rows})
        return result

    # -- sites -------------------------------------------------------------------------

    def _site_url(self, site: str) -> str:
        return f"{self.base_url}/{path_segment(site)}"

    def _use_list(self, site: str, now: float) -> bool:
        if self._memory.no_list_until.get(site, 0.0) > now:
            return False
        return len(self._memory.asked.get(site, ())) >= self.list_threshold

    async def _poll_site(
        self, site: str, refs: list[JobRef], now: float, newer_than: float
    ) -> Mapping[str, PollOutcome]:
        """The site's jobs answered by its list (and the status of each job the list shows
        news of), or one by one if the list cannot be had."""
        if not self._use_list(site, now):  # refused meanwhile, by another group's request
            return await self._one_by_one(refs)
        try:
            entries = await self._site_list(site, now, newer_than)
        except SourceError as exc:
            if exc.transient or exc.kind == "auth":
                # the same trouble would meet every status request: one failure for all
                failure = PollFailure(exc.kind, exc.message, exc.transient, exc.retry_after)
                return {ref.key: failure for ref in refs}
            self._memory.no_list_until[site] = now + LIST_UNSUPPORTED_FOR
            return await self._one_by_one(refs)
        outcomes: dict[str, PollOutcome] = {}
        to_fetch: list[JobRef] = []
        for ref in refs:
            entry = entries.get(ref.job_id)
            known = self._memory.known.get((site, ref.job_id))
            if entry is None or known is None or known.status != entry.status.lower():
                # new to us, changed, or not in the list (its status answers or says 404)
                to_fetch.append(ref)
            else:
                known.at = now
                outcomes[ref.key] = _from_list(entry, known)
        outcomes.update(await self._one_by_one(to_fetch))
        return outcomes

    async def _one_by_one(self, refs: Sequence[JobRef]) -> dict[str, PollOutcome]:
        found = await self.requester.each(self.poll_one, refs)
        return {ref.key: outcome for ref, outcome in zip(refs, found, strict=True)}

    async def _site_list(self, site: str, now: float, newer_than: float) -> Mapping[str, ListEntry]:
        """The site's job list: reused if fetched moments ago and after `newer_than` (the
        jobs' previous poll), shared if being fetched."""
        cached = self._memory.lists.get(site)
        if cached is not None and newer_than < cached.at and now - cached.at <= LIST_REUSE:
            return cached.entries
        pending = self._memory.fetching.get(site)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch_list(site, now))
            self._memory.fetching[site] = pending
            pending.add_done_callback(_retrieve)
            pending.add_done_callback(lambda _f: self._memory.fetching.pop(site, None))
        return await asyncio.shield(pending)

    async def _fetch_list(self, site: str, now: float) -> Mapping[str, ListEntry]:
        entries = parse_job_list(
            # partial: an entry that cannot be read costs that entry, not the whole list
            await self.requester.json("GET", f"{self._site_url(site)}/batch/jobs", partial=True)
        )
        self._memory.lists[site] = _SiteList(now, entries)
        return entries

    async def _failed_rows(self, site: str, job_id: str) -> Mapping[str, Any]:
        """``{"failed_rows": [...]}``, or ``{"failed_rows_error": why}``; never raises."""
        url = f"{self._site_url(site)}/batch/{path_segment(job_id)}/failures"
        try:
            body = await self.requester.json(
                "GET",
                url,
                params={"format": "json"},
                deadline=self._failures_deadline,
                partial=True,
            )
            rows = parse_failures(body)
        except SourceError as exc:
            return {"failed_rows_error": f"{exc.kind}: {exc.message}"}
        return {"failed_rows": rows} if rows else {}

    def _prune(self, now: float) -> None:
        memory = self._memory
        if now - memory.pruned_at < 60.0:
            return
        memory.pruned_at = now
        horizon = now - MEMORY_TTL
        memory.asked = {
            site: kept
            for site, asked in memory.asked.items()
            if (kept := {job_id: at for job_id, at in asked.items() if at >= horizon})
        }
        memory.known = {key: known for key, known in memory.known.items() if known.at >= horizon}
        memory.lists = {s: lst for s, lst in memory.lists.items() if now - lst.at <= LIST_REUSE}
        memory.no_list_until = {s: t for s, t in memory.no_list_until.items() if t > now}


def _from_list(entry: ListEntry, known: _Known) -> PollResult:
    """A result from a list entry whose status the last status answer already showed."""
    progress = entry.progress if entry.progress is not None else known.progress
    details = dict(known.details)
    if progress != known.progress:
        # the counts belong to the last status answer; the job has moved on since
        for name in _COUNT_FIELDS:
            details.pop(name, None)
    if entry.failure_reason:
        details["failure_reason"] = entry.failure_reason
    state = RULER_STATES.get(entry.status.lower())
    if known.failed_rows and state in (State.PARTIAL, State.FAILED):
        details.update(known.failed_rows)
    return PollResult(remote_status=entry.status, state=state, progress=progress, details=details)
