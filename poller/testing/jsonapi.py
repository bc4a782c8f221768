"""A generic JSON job-status API, simulated on loopback, whose answer shape tests choose (for the
``http`` source type)."""

from __future__ import annotations

import base64
import binascii
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from poller.models import JsonValue
from poller.testing.server import (
    HttpServer,
    Request,
    Response,
    path_segments,
)


@dataclass
class OAuthClient:
    """The one client an OAuth 2 token endpoint of `JsonJobSim` knows: ``POST {base_url}/token``
    with ``grant_type=client_credentials``, the client authenticated by HTTP Basic or in the
    form, answers a fresh bearer token valid `expires_in` seconds; a wrong secret is a 401
    ``invalid_client``. A token is accepted by the job API until it expires or is revoked
    (`JsonJobSim.revoke_tokens`)."""

    client_id: str
    client_secret: str
    expires_in: float = 3600.0
    #: the scope a token request must ask for (None: any)
    scope: str | None = None


def _default_shape(job: Mapping[str, Any]) -> JsonValue:
    return {"data": dict(job)}


class JsonJobSim(HttpServer):
    """A generic JSON job-status API, for the ``http`` source type.

    ``GET {base_url}/jobs/{id}`` and ``POST {base_url}/jobs/query`` (body ``{"id": ...}``)
    answer ``shape(job)``, where a job is a dict of its fields with its ``id``; the default
    shape is ``{"data": {"id": ..., **fields}}``. Auth: ``Authorization: Bearer {token}``;
    with `basic` (``(username, password)``), HTTP Basic instead; with `oauth`, the bearer
    tokens its token endpoint (``POST {base_url}/token``, `OAuthClient`) issued. The
    `requests` counter kinds are ``job``, ``query``, ``token`` and ``other``.
    """

    def __init__(
        self,
        token: str = "test-token",
        *,
        shape: Callable[[Mapping[str, Any]], JsonValue] = _default_shape,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "/v2",
        basic: tuple[str, str] | None = None,
        oauth: OAuthClient | None = None,
    ) -> None:
        super().__init__(host=host, port=port, prefix=prefix)
        self.token = token
        self.shape = shape
        self.basic = basic
        self.oauth = oauth
        self._jobs: dict[str, dict[str, Any]] = {}
        #: the tokens issued and when each expires (monotonic)
        self._issued: dict[str, float] = {}
        self._serial = itertools.count(1)
        #: every token issued, in order (tests check that none is logged or stored)
        self.issued_tokens: list[str] = []
        #: answer the Authorization header a job request came with, in ``"echo"`` (an API that
        #: echoes the credentials it was sent)
        self.echo_authorization = False

    def revoke_tokens(self) -> None:
        """Refuse every token issued so far (a rotated signing key): the next request is a 401."""
        with self._lock:
            self._issued.clear()

    def _authorized(self, header: str | None) -> bool:
        if self.oauth is not None:
            if not header or not header.startswith("Bearer "):
                return False
            with self._lock:
                expires = self._issued.get(header[len("Bearer ") :])
            return expires is not None and time.monotonic() < expires
        if self.basic is not None:
            return header == _basic(*self.basic)
        return header == f"Bearer {self.token}"

    def _issue(self, request: Request) -> Response:
        """The token endpoint (RFC 6749 §4.4)."""
        oauth = self.oauth
        if oauth is None or request.method != "POST":
            return Response(404, {"message": "Not found"})
        form = dict(parse_qsl(request.body.decode("utf-8", "replace")))
        client = (form.get("client_id"), form.get("client_secret"))
        header = request.headers.get("authorization", "")
        if header.startswith("Basic "):
            try:
                pair = base64.b64decode(header[6:], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                pair = ""
            user, _, secret = pair.partition(":")
            client = (unquote_plus(user), unquote_plus(secret))
        if client != (oauth.client_id, oauth.client_secret):
            return Response(401, {"error": "invalid_client", "error_description": "bad secret"})
        if form.get("grant_type") != "client_credentials":
            return Response(400, {"error": "unsupported_grant_type"})
        if oauth.scope is not None and form.get("scope") != oauth.scope:
            return Response(400, {"error": "invalid_scope"})
        token = (
            f"access-{next(self._serial)}-{base64.b32encode(time.time_ns().to_bytes(8)).decode()}"
        )
        with self._lock:
            self._issued[token] = time.monotonic() + oauth.expires_in
            self.issued_tokens.append(token)
        answer = {"access_token": token, "token_type": "Bearer", "expires_in": oauth.expires_in}
        return Response(200, answer, {"Cache-Control": "no-store"})

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
        if parts == ["token"]:
            return "token", ""
        if len(parts) == 2 and parts[0] == "jobs" and parts[1]:
            return "job", parts[1]
        return "other", ""

    def classify(self, request: Request) -> str:
        """``job``, ``query``, ``token`` or ``other``."""
        return self._route(request)[0]

    async def handle(self, request: Request) -> Response:
        """Answer one request."""
        kind, job_id = self._route(request)
        if kind == "other":
            return Response(404, {"message": "Not found"})
        if kind == "token":
            return self._issue(request)
        method = "POST" if kind == "query" else "GET"
        if request.method != method:
            return Response(405, {"message": "Method not allowed"}, {"Allow": method})
        if not self._authorized(request.headers.get("authorization")):
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
            answer = self.shape(found)
        if self.echo_authorization and isinstance(answer, dict):
            answer = {**answer, "echo": request.headers.get("authorization")}
        return Response(200, answer)


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
