"""``/healthz`` and ``/readyz``: is the daemon alive, and should it be sent work or traffic?

- ``/healthz`` answers 200 whenever the event loop runs its handler: a loop that is stuck
  does not answer at all, which is what a liveness probe needs to see.
- ``/readyz`` answers 200 only when the daemon has started (its config loaded and its jobs
  synced), is not stopping and its database answers a read within the deadline; otherwise
  503, with the reason as JSON. Each answer names the replica that gave it.
"""

from __future__ import annotations

from aiohttp import web

from poller.web.reads import DaemonView, DatabaseReads, DatabaseUnavailable


class Probes:
    """The health endpoints of one daemon."""

    def __init__(self, daemon: DaemonView, reads: DatabaseReads) -> None:
        self.daemon = daemon
        self.reads = reads

    def routes(self) -> list[web.RouteDef]:
        """The endpoints, for the listener's route table."""
        return [web.get("/healthz", self.healthz), web.get("/readyz", self.readyz)]

    async def healthz(self, request: web.Request) -> web.Response:
        """200: the loop answers."""
        return web.json_response({"status": "ok", "replica": self.daemon.owner})

    async def readyz(self, request: web.Request) -> web.Response:
        """200 when ready; else 503 with the reason."""
        reason = await self.not_ready()
        if reason is None:
            return web.json_response({"ready": True, "replica": self.daemon.owner})
        return web.json_response(
            {"ready": False, "reason": reason, "replica": self.daemon.owner}, status=503
        )

    async def not_ready(self) -> str | None:
        """Why the daemon is not ready, or None if it is."""
        if self.daemon.stopping.is_set():
            return "stopping"
        if not self.daemon.ready.is_set():
            return "starting"
        try:
            await self.reads.read("ping", lambda store: store.ping())
        except DatabaseUnavailable as exc:
            return str(exc)
        # a stop asked for while the database answered
        return "stopping" if self.daemon.stopping.is_set() else None
