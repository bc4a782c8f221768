"""A generic JSON job-status API, simulated on loopback, whose answer shape tests choose (for the
``http`` source type)."""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import time
from collections.abc import Callable, Collection, Mapping
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


@dataclass
class LoginUser:
    """The one user a login endpoint of `JsonJobSim` knows, answered as Airflow 3's
    ``POST /auth/token`` does: a JSON ``{"username", "password"}`` gets 201
    ``{"access_token"}`` (no ``expires_in``), a wrong one 401 ``Invalid credentials``. The job
    API takes the token for `lifetime` seconds; then, like Airflow 3, it answers 403 ``Invalid
    JWT token`` (not 401), and 401 ``Not authenticated`` to a request without a token."""

    username: str
    password: str
    lifetime: float = 86400.0


def _default_shape(job: Mapping[str, Any]) -> JsonValue:
    return {"data": dict(job)}


#: ``attributes.run_id IN ('a', 'b')`` in an MLflow search filter, and each quoted id in it
_RUN_IDS = re.compile(r"attributes\.run_id\s+IN\s*\(([^)]*)\)", re.IGNORECASE)
_QUOTED = re.compile(r"'((?:[^']|'')*)'")


class JsonJobSim(HttpServer):
    """A generic JSON job-status API, for the ``http`` source type.

    ``GET {base_url}/jobs/{id}`` and ``POST {base_url}/jobs/query`` (body ``{"id": ...}``)
    answer ``shape(job)``, where a job is a dict of its fields with its ``id``; the default
    shape is ``{"data": {"id": ..., **fields}}``. Auth: ``Authorization: Bearer {token}``;
    with `basic` (``(username, password)``), HTTP Basic instead; with `oauth`, the bearer
    tokens its token endpoint (``POST {base_url}/token``, `OAuthClient`) issued; with `login`,
    those its login endpoint (``POST {base_url}/auth/token``, `LoginUser`) issued. The
    `requests` counter kinds are ``job``, ``query``, ``search``, ``filter``, ``token``,
    ``login`` and ``other``.

    Many jobs per request, in two real APIs' shapes, each job as ``item(job)`` (default:
    `shape`); a job's ``group`` field is its experiment or deployment:

    - MLflow's ``POST {base_url}/runs/search``: body ``{"experiment_ids": [...], "filter":
      "attributes.run_id IN ('a','b')", "max_results": n, "page_token": t}`` (filter and
      experiments optional), answer ``{"runs": [...], "next_page_token": t}`` (no token on
      the last page); pages of at most ``max_results`` and `page_size`.
    - Prefect's ``POST {base_url}/flow_runs/filter``: body ``{"flow_runs": {"id": {"any_":
      [...]}, "deployment_id": {"any_": [...]}}, "limit": n, "offset": m}``, answer the list of
      runs; at most ``limit`` (default and cap `page_size`).

    `batch_answer`, when set, is answered by both instead (a hostile API).
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
        login: LoginUser | None = None,
        item: Callable[[Mapping[str, Any]], JsonValue] | None = None,
        page_size: int = 200,
    ) -> None:
        super().__init__(host=host, port=port, prefix=prefix)
        self.item = item or shape
        self.page_size = page_size
        #: what ``runs/search`` and ``flow_runs/filter`` answer instead, when set (bytes: as
        #: they are, for answers that are not JSON Python can write)
        self.batch_answer: JsonValue | bytes | None = None
        self.token = token
        self.shape = shape
        self.basic = basic
        self.oauth = oauth
        self.login = login
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

    def _refusal(self, header: str | None) -> Response | None:
        """The answer to a job request whose credentials are not good, or None."""
        if self.login is None:
            return None if self._authorized(header) else Response(401, {"message": "Unauthorized"})
        if not header:
            return Response(401, {"detail": "Not authenticated"})
        if self._authorized(header):
            return None
        return Response(403, {"detail": "Invalid JWT token"})

    def _authorized(self, header: str | None) -> bool:
        if self.oauth is not None or self.login is not None:
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

    def _log_in(self, request: Request) -> Response:
        """The login endpoint (Airflow 3's ``POST /auth/token``)."""
        user = self.login
        if user is None or request.method != "POST":
            return Response(404, {"message": "Not found"})
        try:
            body = request.json()
        except ValueError:
            body = None
        if body != {"username": user.username, "password": user.password}:
            return Response(401, {"detail": "Invalid credentials"})
        token = f"jwt-{next(self._serial)}-{base64.b32encode(time.time_ns().to_bytes(8)).decode()}"
        with self._lock:
            self._issued[token] = time.monotonic() + user.lifetime
            self.issued_tokens.append(token)
        return Response(201, {"access_token": token})

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
        if parts == ["runs", "search"]:
            return "search", ""
        if parts == ["flow_runs", "filter"]:
            return "filter", ""
        if parts == ["token"]:
            return "token", ""
        if parts == ["auth", "token"]:
            return "login", ""
        if len(parts) == 2 and parts[0] == "jobs" and parts[1]:
            return "job", parts[1]
        return "other", ""

    def classify(self, request: Request) -> str:
        """``job``, ``query``, ``search``, ``filter``, ``token``, ``login`` or ``other``."""
        return self._route(request)[0]

    async def handle(self, request: Request) -> Response:
        """Answer one request."""
        kind, job_id = self._route(request)
        if kind == "other":
            return Response(404, {"message": "Not found"})
        if kind == "token":
            return self._issue(request)
        if kind == "login":
            return self._log_in(request)
        method = "GET" if kind == "job" else "POST"
        if request.method != method:
            return Response(405, {"message": "Method not allowed"}, {"Allow": method})
        refused = self._refusal(request.headers.get("authorization"))
        if refused is not None:
            return refused
        body: Any = None
        if method == "POST":
            try:
                body = request.json()
            except ValueError:
                return Response(400, {"message": "body is not JSON"})
            if not isinstance(body, dict):
                return Response(400, {"message": "body is not a JSON object"})
        if kind in ("search", "filter"):
            if self.batch_answer is not None:
                return Response(200, self.batch_answer)
            return self._search(body) if kind == "search" else self._filter(body)
        if kind == "query":
            job_id = str(body.get("id"))
        with self._lock:
            found = self._jobs.get(job_id)
            if found is None:
                return Response(404, {"message": "Job not found"})
            answer = self.shape(found)
        if self.echo_authorization and isinstance(answer, dict):
            answer = {**answer, "echo": request.headers.get("authorization")}
        return Response(200, answer)

    def _matching(
        self, ids: Collection[str] | None, groups: Collection[str] | None
    ) -> list[dict[str, Any]]:
        """The jobs whose id is in `ids` and group in `groups` (None: any), in id order."""
        with self._lock:
            return [
                dict(job)
                for job_id, job in sorted(self._jobs.items())
                if (ids is None or job_id in ids)
                and (groups is None or str(job.get("group")) in groups)
            ]

    def _search(self, body: dict[str, Any]) -> Response:
        """MLflow's ``runs/search`` (see the class docstring)."""
        text = body.get("filter") or ""
        ids = None
        if text:
            found = _RUN_IDS.fullmatch(text.strip())
            if found is None:
                return Response(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": text})
            ids = {m.replace("''", "'") for m in _QUOTED.findall(found.group(1))}
        experiments = body.get("experiment_ids")
        groups = [str(e) for e in experiments] if isinstance(experiments, list) else None
        size = min(int(body.get("max_results") or 1000), self.page_size)
        token = body.get("page_token") or "0"
        if not str(token).isdigit():
            return Response(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "token"})
        start = int(token)
        jobs = self._matching(ids, groups)
        answer: dict[str, Any] = {"runs": [self.item(job) for job in jobs[start : start + size]]}
        if start + size < len(jobs):
            answer["next_page_token"] = str(start + size)
        return Response(200, answer)

    def _filter(self, body: dict[str, Any]) -> Response:
        """Prefect's ``flow_runs/filter`` (see the class docstring)."""
        runs = body.get("flow_runs") or {}
        ids = _strings((runs.get("id") or {}).get("any_"))
        groups = _strings((runs.get("deployment_id") or {}).get("any_"))
        limit, offset = body.get("limit", self.page_size), body.get("offset", 0)
        if not isinstance(limit, int) or not isinstance(offset, int) or limit > self.page_size:
            return Response(422, {"detail": "limit and offset must be whole numbers"})
        jobs = self._matching(ids, groups)
        return Response(200, [self.item(job) for job in jobs[offset : offset + limit]])


def _strings(value: object) -> list[str] | None:
    return [str(v) for v in value] if isinstance(value, list) else None


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
