"""The status page: ``/`` (every watch, filtered and paged) and ``/watches/{key}`` (one watch
with its history), server-rendered with Jinja2, and the few static files they use.

Every value goes through Jinja2's autoescape: a job's name is text, never markup. The page
needs no JavaScript; ``/static/refresh.js`` (a few lines, a file so that the
Content-Security-Policy can forbid inline scripts) swaps in a fresh copy of the page's main
part every `REFRESH_SECONDS`. Nothing is loaded from another host: no CDN, no fonts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from poller.models import MAX_LENGTH, line_problem
from poller.store.repo import CONDITIONS
from poller.store.shapes import ago, iso, state_label
from poller.web.reads import DaemonView, DatabaseReads, DatabaseUnavailable
from poller.web.views import BadQuery, Views, parse_query

#: How often the page refreshes itself (with JavaScript on).
REFRESH_SECONDS = 5
#: The longest last error shown in the list (the watch's page shows all of it).
ERROR_PREVIEW = 300

_HERE = Path(__file__).parent
#: The static files, by name: their type, read once.
_STATIC_TYPES = {
    "refresh.js": "text/javascript",
    "style.css": "text/css",
    "icon.svg": "image/svg+xml",
}


def watch_path(key: str) -> str:
    """The page of the watch `key`, relative to ``/`` (every character of the key but
    letters and digits quoted, ``/`` included, so that the page is always one level down and
    no part of a key is read as a path)."""
    return "watches/" + quote(key, safe="")


def _percent(progress: float | None) -> float | None:
    if progress is None or progress != progress:  # NaN: nothing to draw
        return None
    return max(0.0, min(100.0, progress))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(iso=iso, state_label=state_label, percent=_percent)
    env.globals.update(
        ago=ago, watch_path=watch_path, urlencode=urlencode, error_preview=ERROR_PREVIEW
    )
    return env


class StatusPage:
    """The status page of one daemon."""

    def __init__(self, daemon: DaemonView, reads: DatabaseReads) -> None:
        self.daemon = daemon
        self.views = Views(reads)
        self.env = _environment()
        self.static = {
            name: (kind, (_HERE / "static" / name).read_bytes())
            for name, kind in _STATIC_TYPES.items()
        }

    def routes(self) -> list[web.RouteDef]:
        """The pages and their static files, for the listener's route table."""
        return [
            web.get("/", self.index),
            web.get("/watches/{key:.+}", self.one),
            web.get("/static/{name}", self.file),
        ]

    def _render(
        self, template: str, status: int = 200, root: str = "", **values: Any
    ) -> web.Response:
        """A page; `root` leads from its path back to ``/`` (every link is relative, so that
        the page works behind a reverse proxy that serves it under a path of its own)."""
        now = time.time()
        body = self.env.get_template(template).render(
            root=root,
            replica=self.daemon.owner,
            now=now,
            answered_at=iso(now),
            refresh=REFRESH_SECONDS,
            **values,
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    async def index(self, request: web.Request) -> web.Response:
        """Every watch: a page of them, filtered by state, source and tag."""
        sources = sorted(self.daemon.config.sources)
        try:
            query = parse_query(request.query)
        except BadQuery as exc:
            return self._render(
                "problem.html", 400, title="bad query", problem=str(exc), sources=sources
            )
        try:
            page = await self.views.page(query)
        except DatabaseUnavailable as exc:
            return self._render("problem.html", 503, title="database unavailable", problem=str(exc))
        next_link = (
            "?" + urlencode(query.link(cursor=page.next_cursor)) if page.next_cursor else None
        )
        first_link = "?" + urlencode(query.link()) if query.after else None
        return self._render(
            "index.html",
            title="watches",
            page=page,
            query=query,
            states=CONDITIONS,
            sources=sources,
            tag_max=MAX_LENGTH["tag"],
            next_link=next_link,
            first_link=first_link,
            # the job counts of the sources that have them, from memory (never asked for by
            # a request: `engine.summaries` fetches them on their own interval)
            summaries=sorted(self.daemon.summaries.latest.items()),
        )

    async def one(self, request: web.Request) -> web.Response:
        """One watch: its state, progress and times, and its history."""
        key = request.match_info["key"]
        # its links lead back up as many levels as its path went down: one for a key whose
        # "/" are quoted, as the page links it; more for one typed with its "/" as they are
        up = "../" * (request.rel_url.raw_path.count("/") - 1)
        if len(key) > MAX_LENGTH["key"] or line_problem(key):  # no watch has such a key
            return self._render("problem.html", 404, up, title="no such watch", problem="no watch")
        try:
            view = await self.views.watch(key)
        except DatabaseUnavailable as exc:
            return self._render(
                "problem.html", 503, "../", title="database unavailable", problem=str(exc)
            )
        if view is None:
            return self._render(
                "problem.html", 404, up, title="no such watch", problem=f"no watch {key}"
            )
        return self._render("watch.html", root=up, title=view.watch.shown_name or key, view=view)

    async def file(self, request: web.Request) -> web.Response:
        """A static file of the page."""
        found = self.static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        kind, body = found
        # the same for the daemon's whole life: a browser may keep it a while
        return web.Response(body=body, content_type=kind, headers={"Cache-Control": "max-age=300"})
