"""Scheduled reports (``reports:`` in the config, README "Reports"): what one says, when a
run is due, and queueing it in the outbox once.

A report is an event about no watch, queued like any other with one delivery per channel
(`Outbox.enqueue_report`), so it survives a restart, is retried like any message, and goes out
once even when several replicas share the database: each run is keyed by the report's name
and its scheduled time (09:00:00 in the report's time zone, not when a replica got to it),
and only the first replica to insert that key queues it.

Its content is read when the run is queued, with the reads `poller status` uses
(`Reports.count_watches`, `list_watches`, `Outbox.undelivered`): counts in SQL, and at most
``max_jobs`` watches named per section, so a database of 100,000 watches makes a message of
the same size as one of ten.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from poller.engine.scheduling import previous_fire
from poller.events import EventPayload
from poller.models import Event, JsonValue, Watch
from poller.store.reports import WatchFilter

if TYPE_CHECKING:
    from poller.config import ReportConfig
    from poller.store.repo import Store

#: A run missed while no daemon ran (down at 09:00) is made up at start within this long.
MISSED_GRACE = 3600.0
#: The longest text of a reason or an error a report shows for one watch.
MAX_REASON = 300

#: The sections of a report, in order: what ended (worst first), what needs a look, what runs.
#: Each is (condition of `store.reports.CONDITIONS`, the event whose line it shows, heading).
ENDED: tuple[tuple[str, Event, str], ...] = (
    ("failed", Event.FAILED, "Failed"),
    ("timed_out", Event.TIMED_OUT, "Timed out"),
    ("expired", Event.EXPIRED, "Expired"),
    ("cancelled", Event.CANCELLED, "Cancelled"),
    ("partial", Event.PARTIAL, "Partly succeeded"),
    ("succeeded", Event.SUCCEEDED, "Succeeded"),
)
TROUBLED: tuple[tuple[str, Event, str], ...] = (
    ("stalled", Event.STALLED, "Stalled"),
    ("unreachable", Event.UNREACHABLE, "Unreachable"),
)
#: conditions of a watch that is still polled and not in trouble
RUNNING = ("new", "pending", "running", "unknown")


def due_run(report: ReportConfig, now: float, within: float = MISSED_GRACE) -> float | None:
    """The scheduled time (epoch seconds) of `report`'s latest run in the `within` seconds up
    to `now`, or None."""
    found = previous_fire(report.trigger(), datetime.fromtimestamp(now, UTC), within)
    return found.timestamp() if found is not None else None


def queue_report(store: Store, report: ReportConfig, scheduled_at: float, now: float) -> bool:
    """Queue `report`'s run scheduled at `scheduled_at` unless it is queued already (by this
    process before a restart, or by another replica); True if this call queued it."""
    if store.report_enqueued(report.name, scheduled_at):
        return False
    payload = build_report(store, report, scheduled_at, now)
    return store.enqueue_report(report.name, scheduled_at, payload, report.notify, now)


def build_report(
    store: Store, report: ReportConfig, scheduled_at: float, now: float
) -> dict[str, JsonValue]:
    """What `report` says at `now` for its run scheduled at `scheduled_at`, as the event's
    payload (`notify.render_report` writes the message)."""
    since = scheduled_at - report.window
    base = WatchFilter(sources=tuple(report.sources or ()), tags=tuple(report.tags or ()))
    limit = report.max_jobs
    sections: list[JsonValue] = []

    def section(
        group: str, kind: Event, heading: str, count: int, watches: Sequence[Watch]
    ) -> None:
        sections.append(
            {
                "group": group,
                "event": kind.value,
                "heading": heading,
                "count": count,
                "jobs": [snapshot(w, kind, now) for w in watches],
            }
        )

    ended = replace(base, ended_after=since)
    ended_counts = store.count_watches(ended)
    for condition, kind, heading in ENDED:
        if ended_counts.get(condition):
            only = replace(base, states=(condition,), ended_after=since)
            listed = store.list_watches(only, limit=limit, order="problems")
            section("ended", kind, heading, ended_counts[condition], listed)
    active = store.count_watches(replace(base, active=True))
    for condition, kind, heading in TROUBLED:
        if active.get(condition):
            only = replace(base, active=True, states=(condition,))
            listed = store.list_watches(only, limit=limit, order="problems")
            section("trouble", kind, heading, active[condition], listed)
    running = sum(active.get(condition, 0) for condition in RUNNING)
    if running:
        only = replace(base, active=True, states=RUNNING)
        listed = store.list_watches(only, limit=limit)
        section("running", Event.STARTED, "Still running", running, listed)
    given_up = store.undelivered("given_up", limit=limit, since=since)
    return {
        "event": Event.REPORT.value,
        "key": f"report/{report.name}",
        "name": report.name,
        "scheduled_at": scheduled_at,
        "since": since,
        "window": report.window,
        "timezone": report.timezone,
        "at": now,
        "sections": sections,
        "given_up": {
            "count": store.delivery_counts(since).get("given_up", 0),
            "deliveries": [
                {
                    "key": d.key,
                    "name": d.name,
                    "event": d.event,
                    "channel": d.channel,
                    "error": (d.last_error or "")[:MAX_REASON],
                }
                for d in given_up
            ],
        },
    }


def snapshot(watch: Watch, kind: Event, now: float) -> dict[str, JsonValue]:
    """One watch as a report names it: the payload an event of `kind` would have (so its line
    is written as a digest's is), cut to what a line shows, and its ETA when it can be told."""
    p = watch.progress
    details: dict[str, JsonValue] = {}
    for name in ("job_name", "failure_reason"):
        value = p.details.get(name)
        if value is not None:
            details[name] = value[:MAX_REASON] if isinstance(value, str) else value
    entry = EventPayload(
        event=kind.value,
        key=watch.key,
        name=watch.name,
        source=watch.source,
        state=p.state.value if p.state else None,
        remote_status=p.remote_status,
        progress=p.progress,
        details=details,
        error=(p.last_error or "")[:MAX_REASON] or None,
        last_change_at=p.last_change_at,
        created_at=p.created_at,
        started_at=p.started_at,
        ended_at=p.ended_at,
        at=now,
    ).to_json()
    entry["eta"] = eta(p.progress, p.started_at, now)
    return entry


def eta(progress: float | None, started_at: float | None, now: float) -> float | None:
    """When a running job should end if it goes on at the pace it has had: known only when
    the source gives its progress (between 0 and 100%) and it has started."""
    if progress is None or started_at is None or not 0 < progress < 100 or now <= started_at:
        return None
    return now + (now - started_at) * (100 - progress) / progress
