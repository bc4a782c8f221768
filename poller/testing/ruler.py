"""The Ruler batch-status API, simulated on loopback: status, job list and failures, with jobs
that tests add, change or script on a clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from poller.testing.script import Script, ordered_steps
from poller.testing.server import (
    HttpServer,
    Request,
    Response,
    iso_millis,
    path_segments,
)

_RULER_TERMINAL = frozenset(("complete", "partialcomplete", "failed"))
_JOB_FIELDS = frozenset(
    (
        "status",
        "processed_rows",
        "success_count",
        "failure_count",
        "failure_reason",
        "failures",
        "total_rows",
        "job_type",
        "extra",
    )
)


@dataclass
class _RulerJob:
    site: str
    job_id: str
    job_type: str
    total_rows: int
    created: datetime
    status: str = "pending"
    processed_rows: int = 0
    success_count: int = 0
    failure_count: int = 0
    failure_reason: str | None = None
    failures: list[dict[str, Any]] | None = None
    completed: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    script: Script = field(default_factory=Script)

    @property
    def terminal(self) -> bool:
        return self.status in _RULER_TERMINAL

    def progress(self) -> int:
        if self.total_rows <= 0:
            return 100 if self.status in ("complete", "partialcomplete") else 0
        # floor, so that 100 only shows once every row is processed
        return max(0, min(100, self.processed_rows * 100 // self.total_rows))

    def status_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "jobId": self.job_id,
            "jobType": self.job_type,
            "status": self.status,
            "totalRows": self.total_rows,
            "processedRows": self.processed_rows,
            "percentageProgress": self.progress(),
            "successCount": self.success_count,
            "failureCount": self.failure_count,
            "createdDateTime": iso_millis(self.created),
            "completedDateTime": iso_millis(self.completed) if self.completed else None,
        }
        if self.status == "failed":
            doc["failureReason"] = self.failure_reason
        doc.update(self.extra)
        return doc

    def list_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "jobId": self.job_id,
            "jobType": self.job_type,
            "status": self.status,
            "percentageProgress": self.progress(),
        }
        if self.status == "failed":
            doc["failureReason"] = self.failure_reason
        return doc

    def failure_rows(self) -> list[dict[str, Any]]:
        if self.failures is not None:
            return self.failures
        count = min(self.failure_count, 1000)
        return [
            {"rowNumber": n, "errorMessage": f"Row {n}: simulated validation error"}
            for n in range(1, count + 1)
        ]


def _check_fields(fields: Iterable[str]) -> None:
    unknown = sorted(set(fields) - _JOB_FIELDS)
    if unknown:
        raise TypeError(f"unknown job field(s) {unknown}; known: {sorted(_JOB_FIELDS)}")


class RulerSim(HttpServer):
    """The Ruler batch-status API under ``{base_url}`` = ``http://127.0.0.1:PORT/v1``.

    Endpoints (GET, ``Authorization: Bearer {token}``): ``/{site}/batch/{job}/status``,
    ``/{site}/batch/jobs`` and ``/{site}/batch/{job}/failures?format=json`` (CSV without
    ``format``). Jobs are kept per (site, job id); any status string is accepted, so that
    unknown statuses can be tested. The `requests` counter kinds are ``status``, ``jobs``,
    ``failures`` and ``other``.
    """

    def __init__(
        self,
        token: str = "test-token",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "/v1",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(host=host, port=port, prefix=prefix)
        self.token = token
        self._clock = clock
        self._jobs: dict[tuple[str, str], _RulerJob] = {}

    # -- test API ------------------------------------------------------------------------

    def add_job(
        self,
        site: str,
        job_id: str,
        *,
        status: str = "pending",
        total_rows: int = 100,
        job_type: str = "revenueUpload",
        failure_reason: str | None = None,
        failures: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Create (or replace) a job created now; returns its status document.

        `failures` are the rows of the failures endpoint (``{"rowNumber", "errorMessage"}``);
        without them, a job with a `failure_count` gets that many made-up rows.
        """
        job = _RulerJob(
            site=site,
            job_id=job_id,
            job_type=job_type,
            total_rows=total_rows,
            created=datetime.now(UTC),
        )
        fields: dict[str, Any] = {"status": status}
        if failure_reason is not None:
            fields["failure_reason"] = failure_reason
        if failures is not None:
            fields["failures"] = failures
        with self._lock:
            self._apply(job, fields, job.created)
            self._jobs[site, job_id] = job
            return job.status_doc()

    def set_job(self, site: str, job_id: str, **fields: object) -> dict[str, Any]:
        """Change a job now; returns its status document.

        Fields: status, processed_rows, success_count, failure_count, failure_reason,
        failures, total_rows, job_type, and `extra` (a dict merged over the status document,
        for odd answers such as a string progress). Derived on the way: percentageProgress
        from the rows; completedDateTime when a terminal status is set (cleared by a
        non-terminal one); processed_rows = total_rows when complete or partialcomplete is set
        without them; successCount = processed - failures unless given; at least one failure
        on partialcomplete; a default failureReason on failed.
        """
        _check_fields(fields)
        with self._lock:
            job = self._get(site, job_id)
            self._advance(job)
            self._apply(job, fields, datetime.now(UTC))
            return job.status_doc()

    def script_job(
        self, site: str, job_id: str, steps: Iterable[tuple[float, Mapping[str, Any]]]
    ) -> None:
        """Schedule changes: each step is (seconds after now, fields as for `set_job`).

        Steps are applied lazily when the job is read (by a request or `job`), so no task
        runs in the background; a step's completedDateTime is its scheduled time. A missing
        job is created with the `add_job` defaults. A new script replaces the old one.
        """
        ordered = ordered_steps(steps, _check_fields)
        with self._lock:
            job = self._jobs.get((site, job_id))
            if job is None:
                job = _RulerJob(
                    site=site,
                    job_id=job_id,
                    job_type="revenueUpload",
                    total_rows=100,
                    created=datetime.now(UTC),
                )
                self._jobs[site, job_id] = job
            job.script = Script(ordered, self._clock())

    def job(self, site: str, job_id: str) -> dict[str, Any]:
        """The job's current status document, as the status endpoint would answer it."""
        with self._lock:
            job = self._get(site, job_id)
            self._advance(job)
            return job.status_doc()

    def remove_job(self, site: str, job_id: str) -> None:
        """Forget a job: the API answers 404 for it from now on."""
        with self._lock:
            self._jobs.pop((site, job_id), None)

    # -- internals -----------------------------------------------------------------------

    def _get(self, site: str, job_id: str) -> _RulerJob:
        try:
            return self._jobs[site, job_id]
        except KeyError:
            raise KeyError(f"no Ruler job {site}/{job_id}") from None

    def _advance(self, job: _RulerJob) -> None:
        for fields, when in job.script.due(self._clock):
            self._apply(job, fields, when)

    @staticmethod
    def _apply(job: _RulerJob, fields: Mapping[str, Any], when: datetime) -> None:
        _check_fields(fields)
        for name, value in fields.items():
            if name == "extra":
                job.extra.update(value)
            elif name == "failures" and value is not None:
                job.failures = list(value)
            else:
                setattr(job, name, value)
        if "status" in fields:
            if job.terminal:
                job.completed = job.completed or when
                if job.status != "failed" and "processed_rows" not in fields:
                    job.processed_rows = job.total_rows
                if job.status == "partialcomplete" and job.failure_count <= 0:
                    job.failure_count = max(1, len(job.failures or ()))
                if job.status == "failed" and job.failure_reason is None:
                    job.failure_reason = "Batch job failed"
            else:
                job.completed = None
        touched = {"status", "processed_rows", "failure_count"} & fields.keys()
        if touched and "success_count" not in fields:
            job.success_count = max(0, job.processed_rows - job.failure_count)

    def _route(self, request: Request) -> tuple[str, str, str] | None:
        """(kind, site, job id) for a Ruler path, None if it is none of the endpoints; split
        before decoding, so an id with a quoted ``/`` is one segment, as Ruler reads it."""
        parts = path_segments(request, self.prefix)
        if parts is None:
            return None
        if len(parts) == 3 and parts[1] == "batch" and parts[2] == "jobs":
            return "jobs", parts[0], ""
        if len(parts) == 4 and parts[1] == "batch" and parts[3] in ("status", "failures"):
            return parts[3], parts[0], parts[2]
        return None

    def classify(self, request: Request) -> str:
        """``status``, ``jobs``, ``failures`` or ``other``."""
        route = self._route(request)
        return route[0] if route else "other"

    async def handle(self, request: Request) -> Response:
        """Answer one Ruler API request."""
        route = self._route(request)
        if route is None:
            return Response(404, {"message": "Not found"})
        if request.method not in ("GET", "HEAD"):
            return Response(405, {"message": "Method not allowed"}, {"Allow": "GET"})
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token != self.token:
            return Response(401, {"message": "Unauthorized"})
        kind, site, job_id = route
        with self._lock:
            if kind == "jobs":
                docs = []
                for job in self._jobs.values():
                    if job.site == site:
                        self._advance(job)
                        docs.append(job.list_doc())
                return Response(200, {"jobs": docs})
            found = self._jobs.get((site, job_id))
            if found is None:
                return Response(404, {"message": "Batch job not found"})
            self._advance(found)
            if kind == "status":
                return Response(200, found.status_doc())
            if not found.terminal:
                return Response(409, {"message": "job not finished"})
            rows = found.failure_rows()
        fmt = request.query.get("format", "csv").lower()
        if fmt == "json":
            return Response(200, {"failures": rows})
        if fmt == "csv":
            lines = ["rowNumber,errorMessage"]
            for row in rows:
                message = str(row.get("errorMessage", "")).replace('"', '""')
                lines.append(f'{row.get("rowNumber", "")},"{message}"')
            return Response(200, "\r\n".join(lines) + "\r\n", {"Content-Type": "text/csv"})
        return Response(400, {"message": f"Unsupported format {fmt!r}"})
