"""`poller wait`: poll one job in the foreground until it ends, then say how it ended.

It uses the same source adapters and pure decisions as the daemon, but no database. What the
user sees:

- on a terminal, a live bar (a percentage only when the API gives one, and an estimate of the
  time left once progress moves steadily) with poll errors printed above it;
- anywhere else (a CI log, a pipe), one plain line per change of state or progress, written as
  it happens: no bar, no escape codes;
- at the end, one summary (state, reason, row counts, the first failing rows, durations).

The exit code says how it ended: `EXIT_SUCCEEDED`, `EXIT_ENDED_OTHERWISE`, `EXIT_TIMED_OUT`,
or `EXIT_UNWATCHABLE` when the job could not be watched at all (credentials refused, the job
not found after the usual retries, the source unreachable for `error_after`).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from poller.config import Config
from poller.events import EventPayload
from poller.models import (
    TERMINAL_STATES,
    Event,
    JobRef,
    PollFailure,
    State,
    WatchProgress,
    WatchSpec,
)
from poller.notify import event_facts
from poller.redact import scrub_outcome, secrets_of
from poller.rules.polling import NOT_FOUND_AFTER, decide
from poller.sources import build_source
from poller.terminal import plain, printable
from poller.units import format_duration

EXIT_SUCCEEDED, EXIT_ENDED_OTHERWISE, EXIT_TIMED_OUT, EXIT_UNWATCHABLE = 0, 1, 3, 4

#: Poll errors that no retry mends while the user waits: the source refused the credentials,
#: or the config cannot make a request for this job at all.
_HOPELESS = frozenset({"auth", "config"})
#: Progress samples the estimate of the time left is made from (the newest ones).
_SAMPLES = 8
#: How much the recent pace may differ from the overall pace (either way) for progress to
#: count as steady; beyond it no estimate is shown rather than a wrong one.
_STEADY = 2.0


@dataclass(frozen=True)
class WaitResult:
    """How a wait ended: the exit code, the job as last seen, why, and how long it took."""

    code: int
    progress: WatchProgress
    #: why the job could not be watched or timed out (the last poll error), else None
    reason: str | None
    #: seconds from the first poll to the end of the wait
    waited: float
    #: when the job was last polled (epoch seconds)
    polled_at: float


def state_label(progress: WatchProgress) -> str:
    """The state as users read it: ``unknown (STATUS)`` for a status poller does not know,
    ``waiting`` before the first readable answer."""
    if progress.state is None:
        return "waiting"
    if progress.state == State.UNKNOWN:
        return f"unknown ({progress.remote_status})"
    return progress.state.value


def estimate_left(samples: Sequence[tuple[float, float]], now: float) -> float | None:
    """Seconds until 100 %, from `(time, percent)` samples taken when progress changed, or None
    unless progress moves steadily.

    Steady means at least three samples, each higher than the one before, the pace of every
    step within `_STEADY` times the pace over all of them, and no step overdue (the time since
    the last sample at most three times the last step's). The estimate counts from the last
    sample, at the overall pace.
    """
    if len(samples) < 3:
        return None
    (t0, p0), (t1, _), (t2, p2) = samples[0], samples[-2], samples[-1]
    if any(b[0] <= a[0] for a, b in itertools.pairwise(samples)):
        return None
    overall = (p2 - p0) / (t2 - t0)
    for (ta, pa), (tb, pb) in itertools.pairwise(samples):
        pace = (pb - pa) / (tb - ta)
        if pace <= 0 or not overall / _STEADY <= pace <= overall * _STEADY:
            return None
    if now - t2 > 3 * (t2 - t1):
        return None
    left = (100.0 - p2) / overall - (now - t2)
    # under a second is no estimate worth showing (and below zero the pace has changed)
    return left if left >= 1 else None


class _Display(Protocol):
    """Where a wait shows its progress: a live bar, or plain lines."""

    def show(self, label: str, percent: float | None, left: float | None) -> None: ...

    def note(self, line: str) -> None: ...

    def close(self) -> None: ...


class LineDisplay:
    """One plain line per change, flushed at once: for CI logs and pipes (no bar, no ANSI)."""

    def __init__(self, key: str, stream: TextIO) -> None:
        self._key = printable(key)
        self._stream = stream
        self._start = time.monotonic()
        self._last: tuple[str, int | None] | None = None

    def _print(self, text: str) -> None:
        elapsed = format_duration(time.monotonic() - self._start, rounded=True)
        print(f"[{elapsed}] {text}", file=self._stream, flush=True)

    def show(self, label: str, percent: float | None, left: float | None) -> None:
        """A line when the state or the whole percentage changed."""
        shown = (label, None if percent is None else int(percent))
        if shown == self._last:
            return
        self._last = shown
        line = f"{self._key} {printable(label)}"
        if percent is not None:
            line += f" {percent:.0f}%"
        if left is not None:
            line += f" (about {format_duration(left, rounded=True)} left)"
        self._print(line)

    def note(self, line: str) -> None:
        """A line about something other than progress (a poll error, a stall)."""
        self._print(printable(line))

    def close(self) -> None:
        """Nothing to tear down."""


class BarDisplay:
    """A live bar on a terminal, with notes printed above it."""

    def __init__(self, key: str, console: Console) -> None:
        self._key = printable(key)
        self._bar = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TextColumn("{task.fields[percent]}", markup=False),
            TimeElapsedColumn(),
            TextColumn("{task.fields[left]}", markup=False),
            console=console,
            transient=False,
        )
        self._bar.start()
        # no total until the API gives a percentage: the bar pulses instead of showing 0 %
        self._task: TaskID = self._bar.add_task(
            f"{self._key} waiting", total=None, percent="", left=""
        )

    def show(self, label: str, percent: float | None, left: float | None) -> None:
        """Move the bar."""
        fields: dict[str, Any] = {
            "percent": f"{percent:>3.0f}%" if percent is not None else "",
            "left": f"about {format_duration(left, rounded=True)} left" if left else "",
        }
        self._bar.update(
            self._task,
            description=f"{self._key} {printable(label)}",
            total=100 if percent is not None else None,
            completed=percent or 0,
            **fields,
        )

    def note(self, line: str) -> None:
        """A line above the bar."""
        self._bar.console.print(plain(line))

    def close(self) -> None:
        """Stop the bar, leaving its last state on screen."""
        self._bar.stop()


def display_for(key: str, console: Console, stream: TextIO, live: bool) -> _Display:
    """A bar when `live` (stdout is a terminal and nothing else goes there), else lines."""
    return BarDisplay(key, console) if live else LineDisplay(key, stream)


def _unwatchable(failure: PollFailure, progress: WatchProgress, events: Sequence[Event]) -> bool:
    """Whether this failure ends the wait: no retry will let the user see the job."""
    if failure.kind in _HOPELESS:
        return True
    if failure.kind == "not_found" and progress.error_count >= NOT_FOUND_AFTER:
        return True
    return Event.UNREACHABLE in events


async def wait_for_job(
    config: Config, spec: WatchSpec, display: _Display, limit: float | None = None
) -> WaitResult:
    """Poll until the job ends, times out or cannot be watched; returns how it ended.

    It times out after `limit` seconds, else after the policy's `timeout`. The caller owns
    `display` and closes it.
    """
    policy = config.policy_for(spec.source)
    if limit is not None:
        policy = replace(policy, timeout=limit)
    adapter = build_source(config.sources[spec.source], max_pause=policy.max_interval)
    # an API may echo the token it was sent: it is never printed
    secrets = secrets_of(config.sources[spec.source])
    job = JobRef(spec.key, spec.source, spec.job_id, spec.site)
    start = time.time()
    watch = WatchProgress(created_at=start)
    samples: list[tuple[float, float]] = []
    noted: str | None = None  # the poll error last shown, until polling works again
    try:
        while True:
            outcome = (await adapter.poll([job])).get(spec.key) or PollFailure(
                "bad_answer", "no answer for this job"
            )
            outcome = scrub_outcome(outcome, secrets)
            now = time.time()
            # polled now: a long-polling source lets the next request wait for the job
            job = replace(job, last_polled=now)
            decision = decide(watch, outcome, policy, now, random.random())
            before, watch = watch, decision.progress
            if watch.progress is not None and watch.progress != before.progress:
                if samples and watch.progress < samples[-1][1]:
                    samples = []  # a job started over: its old pace says nothing
                samples = [*samples, (now, watch.progress)][-_SAMPLES:]
            running = watch.state == State.RUNNING
            left = estimate_left(samples, now) if running else None
            display.show(state_label(watch), watch.progress, left)
            if isinstance(outcome, PollFailure):
                # once per outage and per new error, not once per poll
                error = f"poll error: {outcome.kind}: {outcome.message}"
                if error != noted:
                    display.note(error)
                    noted = error
                if _unwatchable(outcome, watch, decision.events):
                    gave_up = replace(watch, active=False)
                    return WaitResult(EXIT_UNWATCHABLE, gave_up, watch.last_error, now - start, now)
            elif noted is not None:
                display.note("polling works again")
                noted = None
            if Event.STALLED in decision.events:
                display.note(f"no progress for {format_duration(policy.stall_after)}")
            if Event.TIMED_OUT in decision.events:
                return WaitResult(EXIT_TIMED_OUT, watch, watch.last_error, now - start, now)
            if not decision.active:
                code = EXIT_SUCCEEDED if watch.state == State.SUCCEEDED else EXIT_ENDED_OTHERWISE
                return WaitResult(code, watch, None, now - start, now)
            await asyncio.sleep(max(0.0, (decision.next_poll_at or now) - now))
    finally:
        await adapter.aclose()


def summary(spec: WatchSpec, result: WaitResult, timeout: float) -> list[str]:
    """The lines that end a wait: how it ended and why, the rows, the failing rows, the times.

    Every value came from a remote API: the caller prints them as text (`printable`).
    """
    p = result.progress
    kind = Event(p.state.value) if p.state in TERMINAL_STATES and p.state else Event.TIMED_OUT
    # the same reading of the API's facts (reason, rows, failing rows, times) as messages
    payload = EventPayload(
        key=spec.key, details=p.details, started_at=p.started_at, ended_at=p.ended_at
    )
    facts = event_facts(kind, payload.to_json())
    seen = state_label(p) + (f" {p.progress:.0f}%" if p.progress is not None else "")
    if result.code == EXIT_UNWATCHABLE:
        head = f"{spec.key}: could not be watched: {result.reason}"
    elif result.code == EXIT_TIMED_OUT:
        head = f"{spec.key}: timed out after {format_duration(timeout, rounded=True)}"
        head += f"; the job has not ended (last seen: {seen})"
    else:
        head = f"{spec.key}: {state_label(p)}"
        if p.remote_status and p.remote_status != state_label(p):
            head += f" (remote status {p.remote_status})"
    lines = [head]
    if facts["reason"]:
        lines.append(f"  reason: {facts['reason']}")
    if result.code == EXIT_TIMED_OUT and result.reason:
        lines.append(f"  last poll error: {result.reason}")
    if facts["rows"]:
        lines.append(f"  rows: {facts['rows']}")
    if facts["failed_rows"]:
        total = max(facts["failed_rows_total"], facts["counts"]["failed"] or 0)
        shown = len(facts["failed_rows"])
        lines.append(
            "  first failing rows:"
            if total <= shown
            else f"  first {shown} of {total} failing rows:"
        )
        lines += [f"    row {r['row']}: {r['message']}" for r in facts["failed_rows"]]
    elif facts["failed_rows_error"]:
        lines.append(f"  failing rows could not be read: {facts['failed_rows_error']}")
    if facts["output"]:
        lines.append(f"  output: {' '.join(facts['output'].split())[:300]}")
    took = f"  waited {format_duration(result.waited, rounded=True)}"
    if facts["duration"] and result.code in (EXIT_SUCCEEDED, EXIT_ENDED_OTHERWISE):
        took += f"; the job took {facts['duration']}"
    lines.append(took)
    return lines
