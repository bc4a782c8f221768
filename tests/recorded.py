"""Answers recorded from real job servers (tests/recipes/SYSTEM/*.json), served again on loopback
for the recipes' tests (tests/test_recipes.py); tests/recipes/README.md says how they were made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from poller.testing import HttpServer, Request, Response

RECORDINGS = Path(__file__).parent / "recipes"


def recording(system: str, name: str) -> dict[str, Any]:
    """One recorded answer: ``method``, ``path`` (with the query, as sent), ``status``,
    ``content_type`` and the ``body`` (JSON) or ``text`` the server gave."""
    data: dict[str, Any] = json.loads((RECORDINGS / system / f"{name}.json").read_text())
    return data


def recordings(system: str) -> dict[str, dict[str, Any]]:
    """Every recorded answer of `system`, by name."""
    return {p.stem: recording(system, p.stem) for p in sorted((RECORDINGS / system).glob("*.json"))}


class RecordedApi(HttpServer):
    """Answers each recorded request (method, path and query) with what the real server said.

    `play` chooses which recording answers a path (by default each recording answers its
    own); a request nothing answers is a 599 that names itself, so a recipe that asks for
    something never recorded fails its test instead of reading a made-up answer.
    """

    def __init__(
        self, system: str, authorization: str | None = None, refused: str = "refused"
    ) -> None:
        super().__init__()
        self.system = system
        #: the Authorization header every request must bring (None: none needed); any other
        #: is answered with the recording `refused`
        self.authorization = authorization
        self.refused = refused
        self.recorded = recordings(system)
        self._answers = {unquote(r["path"]): r for r in self.recorded.values()}

    def path(self, name: str) -> str:
        """The path (and query) of a recording."""
        return str(self.recorded[name]["path"])

    def play(self, name: str, at: str) -> None:
        """Answer the requests for `at` (a recording's name) with the recording `name`."""
        with self._lock:
            self._answers[unquote(self.path(at))] = self.recorded[name]

    def classify(self, request: Request) -> str:
        """The name of the recording that answers, or ``other``."""
        found = self._answers.get(unquote(request.target))
        return "other" if found is None else str(found["path"])

    async def handle(self, request: Request) -> Response:
        """The recorded answer to this request."""
        with self._lock:
            found = self._answers.get(unquote(request.target))
        refused = request.headers.get("authorization") != self.authorization
        if self.authorization is not None and refused:
            found = self.recorded[self.refused]
        if found is None or found["method"] != request.method:
            return Response(
                599, {"replay": f"nothing recorded for {request.method} {request.target}"}
            )
        body = found["body"] if "body" in found else found["text"]
        return Response(found["status"], body, {"Content-Type": found["content_type"]})
