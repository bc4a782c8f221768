"""The JSON shapes of what the store reads, one each: a watch and an undelivered notification
as ``poller status --json`` prints them, a watch's history as ``poller history --json`` does.
The API (``/api/v1/``) answers with the same objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from poller.models import TERMINAL_STATES, JsonValue, State, Watch
from poller.store.outbox import Undelivered
from poller.store.watches import HistoryEntry
from poller.units import format_duration


def iso(ts: float | None) -> str | None:
    """`ts` (epoch seconds) as an ISO 8601 UTC time (``2026-01-02T03:04:05Z``); None without."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


def ago(ts: float | None, now: float) -> str:
    """`ts` relative to `now` for a table cell (``5m 3s ago``, ``in 40s``); ``-`` without one.

    Spans are written as the notifications write them (`format_duration`, rounded).
    """
    if ts is None:
        return "-"
    delta = ts - now
    text = format_duration(abs(delta), rounded=True)
    return f"in {text}" if delta > 0 else f"{text} ago"


def state_label(watch: Watch) -> str:
    """A watch's state for people: ``new`` before any answer, the API's own status beside
    ``unknown``, and whether it was removed or timed out."""
    p = watch.progress
    label = p.state.value if p.state else "new"
    if p.state == State.UNKNOWN and p.remote_status:
        label = f"unknown ({p.remote_status})"
    if watch.removed_at is not None:
        label += " (removed)"
    elif not p.active and p.state not in TERMINAL_STATES:
        label += " (timed out)"
    return label


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
        "details": dict(p.details),
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


def history_json(entries: Sequence[HistoryEntry]) -> list[JsonValue]:
    """A watch's history as `history --json` prints it: one object per transition or event,
    oldest first, its details (an event's deliveries, with each channel's answer) inline."""
    return [{"at": iso(e.at), "kind": e.kind, "what": e.what, **e.detail} for e in entries]
