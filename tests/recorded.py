"""Answers recorded from real job servers (tests/recipes/SYSTEM/*.json), served again on loopback
for the recipes' tests (tests/test_recipes.py); tests/recipes/README.md says how they were made."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
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

    A request nothing answers is a 599 that names itself, so that a recipe that asks for
    something never recorded fails its test instead of reading a made-up answer. With an
    `authorization`, a request without it gets the recording `refused`; a login (``POST`` to
    the recording ``token``) other than `login` gets the recording ``login_refused``.
    """

    def __init__(
        self,
        system: str,
        authorization: str | None = None,
        refused: str = "refused",
        login: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.system = system
        #: the Authorization header every request must bring (None: none needed); any other
        #: is answered with the recording `refused`
        self.authorization = authorization
        self.refused = refused
        #: the JSON a ``POST`` to the recording ``token`` (a login endpoint) must bring to be
        #: answered with it
        self.login = login
        self.recorded = recordings(system)
        # the refused login has the login's path: only the login itself answers it
        answers = [r for name, r in self.recorded.items() if name != "login_refused"]
        self._answers = {unquote(r["path"]): r for r in answers}

    def path(self, name: str) -> str:
        """The path (and query) of a recording."""
        return str(self.recorded[name]["path"])

    def classify(self, request: Request) -> str:
        """The path of the recording that answers, or ``other``."""
        found = self._answers.get(unquote(request.target))
        return "other" if found is None else str(found["path"])

    async def handle(self, request: Request) -> Response:
        """The recorded answer to this request."""
        with self._lock:
            found = self._answers.get(unquote(request.target))
        if found is not None and found is self.recorded.get("token"):
            with contextlib.suppress(ValueError):
                if request.json() == self.login:
                    return _answer(found)
            found = self.recorded.get("login_refused")
        elif self.authorization not in (None, request.headers.get("authorization")):
            found = self.recorded[self.refused]
        if found is None or found["method"] != request.method:
            return Response(
                599, {"replay": f"nothing recorded for {request.method} {request.target}"}
            )
        return _answer(found)


def _answer(recorded: Mapping[str, Any]) -> Response:
    body = recorded["body"] if "body" in recorded else recorded["text"]
    return Response(recorded["status"], body, {"Content-Type": recorded["content_type"]})
