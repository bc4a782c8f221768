"""What the parts of `bench/daemon.py` share: sizes, the results table, the simulator process,
child processes, the benchmark's config and watches, and probes of a running daemon."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
#: what each child process runs: ``bench/daemon.py --child NAME``
DAEMON_SCRIPT = BENCH / "daemon.py"


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
    #: rounds of the daemon with the listener on and off, alternating (bench/listener.py)
    listener_rounds: int = 10
    #: each round's measurement window (shorter than the cpu part's, for more rounds)
    listener_window: float = 10.0
    #: /metrics and /healthz requests timed at scale_watches
    listener_scrapes: int = 10


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
    listener_rounds=3,
    listener_window=8.0,
    listener_scrapes=5,
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


def spread(costs: list[float]) -> str:
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


def run_child(
    name: str, spec: dict[str, Any], workdir: Path, timeout: float, root: Path = ROOT
) -> dict[str, Any]:
    """Run ``bench/daemon.py --child name`` with `spec`; returns the result it wrote.

    `root` is the tree whose ``bench/daemon.py`` (and so whose poller) runs: another
    checkout, for a baseline measured in the same run (`baseline_tree`).
    """
    out = workdir / f"{name}-{secrets.token_hex(3)}.json"
    log = out.with_suffix(".log")
    spec = {**spec, "out": str(out)}
    script = root / DAEMON_SCRIPT.relative_to(ROOT)
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(script), "--child", name, "--spec", json.dumps(spec)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=root,
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


def baseline_tree(ref: str, workdir: Path) -> Path:
    """The repository's files at `ref` (a commit, tag or branch), unpacked under `workdir`,
    so that the code before a change runs beside it in the same run. Its bench script puts
    its own tree first on the path, so its children import its poller, not this one."""
    tree = workdir / f"baseline-{ref.replace('/', '_')}"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref],
        check=True,
        capture_output=True,
        timeout=120,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=120)
    return tree


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
                    str(DAEMON_SCRIPT),
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
    listen: str | None = None,
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
    if listen:
        config["http"] = {"listen": listen}
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
    """Counts the daemon's database calls by store method, and the watches polled per claim.

    It listens to SQLAlchemy's public pool event ``checkout`` on the daemon's engine (poller's
    objects are not touched): every store method takes one connection from the pool per
    call, and the call stack names the method (the outermost frame of a method of the
    store's classes, the one the daemon's database thread called). A listener per checkout
    costs nothing measurable.

    The store's methods live on the classes `Store` is made of (``Claims.claim_due``,
    ``Watches.add_watch``, ...), so frames are matched by every class in its MRO, not by the
    name ``Store`` alone (which matched nothing once the store was split, and showed 0 calls).
    """

    def __init__(self, daemon: Any) -> None:
        """Listen on `daemon`'s engine (the daemon must be running)."""
        import sqlalchemy as sa

        store = daemon.polls.db.store
        self.calls: Counter[str] = Counter()
        self.daemon = daemon
        self._classes = frozenset(cls.__qualname__ for cls in type(store).__mro__)
        sa.event.listen(store.engine, "checkout", self._checked_out)

    def _checked_out(self, *_args: Any) -> None:
        """Count one call of the store method that is taking this connection."""
        name = "other"
        frame = inspect.currentframe()
        while frame is not None:
            owner, _, _ = frame.f_code.co_qualname.partition(".")
            if owner in self._classes and frame.f_code.co_qualname != owner:
                name = frame.f_code.co_name
            frame = frame.f_back
        self.calls[name] += 1

    def snapshot(self) -> dict[str, int]:
        """Calls so far by method, and ``claimed``: the polls made so far (every watch a claim
        hands out is polled, so polls per claim is watches per claim)."""
        return {**self.calls, "claimed": self.daemon.polls.polls}


def per_poll_calls(before: dict[str, int], after: dict[str, int], polls: int) -> str:
    """Database calls per poll between two snapshots, and the mean watches per claim."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    claims = delta.get("claim_due", 0)
    shown = ", ".join(
        f"{k} {delta.get(k, 0) / max(1, polls):.3g}"
        for k in ("claim_due", "next_due_at", "write_back")
    )
    # no claim counted means the counting failed (the daemon polls only what it claims): say
    # so rather than divide every poll by one claim
    if not claims:
        return f"{shown}; no claims counted"
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
