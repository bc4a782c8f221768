"""`poller wait`: poll one job in the foreground, with a live progress bar, until it ends.

It uses the same source adapters and pure decisions as the daemon, but no database.
"""

from __future__ import annotations

import asyncio
import random
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from poller.config import Config
from poller.models import Event, JobRef, PollFailure, State, WatchProgress, WatchSpec
from poller.redact import scrub_outcome, secrets_of
from poller.rules.polling import decide
from poller.sources import build_source
from poller.terminal import plain, printable

EXIT_SUCCEEDED, EXIT_ENDED_OTHERWISE, EXIT_TIMED_OUT = 0, 1, 3


async def wait_for_job(config: Config, spec: WatchSpec, console: Console) -> int:
    """Poll until the job ends; returns 0 succeeded, 1 ended otherwise, 3 timed out."""
    policy = config.policy_for(spec.source)
    adapter = build_source(config.sources[spec.source], max_pause=policy.max_interval)
    # an API may echo the token it was sent: it is never printed
    secrets = secrets_of(config.sources[spec.source])
    job = JobRef(spec.key, spec.source, spec.job_id, spec.site)
    ref = spec.key
    shown = printable(ref)  # an id is data: no markup, no escape sequences
    watch = WatchProgress(created_at=time.time())
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(f"{shown} waiting", total=100)
            while True:
                outcome = (await adapter.poll([job])).get(ref) or PollFailure(
                    "bad_answer", "no answer for this job"
                )
                outcome = scrub_outcome(outcome, secrets)
                now = time.time()
                decision = decide(watch, outcome, policy, now, random.random())
                watch = decision.progress
                state = watch.state.value if watch.state else "waiting"
                bar.update(task, completed=watch.progress or 0, description=f"{shown} {state}")
                if isinstance(outcome, PollFailure):
                    bar.console.print(plain(f"poll error: {outcome.kind}: {outcome.message}"))
                if Event.TIMED_OUT in decision.events:
                    bar.console.print("timed out: the job has not ended")
                    return EXIT_TIMED_OUT
                if not decision.active:
                    return (
                        EXIT_SUCCEEDED if watch.state == State.SUCCEEDED else EXIT_ENDED_OTHERWISE
                    )
                await asyncio.sleep(max(0.0, (decision.next_poll_at or now) - now))
    finally:
        await adapter.aclose()
