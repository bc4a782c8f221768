"""The simulated job API of `bench/daemon.py`, in its own process.

Run: `.venv/bin/python bench/simserver.py [--max-seconds S]`

It serves poller's `RulerSim` (the Ruler batch-status API) and a `WebhookSink` (the loopback
Apprise ``json://`` receiver) on 127.0.0.1, prints one JSON line with their ports and base
URLs, and runs until SIGTERM/SIGINT, until its stdin closes (the benchmark died) or until
``--max-seconds``, whichever comes first.

The benchmark drives it through a small control API on the Ruler server, under ``/_bench/``
(no authentication; loopback only):

- ``POST /_bench/jobs`` ``{"first": 0, "count": N, "status": "pending"}``: create jobs
  ``s{i:06d}/j{i:06d}`` (one site per job), replacing any of the same ids;
- ``POST /_bench/set`` ``{"ids": [i, ...], "status": "complete"}``: change jobs now; answers
  ``{"changed_at": {"i": epoch seconds}}``, taken right after each change;
- ``POST /_bench/latency`` ``{"seconds": 0.1}``: every API answer waits that long from now on,
  like a remote API's;
- ``GET /_bench/stats``: this process's CPU seconds and the request counts by kind;
- ``GET /_bench/messages``: what the sink received (title, message, received_at).

A benchmark that adds 100,000 jobs asks for them in one request; the sim answers status
requests from memory at a few tens of microseconds each, so it is not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

# bench/ is first on the path when this runs as a script; keep it off, so that no benchmark
# file can shadow a package of the same name.
_BENCH = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
    sys.path.insert(0, str(_BENCH.parent))

from poller.testing import Request, Response, RulerSim, WebhookSink  # noqa: E402

#: The bearer token the benchmark's config gives the Ruler source.
TOKEN = "bench-token"
CONTROL = "/_bench/"


def site_of(i: int) -> str:
    """The site id of benchmark job number `i` (one job per site)."""
    return f"s{i:06d}"


def job_of(i: int) -> str:
    """The job id of benchmark job number `i`."""
    return f"j{i:06d}"


class BenchRuler(RulerSim):
    """`RulerSim` with the benchmark's control endpoints under ``/_bench/``."""

    def __init__(self, sink: WebhookSink, **kwargs: Any) -> None:
        """A Ruler simulator that also serves the control API and reads `sink`."""
        super().__init__(TOKEN, **kwargs)
        self.sink = sink
        #: seconds every API answer waits, as a remote API's would (``/_bench/latency``)
        self.latency = 0.0

    def classify(self, request: Request) -> str:
        """Control requests are counted apart from the API's."""
        if request.path.startswith(CONTROL):
            return "control"
        return super().classify(request)

    async def handle(self, request: Request) -> Response:
        """The control endpoints, else the Ruler API."""
        if not request.path.startswith(CONTROL):
            answer = await super().handle(request)
            answer.delay = max(answer.delay, self.latency)
            return answer
        what = request.path[len(CONTROL) :]
        if what == "latency" and request.method == "POST":
            self.latency = float(request.json()["seconds"])
            return Response(200, {"latency": self.latency})
        if what == "jobs" and request.method == "POST":
            body = request.json()
            first, count = int(body.get("first", 0)), int(body["count"])
            status = str(body.get("status", "pending"))
            for i in range(first, first + count):
                self.add_job(site_of(i), job_of(i), status=status)
            return Response(200, {"added": count})
        if what == "set" and request.method == "POST":
            body = request.json()
            status = str(body["status"])
            changed: dict[str, float] = {}
            for i in body["ids"]:
                self.set_job(site_of(int(i)), job_of(int(i)), status=status)
                changed[str(i)] = time.time()
            return Response(200, {"changed_at": changed})
        if what == "stats":
            return Response(
                200,
                {
                    "cpu": time.process_time(),
                    "requests": dict(self.requests),
                    "connections": self.connections,
                },
            )
        if what == "messages":
            messages = [
                {
                    "title": m["title"],
                    "message": m["message"],
                    "received_at": m["received_at"],
                }
                for m in self.sink.messages
            ]
            return Response(200, {"messages": messages})
        return Response(404, {"message": "unknown control request"})


def _watch_stdin(loop: asyncio.AbstractEventLoop, done: asyncio.Event) -> None:
    """Stop when stdin reaches EOF: the benchmark that started us is gone."""

    def reader() -> None:
        """Read stdin until EOF."""
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(done.set)

    threading.Thread(target=reader, daemon=True, name="stdin-eof").start()


async def serve(max_seconds: float) -> None:
    """Start both servers, print their addresses, serve until told to stop."""
    sink = WebhookSink()
    ruler = BenchRuler(sink)
    await sink.start()
    await ruler.start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    _watch_stdin(loop, done)
    print(
        json.dumps(
            {
                "ruler_url": ruler.base_url,
                "control_url": ruler.origin + CONTROL.rstrip("/"),
                "sink_url": sink.apprise_url,
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout=max_seconds)
    await ruler.stop()
    await sink.stop()


def main() -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-seconds", type=float, default=4 * 3600.0)
    args = parser.parse_args()
    asyncio.run(serve(args.max_seconds))


if __name__ == "__main__":
    main()
