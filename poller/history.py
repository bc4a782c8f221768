"""A watch's history as `poller history` shows it: transitions with their reason and row
counts, events with their deliveries, and each outage condensed to one entry.

An outage is a run of failed polls. The store keeps its ends as events (``unreachable`` once
polling has failed for `error_after`, ``recovered`` at the next answer) and the watch row
keeps the run in progress (``error_since``, ``error_count``, ``last_error``); here each
becomes one entry: when polling started failing, how many polls failed, the error, and when
it recovered (or that it still fails). Pure functions of what the store read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from poller.models import Event, JsonValue, Watch
from poller.notify.render import event_facts
from poller.store.repo import HistoryEntry
from poller.store.shapes import iso


@dataclass(frozen=True)
class Line:
    """One entry of a history: what `history` prints on a line, and what `--json` holds.

    Times are epoch seconds; the command line writes them in ISO 8601.
    """

    at: float
    kind: str  # "transition" | "event" | "outage"
    what: str
    #: the job's failure reason, when the API gave one
    reason: str | None = None
    #: the row counts, e.g. ``90 of 100 processed, 10 failed``
    rows: str | None = None
    #: the channels the event went to: ``{"channel", "status", "attempts", "sent_at", ...}``
    deliveries: Sequence[Mapping[str, Any]] = ()
    #: the remaining facts, by name (times are epoch seconds, ending ``_at``)
    detail: Mapping[str, Any] = field(default_factory=dict)


def _facts(kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """`event_facts` of a stored event, or nothing for a kind this version does not know."""
    try:
        return event_facts(Event(kind), payload)
    except ValueError:
        return {}


def _outage_detail(
    since: float | None, failed: int | None, error: str | None, until: float | None
) -> dict[str, Any]:
    return {"since_at": since, "failed_polls": failed, "error": error, "recovered_at": until}


def condense(entries: Sequence[HistoryEntry], watch: Watch) -> list[Line]:
    """The history of `watch` from its stored `entries` (oldest first), outages condensed.

    An ``unreachable`` event opens an outage and the next ``recovered`` closes it; the pair
    is one ``outage`` line at the time polling started failing, carrying the deliveries of
    both. Failing polls in progress (from the watch row) are a last, open outage.
    """
    # the reason and counts an event read from the API, for the transition of the same instant
    facts_at: dict[float, dict[str, Any]] = {}
    for e in entries:
        if e.kind == "event" and e.what not in (Event.UNREACHABLE, Event.RECOVERED):
            facts = _facts(e.what, e.detail.get("payload") or {})
            if facts.get("reason") or facts.get("rows"):
                facts_at.setdefault(e.at, facts)
    # an event at a transition's instant leaves the reason and counts to the transition line
    said_at = {e.at for e in entries if e.kind == "transition" and e.at in facts_at}
    lines: list[Line] = []
    outage: dict[str, Any] | None = None
    for e in entries:
        if e.kind == "transition":
            facts = facts_at.get(e.at, {})
            lines.append(
                Line(
                    at=e.at,
                    kind="transition",
                    what=e.what,
                    reason=facts.get("reason"),
                    rows=facts.get("rows"),
                    detail={k: v for k, v in e.detail.items()},
                )
            )
            continue
        payload: Mapping[str, Any] = e.detail.get("payload") or {}
        delivered = list(e.detail.get("deliveries") or ())
        if e.what == Event.UNREACHABLE:
            since = _number(payload.get("outage_since")) or e.at
            outage = {
                "since": since,
                "failed": _count(payload.get("error_count")),
                "error": _text(payload.get("error")),
                "deliveries": delivered,
                "index": len(lines),
            }
            lines.append(_outage_line(outage, None))
            continue
        if e.what == Event.RECOVERED:
            if outage is None:
                since = _number(payload.get("outage_since")) or e.at
                outage = {"since": since, "failed": None, "error": None, "deliveries": []}
                outage["index"] = len(lines)
                lines.append(_outage_line(outage, None))
            outage["failed"] = _count(payload.get("error_count")) or outage["failed"]
            outage["deliveries"] = [*outage["deliveries"], *delivered]
            lines[outage["index"]] = _outage_line(outage, e.at)
            outage = None
            continue
        facts = _facts(e.what, payload) if e.at not in said_at else {}
        lines.append(
            Line(
                at=e.at,
                kind="event",
                what=e.what,
                reason=facts.get("reason"),
                rows=facts.get("rows"),
                deliveries=delivered,
            )
        )
    p = watch.progress
    if p.error_since is not None:
        # the run of failures in progress: the unreachable event's line if there is one
        current: dict[str, Any] = {
            "since": p.error_since,
            "failed": p.error_count,
            "error": p.last_error,
        }
        if outage is not None:
            current["deliveries"] = outage["deliveries"]
            lines[outage["index"]] = _outage_line(current, None)
        else:
            current["deliveries"] = []
            lines.append(_outage_line(current, None))
    lines.sort(key=lambda line: line.at)
    return lines


def _outage_line(outage: Mapping[str, Any], recovered_at: float | None) -> Line:
    """The one line of an outage, open (`recovered_at` None) or closed."""
    since, failed, error = outage["since"], outage["failed"], outage["error"]
    what = "polling failing"
    if failed:
        what += f", {failed} failed poll{'s' if failed != 1 else ''}"
    if error:
        what += f": {error}"
    return Line(
        at=since,
        kind="outage",
        what=what,
        deliveries=outage.get("deliveries") or (),
        detail=_outage_detail(since, failed, error, recovered_at),
    )


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _times_json(values: Mapping[str, Any]) -> dict[str, JsonValue]:
    """`values` for JSON, its epoch times (names ending ``_at``) in ISO 8601."""
    return {
        name: iso(value) if name.endswith("_at") and isinstance(value, int | float) else value
        for name, value in values.items()
    }


def line_json(line: Line) -> dict[str, JsonValue]:
    """The JSON shape of one history line (`history --json`, the API), times in ISO 8601."""
    document: dict[str, JsonValue] = {"at": iso(line.at), "kind": line.kind, "what": line.what}
    document |= _times_json(line.detail)
    if line.kind != "transition":
        document["deliveries"] = [_times_json(d) for d in line.deliveries]
    if line.kind != "outage":
        document |= {"reason": line.reason, "rows": line.rows}
    return document
