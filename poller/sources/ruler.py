"""The Ruler batch-status API: `GET {base_url}/{siteId}/batch/{jobId}/status`.

Parsing is lenient (unknown fields ignored, key case ignored, numbers as strings accepted,
dates with or without offset) and total: any answer becomes a `PollResult` or a `PollFailure`,
and only a status Ruler documents as terminal ever makes a job terminal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from poller.errors import PermanentSourceError, SourceError
from poller.http import Requester
from poller.models import JobRef, PollFailure, PollOutcome, PollResult, State

#: Ruler's statuses and poller's states (SPEC.md).
RULER_STATES: Mapping[str, State] = {
    "pending": State.PENDING,
    "processing": State.RUNNING,
    "complete": State.SUCCEEDED,
    "partialcomplete": State.PARTIAL,
    "failed": State.FAILED,
}

#: Longest text kept from a remote field, so a hostile answer cannot bloat rows or messages.
MAX_TEXT = 2000


def parse_time(value: Any) -> float | None:
    """An ISO-8601 date (with or without offset; naive means UTC) as epoch seconds."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number >= 0 else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_TEXT]


def parse_status(body: Any) -> PollResult:
    """Read a Ruler status answer; raise `PermanentSourceError` if it is not one."""
    if isinstance(body, dict) and "status" not in {str(k).lower() for k in body}:
        inner = body.get("data")
        body = inner if isinstance(inner, dict) else body
    if not isinstance(body, dict):
        raise PermanentSourceError("bad_answer", "answer is not a JSON object")
    fields = {str(k).lower(): v for k, v in body.items()}
    status = fields.get("status")
    if not isinstance(status, str) or not status.strip():
        raise PermanentSourceError("bad_answer", "answer has no status")
    remote = status.strip()[:256]
    state = RULER_STATES.get(remote.lower())

    total = _count(fields.get("totalrows"))
    processed = _count(fields.get("processedrows"))
    progress = _number(fields.get("percentageprogress"))
    if progress is None and total and processed is not None:
        progress = 100.0 * processed / total
    if progress is not None:
        progress = min(100.0, max(0.0, progress))

    details: dict[str, Any] = {
        "total_rows": total,
        "processed_rows": processed,
        "success_count": _count(fields.get("successcount")),
        "failure_count": _count(fields.get("failurecount")),
        "failure_reason": _text(fields.get("failurereason")),
        "job_type": _text(fields.get("jobtype")),
        "remote_created_at": parse_time(fields.get("createddatetime")),
        "remote_completed_at": parse_time(fields.get("completeddatetime")),
    }
    return PollResult(
        remote_status=remote,
        state=state,
        progress=progress,
        details={k: v for k, v in details.items() if v is not None},
    )


class RulerAdapter:
    """Polls Ruler jobs, one status request per job."""

    def __init__(self, config: Any, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = str(config.base_url).rstrip("/")
        self.requester = Requester(
            headers={"Authorization": f"Bearer {config.token.get_secret_value()}"},
            max_concurrency=config.max_concurrency,
            rate_limit=config.rate_limit,
            deadline=config.request_timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        """Release connections."""
        await self.requester.aclose()

    async def poll(self, jobs: Sequence[JobRef]) -> Mapping[str, PollOutcome]:
        """Poll each job's status (concurrently, within the source's limits)."""
        outcomes = await asyncio.gather(*(self.poll_one(job) for job in jobs))
        return {job.key: outcome for job, outcome in zip(jobs, outcomes, strict=True)}

    async def poll_one(self, job: JobRef) -> PollOutcome:
        """Poll one job's status."""
        if not job.site:
            return PollFailure("config", "a ruler watch needs a site", transient=False)
        site, job_id = quote(job.site, safe=""), quote(job.job_id, safe="")
        url = f"{self.base_url}/{site}/batch/{job_id}/status"
        try:
            return parse_status(await self.requester.json("GET", url))
        except SourceError as exc:
            return PollFailure(exc.kind, exc.message, exc.transient, exc.retry_after)
