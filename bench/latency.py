"""The ``latency`` part of the daemon benchmark; run it with
``.venv/bin/python bench/daemon.py --only latency`` (its children run through that script too).

10,000 watches at 5 s (backoff 1, digests off): jobs set to ``complete`` in
the simulator through its control API, one at a time spread over a minute; latency is the
remote change to the webhook's arrival time, p50/p99 (target p99 <= interval + 0.5 s),
split into change → the poll that saw it (the watch's ``ended_at``) and that poll → the
webhook. A second run at 4 times the interval is a diagnostic below the daemon's capacity.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    CHILD_TIMEOUT_SLACK,
    Report,
    Sim,
    Sizes,
    control,
    pct,
    prepare_watches,
    quiet_logs,
    run_child,
    running_daemon,
    wait_until,
    write_config,
)


async def child_latency(spec: dict[str, Any]) -> dict[str, Any]:
    """Jobs completed in the simulator one at a time; remote change → webhook arrival."""
    quiet_logs()
    began = time.time()
    work = Path(spec["dir"])
    n, interval = spec["watches"], spec["interval"]
    database = f"sqlite:///{work}/latency-{interval:g}.db"
    prepare_watches(database, n, interval, time.time())
    config = write_config(
        work / f"latency-{interval:g}.json",
        database=database,
        ruler_url=spec["ruler_url"],
        interval=interval,
        sink_url=spec["sink_url"],
    )
    rng = random.Random(spec["seed"])
    chosen = rng.sample(range(n), spec["changes"])
    changed: dict[int, float] = {}
    async with running_daemon(config) as daemon:
        if not await wait_until(lambda: daemon.polls.polls >= n, 120):
            raise RuntimeError("first round not done in 120 s")
        await asyncio.sleep(interval)  # steady state: every watch on its own interval
        polls0, wall0 = daemon.polls.polls, time.perf_counter()
        gap = spec["spread"] / len(chosen)
        next_at = time.monotonic()
        for i in chosen:
            next_at += gap * (0.5 + rng.random())
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            answer = await asyncio.to_thread(
                control, spec["control_url"], "set", {"ids": [i], "status": "complete"}
            )
            changed[i] = float(answer["changed_at"][str(i)])
        rate = (daemon.polls.polls - polls0) / (time.perf_counter() - wall0)
        await wait_until(lambda: daemon.deliveries.sent >= len(chosen), interval * 2 + 30, step=0.1)
        sent = daemon.deliveries.sent
    messages = (await asyncio.to_thread(control, spec["control_url"], "messages"))["messages"]
    # when the daemon saw each change: the poll that found the job complete set ended_at
    import sqlalchemy as sa

    from poller.store.schema import watches

    engine = sa.create_engine(database)
    with engine.connect() as conn:
        seen_at = {
            int(job_id[1:]): ended_at
            for job_id, ended_at in conn.execute(
                sa.select(watches.c.job_id, watches.c.ended_at).where(
                    watches.c.ended_at.is_not(None)
                )
            )
        }
    engine.dispose()
    latencies: list[float] = []
    to_poll: list[float] = []
    to_hook: list[float] = []
    seen: set[int] = set()
    for m in messages:
        found = re.search(r"j(\d{6})", f"{m['title']} {m['message']}")
        if not found or m["received_at"] < began:
            continue  # another run's message
        i = int(found.group(1))
        if i in changed and i not in seen:
            seen.add(i)
            latencies.append(m["received_at"] - changed[i])
            if i in seen_at:
                to_poll.append(seen_at[i] - changed[i])
                to_hook.append(m["received_at"] - seen_at[i])
    return {
        "latencies": latencies,
        "to_poll": to_poll,
        "to_hook": to_hook,
        "changed": len(changed),
        "sent": sent,
        "rate": rate,
        "messages": len(messages),
        "sample": messages[-1:],
    }


def part_latency(sim: Sim, sizes: Sizes, work: Path, report: Report) -> None:
    """Part 3: remote change to webhook delivery, at the target interval and at 4 times it.

    The second run is a diagnostic: if the first misses because the daemon cannot poll N
    watches that often, the second shows what the notification path adds when it can.
    """
    n = sizes.latency_watches
    for run, interval in enumerate((sizes.latency_interval, 4 * sizes.latency_interval)):
        sim.add_jobs(0, n, "pending")  # completed jobs of a previous run start over
        r = run_child(
            "latency",
            {
                "dir": str(work),
                "ruler_url": sim.ruler_url,
                "control_url": sim.control_url,
                "sink_url": sim.sink_url,
                "watches": n,
                "interval": interval,
                "changes": sizes.latency_changes,
                "spread": sizes.latency_spread,
                "seed": 6 + run,
            },
            work,
            sizes.latency_spread + interval * 4 + CHILD_TIMEOUT_SLACK,
        )
        lat = r["latencies"]
        if len(lat) < r["changed"]:
            report.notes.append(
                f"latency: {r['messages']} messages arrived, {r['sent']} sent; e.g. {r['sample']}"
            )
        what = f"{n:,} watches @{interval:g}s" + (" (diagnostic)" if run else "")
        target = interval + 0.5
        report.add(
            "latency",
            f"notified / changed ({what})",
            f"{len(lat)} / {r['changed']}",
            "all",
            len(lat) == r["changed"],
        )
        report.add("latency", "  polls/s needed / made", f"{n / interval:.0f} / {r['rate']:.0f}")
        report.add("latency", "  remote change → webhook p50", f"{pct(lat, 50):.2f} s")
        report.add(
            "latency",
            "  remote change → webhook p99",
            f"{pct(lat, 99):.2f} s",
            f"<= {target:g} s",
            bool(lat) and pct(lat, 99) <= target,
        )
        report.add(
            "latency", "  remote change → webhook max", f"{max(lat, default=math.nan):.2f} s"
        )
        polled, hooked = r["to_poll"], r["to_hook"]
        report.add(
            "latency",
            "  of which change → poll that saw it, p50/p99",
            f"{pct(polled, 50):.2f} / {pct(polled, 99):.2f} s",
        )
        report.add(
            "latency",
            "  of which that poll → webhook, p50/p99",
            f"{pct(hooked, 50):.2f} / {pct(hooked, 99):.2f} s",
        )


#: the child measurements of this part, by the name `bench/daemon.py --child` takes
CHILDREN: dict[str, Callable[[dict[str, Any]], Any]] = {
    "latency": child_latency,
}
