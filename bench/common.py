"""Benchmark: the whole daemon (claim, HTTP, parse, decide, write back, notify), end to end.

Run: `.venv/bin/python bench/daemon.py [--quick | --full] [--only cpu|scale|latency|replicas]`

The simulated Ruler API and the loopback webhook run in their own process
(`bench/simserver.py`); every measured daemon, baseline and replica runs in a fresh process
of its own (this file with ``--child``), so that CPU, RSS and garbage of one do not leak into
another. Figures are printed as one table, with their targets and PASS/MISS:

1. ``cpu``: CPU per poll, all-in, of `poller.app.Daemon` on a temporary SQLite database
   (4,000 watches at 1 s, more than it can poll, so it runs saturated; one job per Ruler site
   so each poll is one ``/status`` request), against a bare aiohttp GET + JSON loop with the
   same concurrency over the same endpoint (target <= 2.0x). The two alternate for three
   rounds; the ratio is the median of the rounds' ratios. A ladder in between shows where
   the CPU goes: poller's `Requester` alone, then the Ruler adapter alone. The naive design,
   one APScheduler 3.x interval job per watch doing an httpx GET over httpx's own transport,
   runs with 500 watches at 1 s (a load it keeps up with) and 1,000 (one it does not; with
   4,000 its loop stops answering for minutes).
2. ``scale``: 100,000 watches at 60 s for 5 minutes (``--quick``: 20,000 for 60 s): polls
   due against polls made (a watch misses when it was polled fewer times than its due times
   in the run), event-loop lag (a task sleeping 0.1 s records its oversleep), how late the
   schedule ran (oldest due watch not yet claimed), peak RSS (VmHWM), start to first poll,
   and the database calls per poll. Due times start spread evenly over one interval, as a
   long-running daemon has them. The watches are inserted in bulk; the cost of
   `Store.add_watch` (one transaction per watch) is measured on a sample.
3. ``latency``: 10,000 watches at 5 s (backoff 1, digests off): jobs set to ``complete`` in
   the simulator through its control API, one at a time spread over a minute; latency is the
   remote change to the webhook's arrival time, p50/p99 (target p99 <= interval + 0.5 s),
   split into change → the poll that saw it (the watch's ``ended_at``) and that poll → the
   webhook. A second run at 4 times the interval is a diagnostic below the daemon's capacity.
4. ``replicas``: one `Daemon` process, then two, then one again, on a fresh PostgreSQL
   database at 127.0.0.1:5432 (dropped afterwards), saturated (10,000 watches at 1 s: always
   some due): polls/s of each, the ratio (target >= 1.8), and the CPU the replicas,
   PostgreSQL and the simulator used, to show what limits it on this machine (the ceiling:
   all cores divided by the CPU one poll costs across every process). Then the same with an
   API that takes 100 ms to answer and ``max_concurrency: 16`` per replica, the case replicas
   are for: one replica is bound by its requests in flight, not by CPU.

Every figure comes from this run; ratios compare measurements made in the same run over the
same simulator. ``--profile`` prints a cProfile of the daemon's CPU window.

Everything listens on 127.0.0.1 only; every loop and every process is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import math
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from statistics import median
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# Python puts this script's directory first on the path, where a benchmark named like a
# package (once bench/requests.py shadowed the `requests` that Apprise sends with) would win.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _load_simserver() -> Any:
    """`bench/simserver.py` as a module, without putting bench/ on the path."""
    spec = importlib.util.spec_from_file_location("bench_simserver", BENCH / "simserver.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_sim = _load_simserver()
TOKEN: str = _sim.TOKEN
site_of: Callable[[int], str] = _sim.site_of
job_of: Callable[[int], str] = _sim.job_of

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
#: requests in flight: the source's max_concurrency, the aiohttp loop's workers, the httpx
#: client's connection limit
CONCURRENCY = 64
CHILD_TIMEOUT_SLACK = 180.0
#: the API-bound replica rounds: how long each answer takes, and each replica's requests in
#: flight (the source's max_concurrency)
API_LATENCY, API_CONCURRENCY = 0.1, 16
#: watches of the naive APScheduler baseline: a load it keeps up with, and one it does not
APS_LIGHT, APS_HEAVY = 500, 1000


@dataclass(frozen=True)
class Sizes:
    """How big and how long each part runs."""

    #: enough watches that some are always due: every design runs saturated
    cpu_watches: int = 4000
    cpu_interval: float = 1.0
    cpu_window: float = 15.0
    #: rounds of daemon and bare aiohttp, alternating
    cpu_rounds: int = 3
    scale_watches: int = 100_000
    scale_interval: float = 60.0
    scale_seconds: float = 300.0
    add_watch_sample: int = 2000
    latency_watches: int = 10_000
    latency_interval: float = 5.0
    latency_changes: int = 200
    latency_spread: float = 60.0
    #: enough that two replicas never run out of due watches (rate x interval + leases)
    replica_watches: int = 10_000
    replica_warm: float = 15.0
    replica_window: float = 30.0


FULL = Sizes()
QUICK = Sizes(
    cpu_window=8.0,
    cpu_rounds=2,
    scale_watches=20_000,
    scale_seconds=60.0,
    add_watch_sample=500,
    latency_changes=100,
    latency_spread=25.0,
    replica_warm=10.0,
    replica_window=15.0,
)


# -- results --------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table."""

    part: str
    figure: str
    value: str
    target: str = ""
    ok: bool | None = None

    @property
    def verdict(self) -> str:
        """PASS, MISS, or blank for a figure without a target."""
        return "" if self.ok is None else ("PASS" if self.ok else "MISS")


@dataclass
class Report:
    """The rows gathered so far, and notes printed under the table."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self, part: str, figure: str, value: str, target: str = "", ok: bool | None = None
    ) -> None:
        """Add one row and echo it, so that a long run shows progress."""
        row = Row(part, figure, value, target, ok)
        self.rows.append(row)
        print(f"  {part:<9} {figure:<52} {value:>20} {target:>12} {row.verdict}", flush=True)

    def table(self) -> str:
        """The table, as Markdown (it reads as well in a terminal)."""
        lines = [
            "| part | figure | value | target | result |",
            "|---|---|---:|---:|---|",
        ]
        lines += [
            f"| {r.part} | {r.figure} | {r.value} | {r.target} | {r.verdict} |" for r in self.rows
        ]
        return "\n".join(lines)


def _spread(costs: list[float]) -> str:
    """The lowest and highest of per-poll costs, in µs."""
    return f"{min(costs) * 1e6:.0f}–{max(costs) * 1e6:.0f}"


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`; NaN if there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[rank]


# -- the simulator process ----------------------------------------------------------------


class Sim:
    """`bench/simserver.py` in a subprocess, and its control API."""

    def __init__(self) -> None:
        """Start `bench/simserver.py` and read its addresses."""
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "simserver.py"), "--max-seconds", "7200"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the simulator did not start")
        info = json.loads(line)
        self.ruler_url: str = info["ruler_url"]
        self.control_url: str = info["control_url"]
        self.sink_url: str = info["sink_url"]
        self.pid: int = info["pid"]

    def call(self, what: str, body: Any = None, timeout: float = 120.0) -> Any:
        """One control request (POST with a JSON body, GET without)."""
        return control(self.control_url, what, body, timeout)

    def add_jobs(self, first: int, count: int, status: str = "pending") -> None:
        """Create jobs first .. first+count-1."""
        self.call("jobs", {"first": first, "count": count, "status": status})

    def cpu(self) -> float:
        """CPU seconds the simulator process has used."""
        return float(self.call("stats")["cpu"])

    def usage(self) -> tuple[float, int, int]:
        """CPU seconds, API requests and connections the simulator has served so far."""
        stats = self.call("stats")
        served = sum(v for k, v in stats["requests"].items() if k != "control")
        return float(stats["cpu"]), int(served), int(stats["connections"])

    def close(self) -> None:
        """Stop the simulator (it also stops when our end of its stdin closes)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> Sim:
        """The simulator, running."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the simulator."""
        self.close()


def control(control_url: str, what: str, body: Any = None, timeout: float = 120.0) -> Any:
    """A request to the simulator's control API; returns the decoded answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{control_url}/{what}",
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:  # loopback only
        return json.loads(answer.read())


# -- child processes ------------------------------------------------------------------------


def run_child(name: str, spec: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run ``bench/daemon.py --child name`` with `spec`; returns the result it wrote."""
    out = workdir / f"{name}-{secrets.token_hex(3)}.json"
    log = out.with_suffix(".log")
    spec = {**spec, "out": str(out)}
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", name, "--spec", json.dumps(spec)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            code = -9
    if code != 0 or not out.exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"child {name} failed (exit {code}):\n{tail}")
    return dict(json.loads(out.read_text()))


class Children:
    """Several child processes started together (replicas), awaited together."""

    def __init__(self) -> None:
        """No children yet."""
        self.procs: list[tuple[subprocess.Popen[bytes], Path, Path]] = []

    def start(self, name: str, spec: dict[str, Any], workdir: Path) -> None:
        """Start one child."""
        out = workdir / f"{name}-{secrets.token_hex(3)}.json"
        log = out.with_suffix(".log")
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    "--spec",
                    json.dumps({**spec, "out": str(out)}),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )
        self.procs.append((proc, out, log))

    def results(self, timeout: float) -> list[dict[str, Any]]:
        """Wait for every child (killing the late ones); their results, in start order."""
        deadline = time.monotonic() + timeout
        results = []
        for proc, out, log in self.procs:
            try:
                code = proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                code = -9
            if code != 0 or not out.exists():
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"replica failed (exit {code}):\n{tail}")
            results.append(dict(json.loads(out.read_text())))
        return results

    def kill_all(self) -> None:
        """Kill children still running (after an error)."""
        for proc, _out, _log in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


# -- shared by the children -----------------------------------------------------------------


def write_config(
    path: Path,
    *,
    database: str,
    ruler_url: str,
    interval: float,
    sink_url: str | None = None,
    max_concurrency: int = CONCURRENCY,
) -> Path:
    """A poller config (JSON, which is YAML) for the benchmark's one Ruler source."""
    config: dict[str, Any] = {
        "database": database,
        "sources": {
            "bench": {
                "type": "ruler",
                "base_url": ruler_url,
                "token": TOKEN,
                "max_concurrency": max_concurrency,
                "request_timeout": "10s",
                # one job per site: each poll is one /status request, never the site list
                "list_threshold": 1_000_000,
            }
        },
        "polling": {
            "interval": interval,
            "backoff": 1,
            "max_interval": max(interval, 60.0),
            "stall_after": "1d",
        },
        "log": {"level": "warning", "format": "json"},
    }
    if sink_url:
        config["channels"] = {"hook": sink_url}
        config["rules"] = [{"on": ["succeeded"], "notify": ["hook"]}]
        # digests hold a first message back (`wait`) and merge storms: off, to measure the path
        config["delivery"] = {"digest": {"enabled": False, "wait": 0}}
    path.write_text(json.dumps(config, indent=2))
    return path


def prepare_watches(
    database: str, count: int, interval: float, start: float, sample: int = 0
) -> dict[str, float]:
    """Create the schema and `count` watches, job i due at start + i * interval / count.

    The first `sample` watches go through `Store.add_watch` (one transaction each, timed);
    the rest are inserted in bulk (timed). Returns seconds per watch of both.
    """
    import sqlalchemy as sa

    from poller.models import WatchSpec
    from poller.store.repo import Store
    from poller.store.schema import watches

    store = Store(database)
    store.migrate()
    costs: dict[str, float] = {}
    sample = min(sample, count)
    if sample:
        began = time.perf_counter()
        for i in range(sample):
            store.add_watch(
                WatchSpec("bench", job_of(i), site_of(i), name=f"bench {job_of(i)}"), start
            )
        costs["add_watch"] = (time.perf_counter() - began) / sample
    began = time.perf_counter()
    chunk = 5000
    with store.engine.begin() as conn:
        for first in range(sample, count, chunk):
            conn.execute(
                sa.insert(watches),
                [
                    {
                        "key": f"bench/{site_of(i)}/{job_of(i)}",
                        "source": "bench",
                        "job_id": job_of(i),
                        "site": site_of(i),
                        "name": f"bench {job_of(i)}",
                        "tags": [],
                        "origin": "cli",
                        "overrides": {},
                        "created_at": start,
                        "details": {},
                        "error_count": 0,
                        "unreachable": False,
                        "stalled": False,
                        "active": True,
                        "next_poll_at": start,
                        "version": 0,
                    }
                    for i in range(first, min(count, first + chunk))
                ],
            )
    if count > sample:
        costs["bulk"] = (time.perf_counter() - began) / (count - sample)
    spread_schedule(store, count, interval, start)
    store.close()
    return costs


def spread_schedule(store: Any, count: int, interval: float, start: float) -> None:
    """Due times evenly over one interval from `start`, in id order (ids are 1..count)."""
    import sqlalchemy as sa

    from poller.store.schema import watches

    step = interval / max(1, count)
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(watches).values(
                next_poll_at=start + (watches.c.id - 1) * step,
                lease_owner=None,
                lease_until=None,
            )
        )


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread of this process, by Python thread name (main: the loop)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            stat = (task / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            seconds = (int(fields[11]) + int(fields[12])) / tick
            name = names.get(int(task.name), "other")
            if name.startswith("poller-db"):
                name = "db"
            elif name == "MainThread":
                name = "loop"
            else:
                name = "other"
            found[name] = found.get(name, 0.0) + seconds
    return found


def proc_status(field_name: str) -> int:
    """A field of /proc/self/status in bytes (VmHWM, VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return 0


def tree_cpu(match: Callable[[str], bool]) -> float:
    """CPU seconds used so far by every process whose command line matches (e.g. postgres)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if not match(cmdline):
                continue
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def quiet_logs() -> None:
    """poller's logging at warning, to this child's log file (stdout)."""
    from poller.logs import configure

    configure("warning", "json")


class LagProbe:
    """A task that sleeps 0.1 s again and again and records how much longer it slept."""

    def __init__(self) -> None:
        """Not probing yet."""
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start probing on the running loop."""
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        """Sleep, measure the oversleep, again, until cancelled."""
        while True:
            began = time.perf_counter()
            await asyncio.sleep(0.1)
            self.samples.append(time.perf_counter() - began - 0.1)

    async def stop(self) -> None:
        """Stop probing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.asynccontextmanager
async def running_daemon(config_path: Path) -> Any:
    """A `Daemon` for this config running on this loop, ready; stopped on exit."""
    from poller.app import Daemon
    from poller.config import load_config

    daemon = Daemon(load_config(str(config_path)))
    task = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if not daemon.ready.is_set():
        ready.cancel()
        if task.done():
            task.result()  # raises why it did not start
        raise RuntimeError("the daemon did not become ready within 60 s")
    try:
        yield daemon
    finally:
        daemon.stop()
        try:
            await asyncio.wait_for(task, timeout=60)
        except TimeoutError:
            print("daemon did not stop within 60 s", file=sys.stderr)


async def wait_until(predicate: Callable[[], bool], limit: float, step: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `limit` seconds pass; whether it held."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(step)
    return True


class DbCalls:
    """Counts the daemon's database calls by store method, and the watches each claim got.

    It wraps the `call` of the daemon's one `DbThread` instance (poller's code is unchanged);
    a counter increment per call costs nothing measurable.
    """

    def __init__(self, daemon: Any) -> None:
        """Wrap `daemon`'s database thread."""
        from collections import Counter

        self.calls: Counter[str] = Counter()
        self.claimed = 0
        db = daemon.polls.db
        original = db.call

        async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
            """The original call, counted."""
            result = await original(fn, *args, **kwargs)
            name = getattr(fn, "__name__", "other")
            self.calls[name] += 1
            if name == "claim_due":
                self.claimed += len(result)
            return result

        db.call = call

    def snapshot(self) -> dict[str, int]:
        """Calls so far by method, and ``claimed``: watches claimed so far."""
        return {**self.calls, "claimed": self.claimed}


def per_poll_calls(before: dict[str, int], after: dict[str, int], polls: int) -> str:
    """Database calls per poll between two snapshots, and the mean watches per claim."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    claims = max(1, delta.get("claim_due", 0))
    shown = ", ".join(
        f"{k} {delta.get(k, 0) / max(1, polls):.3g}"
        for k in ("claim_due", "next_due_at", "write_back")
    )
    return f"{shown}; {delta.get('claimed', 0) / claims:.1f} watches/claim"


async def idle_share(daemon: Any, seconds: float) -> float:
    """Share of `seconds` during which the daemon had no poll in flight (time-weighted)."""
    idle = 0.0
    last = time.perf_counter()
    end = last + seconds
    was_idle = daemon.polls.in_flight == 0
    while last < end:
        await asyncio.sleep(0.002)
        now = time.perf_counter()
        if was_idle:
            idle += now - last
        last, was_idle = now, daemon.polls.in_flight == 0
    return idle / seconds


# -- part 1: CPU per poll -------------------------------------------------------------------


async def child_cpu_daemon(spec: dict[str, Any]) -> dict[str, Any]:
    """The daemon on SQLite, saturated: CPU per poll over a window after one full round."""
    quiet_logs()
    work = Path(spec["dir"])
    database = f"sqlite:///{work}/cpu-{os.getpid()}.db"  # one per round
    n, interval = spec["watches"], spec["interval"]
    prepare_watches(database, n, interval, time.time())
    config = write_config(
        work / "cpu.json", database=database, ruler_url=spec["ruler_url"], interval=interval
    )
    profiler = None
    async with running_daemon(config) as daemon:
        calls = DbCalls(daemon)
        if not await wait_until(lambda: daemon.polls.polls >= n, 120):
            raise RuntimeError(f"first round not done in 120 s ({daemon.polls.polls} polls)")
        await asyncio.sleep(1.0)
        calls0 = calls.snapshot()
        if spec.get("profile"):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        polls0, cpu0, wall0, threads0 = (
            daemon.polls.polls,
            time.process_time(),
            time.perf_counter(),
            thread_cpu(),
        )
        await asyncio.sleep(spec["window"])
        polls1, cpu1, wall1, threads1 = (
            daemon.polls.polls,
            time.process_time(),
            time.perf_counter(),
            thread_cpu(),
        )
        calls1 = calls.snapshot()
        if profiler is not None:
            profiler.disable()
        # measured after the window: the sampler's own wake-ups would cost CPU inside it
        idle = await idle_share(daemon, min(5.0, spec["window"]))
    profile = ""
    if profiler is not None:
        import io
        import pstats

        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(50)
        profile = text.getvalue()
    polls = polls1 - polls0
    return {
        "polls": polls,
        "cpu": cpu1 - cpu0,
        "wall": wall1 - wall0,
        "threads": {k: threads1.get(k, 0.0) - threads0.get(k, 0.0) for k in threads1},
        "db_calls": per_poll_calls(calls0, calls1, polls),
        "idle": idle,
        "profile": profile,
    }


async def child_cpu_aiohttp(spec: dict[str, Any]) -> dict[str, Any]:
    """A bare aiohttp GET + JSON loop, `CONCURRENCY` workers, over the same job URLs."""
    import aiohttp

    n = spec["watches"]
    urls = [f"{spec['ruler_url']}/{site_of(i)}/batch/{job_of(i)}/status" for i in range(n)]
    done = 0
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        stop_at = time.monotonic() + 1.0 + spec["window"]

        async def worker(k: int) -> None:
            """Send requests one after another until the run ends."""
            nonlocal done
            i = k
            while time.monotonic() < stop_at:
                async with session.get(urls[i % n]) as response:
                    json.loads(await response.read())
                done += 1
                i += CONCURRENCY

        workers = [asyncio.create_task(worker(k)) for k in range(CONCURRENCY)]
        await asyncio.sleep(1.0)  # connections open, caches warm
        polls0, cpu0, wall0 = done, time.process_time(), time.perf_counter()
        await asyncio.sleep(spec["window"])
        polls1, cpu1, wall1 = done, time.process_time(), time.perf_counter()
        await asyncio.gather(*workers)
    return {"polls": polls1 - polls0, "cpu": cpu1 - cpu0, "wall": wall1 - wall0}


async def child_cpu_requester(spec: dict[str, Any]) -> dict[str, Any]:
    """poller's `Requester` alone (over aiohttp), `CONCURRENCY` workers."""
    from poller.http import Requester

    n = spec["watches"]
    urls = [f"{spec['ruler_url']}/{site_of(i)}/batch/{job_of(i)}/status" for i in range(n)]
    requester = Requester(
        headers={"Authorization": f"Bearer {TOKEN}"}, max_concurrency=CONCURRENCY, deadline=10.0
    )
    done = 0
    stop_at = time.monotonic() + 1.0 + spec["window"]

    async def worker(k: int) -> None:
        """Send requests one after another until the run ends."""
        nonlocal done
        i = k
        while time.monotonic() < stop_at:
            await requester.json("GET", urls[i % n])
            done += 1
            i += CONCURRENCY

    workers = [asyncio.create_task(worker(k)) for k in range(CONCURRENCY)]
    await asyncio.sleep(1.0)
    polls0, cpu0, wall0 = done, time.process_time(), time.perf_counter()
    await asyncio.sleep(spec["window"])
    polls1, cpu1, wall1 = done, time.process_time(), time.perf_counter()
    await asyncio.gather(*workers)
    await requester.aclose()
    return {"polls": polls1 - polls0, "cpu": cpu1 - cpu0, "wall": wall1 - wall0}


async def child_cpu_adapter(spec: dict[str, Any]) -> dict[str, Any]:
    """poller's Ruler adapter alone: `poll` on groups of jobs, as the dispatcher hands them."""
    from poller.config import RulerSource
    from poller.models import JobRef
    from poller.sources.ruler import RulerAdapter

    n = spec["watches"]
    adapter = RulerAdapter(
        RulerSource(
            base_url=spec["ruler_url"],
            token=TOKEN,
            max_concurrency=CONCURRENCY,
            request_timeout=10.0,
            list_threshold=1_000_000,
        )
    )
    refs = [
        JobRef(f"bench/{site_of(i)}/{job_of(i)}", "bench", job_of(i), site_of(i)) for i in range(n)
    ]
    done = 0
    group = 4 * CONCURRENCY
    stop_at = time.monotonic() + 1.0 + spec["window"]

    async def worker(k: int) -> None:
        """Send requests one after another until the run ends."""
        nonlocal done
        first = k * group
        while time.monotonic() < stop_at:
            batch = [refs[(first + x) % n] for x in range(group)]
            await adapter.poll(batch)
            done += len(batch)
            first += 2 * group

    # two groups at a time, so that one group's tail overlaps the next one's start
    workers = [asyncio.create_task(worker(k)) for k in range(2)]
    await asyncio.sleep(1.0)
    polls0, cpu0, wall0 = done, time.process_time(), time.perf_counter()
    await asyncio.sleep(spec["window"])
    polls1, cpu1, wall1 = done, time.process_time(), time.perf_counter()
    await asyncio.gather(*workers)
    await adapter.aclose()
    return {"polls": polls1 - polls0, "cpu": cpu1 - cpu0, "wall": wall1 - wall0}


async def child_cpu_apscheduler(spec: dict[str, Any]) -> dict[str, Any]:
    """The naive design: one APScheduler interval job per watch, each an httpx GET."""
    import httpx
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    # APScheduler logs every skipped run of an overloaded job: that would be log cost, not
    # scheduling cost
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    n, interval = spec["watches"], spec["interval"]
    done = 0
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(
        limits=limits, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10.0
    ) as client:

        async def poll(url: str) -> None:
            """One poll: GET the job's status and decode it."""
            nonlocal done
            response = await client.get(url)
            response.json()
            done += 1

        scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        from datetime import UTC, datetime, timedelta

        start = datetime.now(UTC) + timedelta(seconds=0.5)
        for i in range(n):
            url = f"{spec['ruler_url']}/{site_of(i)}/batch/{job_of(i)}/status"
            scheduler.add_job(
                poll,
                IntervalTrigger(
                    seconds=interval, start_date=start + timedelta(seconds=i * interval / n)
                ),
                args=[url],
                id=f"w{i}",
            )
        scheduler.start()
        try:
            # connections open, the backlog of the first second settled
            await asyncio.sleep(5.0)
            polls0, cpu0, wall0 = done, time.process_time(), time.perf_counter()
            await asyncio.sleep(spec["window"])
            polls1, cpu1, wall1 = done, time.process_time(), time.perf_counter()
        finally:
            scheduler.shutdown(wait=False)
            await asyncio.sleep(0.5)
    return {"polls": polls1 - polls0, "cpu": cpu1 - cpu0, "wall": wall1 - wall0}


def part_cpu(sim: Sim, sizes: Sizes, work: Path, report: Report, profile: bool) -> None:
    """Part 1: CPU per poll of the daemon against the two baselines."""
    n = sizes.cpu_watches
    sim.add_jobs(0, n, "pending")
    spec = {
        "dir": str(work),
        "ruler_url": sim.ruler_url,
        "watches": n,
        "interval": sizes.cpu_interval,
        "window": sizes.cpu_window,
        "profile": profile,
    }
    budget = sizes.cpu_window + CHILD_TIMEOUT_SLACK

    def measure(name: str, child_spec: dict[str, Any]) -> dict[str, Any]:
        before = sim.usage()
        result = run_child(name, child_spec, work, budget)
        after = sim.usage()
        result["sim"] = [b - a for a, b in zip(before, after, strict=True)]
        return result

    # The daemon and bare aiohttp alternate, round after round (this machine's speed drifts
    # by 10% from one minute to the next): the ratio is the median of the rounds' ratios.
    rounds: list[dict[str, dict[str, Any]]] = []
    for i in range(sizes.cpu_rounds):
        order = ("cpu-daemon", "cpu-aiohttp") if i % 2 == 0 else ("cpu-aiohttp", "cpu-daemon")
        rounds.append({name: measure(name, spec) for name in order})
    results: dict[str, dict[str, Any]] = dict(rounds[0])
    # APScheduler gets fewer watches: with as many as the others its job runs queue for
    # httpx's pool, each queued request rescans the pool, and the loop stops answering for
    # minutes (PoolTimeouts). 500 at 1 s it keeps up with; 1,000 at 1 s it does not.
    runs: list[tuple[str, str, dict[str, Any]]] = [
        (name, name, spec) for name in ("cpu-requester", "cpu-adapter")
    ]
    aps = (APS_LIGHT, APS_HEAVY)
    runs += [(f"aps-{k}", "cpu-apscheduler", {**spec, "watches": k}) for k in aps]
    for key, name, child_spec in runs:
        results[key] = measure(name, child_spec)
    if profile:
        print(results["cpu-daemon"]["profile"])

    def cost(result: dict[str, Any]) -> float:
        return float(result["cpu"]) / max(1, result["polls"])

    per = {k: cost(r) for k, r in results.items()}
    rate = {k: r["polls"] / r["wall"] for k, r in results.items()}
    # the simulator's CPU per request it served, over the child's whole life
    sim_per = {k: r["sim"][0] / max(1, r["sim"][1]) for k, r in results.items()}
    daemon_costs = [cost(r["cpu-daemon"]) for r in rounds]
    aiohttp_costs = [cost(r["cpu-aiohttp"]) for r in rounds]
    ratios = [d / a for d, a in zip(daemon_costs, aiohttp_costs, strict=True)]
    d, a, ratio = median(daemon_costs), median(aiohttp_costs), median(ratios)
    threads = results["cpu-daemon"]["threads"]
    polls = max(1, results["cpu-daemon"]["polls"])
    split = ", ".join(f"{k} {v / polls * 1e6:.0f}" for k, v in sorted(threads.items()))
    label = f"{n} watches @{sizes.cpu_interval:g}s, {CONCURRENCY} in flight"
    report.add(
        "cpu",
        f"daemon CPU/poll ({label}; median of {len(rounds)} rounds)",
        f"{d * 1e6:.0f} µs ({_spread(daemon_costs)})",
    )
    report.add("cpu", "  of which by thread, round 1 (µs/poll)", split)
    report.add("cpu", "  daemon polls/s (saturated), round 1", f"{rate['cpu-daemon']:.0f}")
    report.add("cpu", "  database calls per poll", results["cpu-daemon"]["db_calls"])
    report.add(
        "cpu",
        "  time with no poll in flight (saturated)",
        f"{results['cpu-daemon']['idle'] * 100:.0f}%",
    )
    report.add(
        "cpu",
        "bare aiohttp GET+JSON CPU/request (median)",
        f"{a * 1e6:.0f} µs ({_spread(aiohttp_costs)})",
    )
    report.add("cpu", "  aiohttp requests/s", f"{rate['cpu-aiohttp']:.0f}")
    report.add(
        "cpu",
        "  ladder: Requester.json alone (aiohttp)",
        f"{per['cpu-requester'] * 1e6:.0f} µs",
    )
    report.add("cpu", "  ladder: RulerAdapter.poll alone", f"{per['cpu-adapter'] * 1e6:.0f} µs")
    each = ", ".join(f"{r:.2f}" for r in ratios)
    report.add(
        "cpu",
        f"ratio daemon / bare aiohttp (median of rounds: {each})",
        f"{ratio:.2f}x",
        "<= 2.0",
        ratio <= 2.0,
    )
    for k in aps:
        s = per[f"aps-{k}"]
        report.add(
            "cpu",
            f"APScheduler job per watch + httpx, {k} @{sizes.cpu_interval:g}s: CPU/poll",
            f"{s * 1e6:.0f} µs",
        )
        report.add("cpu", "  its polls/s", f"{rate[f'aps-{k}']:.0f}")
        report.add(
            "cpu", "  ratio APScheduler+httpx / daemon", f"{s / d:.2f}x", "far worse", s / d >= 2
        )
    report.add(
        "cpu",
        "simulator CPU/request (daemon, aiohttp run)",
        f"{sim_per['cpu-daemon'] * 1e6:.0f}, {sim_per['cpu-aiohttp'] * 1e6:.0f} µs",
    )
    report.add(
        "cpu",
        "  connections opened (daemon, aiohttp run)",
        f"{results['cpu-daemon']['sim'][2]}, {results['cpu-aiohttp']['sim'][2]}",
    )


# -- part 2: scale --------------------------------------------------------------------------


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


# -- part 3: notification latency -----------------------------------------------------------


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


# -- part 4: replicas on PostgreSQL ---------------------------------------------------------


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


# -- main -----------------------------------------------------------------------------------

CHILDREN: dict[str, Callable[[dict[str, Any]], Any]] = {
    "cpu-daemon": child_cpu_daemon,
    "cpu-aiohttp": child_cpu_aiohttp,
    "cpu-requester": child_cpu_requester,
    "cpu-adapter": child_cpu_adapter,
    "cpu-apscheduler": child_cpu_apscheduler,
    "prepare": child_prepare,
    "scale": child_scale,
    "latency": child_latency,
    "replica": child_replica,
}


def child_main(name: str, spec_text: str) -> None:
    """Run one child measurement and write its result where the spec says."""
    spec = json.loads(spec_text)
    fn = CHILDREN[name]
    result = fn(spec)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    Path(spec["out"]).write_text(json.dumps(result))


def machine() -> str:
    """Cores and CPU model, for the report."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model}, Python {sys.version.split()[0]}"


def main() -> None:
    """Parse arguments, run the parts asked for and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller and shorter (a few minutes)")
    size.add_argument("--full", action="store_true", help="the default: the sizes of the targets")
    parser.add_argument("--only", choices=["cpu", "scale", "latency", "replicas"], action="append")
    parser.add_argument("--profile", action="store_true", help="cProfile the daemon (cpu part)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.spec)
        return
    sizes = QUICK if args.quick else FULL
    parts = args.only or ["cpu", "scale", "latency", "replicas"]
    report = Report()
    began = time.perf_counter()
    mode = "quick" if args.quick else "full"
    print(f"poller daemon benchmark ({mode}; {machine()}); parts: {', '.join(parts)}")
    with tempfile.TemporaryDirectory(prefix="poller-bench-") as tmp, Sim() as sim:
        work = Path(tmp)
        if "cpu" in parts:
            part_cpu(sim, sizes, work, report, args.profile)
        if "scale" in parts:
            part_scale(sim, sizes, work, report)
        if "latency" in parts:
            part_latency(sim, sizes, work, report)
        if "replicas" in parts:
            part_replicas(sim, sizes, work, report)
    wall = time.perf_counter() - began
    print()
    print(f"poller daemon benchmark, {mode} mode, {date.today()}, {machine()}")
    print(report.table())
    for note in report.notes:
        print(note)
    misses = [r for r in report.rows if r.ok is False]
    print(f"\nwall time {wall:.0f} s; {len(misses)} target(s) missed")


if __name__ == "__main__":
    main()
