"""Benchmark: the whole daemon (claim, HTTP, parse, decide, write back, notify), end to end.

Run: `.venv/bin/python bench/daemon.py [--quick | --full]
[--only cpu|scale|latency|replicas|listener]
[--baseline REF] [--loops]`

The simulated Ruler API and the loopback webhook run in their own process
(`bench/simserver.py`); every measured daemon, baseline and replica runs in a fresh process
of its own (this file with ``--child``), so that CPU, RSS and garbage of one do not leak into
another. Each part lives in its own module (`bench/cpu.py`, `bench/scale.py`,
`bench/latency.py`, `bench/replicas.py`; what they share in `bench/common.py`), and observes
the daemon without patching it (public attributes, SQLAlchemy's events). Figures are printed
as one table, with their targets and PASS/MISS:

1. ``cpu`` (`bench/cpu.py`): CPU per poll of the saturated daemon against a bare aiohttp
   GET + JSON loop (target <= 2.5x), with a ladder of where the CPU goes and the naive
   APScheduler design; ``--baseline REF`` runs another commit's daemon in the same rounds,
   ``--loops`` the default collector and uvloop.
2. ``scale`` (`bench/scale.py`): 100,000 watches at 60 s: polls due against polls made,
   event-loop lag, schedule lateness, RSS, start-up and database calls per poll.
3. ``latency`` (`bench/latency.py`): remote change to webhook arrival, p50/p99 (target p99
   <= interval + 0.5 s).
4. ``replicas`` (`bench/replicas.py`): one, two, then one `Daemon` process on PostgreSQL:
   polls/s, the ratio (target >= 1.8) and what limits it; then an API that takes 100 ms.
5. ``listener`` (`bench/listener.py`, not run by default): the HTTP listener's cost, CPU per
   poll with it on and ``/metrics`` scraped every 5 s against off (target <= 1.05x), and the
   event loop's time per scrape at 100,000 watches (target <= 100 ms).

Each module's docstring tells the sizes and how its figures are measured.

Every figure comes from this run; ratios compare measurements made in the same run over the
same simulator. ``--profile`` prints a cProfile of the daemon's CPU window.

Everything listens on 127.0.0.1 only; every loop and every process is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# Python puts this script's directory first on the path, where a benchmark named like a
# package (once bench/requests.py shadowed the `requests` that Apprise sends with) would win.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# the parts, imported once the path holds the repository (bench is a namespace package)
from bench import cpu, latency, listener, replicas, scale  # noqa: E402
from bench.common import FULL, QUICK, Report, Sim  # noqa: E402

#: every child measurement by name (``--child NAME``), from the part that defines it
CHILDREN: dict[str, Callable[[dict[str, Any]], Any]] = {
    **cpu.CHILDREN,
    **scale.CHILDREN,
    **latency.CHILDREN,
    **replicas.CHILDREN,
    **listener.CHILDREN,
}


def child_main(name: str, spec_text: str) -> None:
    """Run one child measurement and write its result where the spec says."""
    spec = json.loads(spec_text)
    fn = CHILDREN[name]
    result = fn(spec)
    if asyncio.iscoroutine(result):
        with child_runner(spec.get("loop", "shipped")) as runner:
            result = runner.run(result)
    Path(spec["out"]).write_text(json.dumps(result))


def child_runner(loop: str) -> asyncio.Runner:
    """The event loop a child runs on: ``shipped`` (the default: the loop and process set-up
    of `poller run`), ``asyncio`` (the default loop and collector, as a plain script runs),
    or ``uvloop``."""
    if loop == "shipped":
        from poller.app import runner

        return runner()
    if loop == "uvloop":
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


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
    parser.add_argument(
        "--only", choices=["cpu", "scale", "latency", "replicas", "listener"], action="append"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the daemon (cpu part)")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="cpu part: also run the daemon of this git commit or branch in every round",
    )
    parser.add_argument(
        "--loops",
        action="store_true",
        help="cpu part: also run the daemon on the default asyncio loop and on uvloop",
    )
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
            cpu.part_cpu(sim, sizes, work, report, args.profile, args.baseline, args.loops)
        if "scale" in parts:
            scale.part_scale(sim, sizes, work, report)
        if "latency" in parts:
            latency.part_latency(sim, sizes, work, report)
        if "replicas" in parts:
            replicas.part_replicas(sim, sizes, work, report)
        if "listener" in parts:
            listener.part_listener(sim, sizes, work, report)
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
