"""The shapes of what the store reads, for people and for JSON: a watch and an undelivered
notification as ``poller status --json`` prints them (the API, ``/api/v1/``, answers with the
same objects), times in ISO 8601, and a watch's state label. A watch's history is shaped in
`poller.history`, which condenses it first."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from poller.models import TERMINAL_STATES, JsonValue, State, Watch
from poller.store.outbox import Undelivered
from poller.units import format_duration


def iso(ts: float | None) -> str | None:
    """`ts` (epoch seconds) in ISO 8601 UTC, ``2026-12-01T11:54:37.5Z``; None without one
    (or for a time no calendar holds, which a damaged row or an API may give)."""
    if ts is None or isinstance(ts, bool):
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return None


def ago(ts: float | None, now: float) -> str:
    """`ts` relative to `now` for a table cell (``5m 3s ago``, ``in 40s``); ``-`` without one.

    Spans are written as the notifications write them (`format_duration`, rounded).
    """
    if ts is None:
        return "-"
    delta = ts - now
    text = format_duration(abs(delta), rounded=True)
    return f"in {text}" if delta > 0 else f"{text} ago"


def _details_json(details: Mapping[str, Any]) -> dict[str, JsonValue]:
    """A watch's details for JSON: the API's times (``remote_..._at``, stored as epoch
    seconds) in ISO 8601 like every other time `--json` prints."""
    return {
        name: iso(value)
        if name.endswith("_at") and isinstance(value, int | float) and not isinstance(value, bool)
        else value
        for name, value in details.items()
    }


def watch_json(watch: Watch, undelivered: Mapping[str, int] | None = None) -> dict[str, JsonValue]:
    """The JSON shape of one watch in `status --json`.

    `undelivered` counts the watch's deliveries still ``pending`` and ``given_up``.
    """
    p = watch.progress
    undelivered = undelivered or {}
    return {
        "key": watch.key,
        "name": watch.name,
        "source": watch.source,
        "site": watch.site,
        "job_id": watch.job_id,
        "tags": list(watch.tags),
        "state": p.state.value if p.state else None,
        "remote_status": p.remote_status,
        "progress": p.progress,
        "terminal": p.state in TERMINAL_STATES,
        "active": p.active,
        "removed": watch.removed_at is not None,
        "details": _details_json(p.details),
        "created_at": iso(p.created_at),
        "started_at": iso(p.started_at),
        "ended_at": iso(p.ended_at),
        "last_poll_at": iso(watch.last_poll_at),
        "next_poll_at": iso(watch.next_poll_at),
        "error_count": p.error_count,
        "last_error": p.last_error,
        "unreachable": p.unreachable,
        "stalled": p.stalled,
        "deliveries_pending": undelivered.get("pending", 0),
        "deliveries_given_up": undelivered.get("given_up", 0),
    }


def undelivered_json(entry: Undelivered) -> dict[str, JsonValue]:
    """The JSON shape of one undelivered (pending or given-up) notification."""
    return {
        "key": entry.key,
        "name": entry.name,
        "event": entry.event,
        "channel": entry.channel,
        "status": entry.status,
        "attempts": entry.attempts,
        "created_at": iso(entry.created_at),
        "next_attempt_at": iso(entry.next_attempt_at),
        "last_error": entry.last_error,
    }


def state_label(watch: Watch) -> str:
    """The state column: the job's state, or what overrides it first (removed, unreachable,
    stalled, timed out: the conditions of `store.reports`) with the state in brackets."""
    p = watch.progress
    label = p.state.value if p.state else "new"
    if p.state == State.UNKNOWN and p.remote_status:
        label = f"unknown ({p.remote_status})"
    if watch.removed_at is not None:
        return f"removed ({label})"
    if p.active and p.unreachable:
        return f"unreachable ({label})"
    if p.active and p.stalled:
        return f"stalled ({label})"
    if not p.active and p.state not in TERMINAL_STATES:
        return f"timed out ({label})"
    return label
