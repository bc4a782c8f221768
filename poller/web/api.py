"""The JSON API under ``/api/v1/``: the watches as ``poller status --json`` shows them (paged
and filtered like the status page), one watch with its history, and, only when
``http.token_file`` is configured, ``POST /watches`` (`poller add`) and ``DELETE
/watches/{key}`` (`poller remove`) for requests with ``Authorization: Bearer <token>``.

A write checks the token first (in constant time: `hmac.compare_digest`), then the body (a
JSON object of at most `MAX_BODY` bytes), then the config's rules in the words of the
CLI (`config.adding`), and only then writes, through the daemon's database thread. A
request that fails any check changes nothing.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from poller.config.adding import Refused, check_labels, check_removal, watch_spec
from poller.history import condense, line_json
from poller.logs import get_logger
from poller.models import MAX_LENGTH, JsonValue, Watch, line_problem
from poller.store.repo import Added, Store
from poller.store.shapes import watch_json
from poller.web.reads import DaemonView, DatabaseReads, DatabaseUnavailable
from poller.web.views import HISTORY_LIMIT, BadQuery, Views, parse_query

log = get_logger("poller.web")

PREFIX = "/api/v1"
#: The largest request body read (the listener's limit; only ``POST /watches`` takes one).
MAX_BODY = 64 * 1024
#: What a ``POST /watches`` body may hold (`poller add`'s arguments and options).
_FIELDS = ("source", "id", "site", "name", "tags", "again")
#: The most tags one request may give.
MAX_TAGS = 64


def problem(status: int, message: str, **extra: Any) -> web.Response:
    """A JSON error answer: ``{"error": message}``."""
    return web.json_response({"error": message, **extra}, status=status)


def _read_spec(body: object) -> tuple[str, str, str | None, str | None, list[str], bool]:
    """`poller add`'s arguments from a request body; `BadQuery` naming what is wrong."""
    if not isinstance(body, dict):
        raise BadQuery("the body must be a JSON object")
    unknown = sorted(str(name)[:64] for name in body if name not in _FIELDS)
    if unknown:
        raise BadQuery(f"unknown fields: {', '.join(unknown)} (known: {', '.join(_FIELDS)})")
    texts: dict[str, str | None] = {}
    for name in ("source", "id", "site", "name"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise BadQuery(f"{name} must be a string")
        texts[name] = value
    source, job_id = texts["source"], texts["id"]
    if source is None or job_id is None:
        raise BadQuery("source and id are required")
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise BadQuery("tags must be a list of strings")
    if len(tags) > MAX_TAGS:
        raise BadQuery(f"at most {MAX_TAGS} tags")
    again = body.get("again", False)
    if not isinstance(again, bool):
        raise BadQuery("again must be true or false")
    return source, job_id, texts["site"], texts["name"], tags, again


class Api:
    """The JSON API of one daemon."""

    def __init__(self, daemon: DaemonView, reads: DatabaseReads) -> None:
        self.daemon = daemon
        self.reads = reads
        self.views = Views(reads)

    def routes(self) -> list[web.RouteDef]:
        """The endpoints, for the listener's route table."""
        return [
            web.get(f"{PREFIX}/watches", self.list_watches),
            web.post(f"{PREFIX}/watches", self.add),
            web.get(PREFIX + "/watches/{key:.+}", self.one),
            web.delete(PREFIX + "/watches/{key:.+}", self.remove),
        ]

    def _answer(self, document: dict[str, JsonValue], status: int = 200) -> web.Response:
        return web.json_response(document | {"replica": self.daemon.owner}, status=status)

    async def list_watches(self, request: web.Request) -> web.Response:
        """A page of watches: ``{"watches": [...], "next_cursor": "..." | null}``."""
        try:
            query = parse_query(request.query)
        except BadQuery as exc:
            return problem(400, str(exc))
        try:
            page = await self.views.page(query)
        except DatabaseUnavailable as exc:
            return problem(503, str(exc))
        return self._answer(
            {
                "watches": [watch_json(w, page.undelivered.get(w.key)) for w in page.watches],
                "next_cursor": str(page.next_cursor) if page.next_cursor else None,
            }
        )

    async def one(self, request: web.Request) -> web.Response:
        """One watch and its history (the newest `HISTORY_LIMIT` entries)."""
        key = request.match_info["key"]
        if len(key) > MAX_LENGTH["key"] or line_problem(key):  # no watch has such a key
            return problem(404, "no such watch")
        try:
            view = await self.views.watch(key)
        except DatabaseUnavailable as exc:
            return problem(503, str(exc))
        if view is None:
            return problem(404, f"no watch {key}")
        return self._answer(
            {
                "watch": watch_json(view.watch, view.undelivered),
                "history": [line_json(line) for line in condense(view.history, view.watch)],
                "history_left_out": view.left_out,
                "history_limit": HISTORY_LIMIT,
            }
        )

    def _refused(self, request: web.Request) -> web.Response | None:
        """The answer to a write without the right token (404 while writes are off), or None
        if it may go on."""
        token = self.daemon.config.http.token
        if token is None:
            return problem(404, "the API's writes are off: set http.token_file to turn them on")
        given = request.headers.get("Authorization", "")
        scheme, _, credential = given.partition(" ")
        expected = token.get_secret_value().encode()
        # compared in constant time, whatever was sent (even nothing)
        right = hmac.compare_digest(credential.strip().encode(), expected)
        if scheme.lower() != "bearer" or not right:
            answer = problem(401, "a valid token is needed: Authorization: Bearer <token>")
            answer.headers["WWW-Authenticate"] = 'Bearer realm="poller"'
            return answer
        return None

    async def _write(self, kind: str, fn: Callable[[Store], Any]) -> Any:
        return await self.reads.write(kind, fn)

    async def add(self, request: web.Request) -> web.Response:
        """Watch a job, as `poller add` does: 201 with the watch if it is new (or watched
        again), 200 with it if it was watched already."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            raw = await request.read()  # at most `client_max_size`: 413 beyond it
        except web.HTTPRequestEntityTooLarge:
            return problem(413, f"the body is over {MAX_BODY // 1024} KiB")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            return problem(400, "the body is not JSON")
        cfg = self.daemon.config
        try:
            source, job_id, site, name, tags, again = _read_spec(body)
            spec = watch_spec(cfg, source, job_id, site, name, tags)
            check_labels(cfg, spec.key, name, tags)
        except (BadQuery, Refused) as exc:
            return problem(400, str(exc))
        now = time.time()
        try:
            added: Added = await self._write("add", lambda store: store.add(spec, now, again=again))
        except DatabaseUnavailable as exc:
            return problem(503, str(exc))
        new = added.created or added.reactivated or added.rearmed
        # one line per change made over the API, as `poller add` says what it did
        log.info("watch added over the API", watch=spec.key, new=new, changed=sorted(added.changes))
        return self._answer(
            {"watch": watch_json(added.watch), "changes": _changes(added.changes)},
            status=201 if new else 200,
        )

    async def remove(self, request: web.Request) -> web.Response:
        """Stop watching a job, as `poller remove` does (its history stays)."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        key = request.match_info["key"]
        if len(key) > MAX_LENGTH["key"] or line_problem(key):
            return problem(404, "no such watch")
        try:
            check_removal(self.daemon.config, key)
        except Refused as exc:
            return problem(400, str(exc))
        now = time.time()
        try:
            watch: Watch | None = await self._write(
                "remove", lambda store: store.remove_watch(key, now)
            )
        except DatabaseUnavailable as exc:
            return problem(503, str(exc))
        if watch is None:
            return problem(404, f"no watch {key}")
        log.info("watch removed over the API", watch=key)
        return self._answer({"watch": watch_json(watch)})


def _changes(changes: Mapping[str, tuple[Any, Any]]) -> dict[str, JsonValue]:
    """What `add` changed of a watch's labels: ``{label: {"from": old, "to": new}}``."""
    return {
        label: {
            "from": list(old) if isinstance(old, tuple) else old,
            "to": list(new) if isinstance(new, tuple) else new,
        }
        for label, (old, new) in changes.items()
    }
