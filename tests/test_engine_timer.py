"""One timer per duty: an engine that fails backs off as its log says, whoever wakes it."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import PG_ADMIN_URL
from world import SITE, World, eventually, job_yaml

from poller.engine.runtime import failure_wait, run_loop


class Recorder:
    """A logger that keeps what `run_loop` reports."""

    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.errors.append({"event": event, "at": time.monotonic(), **fields})


def test_failure_wait_doubles_up_to_30_seconds() -> None:
    """1, 2, 4, 8, 16, then 30 s for good."""
    assert [failure_wait(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_failing_step_is_retried_no_faster_than_it_says_though_woken() -> None:
    """A step that always fails, while something sets `wakeup` every 20 ms (as the 1-second
    duties once did): in 3.5 s it runs at 0, 1 and 3 s, logging retry_in 1, 2, 4."""
    log = Recorder()
    calls: list[float] = []

    async def step() -> float | None:
        calls.append(time.monotonic())
        raise RuntimeError("the database is away")

    async def main() -> None:
        wakeup, stopping = asyncio.Event(), asyncio.Event()

        async def nag() -> None:
            while not stopping.is_set():
                wakeup.set()
                await asyncio.sleep(0.02)

        loop = asyncio.create_task(run_loop("test", step, wakeup, stopping, time.time, 1.0, log))
        nagging = asyncio.create_task(nag())
        await asyncio.sleep(3.5)
        stopping.set()
        # a stop ends the backoff at once, not when it runs out
        await asyncio.wait_for(loop, timeout=0.5)
        await nagging

    asyncio.run(main())
    assert [e["retry_in"] for e in log.errors] == [1, 2, 4]
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(gaps) == 2 and gaps[0] >= 0.95 and gaps[1] >= 1.95, gaps


def _log_lines(path: Path, event: str) -> list[dict[str, Any]]:
    lines = (json.loads(text) for text in path.read_text().splitlines() if text.startswith("{"))
    return [line for line in lines if line.get("event") == event]


def _allow_connections(name: str, allow: bool) -> None:
    """Open or close database `name` to new connections; closing also ends the open ones."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
            if not allow:
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
    finally:
        admin.dispose()


@pytest.mark.postgres
def test_during_a_database_outage_the_engines_retry_as_far_apart_as_logged(
    world: World, pg_url: str
) -> None:
    """The daemon's database refuses connections for 8 s: each engine logs `retry_in` growing
    (1, 2, 4 ...) and its next attempt comes no sooner; once the database is back the work
    goes on."""
    world.database = pg_url
    world.ruler.add_job(SITE, "steady", status="processing")
    world.write_config(job_yaml("steady"))
    daemon = world.start()
    eventually(lambda: world.messages("info"), what="started delivered")
    name = sa.engine.make_url(pg_url).database
    assert name
    _allow_connections(name, False)
    try:
        time.sleep(8.0)
    finally:
        _allow_connections(name, True)
    for engine in ("dispatch", "delivery"):
        # the engine's own retries (a channel's task logs the same event, without retry_in)
        lines = [
            line
            for line in _log_lines(world.log, f"{engine} failed; retrying")
            if "retry_in" in line
        ]
        assert len(lines) >= 3, (engine, lines)
        # with one timer per engine: 1, 2, 4 s apart (two timers made it about 1 s each)
        assert len(lines) <= 5, (engine, [line["timestamp"] for line in lines])
        waits = [line["retry_in"] for line in lines]
        assert waits[:3] == [1, 2, 4], waits
        times = [datetime.fromisoformat(line["timestamp"]).timestamp() for line in lines]
        for before, after, wait in zip(times, times[1:], waits, strict=False):
            assert after - before >= wait - 0.1, (engine, times, waits)
    world.ruler.set_job(SITE, "steady", status="complete")
    eventually(lambda: world.messages("success"), timeout=40, what="success after the outage")
    assert daemon.poll() is None
    assert world.stop(daemon) == 0
