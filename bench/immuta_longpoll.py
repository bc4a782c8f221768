"""Benchmark: how soon an Immuta job's end reaches the webhook, continuous long-poll against
the interval-driven path, both at the default polling settings and in the same run.

Run: `.venv/bin/python bench/immuta_longpoll.py [--jobs N] [--window S] [--seed S]`

Two `poller run` daemons, each with its own Immuta simulator and webhook sink on loopback and
its own SQLite file, run side by side: one with ``long_poll: 25s``, one without (every job
polled at ``interval``, 30 s, backing off by 1.5). Nothing else is set: ``max_concurrency``
8, ``batch_size`` 100, digests off (storm control would hold messages back; it is not what
is measured). N jobs (default 20) run in both; once both daemons have seen them all running,
each job is scripted to end at the same moment in both simulators, at random over `--window`
seconds (default 30). Latency is the scripted end to the webhook's arrival of its message,
p50 and p99, per daemon; the ratio is the interval path's over long-poll's. Target: long-poll's
p50 about a second. The exit code is 1 if its p99 is above 2 s.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from poller.testing import ImmutaSim, SimThread, WebhookSink

KEY = "bench-immuta-key"
#: the daemons have this long after the last scripted end to deliver every message
SETTLE = 240.0


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`; NaN if there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


class Side:
    """One daemon with its simulator, sink and config."""

    def __init__(self, name: str, work: Path, source_extra: str, jobs: list[str]) -> None:
        self.name, self.jobs = name, jobs
        self.sim, self.sink = ImmutaSim(KEY), WebhookSink()
        self.thread = SimThread(self.sim, self.sink)
        self.thread.__enter__()
        for job_id in jobs:
            self.sim.add_job(job_id, state="active")
        entries = "\n".join(f"  - {{source: immuta, id: {j}}}" for j in jobs)
        self.config = work / f"{name}.yaml"
        self.config.write_text(f"""
database: sqlite:///{work}/{name}.db
log: {{level: error}}
sources:
  immuta:
    type: immuta
    base_url: {self.sim.base_url}
    token: {KEY}
{source_extra}
channels:
  hook: {self.sink.apprise_url}
rules:
  - on: [started, succeeded]
    notify: [hook]
delivery: {{digest: {{enabled: false}}}}
jobs:
{entries}
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        env.pop("NOTIFY_SOCKET", None)
        self.out = (work / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "poller", "run", "-c", str(self.config)],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def arrived(self, kind: str) -> dict[str, float]:
        """When each job's first message of `kind` (info: started, success) arrived."""
        found: dict[str, float] = {}
        for message in self.sink.messages:
            if message["type"] != kind:
                continue
            for job_id in self.jobs:
                # the title names the job by its key ("▶️ immuta/job-001 started")
                if f"immuta/{job_id} " in message["title"]:
                    found.setdefault(job_id, message["received_at"])
        return found

    def close(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL) and the servers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()
        self.thread.__exit__(None, None, None)


def wait_for(check: object, limit: float) -> bool:
    """Poll `check()` every 50 ms until it is true or `limit` seconds have passed."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    """Run both daemons, print p50/p99 of each and their ratio; 1 if long-poll's p99 > 2 s."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args(argv)
    jobs = [f"job-{i:03}" for i in range(args.jobs)]
    rng = random.Random(args.seed)
    offsets = {job_id: 1.0 + rng.uniform(0, args.window) for job_id in jobs}
    with tempfile.TemporaryDirectory(prefix="bench-immuta-") as tmp:
        sides = [
            Side("long-poll", Path(tmp), "    long_poll: 25s", jobs),
            Side("interval", Path(tmp), "", jobs),
        ]
        try:
            if not all(
                wait_for(lambda s=s: len(s.arrived("info")) == len(jobs), 60) for s in sides
            ):
                print("the daemons did not see every job running within 60 s", file=sys.stderr)
                return 1
            start = time.time()
            for side in sides:
                for job_id, offset in offsets.items():
                    side.sim.script_job(job_id, [(offset, {"state": "completed"})])
            # scripted on the simulators' clocks a moment apart; the later script is the end
            ended = {job_id: start + offset for job_id, offset in offsets.items()}
            for side in sides:
                wait_for(
                    lambda s=side: len(s.arrived("success")) == len(jobs), args.window + SETTLE
                )
            rows = []
            for side in sides:
                arrived = side.arrived("success")
                late = [arrived[j] - ended[j] for j in jobs if j in arrived]
                rows.append((side.name, late, len(jobs) - len(late)))
        finally:
            for side in sides:
                side.close()
    print(f"{args.jobs} Immuta jobs ending over {args.window:g} s; default polling settings")
    print(f"{'path':<12} {'p50':>8} {'p99':>8} {'max':>8}  missing")
    for name, late, missing in rows:
        print(
            f"{name:<12} {pct(late, 50):>7.2f}s {pct(late, 99):>7.2f}s"
            f" {max(late, default=math.nan):>7.2f}s  {missing}"
        )
    (_, fast, _), (_, slow, _) = rows
    print(
        f"ratio interval / long-poll: p50 {pct(slow, 50) / pct(fast, 50):.1f}x,"
        f" p99 {pct(slow, 99) / pct(fast, 99):.1f}x"
    )
    met = pct(fast, 99) <= 2.0 and not rows[0][2]
    print(f"target: long-poll end -> webhook about 1 s (p99 <= 2 s): {'met' if met else 'missed'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
