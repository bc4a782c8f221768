"""Benchmark: poll write-backs in group commits against one transaction per poll.

Run: `.venv/bin/python bench/store_writes.py [--watches N] [--database URL]`

It claims N watches and writes one unchanged poll result for each through
`Store.write_back`, once in batches of 500 (what the daemon does) and once one transaction
per poll (the baseline), on the same database in the same run, and prints the ratio. On a
database given with `--database`, it removes its watches (source ``bench``) before and after.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import sqlalchemy as sa

from poller.models import WatchSpec
from poller.store.repo import Store, WriteBack
from poller.store.schema import watches


def _measure(store: Store, owner: str, batch: int, now: float) -> float:
    """Seconds to write back every due watch, `batch` rows per transaction."""
    watches = store.claim_due(owner, now, 10**9, 60)
    items = [
        WriteBack(watch=w, progress=w.progress, next_poll_at=now + 1, polled_at=now)
        for w in watches
    ]
    started = time.perf_counter()
    for i in range(0, len(items), batch):
        store.write_back(owner, items[i : i + batch])
    elapsed = time.perf_counter() - started
    assert store.next_due_at(now) == now + 1
    return elapsed / max(1, len(items))


def _remove_bench_watches(store: Store) -> None:
    """Delete this benchmark's watches (a quiet write-back leaves no history behind them)."""
    with store.engine.begin() as conn:
        conn.execute(sa.delete(watches).where(watches.c.source == "bench"))


def main() -> None:
    """Run the benchmark and print per-row times and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--watches", type=int, default=3000)
    parser.add_argument("--database", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(args.database or f"sqlite:///{tmp}/bench.db")
        store.migrate()
        _remove_bench_watches(store)
        now = time.time()
        for i in range(args.watches):
            store.add_watch(WatchSpec("bench", f"job-{i}", "site"), now)
        runs: list[tuple[str, Callable[[float], float]]] = [
            ("one transaction per poll (baseline)", lambda t: _measure(store, "b", 1, t)),
            ("group commit of 500 (poller)", lambda t: _measure(store, "b", 500, t)),
        ]
        results = {}
        for offset, (label, run) in enumerate(runs):
            results[label] = run(now + offset + 1)
        _remove_bench_watches(store)
        store.close()
    base = results[runs[0][0]]
    print(f"{args.watches} write-backs on {args.database or 'SQLite (WAL)'}")
    for label, per_row in results.items():
        print(f"  {label:<40} {per_row * 1e6:8.1f} µs/row   {base / per_row:5.1f}x")


if __name__ == "__main__":
    main()
