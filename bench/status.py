"""Benchmark: `poller status` at 100,000 watches on SQLite, time and peak memory.

Run: `.venv/bin/python bench/status.py [--watches N] [--limit N] [--baseline REF]`

It fills a fresh SQLite file with N watches (most ended, some running, failing, stalled,
unreachable, timed out and removed, a dead channel holding a few thousand pending deliveries),
then runs each command as a user does, in a fresh process, and reports its wall time (median
of `--runs`), its peak RSS (the child's own `ru_maxrss`) and how much it printed:

- `poller status` and `poller status --json --limit N` (this tree);
- the floor: a process that imports poller's CLI and asks the store for ``SELECT count(*)``
  (no command can be cheaper), measured in the same run; the ratios are against it;
- the code before this change (`--baseline REF`, default ``main``; ``none`` skips it): its
  `status` and `status --json` on the same file, once each (they read every watch).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from poller.store.repo import Store
from poller.store.schema import deliveries, events, watches

ROOT = Path(__file__).resolve().parent.parent
#: the floor: the CLI's imports, the store opened, one aggregate query
FLOOR = (
    "import sys; import poller.cli; from poller.store.repo import Store; "
    "import sqlalchemy as sa; s = Store(sys.argv[1], create=False); "
    "c = s.engine.connect(); print(c.execute(sa.text('SELECT count(*) FROM watches')).scalar())"
)


def fill(url: str, count: int, now: float) -> None:
    """`count` watches in a realistic mix, and a dead channel's backlog."""
    store = Store(url)
    store.migrate()
    rng = random.Random(14)
    rows: list[dict[str, Any]] = []
    for i in range(count):
        roll = rng.random()
        ended = roll < 0.80
        state = "succeeded" if roll < 0.77 else "failed" if ended else "running"
        row = {
            "key": f"ruler-prod/site{i % 40}/job-{i:07d}",
            "source": "ruler-prod",
            "job_id": f"job-{i:07d}",
            "site": f"site{i % 40}",
            "name": f"Nightly load {i}",
            "tags": ["nightly"] if i % 3 == 0 else [],
            "origin": "discovered",
            "overrides": {},
            "state": state,
            "remote_status": "complete" if state == "succeeded" else state,
            "progress": 100.0 if ended else rng.uniform(0, 99),
            "details": {"total_rows": 1000, "processed_rows": 1000 if ended else 500},
            "created_at": now - rng.uniform(3600, 60 * 86400),
            "ended_at": now - rng.uniform(0, 50 * 86400) if ended else None,
            "active": not ended,
            "error_count": 0,
            "unreachable": False,
            "stalled": False,
            "last_poll_at": now - rng.uniform(0, 60),
            "next_poll_at": None if ended else now + rng.uniform(0, 60),
            "version": 0,
        }
        if not ended and roll > 0.99:
            row |= {"unreachable": True, "error_count": 315, "error_since": now - 3600}
            row["last_error"] = "server_error: HTTP 502 Bad Gateway"
        elif not ended and roll > 0.98:
            row["stalled"] = True
        elif not ended and roll > 0.97:
            row |= {"active": False, "ended_at": now - 86400}  # timed out
        elif not ended and roll > 0.96:
            row |= {"active": False, "removed_at": now - 86400}
        rows.append(row)
    with store.engine.begin() as conn:
        for first in range(0, len(rows), 5000):
            conn.execute(sa.insert(watches), rows[first : first + 5000])
        failed = [
            wid
            for (wid,) in conn.execute(
                sa.select(watches.c.id).where(watches.c.state == "failed").limit(3000)
            )
        ]
        conn.execute(
            sa.insert(events),
            [{"watch_id": w, "at": now - 600, "kind": "failed", "payload": {}} for w in failed],
        )
        event_ids = [e for (e,) in conn.execute(sa.select(events.c.id))]
        conn.execute(
            sa.insert(deliveries),
            [
                {
                    "event_id": e,
                    "channel": "dead-slack",
                    "status": "pending",
                    "attempts": 7,
                    "created_at": now - 600,
                    "next_attempt_at": now + 300,
                    "last_error": "HTTP 410 Gone: channel_not_found",
                }
                for e in event_ids
            ],
        )
    store.close()


def measure(
    argv: list[str], env: dict[str, str], out: Path, cwd: Path = ROOT
) -> tuple[float, float, int]:
    """One process (run from `cwd`, whose poller `-m` finds first): wall seconds, peak RSS
    in MB, bytes printed."""
    with open(out, "wb") as sink:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.PIPE, env=env, cwd=cwd)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        error = proc.stderr.read().decode() if proc.stderr else ""
        raise RuntimeError(f"{' '.join(argv[-4:])} exited {proc.returncode}: {error[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out.stat().st_size


def main() -> None:
    """Fill, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watches", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=50, help="for status --json --limit")
    parser.add_argument("--runs", type=int, default=3, help="runs of each new command")
    parser.add_argument("--baseline", default="main", help="git ref of the old code, or none")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="poller-status-bench-") as tmp:
        work = Path(tmp)
        url = f"sqlite:///{work}/poller.db"
        config = work / "config.yaml"
        config.write_text(
            f"database: {url}\nsources:\n"
            "  ruler-prod: {type: ruler, base_url: 'http://127.0.0.1:9/v1', token: t}\n"
        )
        started = time.perf_counter()
        fill(url, args.watches, time.time())
        print(f"filled {args.watches:,} watches in {time.perf_counter() - started:.1f} s")

        env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        env["COLUMNS"] = "120"
        py = sys.executable
        cli = [py, "-m", "poller"]
        cases: list[tuple[str, list[str], int, dict[str, str], Path]] = [
            ("floor: imports + SELECT count(*)", [py, "-c", FLOOR, url], args.runs, env, ROOT),
            ("poller status", [*cli, "status", "-c", str(config)], args.runs, env, ROOT),
            (
                f"poller status --json --limit {args.limit}",
                [*cli, "status", "--json", "--limit", str(args.limit), "-c", str(config)],
                args.runs,
                env,
                ROOT,
            ),
        ]
        if args.baseline != "none":
            from common import baseline_tree

            tree = baseline_tree(args.baseline, work)
            old = env | {"PYTHONPATH": str(tree)}
            for what, extra in (("status", []), ("status --json", ["--json"])):
                argv = [py, "-m", "poller", "status", *extra, "-c", str(config)]
                cases.append((f"before ({args.baseline}): poller {what}", argv, 1, old, tree))

        results: dict[str, tuple[float, float, int]] = {}
        for name, argv, runs, case_env, cwd in cases:
            samples = [measure(argv, case_env, work / "out", cwd) for _ in range(runs)]
            wall = statistics.median(s[0] for s in samples)
            results[name] = (wall, max(s[1] for s in samples), samples[-1][2])

        floor_wall, floor_rss, _ = results[cases[0][0]]
        print(f"\n{args.watches:,} watches, SQLite; median of {args.runs} runs (before: 1 run)")
        print(f"{'command':<44} {'time':>8} {'peak RSS':>10} {'printed':>10}  vs floor")
        for name, (wall, rss, size) in results.items():
            ratio = f"{wall / floor_wall:.2f}x time, {rss / floor_rss:.2f}x RSS"
            print(f"{name:<44} {wall:>7.2f}s {rss:>8.0f}MB {size / 1024:>8.0f}KB  {ratio}")


if __name__ == "__main__":
    main()
