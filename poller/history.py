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


@dataclass
class _Outage:
    """An outage being condensed: its line's place in the history and what it says so far."""

    index: int
    since: float
    failed: int | None
    error: str | None
    deliveries: list[Mapping[str, Any]]

    def line(self, recovered_at: float | None = None) -> Line:
        """The one line of this outage, open (`recovered_at` None) or closed."""
        what = "polling failing"
        if self.failed:
            what += f", {self.failed} failed poll{'s' if self.failed != 1 else ''}"
        if self.error:
            what += f": {self.error}"
        detail = {
            "since_at": self.since,
            "failed_polls": self.failed,
            "error": self.error,
            "recovered_at": recovered_at,
        }
        return Line(
            at=self.since, kind="outage", what=what, deliveries=self.deliveries, detail=detail
        )


def _open_outage(
    lines: list[Line],
    since: float,
    failed: int | None,
    error: str | None,
    deliveries: list[Mapping[str, Any]],
) -> _Outage:
    """Start an outage's line at the end of `lines` and return it, to be updated in place."""
    outage = _Outage(len(lines), since, failed, error, deliveries)
    lines.append(outage.line())
    return outage


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
    outage: _Outage | None = None
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
                    detail=dict(e.detail),
                )
            )
            continue
        payload: Mapping[str, Any] = e.detail.get("payload") or {}
        delivered = list(e.detail.get("deliveries") or ())
        since = _number(payload.get("outage_since")) or e.at
        if e.what == Event.UNREACHABLE:
            failed, error = _count(payload.get("error_count")), _text(payload.get("error"))
            outage = _open_outage(lines, since, failed, error, delivered)
        elif e.what == Event.RECOVERED:
            # a recovery whose unreachable event was not read still shows its outage
            outage = outage or _open_outage(lines, since, None, None, [])
            outage.failed = _count(payload.get("error_count")) or outage.failed
            outage.deliveries = [*outage.deliveries, *delivered]
            lines[outage.index] = outage.line(recovered_at=e.at)
            outage = None
        else:
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
        if outage is None:
            outage = _open_outage(lines, p.error_since, None, None, [])
        outage.since, outage.failed, outage.error = p.error_since, p.error_count, p.last_error
        lines[outage.index] = outage.line()
    lines.sort(key=lambda line: line.at)
    return lines


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
