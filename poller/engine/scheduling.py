"""Periodic duties of the daemon on APScheduler 3.x (the only module that imports it).

APScheduler does not hold one job per watch (the database is the schedule, see docs/design.md):
it runs a handful of duties such as discovery, lease renewal and watchdog pings. The polling and
delivery engines are not among them: each is its own timer (`runtime.run_loop`), so that a
second timer cannot shorten their backoff.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger


class Duties:
    """A small set of named periodic duties on the running asyncio loop."""

    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(
            timezone=UTC,
            # A duty that is late runs once, not once per missed tick, and never overlaps itself.
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    def every(
        self,
        seconds: float,
        duty: Callable[[], object],
        name: str,
        *,
        first_in: float | None = None,
    ) -> None:
        """Run `duty` every `seconds` (the first time after `first_in` seconds, when given),
        replacing a duty of the same name.

        A coroutine function's coroutine is awaited; what a duty returns is not used."""
        first = None if first_in is None else datetime.now(UTC) + timedelta(seconds=first_in)
        self._scheduler.add_job(
            duty,
            IntervalTrigger(seconds=seconds),
            id=name,
            name=name,
            replace_existing=True,
            **({"next_run_time": first} if first is not None else {}),
        )

    def start(self) -> None:
        """Start running duties (needs a running event loop)."""
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop without waiting for running duties."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
