"""`MatrixSim`: the part of a Matrix homeserver's client-server API that Apprise's ``matrix://``
plugin uses to post a message (log in, join a room, send ``m.room.message``), recording every
room message as a Matrix client would receive it (``body``, ``format``, ``formatted_body``)."""

from __future__ import annotations

import threading
import time
from typing import Any

from poller.testing.server import HttpServer, Request, Response

#: The paths are those of the spec, under ``/_matrix/client/{r0,v3}``.
_PREFIXES = ("/_matrix/client/v3", "/_matrix/client/r0")


class MatrixSim(HttpServer):
    """A loopback Matrix homeserver for one user and password; every room exists and can be
    joined. `messages` holds each ``m.room.message`` event sent, with its ``room``."""

    def __init__(
        self, *, user: str = "poller", password: str = "matrix-pass", host: str = "127.0.0.1"
    ) -> None:
        super().__init__(host=host)
        self.user, self.password = user, password
        self.token = "syt_loopback_token"
        self._messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The room messages sent so far, oldest first."""
        with self._lock:
            return list(self._messages)

    def apprise_url(self, room: str = "#ops") -> str:
        """The Apprise URL that posts to `room` on this server as its user (plain HTTP)."""
        return f"matrix://{self.user}:{self.password}@{self.host}:{self.port}/{room}"

    def classify(self, request: Request) -> str:
        """The request kind for the counters: the path's last word that names an endpoint."""
        for kind in ("login", "join", "send", "whoami", "versions", "joined_rooms"):
            if f"/{kind}" in request.path:
                return kind
        return "other"

    async def handle(self, request: Request) -> Response:
        """Answer the client-server endpoints the Apprise plugin calls."""
        path = request.path
        if path == "/_matrix/client/versions":
            return Response(200, {"versions": ["r0.6.1", "v1.1", "v1.6"]})
        if path.startswith("/.well-known/"):
            return Response(404, {"errcode": "M_NOT_FOUND", "error": "no discovery here"})
        prefix = next((p for p in _PREFIXES if path.startswith(p + "/")), None)
        if prefix is None:
            return Response(404, {"errcode": "M_UNRECOGNIZED", "error": "unknown path"})
        rest = path[len(prefix) :]
        user_id = f"@{self.user}:{self.host}"
        if rest == "/login":
            return self._login(request, user_id)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Response(401, {"errcode": "M_UNKNOWN_TOKEN", "error": "bad token"})
        if rest == "/account/whoami":
            return Response(200, {"user_id": user_id})
        if rest == "/logout":
            return Response(200, {})
        if rest.startswith("/join/"):
            room = rest.removeprefix("/join/")
            room_id = room if room.startswith("!") else f"!{room.lstrip('#').split(':')[0]}id"
            return Response(200, {"room_id": f"{room_id}:{self.host}"})
        if rest.startswith("/directory/room/"):
            alias = rest.removeprefix("/directory/room/")
            return Response(200, {"room_id": f"!{alias.lstrip('#').split(':')[0]}id"})
        if rest == "/joined_rooms":
            return Response(200, {"joined_rooms": []})
        if rest.startswith("/rooms/") and "/send/m.room.message/" in rest:
            return self._send(request, rest)
        return Response(404, {"errcode": "M_UNRECOGNIZED", "error": "unknown endpoint"})

    def _login(self, request: Request, user_id: str) -> Response:
        try:
            body = request.json()
        except ValueError:
            return Response(400, {"errcode": "M_NOT_JSON", "error": "not JSON"})
        if not isinstance(body, dict):
            return Response(400, {"errcode": "M_BAD_JSON", "error": "not an object"})
        identifier = body.get("identifier")
        user = identifier.get("user") if isinstance(identifier, dict) else body.get("user")
        if user not in (self.user, user_id) or body.get("password") != self.password:
            return Response(403, {"errcode": "M_FORBIDDEN", "error": "Invalid password"})
        return Response(
            200,
            {
                "user_id": user_id,
                "access_token": self.token,
                "home_server": self.host,
                "device_id": "POLLERSIM",
            },
        )

    def _send(self, request: Request, rest: str) -> Response:
        if request.method != "PUT":
            return Response(405, {"errcode": "M_UNRECOGNIZED", "error": "PUT only"})
        try:
            content = request.json()
        except ValueError:
            return Response(400, {"errcode": "M_NOT_JSON", "error": "not JSON"})
        if not isinstance(content, dict):
            return Response(400, {"errcode": "M_BAD_JSON", "error": "not an object"})
        room = rest.removeprefix("/rooms/").split("/send/", 1)[0]
        with self._lock:
            self._messages.append({"room": room, "received_at": time.time(), **content})
            event_id = f"$event{len(self._messages)}"
        return Response(200, {"event_id": event_id})
