"""A generic JSON job-status API, simulated on loopback, whose answer shape tests choose (for the
``http`` source type)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from poller.models import JsonValue
from poller.testing.server import (
    HttpServer,
    Request,
    Response,
    path_segments,
)


def _default_shape(job: Mapping[str, Any]) -> JsonValue:
    return {"data": dict(job)}


class JsonJobSim(HttpServer):
    """A generic JSON job-status API, for the ``http`` source type.

    ``GET {base_url}/jobs/{id}`` and ``POST {base_url}/jobs/query`` (body ``{"id": ...}``)
    answer ``shape(job)``, where a job is a dict of its fields with its ``id``; the default
    shape is ``{"data": {"id": ..., **fields}}``. Auth: ``Authorization: Bearer {token}``. The
    `requests` counter kinds are ``job``, ``query`` and ``other``.
    """

    def __init__(
        self,
        token: str = "test-token",
        *,
        shape: Callable[[Mapping[str, Any]], JsonValue] = _default_shape,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "/v2",
    ) -> None:
        super().__init__(host=host, port=port, prefix=prefix)
        self.token = token
        self.shape = shape
        self._jobs: dict[str, dict[str, Any]] = {}

    def add_job(self, job_id: str, **fields: JsonValue) -> JsonValue:
        """Create (or replace) a job with these fields; returns its answer."""
        with self._lock:
            self._jobs[job_id] = {"id": job_id, **fields}
            return self.shape(self._jobs[job_id])

    def set_job(self, job_id: str, **fields: JsonValue) -> JsonValue:
        """Change some fields of a job; returns its answer."""
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(f"no job {job_id}")
            self._jobs[job_id].update(fields)
            return self.shape(self._jobs[job_id])

    def job(self, job_id: str) -> JsonValue:
        """The job's current answer."""
        with self._lock:
            return self.shape(self._jobs[job_id])

    def remove_job(self, job_id: str) -> None:
        """Forget a job: the API answers 404 for it from now on."""
        with self._lock:
            self._jobs.pop(job_id, None)

    def _route(self, request: Request) -> tuple[str, str]:
        parts = path_segments(request, self.prefix)
        if parts is None:
            return "other", ""
        if parts == ["jobs", "query"]:
            return "query", ""
        if len(parts) == 2 and parts[0] == "jobs" and parts[1]:
            return "job", parts[1]
        return "other", ""

    def classify(self, request: Request) -> str:
        """``job``, ``query`` or ``other``."""
        return self._route(request)[0]

    async def handle(self, request: Request) -> Response:
        """Answer one request."""
        kind, job_id = self._route(request)
        if kind == "other":
            return Response(404, {"message": "Not found"})
        method = "POST" if kind == "query" else "GET"
        if request.method != method:
            return Response(405, {"message": "Method not allowed"}, {"Allow": method})
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Response(401, {"message": "Unauthorized"})
        if kind == "query":
            try:
                body = request.json()
            except ValueError:
                return Response(400, {"message": "body is not JSON"})
            job_id = str(body.get("id")) if isinstance(body, dict) else ""
        with self._lock:
            found = self._jobs.get(job_id)
            if found is None:
                return Response(404, {"message": "Job not found"})
            return Response(200, self.shape(found))
