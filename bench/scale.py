"""The ``scale`` part of the daemon benchmark; run it with
``.venv/bin/python bench/daemon.py --only scale`` (its children run through that script too).

100,000 watches at 60 s for 5 minutes (``--quick``: 20,000 for 60 s): polls
due against polls made (a watch misses when it was polled fewer times than its due times
in the run), event-loop lag (a task sleeping 0.1 s records its oversleep), how late the
schedule ran (oldest due watch not yet claimed), peak RSS (VmHWM), start to first poll,
and the database calls per poll. Due times start spread evenly over one interval, as a
long-running daemon has them. The watches are inserted in bulk; the cost of
`Store.add_watch` (one transaction per watch) is measured on a sample.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    CHILD_TIMEOUT_SLACK,
    DbCalls,
    LagProbe,
    Report,
    Sim,
    Sizes,
    pct,
    per_poll_calls,
    prepare_watches,
    proc_status,
    quiet_logs,
    run_child,
    running_daemon,
    spread_schedule,
    wait_until,
    write_config,
)


def child_prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """Create a database with the benchmark's watches; returns the insertion costs."""
    costs = prepare_watches(
        spec["database"], spec["watches"], spec["interval"], time.time(), spec.get("sample", 0)
    )
    return {"costs": costs}


async def child_scale(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the daemon on a prepared database for a while; schedule, lag, RSS, start-up."""
    import sqlalchemy as sa

    from poller.store.repo import Store
    from poller.store.schema import watches

    quiet_logs()
    n, interval, seconds = spec["watches"], spec["interval"], spec["seconds"]
    database = spec["database"]
    config = write_config(
        Path(spec["dir"]) / "scale.json",
        database=database,
        ruler_url=spec["ruler_url"],
        interval=interval,
    )
    start = time.time()
    store = Store(database)
    spread_schedule(store, n, interval, start)
    # a reader of our own, off the loop: how late is the oldest due watch nobody holds?
    oldest = sa.select(sa.func.min(watches.c.next_poll_at)).where(
        watches.c.active,
        sa.or_(watches.c.lease_until.is_(None), watches.c.lease_until < sa.bindparam("now")),
    )

    def schedule_lag() -> float:
        """Seconds since the oldest due watch that no lease holds was due."""
        now = time.time()
        with store.engine.connect() as conn:
            first = conn.execute(oldest, {"now": now}).scalar()
        return 0.0 if first is None else max(0.0, now - first)

    probe = LagProbe()
    probe.start()
    lags: list[float] = []
    rss: list[int] = []
    began = time.perf_counter()
    cpu0 = time.process_time()
    async with running_daemon(config) as daemon:
        ready_after = time.perf_counter() - began
        calls = DbCalls(daemon)
        await wait_until(lambda: daemon.polls.polls >= 1, 30, step=0.005)
        first_after = time.perf_counter() - began
        end = time.monotonic() + seconds - ready_after
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            lags.append(await asyncio.to_thread(schedule_lag))
            rss.append(proc_status("VmRSS"))
        stopped_at = time.time()
        polls = daemon.polls.polls
        db_calls = per_poll_calls({}, calls.snapshot(), polls)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - began
    await probe.stop()
    hwm = proc_status("VmHWM")
    # polls due (from the schedule we set) against polls made (each write-back bumps version)
    slack = 2.0
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(watches.c.id, watches.c.version)).all()
    store.close()
    step = interval / n
    due = made = missed_polls = missed_watches = 0
    for watch_id, version in rows:
        first_due = start + (watch_id - 1) * step
        horizon = stopped_at - slack - first_due
        expected = int(horizon // interval) + 1 if horizon >= 0 else 0
        due += expected
        made += version
        if version < expected:
            missed_watches += 1
            missed_polls += expected - version
    return {
        "ready_after": ready_after,
        "first_after": first_after,
        "loop_lag": probe.samples,
        "schedule_lag": lags,
        "rss_peak": hwm,
        "rss_last": rss[-1] if rss else 0,
        "polls": polls,
        "due": due,
        "made": made,
        "missed_polls": missed_polls,
        "missed_watches": missed_watches,
        "cpu": cpu,
        "wall": wall,
        "db_calls": db_calls,
    }


def part_scale(sim: Sim, sizes: Sizes, work: Path, report: Report) -> None:
    """Part 2: many watches at a long interval for minutes."""
    n, interval = sizes.scale_watches, sizes.scale_interval
    began = time.perf_counter()
    sim.add_jobs(0, n, "pending")
    sim_setup = time.perf_counter() - began
    database = f"sqlite:///{work}/scale.db"
    prep = run_child(
        "prepare",
        {
            "database": database,
            "watches": n,
            "interval": interval,
            "sample": sizes.add_watch_sample,
        },
        work,
        600,
    )
    costs = prep["costs"]
    r = run_child(
        "scale",
        {
            "dir": str(work),
            "database": database,
            "ruler_url": sim.ruler_url,
            "watches": n,
            "interval": interval,
            "seconds": sizes.scale_seconds,
        },
        work,
        sizes.scale_seconds + CHILD_TIMEOUT_SLACK,
    )
    label = f"{n:,} watches @{interval:g}s for {sizes.scale_seconds:g}s"
    report.add("scale", f"polls due / made ({label})", f"{r['due']:,} / {r['made']:,}")
    report.add(
        "scale",
        "polls/s needed / made",
        f"{n / interval:.0f} / {r['made'] / sizes.scale_seconds:.0f}",
    )
    report.add(
        "scale",
        "missed polls (watches polled less than due)",
        f"{r['missed_polls']} ({r['missed_watches']} watches)",
        "0",
        r["missed_polls"] == 0,
    )
    sched = r["schedule_lag"]
    report.add(
        "scale",
        "schedule lateness: oldest unclaimed due (p50/max)",
        f"{pct(sched, 50):.2f} / {max(sched, default=math.nan):.2f} s",
    )
    lag = [x * 1000 for x in r["loop_lag"]]
    report.add(
        "scale",
        "event-loop lag p50 / p99 / max",
        f"{pct(lag, 50):.1f} / {pct(lag, 99):.1f} / {max(lag, default=math.nan):.0f} ms",
    )
    peak = r["rss_peak"] / 2**20
    report.add("scale", "peak RSS (VmHWM) of the daemon process", f"{peak:.0f} MB", "<= 300 MB")
    report.rows[-1].ok = peak <= 300
    report.add(
        "scale",
        "start to ready / to first poll",
        f"{r['ready_after']:.2f} / {r['first_after']:.2f} s",
        "<= 5 s",
        r["first_after"] <= 5.0,
    )
    report.add(
        "scale",
        "daemon CPU (share of one core; per poll)",
        f"{r['cpu'] / r['wall'] * 100:.0f}%; {r['cpu'] / max(1, r['polls']) * 1e6:.0f} µs",
    )
    report.add("scale", "  database calls per poll", r["db_calls"])
    if "add_watch" in costs:
        report.add(
            "scale",
            f"Store.add_watch, one transaction each (first {sizes.add_watch_sample})",
            f"{costs['add_watch'] * 1e6:.0f} µs/watch",
        )
        report.add(
            "scale",
            f"  so {n:,} add_watch calls would take",
            f"{costs['add_watch'] * n:.0f} s",
        )
    if "bulk" in costs:
        report.add(
            "scale",
            "bulk insert (bench, 5,000 rows/statement)",
            f"{costs['bulk'] * 1e6:.1f} µs/watch",
        )
    report.add("scale", "simulator set-up of the jobs", f"{sim_setup:.1f} s")


#: the child measurements of this part, by the name `bench/daemon.py --child` takes
CHILDREN: dict[str, Callable[[dict[str, Any]], Any]] = {
    "prepare": child_prepare,
    "scale": child_scale,
}
