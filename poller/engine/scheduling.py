"""Periodic duties of the daemon on APScheduler 3.x (the only module that imports it).

APScheduler does not hold one job per watch (the database is the schedule, see docs/design.md):
it runs a handful of duties such as discovery, lease renewal and watchdog pings, and the
scheduled reports on cron triggers (`cron_trigger`). The polling and delivery engines are not
among them: each is its own timer (`runtime.run_loop`), so that a second timer cannot shorten
their backoff.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

__all__ = [
    "CRON_FIELDS",
    "WEEKDAYS",
    "CronTrigger",
    "Duties",
    "cron_trigger",
    "previous_fire",
    "zone",
]

#: crontab's weekdays, Sunday first (0 and 7 are both Sunday); APScheduler 3.x numbers them
#: from Monday, so numbers are never passed to it (`_weekdays`)
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
#: the fields of a cron expression: five as crontab writes them, or six with seconds first
CRON_FIELDS = ("second", "minute", "hour", "day", "month", "day_of_week")


def zone(name: str) -> ZoneInfo:
    """The time zone `name` (``Europe/Paris``, ``UTC``); ValueError if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r}; expected an IANA name such as Europe/Paris"
        ) from None


def cron_trigger(expression: str, timezone: str = "UTC") -> CronTrigger:
    """The APScheduler trigger of a cron expression, in `timezone`; ValueError saying which
    field is wrong.

    Five fields are crontab's (minute hour day month weekday, weekday 0 or 7 = Sunday, names
    allowed); a sixth, first, gives the second (``*/10 * * * * *``: every ten seconds). Day of
    month and weekday may not both be restricted: crontab fires when either matches,
    APScheduler when both do, and a schedule must not mean two things.
    """
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError(
            f"expected 5 fields (minute hour day month weekday), or 6 with the second first; "
            f"got {len(fields)}"
        )
    values = dict(zip(CRON_FIELDS, fields if len(fields) == 6 else ["0", *fields], strict=True))
    if values["day"] not in ("*", "?") and values["day_of_week"] not in ("*", "?"):
        raise ValueError("restrict the day of month or the weekday, not both")
    values["day"] = values["day"].replace("?", "*")
    values["day_of_week"] = _weekdays(values["day_of_week"])
    for name, value in values.items():
        try:
            CronTrigger(**{name: value}, timezone=UTC)
        except ValueError as exc:
            # APScheduler's "Error validating expression 'x': why" without its preamble
            why = str(exc).split("': ", 1)[-1]
            raise ValueError(f"the {name.replace('_', ' ')} field {value!r}: {why}") from None
    return CronTrigger(**values, timezone=zone(timezone))


def previous_fire(trigger: CronTrigger, now: datetime, within: float) -> datetime | None:
    """The latest time of `trigger` in the `within` seconds up to `now` (inclusive), or None.

    Looks back 1, 2, 4, ... seconds until it finds a time, then walks forward to the last
    one: a few calls of the trigger, whether it fires every second or once a day.
    """
    span = 1.0
    while True:
        span = min(span, within)
        found = trigger.get_next_fire_time(None, now - timedelta(seconds=span))
        if found is not None and found <= now:
            break
        if span >= within:
            return None
        span *= 2
    # cron times are whole seconds: the next one after `found` is at least a second later
    while (later := trigger.get_next_fire_time(None, found + timedelta(seconds=1))) is not None:
        if later > now:
            break
        found = later
    return found  # type: ignore[no-any-return]  # APScheduler is untyped


def _weekday(text: str) -> int:
    """A crontab weekday, 0..7 (7 is Sunday again), by number or three-letter name."""
    if text.isdigit() and int(text) <= 7:
        return int(text)
    if text.lower() in WEEKDAYS:
        return WEEKDAYS.index(text.lower())
    raise ValueError(f"the weekday field: {text!r} is not a weekday (0-7 or sun..sat)")


def _weekdays(field: str) -> str:
    """A crontab weekday field as APScheduler's day_of_week: the days it names, by name."""
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for item in field.split(","):
        base, slash, step_text = item.partition("/")
        if slash and not (step_text.isdigit() and int(step_text) > 0):
            raise ValueError(f"the weekday field: {item!r} has no valid step")
        step = int(step_text) if slash else 1
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            start, end = base.split("-", 1)
            first, last = _weekday(start), _weekday(end)
            if last == 0:
                last = 7  # "sat-sun", "5-0": Sunday ends the week here
        else:
            first = _weekday(base)
            last = 7 if slash else first
        if first > last:
            raise ValueError(f"the weekday field: {item!r} runs backwards")
        days.update(day % 7 for day in range(first, last + 1, step))
    return ",".join(WEEKDAYS[day] for day in sorted(days))


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

    def cron(self, trigger: CronTrigger, duty: Callable[[], object], name: str) -> None:
        """Run `duty` at each time of `trigger`, replacing a duty of the same name (a duty
        that finds itself late learns its time from `previous_fire`)."""
        self._scheduler.add_job(
            duty, trigger, id=name, name=name, replace_existing=True, misfire_grace_time=300
        )

    def remove(self, prefix: str) -> None:
        """Remove every duty whose name starts with `prefix` (reports a reload dropped)."""
        for job in self._scheduler.get_jobs():
            if job.id.startswith(prefix):
                job.remove()

    def start(self) -> None:
        """Start running duties (needs a running event loop)."""
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop without waiting for running duties."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
