"""The ``replicas`` part of the daemon benchmark; run it with
``.venv/bin/python bench/daemon.py --only replicas`` (its children run through that script too).

One `Daemon` process, then two, then one again, on a fresh PostgreSQL
database at 127.0.0.1:5432 (dropped afterwards), saturated (10,000 watches at 1 s: always
some due): polls/s of each, the ratio (target >= 1.8), and the CPU the replicas,
PostgreSQL and the simulator used, to show what limits it on this machine (the ceiling:
all cores divided by the CPU one poll costs across every process). Then the same with an
API that takes 100 ms to answer and ``max_concurrency: 16`` per replica, the case replicas
are for: one replica is bound by its requests in flight, not by CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    API_CONCURRENCY,
    API_LATENCY,
    CONCURRENCY,
    PG_ADMIN,
    PG_URL,
    Children,
    Report,
    Sim,
    Sizes,
    idle_share,
    quiet_logs,
    run_child,
    running_daemon,
    thread_cpu,
    tree_cpu,
    write_config,
)


async def child_replica(spec: dict[str, Any]) -> dict[str, Any]:
    """One replica: run the daemon; count polls and CPU inside the wall-clock window given."""
    quiet_logs()
    config = write_config(
        Path(spec["dir"]) / f"replica-{os.getpid()}.json",
        database=spec["database"],
        ruler_url=spec["ruler_url"],
        interval=spec["interval"],
        max_concurrency=spec.get("max_concurrency", CONCURRENCY),
    )
    async with running_daemon(config) as daemon:
        await asyncio.sleep(max(0.0, spec["window_start"] - time.time()))
        polls0, cpu0, threads0 = daemon.polls.polls, time.process_time(), thread_cpu()
        await asyncio.sleep(max(0.0, spec["window_end"] - time.time()))
        polls1, cpu1, threads1 = daemon.polls.polls, time.process_time(), thread_cpu()
        # after the window (the sampler costs CPU), while every replica still runs
        idle = await idle_share(daemon, 3.0)
    seconds = spec["window_end"] - spec["window_start"]
    return {
        "polls": polls1 - polls0,
        "rate": (polls1 - polls0) / seconds,
        "cpu": cpu1 - cpu0,
        "threads": {k: threads1.get(k, 0.0) - threads0.get(k, 0.0) for k in threads1},
        "idle": idle,
    }


@contextlib.contextmanager
def fresh_pg_database(work: Path, watches: int) -> Iterator[str]:
    """A new PostgreSQL database for this run with `watches` watches due every second (its
    SQLAlchemy URL); dropped afterwards."""
    import psycopg

    name = f"poller_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = PG_URL.format(db=name)
        spec = {"database": url, "watches": watches, "interval": 1.0, "sample": 0}
        run_child("prepare", spec, work, 300)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_polls(url: str) -> int:
    """Write-backs so far, from the database (each bumps a watch's version)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.exec_driver_sql("SELECT coalesce(sum(version), 0) FROM watches").scalar()
            )
    finally:
        engine.dispose()


def is_postgres(cmdline: str) -> bool:
    """A PostgreSQL server process (postmaster, backends, writers)."""
    return cmdline.startswith(("postgres:", "/usr/lib/postgresql/"))


def replica_round(
    sim: Sim,
    sizes: Sizes,
    work: Path,
    database: str,
    replicas: int,
    max_concurrency: int = CONCURRENCY,
) -> dict[str, Any]:
    """Run `replicas` daemon processes together; polls and CPU of everything in the window."""
    start = time.time()
    window_start = start + sizes.replica_warm
    window_end = window_start + sizes.replica_window
    children = Children()
    try:
        for _ in range(replicas):
            children.start(
                "replica",
                {
                    "dir": str(work),
                    "database": database,
                    "ruler_url": sim.ruler_url,
                    "interval": 1.0,
                    "window_start": window_start,
                    "window_end": window_end,
                    "max_concurrency": max_concurrency,
                },
                work,
            )
        time.sleep(max(0.0, window_start - time.time()))
        pg0, sim0, db0 = tree_cpu(is_postgres), sim.cpu(), pg_polls(database)
        time.sleep(max(0.0, window_end - time.time()))
        pg1, sim1, db1 = tree_cpu(is_postgres), sim.cpu(), pg_polls(database)
        results = children.results(sizes.replica_warm + sizes.replica_window + 150)
    except BaseException:
        children.kill_all()
        raise
    seconds = window_end - window_start
    return {
        "replicas": results,
        "rate": sum(r["rate"] for r in results),
        "db_rate": (db1 - db0) / seconds,
        "pg_cpu": (pg1 - pg0) / seconds,
        "sim_cpu": (sim1 - sim0) / seconds,
        "replica_cpu": sum(r["cpu"] for r in results) / seconds,
    }


def part_replicas(sim: Sim, sizes: Sizes, work: Path, report: Report) -> None:
    """Part 4: throughput of two replicas on PostgreSQL against one (run 1, 2, then 1 again)."""
    n = sizes.replica_watches
    sim.add_jobs(0, n, "pending")
    with fresh_pg_database(work, n) as database:
        one_a = replica_round(sim, sizes, work, database, 1)
        two = replica_round(sim, sizes, work, database, 2)
        one_b = replica_round(sim, sizes, work, database, 1)
    one = {
        k: (one_a[k] + one_b[k]) / 2
        for k in ("rate", "db_rate", "pg_cpu", "sim_cpu", "replica_cpu")
    }
    label = f"{n:,} watches always due, PostgreSQL"
    report.add(
        "replicas",
        f"1 replica polls/s ({label}; before, after)",
        f"{one['rate']:.0f} ({one_a['rate']:.0f}, {one_b['rate']:.0f})",
    )
    each = " + ".join(f"{r['rate']:.0f}" for r in two["replicas"])
    report.add("replicas", "2 replicas polls/s (each)", f"{two['rate']:.0f} ({each})")
    report.add(
        "replicas",
        "  cross-check from the database (1; 2)",
        f"{one['db_rate']:.0f}; {two['db_rate']:.0f}",
    )
    ratio = two["rate"] / max(1e-9, one["rate"])
    report.add("replicas", "throughput ratio 2 / 1", f"{ratio:.2f}x", ">= 1.8", ratio >= 1.8)
    for name, r in (("1 replica", one), ("2 replicas", two)):
        report.add(
            "replicas",
            f"  CPU cores used, {name}: replicas / PostgreSQL / sim",
            f"{r['replica_cpu']:.2f} / {r['pg_cpu']:.2f} / {r['sim_cpu']:.2f}",
        )
    idle = [r["idle"] for r in (*one_a["replicas"], *one_b["replicas"])]
    idle_two = ", ".join(f"{r['idle'] * 100:.0f}%" for r in two["replicas"])
    report.add(
        "replicas",
        "  time with no poll in flight: 1 replica; 2 replicas",
        f"{sum(idle) / len(idle) * 100:.0f}%; {idle_two}",
    )
    per_poll = {k: one[k] / max(1e-9, one["rate"]) for k in ("replica_cpu", "pg_cpu", "sim_cpu")}
    report.add(
        "replicas",
        "  CPU/poll (1 replica): replica / PostgreSQL / sim",
        " / ".join(f"{v * 1e6:.0f}" for v in per_poll.values()) + " µs",
    )
    busy = two["replica_cpu"] + two["pg_cpu"] + two["sim_cpu"]
    report.add(
        "replicas",
        "  cores busy with 2 replicas (replicas + PostgreSQL + sim)",
        f"{busy:.2f} of {os.cpu_count()}",
    )
    # What this machine allows: two replicas can at most use every core, and each of their
    # polls also costs PostgreSQL and the simulator CPU on the same cores.
    cores = os.cpu_count() or 1
    bound = cores / sum(per_poll.values()) / max(1e-9, one["rate"])
    report.add(
        "replicas",
        "  ceiling on this machine: cores / (CPU per poll, all processes) / 1 replica",
        f"{bound:.2f}x; reached {ratio / bound * 100:.0f}% of it",
    )
    # Where replicas are for: a job API that takes its time to answer, and a source's
    # max_concurrency per replica; each replica brings its own share of requests in flight.
    latency, concurrency = API_LATENCY, API_CONCURRENCY
    sim.call("latency", {"seconds": latency})
    try:
        with fresh_pg_database(work, n) as database:
            api_one = replica_round(sim, sizes, work, database, 1, concurrency)
            api_two = replica_round(sim, sizes, work, database, 2, concurrency)
    finally:
        sim.call("latency", {"seconds": 0.0})
    api_ratio = api_two["rate"] / max(1e-9, api_one["rate"])
    each = " + ".join(f"{r['rate']:.0f}" for r in api_two["replicas"])
    report.add(
        "replicas",
        f"API-bound ({latency * 1000:.0f} ms answers, max_concurrency {concurrency}): "
        "1 / 2 replicas polls/s",
        f"{api_one['rate']:.0f} / {api_two['rate']:.0f} ({each})",
    )
    report.add(
        "replicas",
        "  throughput ratio 2 / 1, API-bound",
        f"{api_ratio:.2f}x",
        ">= 1.8",
        api_ratio >= 1.8,
    )


#: the child measurements of this part, by the name `bench/daemon.py --child` takes
CHILDREN: dict[str, Callable[[dict[str, Any]], Any]] = {
    "replica": child_replica,
}
