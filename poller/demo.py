"""`poller demo`: the whole loop in a minute, with no credentials.

A simulated Ruler API and a webhook receiver run on loopback; the real daemon watches four
scripted jobs (one ends complete, one partialcomplete, one failed, one complete later) with a
SQLite database in a temporary directory, and every notification Apprise delivers to the
receiver is printed here. Extra Apprise URLs (`--notify`) get the same messages.

The notifications are what the demo shows: the daemon's log stays quiet (errors only) unless
`verbose`, and nothing is coloured when stdout is not a terminal. A `--notify` URL is the
user's own input: one Apprise cannot read is refused before the demo starts
(`notify_problems`), and one whose service refuses the messages is named at the end, with its
answer, and makes the exit code 1.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from rich.console import Console

from poller.app import Daemon
from poller.config import Config, load_config
from poller.logs import configure
from poller.settings.fields import ChannelUrl
from poller.store.repo import Store
from poller.terminal import plain
from poller.testing import RulerSim, SimThread, WebhookSink

SITE = "demo-site"
COLOURS = {"success": "green", "warning": "yellow", "failure": "red", "info": "cyan"}
#: `--speed` bounds: slower than 0.1 takes minutes, faster than 10 polls every 0.1 s.
MIN_SPEED, MAX_SPEED = 0.1, 10.0
#: Seconds the daemon is given to start before the scripted jobs move.
STARTUP = 1.0
#: `--notify` URLs one demo takes, and the longest one.
MAX_NOTIFY, MAX_URL = 10, 4096
#: The channel the demo's own receiver is; `--notify` URLs are ``extra-1``, ``extra-2``...
OWN_CHANNEL = "console"


def notify_problems(urls: list[str]) -> list[str]:
    """Why the `--notify` URLs cannot be used (the config's own check of a channel URL), each
    naming the URL by its place, never by its text (it holds the user's secrets)."""
    if len(urls) > MAX_NOTIFY:
        return [f"--notify: at most {MAX_NOTIFY} URLs, not {len(urls)}"]
    problems = []
    check = TypeAdapter(ChannelUrl)
    for number, url in enumerate(urls, 1):
        if len(url) > MAX_URL:
            problems.append(f"--notify URL #{number}: longer than {MAX_URL} characters")
            continue
        try:
            check.validate_python(url)
        except ValidationError as exc:
            why = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            problems.append(f"--notify URL #{number}: {why}")
    return problems


def _script(sim: RulerSim, speed: float) -> list[dict[str, str]]:
    """Create the demo jobs; return their config entries."""

    def at(seconds: float) -> float:
        # the daemon's start comes first, at any speed: a job it first sees ended has no
        # `started` message
        return STARTUP + seconds / speed

    sim.script_job(
        SITE,
        "rev-2026-11",
        [
            (at(2), {"status": "processing", "processed_rows": 10}),
            (at(5), {"processed_rows": 45}),
            (at(8), {"processed_rows": 80}),
            (at(11), {"status": "complete", "processed_rows": 100, "failure_count": 0}),
        ],
    )
    sim.script_job(
        SITE,
        "crm-contacts",
        [
            (at(3), {"status": "processing", "processed_rows": 30}),
            (at(9), {"processed_rows": 90}),
            (at(14), {"status": "partialcomplete", "processed_rows": 100, "failure_count": 3}),
        ],
    )
    sim.script_job(
        SITE,
        "ledger-sync",
        [
            (at(2), {"status": "processing", "processed_rows": 20}),
            (
                at(8),
                {
                    "status": "failed",
                    "processed_rows": 20,
                    "failure_reason": "Column 'amount' is missing in row 1 of the file",
                },
            ),
        ],
    )
    sim.script_job(
        SITE,
        "backfill-2019",
        [
            (at(4), {"status": "processing", "processed_rows": 5}),
            (at(10), {"processed_rows": 50}),
            (at(18), {"status": "complete", "processed_rows": 100}),
        ],
    )
    return [
        {
            "source": "ruler-demo",
            "site": SITE,
            "id": "rev-2026-11",
            "name": "Nightly revenue upload",
        },
        {"source": "ruler-demo", "site": SITE, "id": "crm-contacts", "name": "CRM contacts"},
        {"source": "ruler-demo", "site": SITE, "id": "ledger-sync", "name": "Ledger sync"},
        {"source": "ruler-demo", "site": SITE, "id": "backfill-2019", "name": "2019 backfill"},
    ]


def _write_config(
    folder: Path,
    sim: RulerSim,
    sink: WebhookSink,
    jobs: list[dict[str, str]],
    extra_urls: list[str],
    speed: float,
    verbose: bool,
) -> Path:
    channels: dict[str, str] = {OWN_CHANNEL: sink.apprise_url}
    for i, url in enumerate(extra_urls):
        channels[f"extra-{i + 1}"] = url
    config: dict[str, Any] = {
        "database": f"sqlite:///{folder}/poller.db",
        "log": {"level": "info" if verbose else "error", "format": "console"},
        "sources": {"ruler-demo": {"type": "ruler", "base_url": sim.base_url, "token": sim.token}},
        "channels": channels,
        "rules": [
            {
                "on": [
                    "started",
                    "succeeded",
                    "partial",
                    "failed",
                    "cancelled",
                    "expired",
                    "timed_out",
                    "unreachable",
                    "recovered",
                    "stalled",
                ],
                "notify": list(channels),
            }
        ],
        "polling": {
            "interval": f"{1 / speed:.3f}s",
            "backoff": 1.5,
            "max_interval": f"{3 / speed:.3f}s",
            "timeout": "10m",
        },
        "jobs": jobs,
    }
    path = folder / "config.yaml"
    # JSON is YAML: no need for a YAML writer.
    path.write_text(json.dumps(config, indent=2))
    return path


def run_demo(extra_urls: list[str], speed: float, console: Console, verbose: bool = False) -> int:
    """Run the demo until every job has ended and every message is delivered (or a
    `--notify` URL has refused it); returns the exit code. `speed` is within
    `MIN_SPEED`..`MAX_SPEED` and `extra_urls` passed `notify_problems`."""

    def show(message: dict[str, Any]) -> None:
        colour = COLOURS.get(str(message.get("type")), "white")
        console.print()
        console.print(plain(f"📣 {message.get('title')}", style=f"bold {colour}"))
        console.print(plain(message.get("message", ""), lines=True), highlight=False)

    sim, sink = RulerSim(token="demo-token"), WebhookSink(on_message=show)
    with tempfile.TemporaryDirectory(prefix="poller-demo-") as tmp, SimThread(sim, sink):
        jobs = _script(sim, speed)
        path = _write_config(Path(tmp), sim, sink, jobs, extra_urls, speed, verbose)
        config = load_config(path)
        configure(config.log.level, config.log.format)
        console.rule("poller demo")
        console.print(
            f"Simulated Ruler API at {sim.base_url}; notifications go to "
            f"{sink.apprise_url} and are shown below"
            + (" (the daemon's log too)." if verbose else " (--verbose shows the daemon's log).")
        )
        console.print(f"Watching {len(jobs)} jobs; database {Path(tmp) / 'poller.db'}\n")
        code = asyncio.run(_run(config, deadline=time.monotonic() + 90 / speed))
        store = Store(config.database)
        try:
            watches = store.list_watches()
            own_pending = _pending(store, OWN_CHANNEL)
            refused = _refused(store)
        finally:
            store.close()
        console.rule("result")
        for w in watches:
            state = w.progress.state.value if w.progress.state else "new"
            console.print(plain(f"{w.key:<40} {state:<10} {w.progress.progress or 0:>4.0f}%"))
        console.print(f"\n{len(sink.messages)} notifications delivered, {own_pending} pending.")
        for channel, answer in sorted(refused.items()):
            number = channel.removeprefix("extra-")
            console.print(
                plain(f"Your --notify URL #{number} did not take the messages: {answer}"),
                style="bold red",
            )
        console.print(
            "Next: `poller init PATH` writes a starter config; `poller check -c PATH` checks it."
        )
        return code or (1 if refused else 0)


def _pending(store: Store, channel: str) -> int:
    """The deliveries to `channel` still waiting to go out."""
    return sum(1 for d in store.undelivered("pending", limit=1000) if d.channel == channel)


def _refused(store: Store) -> dict[str, str]:
    """The `--notify` channels that failed a delivery, with the last answer of each."""
    found: dict[str, str] = {}
    for status in ("given_up", "pending"):
        for d in store.undelivered(status, limit=1000):
            if d.channel != OWN_CHANNEL and d.attempts and d.last_error:
                found.setdefault(d.channel, d.last_error)
    return found


async def _run(config: Config, deadline: float) -> int:
    daemon = Daemon(config)
    runner = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
    if runner.done():
        ready.cancel()
        return await runner
    store = Store(config.database)
    try:
        while time.monotonic() < deadline and not runner.done():
            await asyncio.sleep(0.5)
            watches = store.list_watches()
            if not watches or any(w.progress.active for w in watches):
                continue
            # done once our receiver has every message and each --notify URL has been tried
            # with each: one that refuses them is not waited for through its retries
            pending = store.undelivered("pending", limit=1000)
            if all(d.channel != OWN_CHANNEL and d.attempts for d in pending):
                break
    finally:
        store.close()
        daemon.stop()
    return await runner
