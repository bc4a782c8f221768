"""What a message says: an event's facts, poller's own text, digests, and the fallbacks.

- `event_facts` reads an event's stored payload into cleaned facts (the template variables).
- `render` writes poller's own message for one event, as plain text or as Markdown.
- `render_digest` writes one message about many events (storm control).
- `render_safely` and `render_digest_safely` fall back to `minimal_message`, so that nothing an
  API sends can stop a message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from poller.events import MAX_COUNT, EventPayload
from poller.models import EVENT_SEVERITY, Event
from poller.notify.text import (
    MAX_BODY,
    MAX_FIELD,
    MAX_TITLE,
    Format,
    clean,
    fenced,
    md_escape,
    md_link,
    one_line,
)
from poller.units import count, format_duration, number, shorten

#: A short marker per outcome, so a glance at a channel tells good from bad.
MARKERS: Mapping[Event, str] = {
    Event.SUCCEEDED: "✅",
    Event.PARTIAL: "⚠️",
    Event.FAILED: "❌",
    Event.CANCELLED: "🚫",
    Event.EXPIRED: "⌛",
    Event.TIMED_OUT: "⏰",
    Event.STALLED: "🐢",
    Event.UNREACHABLE: "📡",
    Event.RECOVERED: "🔁",
    Event.STARTED: "▶️",
    Event.REPORT: "📋",
}

VERBS: Mapping[Event, str] = {
    Event.SUCCEEDED: "succeeded",
    Event.PARTIAL: "partly succeeded",
    Event.FAILED: "failed",
    Event.CANCELLED: "was cancelled",
    Event.EXPIRED: "expired",
    Event.TIMED_OUT: "timed out (still not finished)",
    Event.STALLED: "is stalled",
    Event.UNREACHABLE: "cannot be reached",
    Event.RECOVERED: "can be reached again",
    Event.STARTED: "started",
    Event.REPORT: "report",
}

#: Headings of a digest's groups, worst first.
GROUPS: Mapping[Event, str] = {
    Event.FAILED: "Failed",
    Event.TIMED_OUT: "Timed out",
    Event.UNREACHABLE: "Unreachable",
    Event.EXPIRED: "Expired",
    Event.CANCELLED: "Cancelled",
    Event.PARTIAL: "Partly succeeded",
    Event.STALLED: "Stalled",
    Event.SUCCEEDED: "Succeeded",
    Event.RECOVERED: "Reachable again",
    Event.STARTED: "Started",
    # the delivery engine never digests a report; a digest given one still shows it
    Event.REPORT: "Reports",
}

_SEVERITY_RANK = {"failure": 0, "warning": 1, "success": 2, "info": 3}

#: Details whose names messages know: each is shown in its own place (``Reason``, ``Rows``,
#: ``Link``, ``Started``, the title...). Sources fill them; an http source by its ``detail``
#: expressions (``job_name``, ``remote_created_at`` and ``remote_completed_at`` from its
#: ``name``, ``started_at`` and ``ended_at``). Any other detail is listed in the body as
#: ``name: value`` (`other_details`).
KNOWN_DETAILS: Mapping[str, str] = {
    "failure_reason": "why the job failed (the title and the Reason line)",
    "url": "a link to the job (the Link line)",
    "output": "the job's output, any JSON (the Output block)",
    "total_rows": "rows in all (the Rows line)",
    "processed_rows": "rows processed so far",
    "success_count": "rows that succeeded",
    "failure_count": "rows that failed",
    "failed_rows": 'the first failing rows, a list of {"row", "message"}',
    "failed_rows_error": "why the failing rows could not be read",
    "remote_created_at": "when the job started, epoch seconds (the Started line, the duration)",
    "remote_completed_at": "when the job ended, epoch seconds (the duration)",
    "job_name": "the job's name from the API, shown when the watch has none",
}
#: Details a message or a template shows, at most; and the longest name and value of one.
MAX_DETAILS = 50
MAX_DETAIL_NAME = 60
MAX_DETAIL_VALUE = 300
#: Other details listed in poller's own body, at most (the rest are in ``details``).
MAX_OTHER_DETAILS = 10

#: Failing rows shown in one message; the rest are counted.
MAX_ROWS = 5
MAX_OUTPUT = 1500
#: One line of a digest.
MAX_DIGEST_LINE = 200
#: A digest of this many events or fewer shows each in full.
DETAILED_DIGEST = 3


def _number(value: object) -> float | None:
    """A number from a stored payload: JSON numbers only (what the source read), never raises."""
    return number(value, strings=False)


def _count(value: object) -> int | None:
    """A whole count from 0 to `MAX_COUNT` in a stored payload, or None."""
    return count(value, strings=False, maximum=MAX_COUNT)


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return ""


def _text_or_none(value: object, limit: int = MAX_FIELD) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return one_line(value, limit)


def _output_text(output: object) -> str | None:
    """A job's output (any JSON) as text for a message, cut to `MAX_OUTPUT`."""
    if output is None or output == "" or output == {} or output == []:
        return None
    if isinstance(output, str):
        text = output.strip()
    else:
        try:
            text = json.dumps(output, ensure_ascii=False, sort_keys=True, default=str)
        except (TypeError, ValueError, RecursionError):
            text = repr(type(output))
    return clean(text, MAX_OUTPUT) if text else None


def _failed_rows(details: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The first failing rows as ``{"row", "message"}`` (cleaned), and how many there were."""
    rows = details.get("failed_rows")
    if not isinstance(rows, list):
        return [], 0
    shown: list[dict[str, Any]] = []
    for row in rows:
        if len(shown) >= MAX_ROWS:
            break
        if not isinstance(row, Mapping):
            continue
        number = row.get("row")
        shown.append(
            {
                "row": one_line(number, 40) if isinstance(number, str) else _count(number),
                "message": one_line(row.get("message") or "", 200),
            }
        )
    return shown, len(rows)


def _rows_summary(counts: Mapping[str, int | None]) -> str | None:
    """'980 succeeded, 20 failed of 1000', or what part of it the source gave."""
    succeeded, failed = counts["succeeded"], counts["failed"]
    total, processed = counts["total"], counts["processed"]
    of_total = f" of {total}" if total is not None else ""
    if succeeded is not None or failed is not None:
        return f"{succeeded or 0} succeeded, {failed or 0} failed{of_total}"
    if processed is not None:
        return f"{processed} processed{of_total}"
    return None


def _detail_value(value: object) -> bool | int | float | str | None:
    """One detail for a template or a message: a number or a boolean as it is, anything else
    as one line of text of at most `MAX_DETAIL_VALUE` characters."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        # a 400-digit "number" is not one a message can show (nor int() turn into text)
        if not abs(value) <= MAX_COUNT:  # NaN too
            return None
        return value if isinstance(value, int) else _number(value)
    if isinstance(value, str):
        return _text_or_none(value, MAX_DETAIL_VALUE)
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        return None
    return _text_or_none(text, MAX_DETAIL_VALUE)


def _details(details: Mapping[str, object]) -> dict[str, Any]:
    """Every detail by name (the first `MAX_DETAILS`), cleaned: ``details.NAME`` in templates."""
    shown: dict[str, Any] = {}
    for name, value in details.items():
        if len(shown) >= MAX_DETAILS:
            break
        label = one_line(name, MAX_DETAIL_NAME) if isinstance(name, str) else None
        cleaned = _detail_value(value)
        if label and cleaned is not None and cleaned != "":
            shown[label] = cleaned
    return shown


def event_facts(kind: Event, payload: Mapping[str, object]) -> dict[str, Any]:
    """Everything a message may show about one event, cleaned: the variables of templates.

    `payload` is the event's stored snapshot (`EventPayload.to_json`); any of it may be
    missing or of the wrong type (it came from a remote API), and nothing here raises for it.
    """
    event = EventPayload.from_json(payload)
    details = event.details
    key = one_line(event.key or "?", 300)
    job_name = _text_or_none(event.name, 200) or _text_or_none(details.get("job_name"), 200)
    counts = {
        "total": _count(details.get("total_rows")),
        "processed": _count(details.get("processed_rows")),
        "succeeded": _count(details.get("success_count")),
        "failed": _count(details.get("failure_count")),
    }
    failed_rows, failed_rows_total = _failed_rows(details)
    progress = event.progress
    url = details.get("url")
    return {
        "event": kind.value,
        "marker": MARKERS[kind],
        "verb": VERBS[kind],
        "severity": EVENT_SEVERITY[kind],
        "name": job_name or key,
        "job_name": job_name,
        "key": key,
        "source": _text_or_none(event.source, 100),
        "site": _text_or_none(event.site, 100),
        "job_id": _text_or_none(event.job_id, 200),
        "tags": [one_line(t, 50) for t in event.tags],
        "state": _text_or_none(event.state, 40),
        "previous_state": _text_or_none(event.previous_state, 40),
        "remote_status": _text_or_none(event.remote_status, 60),
        "progress": min(100.0, max(0.0, progress)) if progress is not None else None,
        "counts": counts,
        "rows": _rows_summary(counts),
        "reason": _text_or_none(details.get("failure_reason")),
        "failed_rows": failed_rows,
        "failed_rows_total": failed_rows_total,
        "failed_rows_error": _text_or_none(details.get("failed_rows_error"), 300),
        "output": _output_text(details.get("output")),
        "error": _text_or_none(event.error),
        "error_count": event.error_count,
        **_times(kind, event),
        "url": clean(url, 1000) if isinstance(url, str) and url else None,
        "at": _when(event.at) or None,
        "details": _details(details),
    }


def _times(kind: Event, event: EventPayload) -> dict[str, Any]:
    """The facts about when: start and end (the API's own times first), how long the job took
    or has been stalled, since when it made no progress, and how long polling failed."""
    details, at = event.details, event.at
    started_at = _number(details.get("remote_created_at")) or event.started_at
    ended_at = _number(details.get("remote_completed_at")) or event.ended_at
    if kind in (Event.STARTED, Event.STALLED, Event.UNREACHABLE, Event.RECOVERED):
        ended_at = None  # these come while the job runs: it has not ended
    if ended_at is not None and started_at is not None:
        duration: float | None = max(0.0, ended_at - started_at)
    elif started_at is not None and at is not None and kind is Event.STALLED:
        duration = max(0.0, at - started_at)
    else:
        duration = None
    stalled_since = event.last_change_at if kind is Event.STALLED else None
    outage_since = event.outage_since
    return {
        "started_at": started_at,
        "ended_at": ended_at,
        "started": _when(started_at) or None,
        "ended": _when(ended_at) or None,
        "duration_seconds": duration,
        "duration": format_duration(duration, rounded=True) if duration is not None else None,
        "stalled_since": _when(stalled_since) or None,
        "outage_since": _when(outage_since) or None,
        "outage": format_duration(at - outage_since, rounded=True) if at and outage_since else None,
    }


def _title(kind: Event, facts: Mapping[str, Any]) -> str:
    title = f"{facts['marker']} {facts['name']} {facts['verb']}"
    if kind in (Event.FAILED, Event.CANCELLED, Event.EXPIRED) and facts["reason"]:
        title += f": {facts['reason']}"
    elif kind is Event.PARTIAL and facts["counts"]["failed"]:
        total = facts["counts"]["total"]
        title += f" ({facts['counts']['failed']}" + (f" of {total}" if total else "")
        title += " rows failed)"
    elif kind in (Event.STALLED, Event.TIMED_OUT) and facts["progress"] is not None:
        title += f" at {facts['progress']:.0f}%"
    return one_line(title, MAX_TITLE)


def _lines(kind: Event, facts: Mapping[str, Any], fmt: Format) -> list[str]:
    """The body's lines: ``Label: value`` pairs, then blocks (rows, output)."""

    def field(label: str, value: str) -> str:
        if fmt != "markdown":
            return f"{label}: {value}"
        # a link is one in every Markdown service (and in the HTML of email and Matrix)
        return f"**{label}:** {md_link(value) if label == 'Link' else md_escape(value)}"

    lines = [field(label, value) for label, value in _pairs(kind, facts) if value is not None]
    return lines + _blocks(facts, fmt, field) + other_details(facts, fmt)


def other_details(facts: Mapping[str, Any], fmt: Format = "text") -> list[str]:
    """The details messages do not show in their own place, as ``name: value`` lines (the
    first `MAX_OTHER_DETAILS`; names are the source's, so Markdown escapes them too)."""
    others = [(k, v) for k, v in facts["details"].items() if k not in KNOWN_DETAILS]
    lines = []
    for name, value in others[:MAX_OTHER_DETAILS]:
        # numbers and booleans as JSON writes them (true, not True)
        text = value if isinstance(value, str) else json.dumps(value)
        if fmt == "markdown":
            lines.append(f"**{md_escape(name)}:** {md_escape(text)}")
        else:
            lines.append(f"{name}: {text}")
    if len(others) > MAX_OTHER_DETAILS:
        lines.append(f"(and {len(others) - MAX_OTHER_DETAILS} more details)")
    return lines


def _pairs(kind: Event, facts: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """The body's ``Label: value`` pairs in order; a pair whose value is None is not shown.

    Facts are None or non-empty (`event_facts`), so None is what "not known" means here.
    """
    progress = facts["progress"]
    polls = f" ({facts['error_count']} failed polls)" if facts["error_count"] else ""
    failing_since = facts["outage_since"] if kind is Event.UNREACHABLE else None
    return [
        ("Job", facts["key"]),
        ("State", _state_text(facts)),
        # a job that succeeded is at 100%: saying so is noise
        (
            "Progress",
            f"{progress:.0f}%" if progress is not None and kind is not Event.SUCCEEDED else None,
        ),
        ("Rows", facts["rows"]),
        ("Reason", facts["reason"]),
        ("No progress since", facts["stalled_since"]),
        ("Error", facts["error"]),
        ("Failing since", failing_since + polls if failing_since else None),
        ("Unreachable for", facts["outage"] if kind is Event.RECOVERED else None),
        ("Started", _started_text(facts)),
        ("Tags", ", ".join(facts["tags"]) if facts["tags"] else None),
        ("Link", facts["url"]),
    ]


def _state_text(facts: Mapping[str, Any]) -> str | None:
    """``failed (remote: failed), was running``: poller's state, the API's, and the one before."""
    if not facts["state"]:
        return None
    shown: str = facts["state"]
    if facts["remote_status"]:
        shown += f" (remote: {facts['remote_status']})"
    if facts["previous_state"]:
        shown += f", was {facts['previous_state']}"
    return shown


def _started_text(facts: Mapping[str, Any]) -> str | None:
    """When the job started, and how long it took (or has run, when it has not ended)."""
    if not facts["started"]:
        return None
    line = f"{facts['started']}"
    if facts["duration"] and facts["ended_at"] is not None:
        line += f", took {facts['duration']}"
    elif facts["duration"]:
        line += f", running for {facts['duration']}"
    return line


def _blocks(facts: Mapping[str, Any], fmt: Format, field: Callable[[str, str], str]) -> list[str]:
    """The body's blocks after the pairs: the first failing rows, and the job's output."""
    lines: list[str] = []
    rows = [
        (f"row {r['row']}: " if r["row"] is not None else "") + r["message"]
        for r in facts["failed_rows"]
    ]
    if rows:
        # the source may list only the first rows: the failure count tells how many there were
        total = max(facts["failed_rows_total"], facts["counts"]["failed"] or 0)
        heading = "First failing rows" + (f" ({len(rows)} of {total})" if total > len(rows) else "")
        if fmt == "markdown":
            lines += [f"**{heading}:**", fenced(rows)]
        else:
            lines += [f"{heading}:", *(f"  {row}" for row in rows)]
    if facts["failed_rows_error"]:
        lines.append(field("Failing rows could not be read", facts["failed_rows_error"]))
    if facts["output"]:
        if fmt == "markdown":
            lines += ["**Output:**", fenced(facts["output"].splitlines())]
        else:
            lines.append(f"Output: {facts['output']}")
    return lines


def render(kind: Event, payload: Mapping[str, object], fmt: Format = "text") -> tuple[str, str]:
    """poller's own title and body for one event, from its stored payload (a report's:
    `render_report`)."""
    if kind is Event.REPORT:
        return render_report(payload, fmt)
    facts = event_facts(kind, payload)
    return _title(kind, facts), shorten("\n".join(_lines(kind, facts, fmt)), MAX_BODY)


def minimal_message(kind: Event, payload: Mapping[str, object]) -> tuple[str, str]:
    """A title and body that name only the job and the event, for when even poller's own text
    cannot be written from the event's data. Never raises."""
    try:
        key = payload.get("key")
        name = payload.get("name")
        label = one_line(key if isinstance(key, str) else "?", 300)
        shown = name if isinstance(name, str) else label
        title = one_line(f"{MARKERS[kind]} {shown} {VERBS[kind]}", MAX_TITLE)
        body = f"Job: {label}\nEvent: {kind.value}\n(the job's details could not be shown)"
        return title, body
    except Exception:  # a payload that is not even a mapping
        return f"{kind.value}", f"Event: {kind.value}\n(the job's details could not be shown)"


def render_safely(
    kind: Event, payload: Mapping[str, object], fmt: Format = "text"
) -> tuple[tuple[str, str], str | None]:
    """poller's own message, else `minimal_message`; and why the own one failed (or None).

    Nothing an API sends may stop a message: a value that breaks the full text costs only
    that text.
    """
    try:
        return render(kind, payload, fmt), None
    except Exception as exc:
        return minimal_message(kind, payload), _describe(exc)


def _describe(exc: BaseException) -> str:
    """An exception as one short line, for a log."""
    try:
        return f"{type(exc).__name__}: {one_line(str(exc), 200)}"
    except Exception:
        return type(exc).__name__


# --- digests -------------------------------------------------------------------------------


def render_digest(
    items: Sequence[tuple[Event, Mapping[str, Any]]], fmt: Format = "text", max_jobs: int = 200
) -> tuple[str, str, str]:
    """One message about many events: title, body and Apprise type (the worst of them).

    Up to `DETAILED_DIGEST` events are shown in full, worst first. More are grouped by
    outcome, worst first, one line per job (name, key, reason) up to `max_jobs` lines; the rest
    are counted.
    """
    groups: dict[Event, list[Mapping[str, Any]]] = {}
    for kind, payload in items:
        groups.setdefault(kind, []).append(event_facts(kind, payload))
    order = [kind for kind in GROUPS if kind in groups]
    severity = min((EVENT_SEVERITY[kind] for kind in order), key=lambda s: _SEVERITY_RANK.get(s, 9))
    worst = order[0]
    total = sum(len(group) for group in groups.values())
    if len(order) == 1:
        title = f"{MARKERS[worst]} {total} jobs {VERBS[worst]}"
    else:
        summary = ", ".join(f"{len(groups[k])} {GROUPS[k].lower()}" for k in order)
        title = f"{MARKERS[worst]} {total} job events: {summary}"

    if total <= DETAILED_DIGEST:
        # few enough to show each in full, as its own message would
        ordered = sorted(items, key=lambda item: order.index(item[0]))
        parts = []
        for kind, payload in ordered:
            part_title, part_body = render(kind, payload, fmt)
            parts.append(f"**{md_escape(part_title)}**" if fmt == "markdown" else part_title)
            parts.append(part_body + "\n")
        return one_line(title, MAX_TITLE), shorten("\n".join(parts).strip(), MAX_BODY), severity

    esc: Callable[[str], str] = md_escape if fmt == "markdown" else (lambda s: s)
    lines: list[str] = []
    unlisted: dict[Event, int] = {}
    room = max_jobs
    for kind in order:
        group = groups[kind]
        if room <= 0:
            unlisted[kind] = len(group)
            continue
        heading = f"{GROUPS[kind]} ({len(group)})"
        lines.append(f"**{heading}:**" if fmt == "markdown" else f"{heading}:")
        lines += ["- " + esc(_digest_line(kind, facts)) for facts in group[:room]]
        if len(group) > room:
            unlisted[kind] = len(group) - room
        room -= len(group)
        lines.append("")
    if unlisted:
        more = sum(unlisted.values())
        what = ", ".join(f"{n} {GROUPS[k].lower()}" for k, n in unlisted.items())
        lines.append(f"… and {more} more not listed here ({what}); see `poller history`.")
    return one_line(title, MAX_TITLE), "\n".join(lines).strip(), severity


def render_digest_safely(
    items: Sequence[tuple[Event, Mapping[str, Any]]], fmt: Format = "text", max_jobs: int = 200
) -> tuple[tuple[str, str, str], str | None]:
    """`render_digest`, else one line per event from `minimal_message`; and why (or None)."""
    try:
        return render_digest(items, fmt, max_jobs), None
    except Exception as exc:
        kinds = [kind for kind in GROUPS if any(k is kind for k, _ in items)]
        worst = kinds[0] if kinds else Event.FAILED
        lines = [minimal_message(kind, payload)[0] for kind, payload in items[:max_jobs]]
        if len(items) > max_jobs:
            lines.append(f"… and {len(items) - max_jobs} more; see `poller history`.")
        title = f"{MARKERS[worst]} {len(items)} job events"
        body = shorten("\n".join(lines), MAX_BODY)
        return (title, body, EVENT_SEVERITY[worst]), _describe(exc)


def _digest_line(kind: Event, facts: Mapping[str, Any]) -> str:
    label = facts["key"]
    if facts["job_name"]:
        label = f"{facts['job_name']} ({facts['key']})"
    why = None
    if kind in (Event.FAILED, Event.CANCELLED, Event.EXPIRED):
        why = facts["reason"]
    elif kind is Event.PARTIAL:
        why = facts["rows"]
    elif kind in (Event.UNREACHABLE, Event.TIMED_OUT):
        why = facts["error"]
    elif kind is Event.STALLED and facts["progress"] is not None:
        why = f"at {facts['progress']:.0f}%"
    return one_line(f"{label}: {why}" if why else label, MAX_DIGEST_LINE)


# --- scheduled reports ---------------------------------------------------------------------


def _local(ts: object, zone: str) -> str:
    """A time of a report in its time zone (UTC if the zone cannot be read)."""
    moment = _number(ts)
    if moment is None:
        return "?"
    try:
        tz: tzinfo = ZoneInfo(zone)
    except (ValueError, OSError, ZoneInfoNotFoundError):
        tz = UTC
    try:
        return datetime.fromtimestamp(moment, tz).strftime("%Y-%m-%d %H:%M %Z")
    except (OverflowError, OSError, ValueError):
        return "?"


def render_report(payload: Mapping[str, Any], fmt: Format = "text") -> tuple[str, str]:
    """A scheduled report's title and body from its stored payload (`engine.reporting`).

    Each section lists its watches as a digest does (name, key, reason), running ones with
    their progress and ETA, then says how many more there are; the body is cut to `MAX_BODY`
    whatever the payload holds.
    """
    esc: Callable[[str], str] = md_escape if fmt == "markdown" else (lambda s: s)
    zone = str(payload.get("timezone") or "UTC")
    name = one_line(payload.get("name") or "?", 100)
    sections = _mappings(payload.get("sections"))
    given_up = payload.get("given_up")
    given_up = given_up if isinstance(given_up, Mapping) else {}
    lost = _count(given_up.get("count")) or 0
    summary = [
        f"{_count(s.get('count')) or 0} {one_line(s.get('heading'), 40).lower()}" for s in sections
    ]
    if lost:
        summary.append(f"{lost} deliveries given up")
    title = f"{MARKERS[Event.REPORT]} {name}: " + (", ".join(summary) or "nothing to report")
    window = _number(payload.get("window"))
    lines = [
        esc(
            f"Report of {_local(payload.get('scheduled_at'), zone)}: ended since "
            f"{_local(payload.get('since'), zone)}"
            + (f" (the last {format_duration(window)})" if window else "")
            + ", and what is still polled."
        ),
        "",
    ]
    for section in sections:
        lines += _report_section(section, fmt, esc, zone)
    if lost:
        heading = f"Deliveries given up ({lost})"
        lines.append(f"**{heading}:**" if fmt == "markdown" else f"{heading}:")
        shown = _mappings(given_up.get("deliveries"))
        for d in shown:
            label = one_line(d.get("name") or d.get("key") or "?", 200)
            line = f"{label}: {one_line(d.get('event'), 20)} to {one_line(d.get('channel'), 60)}"
            error = _text_or_none(d.get("error"), 200)
            lines.append("- " + esc(line + (f" ({error})" if error else "")))
        if lost > len(shown):
            lines.append(esc(f"… and {lost - len(shown):,} more; see `poller status`."))
    if not sections and not lost:
        lines.append("Nothing ended in the window and nothing is being watched.")
    return one_line(title, MAX_TITLE), shorten("\n".join(lines).strip(), MAX_BODY)


def _mappings(value: object) -> list[Mapping[str, Any]]:
    """The mappings of a stored list (anything else in it, or no list, is left out)."""
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _report_section(
    section: Mapping[str, Any], fmt: Format, esc: Callable[[str], str], zone: str
) -> list[str]:
    """One section of a report: its heading, a line per watch named, and how many more."""
    try:
        kind = Event(str(section.get("event")))
    except ValueError:
        kind = Event.STARTED
    total = _count(section.get("count")) or 0
    heading = f"{one_line(section.get('heading'), 40)} ({total:,})"
    lines = [f"**{heading}:**" if fmt == "markdown" else f"{heading}:"]
    jobs = _mappings(section.get("jobs"))
    for job in jobs:
        facts = event_facts(kind, job)
        if kind is Event.STARTED:
            # labelled as a digest's lines are (`_digest_line`)
            line = f"{facts['job_name']} ({facts['key']})" if facts["job_name"] else facts["key"]
            known = [facts["state"]] if facts["state"] else []
            if facts["progress"] is not None:
                known.append(f"{facts['progress']:.0f}%")
            if (eta := _number(job.get("eta"))) is not None:
                known.append(f"ETA {_local(eta, zone)}")
            line = one_line(line + (f": {', '.join(known)}" if known else ""), MAX_DIGEST_LINE)
        else:
            line = _digest_line(kind, facts)
        lines.append("- " + esc(line))
    if total > len(jobs):
        lines.append(esc(f"… and {total - len(jobs):,} more"))
    return [*lines, ""]


def render_report_safely(
    payload: Mapping[str, Any], fmt: Format = "text"
) -> tuple[tuple[str, str], str | None]:
    """`render_report`, else a minimal message naming the report; and why (or None)."""
    try:
        return render_report(payload, fmt), None
    except Exception as exc:
        return minimal_message(Event.REPORT, payload), _describe(exc)
