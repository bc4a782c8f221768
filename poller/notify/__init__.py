"""Notifications: routing, what a message says, templates, digests, and Apprise.

- `route` picks the channels of an event from the rules.
- `render` writes poller's own message for one event, as plain text or as Markdown;
  `compile_template` builds a user's Jinja2 template (sandboxed) and checks it up front, so that
  a template error is a config error at load time.
- `render_digest` writes one message about many events (storm control).
- `Notifier` sends through Apprise, one Apprise object per channel, so that a slow or broken
  channel fails alone and its answer is known.

Everything a message shows from a job API or a user (names, reasons, failing rows, outputs) is
hostile until cleaned: mass mentions are defused, single-line fields stay on one line (a title
becomes an email subject), Markdown and HTML in it are escaped, and long text is cut.

Apprise reports results instead of raising; a failure becomes `NotifyError` with what each
service answered. Channel URLs hold secrets: only ``url(privacy=True)`` is ever shown, and any
part of a URL that the masked form hides is scrubbed from the services' answers too. Apprise does
not expose HTTP response headers, so a ``requests`` response hook (installed once, active only
around our own sends) records the status and ``Retry-After`` of each answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import json
import logging
import math
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import unquote

import apprise
import jinja2
import jinja2.exceptions
import jinja2.meta
import jinja2.nodes
import jinja2.sandbox

from poller import redact
from poller.errors import NotifyError
from poller.models import EVENT_SEVERITY, Event

#: How a message body is written: plain text, or Markdown (which Apprise turns into HTML for
#: email and into each chat service's own markup).
Format = Literal["text", "markdown"]

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
}

_SEVERITY_RANK = {"failure": 0, "warning": 1, "success": 2, "info": 3}

MAX_FIELD = 500
MAX_TITLE = 250
MAX_BODY = 8000
#: Failing rows shown in one message; the rest are counted.
MAX_ROWS = 5
MAX_OUTPUT = 1500
#: One line of a digest.
MAX_DIGEST_LINE = 200
#: A digest of this many events or fewer shows each in full.
DETAILED_DIGEST = 3

#: Mentions that page people: Slack's ``<!here>`` and user groups (``<!subteam^S1>``), Slack
#: and Discord user and role mentions (``<@U123|bob>``, ``<@!123>``, ``<@&123>``), and
#: ``@here``, ``@everyone``, Matrix's ``@room``.
_MENTION = re.compile(
    r"<!(channel|here|everyone|subteam)[^>]*>|<@[!&]?[\w.-]+(\|[^>]*)?>"
    r"|@(channel|here|everyone|room)\b",
    re.I,
)
#: Markdown that could make a link, an image, raw HTML or forge an escape.
_MARKDOWN_ACTIVE = re.compile(r"([\\<\[\]])")


class RuleLike(Protocol):
    """A routing rule (`config.Rule`): its channels and whether an event matches it."""

    notify: tuple[str, ...]

    def matches(self, event: Event, source: str, tags: Iterable[str]) -> bool:
        """Whether this rule fires for the event on a watch of `source` with `tags`."""
        ...


def route(
    rules: Sequence[RuleLike], event: Event, source: str, tags: Iterable[str]
) -> tuple[str, ...]:
    """The channels an event goes to: every matching rule fires, each channel once."""
    tag_list = list(tags)
    channels: dict[str, None] = {}
    for rule in rules:
        if rule.matches(event, source, tag_list):
            channels.update(dict.fromkeys(rule.notify))
    return tuple(channels)


# --- cleaning hostile text -------------------------------------------------------------------


def clean(text: Any, limit: int = MAX_FIELD) -> str:
    """Text from a remote API or a user made safe for any channel.

    Mass, user and role mentions are defused (Slack, Discord, Teams, Matrix): a zero-width
    space keeps them readable but inert. Long text is cut with a marker. Line breaks are kept:
    callers that need one line use `one_line`.
    """
    value = text if isinstance(text, str) else str(text)
    value = _MENTION.sub(
        lambda m: m.group(0).replace("@", "@\u200b").replace("<!", "<\u200b!"), value
    )
    return value if len(value) <= limit else value[: limit - 1] + "…"


def one_line(text: Any, limit: int = 200) -> str:
    """`clean`, on one line: a title or field can then not start a mail header or a paragraph."""
    return clean(" ".join(str(text).split()), limit)


def md_escape(text: str) -> str:
    """Escape what would let text become a link, an image or raw HTML in Markdown.

    Emphasis characters are left alone: at worst they make text bold, and escaping them shows
    stray backslashes in Slack.
    """
    return _MARKDOWN_ACTIVE.sub(r"\\\1", text)


def _fenced(lines: Iterable[str]) -> str:
    """A Markdown code block whose content cannot close it early."""
    body = "\n".join(line.replace("```", "`\u200b`\u200b`") for line in lines)
    return f"```\n{body}\n```"


# --- what an event says --------------------------------------------------------------------


#: The largest count a message shows; a bigger "row count" from an API is not a real one and is
#: left out (a 400-digit integer cannot even be turned into a float).
MAX_COUNT = 10**15


def _number(value: Any) -> float | None:
    """A finite float from a JSON number, or None: never raises, whatever the API sent."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too big for a float
        return None
    return number if math.isfinite(number) else None


def _count(value: Any) -> int | None:
    """A whole count from 0 to `MAX_COUNT`, or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value <= MAX_COUNT else None
    number = _number(value)
    return int(number) if number is not None and 0 <= number <= MAX_COUNT else None


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return ""


#: The longest span a message spells out (100 years); a longer one comes from bad data.
MAX_SPAN = 100 * 365 * 86400


def format_duration(seconds: float) -> str:
    """``1d 2h 3m``, ``5m 3s``, ``40s``: a span for people (never raises)."""
    if not (seconds <= MAX_SPAN):  # also NaN
        return "over 100 years"
    total = int(max(0.0, seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours:
        parts.append(f"{hours}h")
    if minutes and not days:
        parts.append(f"{minutes}m")
    if secs and not days and not hours:
        parts.append(f"{secs}s")
    return " ".join(parts) or "0s"


def _text_or_none(value: Any, limit: int = MAX_FIELD) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return one_line(value, limit)


def _output_text(output: Any) -> str | None:
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


def event_facts(kind: Event, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Everything a message may show about one event, cleaned: the variables of templates.

    `payload` is the event's stored snapshot (`polling.event_payload`); any of it may be
    missing or of the wrong type (it came from a remote API), and nothing here raises for it.
    """
    raw_details = payload.get("details")
    details: Mapping[str, Any] = raw_details if isinstance(raw_details, Mapping) else {}
    key = one_line(payload.get("key") or "?", 300)
    job_name = _text_or_none(payload.get("name"), 200)
    at = _number(payload.get("at"))
    started_at = _number(details.get("remote_created_at")) or _number(payload.get("started_at"))
    ended_at = _number(details.get("remote_completed_at")) or _number(payload.get("ended_at"))
    if kind in (Event.STARTED, Event.STALLED, Event.UNREACHABLE, Event.RECOVERED):
        ended_at = None
    if ended_at is not None and started_at is not None:
        duration: float | None = max(0.0, ended_at - started_at)
    elif started_at is not None and at is not None and kind is Event.STALLED:
        duration = max(0.0, at - started_at)
    else:
        duration = None
    counts = {
        "total": _count(details.get("total_rows")),
        "processed": _count(details.get("processed_rows")),
        "succeeded": _count(details.get("success_count")),
        "failed": _count(details.get("failure_count")),
    }
    failed_rows, failed_rows_total = _failed_rows(details)
    progress = _number(payload.get("progress"))
    tags = payload.get("tags")
    stalled_since = _number(payload.get("last_change_at")) if kind is Event.STALLED else None
    outage_since = _number(payload.get("outage_since"))
    url = details.get("url") if isinstance(details.get("url"), str) else None
    return {
        "event": kind.value,
        "marker": MARKERS[kind],
        "verb": VERBS[kind],
        "severity": EVENT_SEVERITY[kind],
        "name": job_name or key,
        "job_name": job_name,
        "key": key,
        "source": _text_or_none(payload.get("source"), 100),
        "site": _text_or_none(payload.get("site"), 100),
        "job_id": _text_or_none(payload.get("job_id"), 200),
        "tags": [one_line(t, 50) for t in tags] if isinstance(tags, list) else [],
        "state": _text_or_none(payload.get("state"), 40),
        "previous_state": _text_or_none(payload.get("previous_state"), 40),
        "remote_status": _text_or_none(payload.get("remote_status"), 60),
        "progress": min(100.0, max(0.0, progress)) if progress is not None else None,
        "counts": counts,
        "rows": _rows_summary(counts),
        "reason": _text_or_none(details.get("failure_reason")),
        "failed_rows": failed_rows,
        "failed_rows_total": failed_rows_total,
        "failed_rows_error": _text_or_none(details.get("failed_rows_error"), 300),
        "output": _output_text(details.get("output")),
        "error": _text_or_none(payload.get("error")),
        "error_count": _count(payload.get("error_count")),
        "started_at": started_at,
        "ended_at": ended_at,
        "started": _when(started_at) or None,
        "ended": _when(ended_at) or None,
        "duration_seconds": duration,
        "duration": format_duration(duration) if duration is not None else None,
        "stalled_since": _when(stalled_since) or None,
        "outage_since": _when(outage_since) or None,
        "outage": format_duration(at - outage_since) if at and outage_since else None,
        "url": clean(url, 1000) if url else None,
        "at": _when(at) or None,
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
    esc: Callable[[str], str] = md_escape if fmt == "markdown" else (lambda s: s)

    def field(label: str, value: str) -> str:
        return f"**{label}:** {esc(value)}" if fmt == "markdown" else f"{label}: {value}"

    lines = [field("Job", facts["key"])]
    if facts["state"]:
        shown = facts["state"]
        if facts["remote_status"]:
            shown += f" (remote: {facts['remote_status']})"
        if facts["previous_state"]:
            shown += f", was {facts['previous_state']}"
        lines.append(field("State", shown))
    if facts["progress"] is not None and kind not in (Event.SUCCEEDED,):
        lines.append(field("Progress", f"{facts['progress']:.0f}%"))
    if facts["rows"]:
        lines.append(field("Rows", facts["rows"]))
    if facts["reason"]:
        lines.append(field("Reason", facts["reason"]))
    if facts["stalled_since"]:
        lines.append(field("No progress since", facts["stalled_since"]))
    if facts["error"]:
        lines.append(field("Error", facts["error"]))
    if facts["outage_since"] and kind is Event.UNREACHABLE:
        polls = f" ({facts['error_count']} failed polls)" if facts["error_count"] else ""
        lines.append(field("Failing since", facts["outage_since"] + polls))
    if facts["outage"] and kind is Event.RECOVERED:
        lines.append(field("Unreachable for", facts["outage"]))
    if facts["started"]:
        line = f"{facts['started']}"
        if facts["duration"] and facts["ended_at"] is not None:
            line += f", took {facts['duration']}"
        elif facts["duration"]:
            line += f", running for {facts['duration']}"
        lines.append(field("Started", line))
    if facts["tags"]:
        lines.append(field("Tags", ", ".join(facts["tags"])))
    if facts["url"]:
        lines.append(field("Link", facts["url"]))

    rows = [
        (f"row {r['row']}: " if r["row"] is not None else "") + r["message"]
        for r in facts["failed_rows"]
    ]
    if rows:
        # the source may list only the first rows: the failure count tells how many there were
        total = max(facts["failed_rows_total"], facts["counts"]["failed"] or 0)
        heading = "First failing rows" + (f" ({len(rows)} of {total})" if total > len(rows) else "")
        if fmt == "markdown":
            lines += [f"**{heading}:**", _fenced(rows)]
        else:
            lines += [f"{heading}:", *(f"  {row}" for row in rows)]
    if facts["failed_rows_error"]:
        lines.append(field("Failing rows could not be read", facts["failed_rows_error"]))
    if facts["output"]:
        if fmt == "markdown":
            lines += ["**Output:**", _fenced(facts["output"].splitlines())]
        else:
            lines.append(f"Output: {facts['output']}")
    return lines


def render(kind: Event, payload: Mapping[str, Any], fmt: Format = "text") -> tuple[str, str]:
    """poller's own title and body for one event, from its stored payload."""
    facts = event_facts(kind, payload)
    return _title(kind, facts), _cut("\n".join(_lines(kind, facts, fmt)), MAX_BODY)


def minimal_message(kind: Event, payload: Mapping[str, Any]) -> tuple[str, str]:
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
    kind: Event, payload: Mapping[str, Any], fmt: Format = "text"
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


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        return one_line(title, MAX_TITLE), _cut("\n".join(parts).strip(), MAX_BODY), severity

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
        body = _cut("\n".join(lines), MAX_BODY)
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


# --- templates -----------------------------------------------------------------------------

#: The variables a template may use, with what they hold (README lists the same).
TEMPLATE_VARIABLES: Mapping[str, str] = {
    "event": "the event: started, succeeded, partial, failed, cancelled, expired, stalled, "
    "timed_out, unreachable, recovered",
    "marker": "a short emoji for the event",
    "verb": 'the event in words, e.g. "failed", "is stalled"',
    "severity": "the Apprise message type: success, warning, failure, info",
    "name": "the job's name, or its key when it has none",
    "job_name": "the job's name (empty if it has none)",
    "key": "the watch key, e.g. ruler-prod/4f2a/9c1e-77",
    "source": "the source name",
    "site": "the site (ruler)",
    "job_id": "the remote job id",
    "tags": "the watch's tags (a list)",
    "state": "poller's state of the job",
    "previous_state": "the state before this event",
    "remote_status": "the status as the API gave it",
    "progress": "0-100, or empty",
    "counts": "row counts: counts.total, counts.processed, counts.succeeded, counts.failed",
    "rows": 'the counts in words, e.g. "980 succeeded, 20 failed of 1000"',
    "reason": "the failure reason the API gave",
    "failed_rows": "the first failing rows, each with .row and .message",
    "failed_rows_total": "how many failing rows the API listed",
    "failed_rows_error": "why the failing rows could not be read",
    "output": "the job's output, as text",
    "error": "the poll error (unreachable, timed_out)",
    "error_count": "failed polls in a row (unreachable)",
    "started": "when the job started (UTC)",
    "ended": "when it ended (UTC)",
    "started_at": "the start as UNIX seconds",
    "ended_at": "the end as UNIX seconds",
    "duration": 'how long it took (or has run, when stalled), e.g. "1h 5m"',
    "duration_seconds": "the same in seconds",
    "stalled_since": "the last time progress changed (stalled)",
    "outage_since": "since when polling has failed (unreachable, recovered)",
    "outage": "how long polling failed (recovered)",
    "url": "a link to the job, when the source gives one",
    "at": "when the event happened (UTC)",
    "title": "poller's default title",
    "body": "poller's default body, in the template's format",
}

#: The most a template may write; more is a runaway loop, and the render is stopped.
_MAX_RENDERED = 100_000
#: How long one render of a template may run (a real one takes about a millisecond).
TEMPLATE_TIME_LIMIT = 1.0
#: How much memory one render may take beyond what the process had used before it.
_MAX_RENDER_MEMORY = 256 * 1024 * 1024
#: The largest whole number a template may pass to a filter, function or method: widths and
#: counts above it (``center(2000000000)``) would allocate gigabytes in one C call.
_MAX_ARGUMENT = _MAX_RENDERED
#: A printf or format() width or precision of six digits or more, or one taken from the
#: arguments (``*``): a gigabyte of padding in one C call.
_WIDE_FORMAT = re.compile(r"%[^a-zA-Z%]*(\*|\d{6,})|\{[^{}]*:[^{}]*\d{6,}")


class TemplateProblem(ValueError):
    """A template that cannot be used; `line` is the line within the template (1-based)."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class TemplateLimit(jinja2.exceptions.SecurityError):
    """A template exceeded its time, output or memory limit, or asked for a huge value."""


def _check_arguments(args: Iterable[Any], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_ARGUMENT:
            raise TemplateLimit(f"argument too large ({_MAX_ARGUMENT} at most)")
        if isinstance(value, str) and _WIDE_FORMAT.search(value):
            raise TemplateLimit("format width too large")


def _limited_filter(func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` (a Jinja filter) refusing huge arguments; the filtered value itself is free."""

    @functools.wraps(func)  # keeps Jinja's pass_context/pass_environment marks
    def limited(*args: Any, **kwargs: Any) -> Any:
        skip = 2 if getattr(func, "jinja_pass_arg", None) is not None else 1
        if func.__name__ == "do_format":  # the filtered value is the format string
            _check_arguments(args[skip - 1 : skip], {})
        _check_arguments(args[skip:], kwargs)
        return func(*args, **kwargs)

    return limited


class _Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox that also refuses to build huge strings or numbers.

    Every filter, function and method call is checked for huge whole-number arguments and wide
    format strings, repetition and powers are capped, and `render_limited` bounds the time,
    output and memory of a whole render.
    """

    intercepted_binops = frozenset(["*", "**", "%"])

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _limited_filter(f) for name, f in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 100:
            raise jinja2.exceptions.SecurityError("exponent too large")
        if operator == "*":
            for a, b in ((left, right), (right, left)):
                if isinstance(a, str | list | tuple) and isinstance(b, int) and len(a) * b > 10_000:
                    raise jinja2.exceptions.SecurityError("repetition too large")
        if operator == "%" and isinstance(left, str):
            _check_arguments((left,), {})
        return super().call_binop(context, operator, left, right)

    def call(
        __self,
        __context: Any,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        _check_arguments(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # what ``"...".format`` and ``format_map`` become in the sandbox: check the string too
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_arguments((value.__self__,), {})
        return wrapped


def render_limited(template: jinja2.Template, variables: Mapping[str, Any]) -> str:
    """Render `template` within `TEMPLATE_TIME_LIMIT`, `_MAX_RENDERED` characters and
    `_MAX_RENDER_MEMORY`; raises `TemplateLimit` (from inside the template, so that its
    traceback names the template's line) when one is exceeded.

    The time and memory are checked on every line the render runs (a trace function on this
    thread only): a loop that writes nothing is stopped too. Run it on a worker thread where a
    second of CPU must not stall anything else.
    """
    deadline = time.monotonic() + TEMPLATE_TIME_LIMIT
    memory_limit = _max_rss() + _MAX_RENDER_MEMORY
    state = {"lines": 0}

    def on_line(frame: Any, event: str, arg: Any) -> Any:
        state["lines"] += 1
        if time.monotonic() > deadline:
            raise TemplateLimit(f"took longer than {TEMPLATE_TIME_LIMIT:g}s")
        if state["lines"] % 64 == 0 and _max_rss() > memory_limit:
            raise TemplateLimit(f"used more than {_MAX_RENDER_MEMORY // 2**20} MB")
        return on_line

    previous = sys.gettrace()
    sys.settrace(on_line)
    try:
        parts: list[str] = []
        size = 0
        chunks = template.generate(variables)
        for chunk in chunks:
            size += len(chunk)
            if size > _MAX_RENDERED:
                problem = TemplateLimit(f"wrote more than {_MAX_RENDERED} characters")
                problem.lineno = _suspended_line(template, chunks)  # type: ignore[attr-defined]
                raise problem
            parts.append(chunk)
    finally:
        sys.settrace(previous)
    return "".join(parts)


def _suspended_line(template: jinja2.Template, chunks: Any) -> int | None:
    """The template line a suspended render is at (where it wrote its last output)."""
    line = None
    try:
        while chunks is not None:
            frame = getattr(chunks, "gi_frame", None)
            if frame is not None and frame.f_code.co_filename == "<template>":
                line = template.get_corresponding_lineno(frame.f_lineno)
            chunks = getattr(chunks, "gi_yieldfrom", None)
    except Exception:  # only a better message is lost
        return line
    return line


def _max_rss() -> int:
    """The process's peak resident memory in bytes (0 where it cannot be read)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):  # pragma: no cover - not Linux
        return 0


def _finalize(value: Any) -> Any:
    # an absent value prints as nothing, not "None"
    return "" if value is None else value


_ENV = _Sandbox(
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
    finalize=_finalize,
    undefined=jinja2.Undefined,
)


def _escape_deep(value: Any) -> Any:
    if isinstance(value, str):
        return md_escape(value)
    if isinstance(value, list):
        return [_escape_deep(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _escape_deep(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class MessageTemplate:
    """A user's title and/or body template, compiled; what it leaves out is poller's default."""

    title: jinja2.Template | None
    body: jinja2.Template | None
    format: Format = "text"

    def context(self, kind: Event, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The template variables for one event (Markdown-escaped for a Markdown template)."""
        facts = event_facts(kind, payload)
        title, body = render(kind, payload, self.format)
        variables = _escape_deep(facts) if self.format == "markdown" else dict(facts)
        variables["title"], variables["body"] = title, body
        return variables

    def render(self, kind: Event, payload: Mapping[str, Any]) -> tuple[str, str]:
        """Title and body for one event; raises what the template raises."""
        variables = self.context(kind, payload)
        title, body = variables["title"], variables["body"]
        if self.title is not None:
            # one line, whatever the template does: a title may become a mail Subject header
            title = one_line(render_limited(self.title, variables), MAX_TITLE)
        if self.body is not None:
            body = _cut(render_limited(self.body, variables).strip(), MAX_BODY)
        return title or one_line(f"{MARKERS[kind]} {variables['name']}", MAX_TITLE), body


#: Events the templates are tried on at load time, so that an error shows up then.
SAMPLE_EVENTS: tuple[tuple[Event, Mapping[str, Any]], ...] = (
    (
        Event.FAILED,
        {
            "key": "ruler-prod/4f2a/9c1e-77",
            "name": "Nightly revenue upload",
            "source": "ruler-prod",
            "site": "4f2a",
            "job_id": "9c1e-77",
            "tags": ["revenue"],
            "state": "failed",
            "previous_state": "running",
            "remote_status": "failed",
            "progress": 40.0,
            "details": {
                "total_rows": 1000,
                "processed_rows": 400,
                "success_count": 380,
                "failure_count": 20,
                "failure_reason": "Column 'amount' is missing",
                "failed_rows": [{"row": 3, "message": "Invalid email"}],
                "output": {"written": 380},
                "url": "https://example.com/jobs/9c1e-77",
            },
            "started_at": 1_700_000_000.0,
            "ended_at": 1_700_000_600.0,
            "at": 1_700_000_600.0,
        },
    ),
    (Event.STARTED, {"key": "ruler-prod/4f2a/j2", "details": {}}),
    (
        Event.UNREACHABLE,
        {
            "key": "immuta/2b9f0c",
            "error": "server_error: HTTP 500",
            "error_count": 3,
            "outage_since": 1_700_000_000.0,
            "at": 1_700_000_900.0,
        },
    ),
)


def _template_line(exc: BaseException) -> int | None:
    """The template line a render error happened on, from Jinja's rewritten traceback."""
    line = getattr(exc, "lineno", None)
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == "<template>":
            line = frame.lineno
    return line


def _compile_one(source: str, what: str) -> jinja2.Template:
    try:
        tree = _ENV.parse(source)
        unknown = sorted(jinja2.meta.find_undeclared_variables(tree) - TEMPLATE_VARIABLES.keys())
        if not unknown:
            return _ENV.from_string(tree)
    except jinja2.TemplateSyntaxError as exc:  # also unknown filters and tests
        raise TemplateProblem(f"{what} template: {exc.message}", exc.lineno) from None
    line = next(
        (node.lineno for node in tree.find_all(jinja2.nodes.Name) if node.name == unknown[0]),
        None,
    )
    raise TemplateProblem(
        f"{what} template: unknown variable {unknown[0]}; "
        f"expected one of: {', '.join(TEMPLATE_VARIABLES)}",
        line,
    )


def check_template(source: str, what: str, fmt: str = "text") -> None:
    """Check one part (``title`` or ``body``) of a template; raises `TemplateProblem`."""
    body_format: Format = "markdown" if fmt == "markdown" else "text"
    if what == "title":
        compile_template(source, None, body_format)
    else:
        compile_template(None, source, body_format)


def compile_template(title: str | None, body: str | None, fmt: Format = "text") -> MessageTemplate:
    """Compile a title and a body template and try them on sample events.

    Raises `TemplateProblem` (a ValueError) with the line in the template for a syntax error,
    an unknown variable, or an error while rendering a sample event.
    """
    template = MessageTemplate(
        title=_compile_one(title, "title") if title is not None else None,
        body=_compile_one(body, "body") if body is not None else None,
        format=fmt,
    )
    for kind, payload in SAMPLE_EVENTS:
        variables = template.context(kind, payload)
        for what, part in (("title", template.title), ("body", template.body)):
            if part is None:
                continue
            try:
                render_limited(part, variables)
            except Exception as exc:
                message = exc.message if isinstance(exc, jinja2.TemplateError) else str(exc)
                hint = (
                    "templates must stay small and quick"
                    if isinstance(exc, TemplateLimit | MemoryError | RecursionError)
                    else "events carry only what their source gave: guard optional values "
                    "with {% if %}"
                )
                raise TemplateProblem(
                    f"{what} template fails on a sample {kind.value} event: "
                    f"{type(exc).__name__}: {one_line(message or '', 200)} ({hint})",
                    _template_line(exc),
                ) from None
    return template


# --- Apprise -------------------------------------------------------------------------------

#: The HTTP answers (status, Retry-After) seen during the send running in this context.
_ANSWERS: contextvars.ContextVar[list[tuple[int, str | None]] | None] = contextvars.ContextVar(
    "poller_http_answers", default=None
)
_hook_installed = False


def _record_answer(response: Any, *args: Any, **kwargs: Any) -> None:
    answers = _ANSWERS.get()
    if answers is not None:
        answers.append((int(response.status_code), response.headers.get("Retry-After")))
        _read_capped(response)


#: The most of a channel's answer that is read, decoded: far more than any service's reply.
MAX_ANSWER_BYTES = 1 << 20
_ANSWER_CHUNK = 64 * 1024


def _read_capped(response: Any) -> None:
    """Read a channel's answer now, at most `MAX_ANSWER_BYTES` of it once decoded.

    ``requests`` would read it whole after the hooks, expanding any gzip bomb a channel sends
    in memory; a body read here is what it keeps instead (urllib3 decodes a step at a time).
    An answer cut short only loses what no plugin needs, and its connection is closed.
    """
    raw = getattr(response, "raw", None)
    if raw is None or getattr(response, "_content", None) is not False:
        return  # not a fresh ``requests`` response, or already read
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= MAX_ANSWER_BYTES:
            chunk = raw.read(_ANSWER_CHUNK, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except Exception:  # a broken answer: keep what was read, the status says the rest
        size = MAX_ANSWER_BYTES + 1
    response._content = b"".join(chunks)[:MAX_ANSWER_BYTES]
    response._content_consumed = True
    if size > MAX_ANSWER_BYTES:
        response.close()  # the rest is not wanted: the connection cannot be reused


def _install_answer_hook() -> None:
    """Add `_record_answer` to the response hooks of every ``requests`` session.

    Apprise's HTTP plugins use ``requests`` and keep the response to themselves; the hook is the
    documented ``requests`` way to see it. It only records while a send of ours runs (Apprise
    copies the caller's context into its worker threads), and records nothing else.
    """
    global _hook_installed
    if _hook_installed:
        return
    _hook_installed = True
    try:
        sessions: Any = importlib.import_module("requests.sessions")
    except ImportError:  # pragma: no cover - Apprise depends on requests
        return
    original = sessions.default_hooks

    def default_hooks() -> dict[str, list[Callable[..., Any]]]:
        hooks: dict[str, list[Callable[..., Any]]] = original()
        hooks.setdefault("response", []).append(_record_answer)
        return hooks

    sessions.default_hooks = default_hooks


def _capture_apprise_warnings() -> None:
    """Let Apprise's per-service capture see warnings, without printing them.

    Apprise records what each service answered ("error=500", "connection error...") through
    its logger, and only what that logger lets through: at the ERROR level `logs.configure`
    sets, the answers would be lost. The records stay out of poller's own output (they are not
    propagated): each delivery attempt is logged once by poller, with the answer, scrubbed.
    """
    logger = logging.getLogger("apprise")
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


#: A path segment shown as it is: a plain word (``hooks``, ``services``) or an API version.
#: Anything else (tokens, ids, Apprise's half-masked ``m...f``) is masked.
_PUBLIC_SEGMENT = re.compile(r"[a-z]{1,12}|v\d{1,2}")
#: A query value shown as it is: Apprise's own settings (``format=text``, ``retry=0``)...
_PUBLIC_VALUE = re.compile(r"[\w.]{0,12}")
#: ... unless the key says it holds a credential. Keys starting with ``+`` (headers), ``-``
#: (query parameters) or ``:`` (payload fields) are masked whatever their value.
_SECRET_KEY = re.compile(r"^[-+:]|token|key|secret|pass|pwd|auth|sig|code|hook|cred", re.I)


def mask_url(url: str) -> str:
    """An Apprise privacy URL masked further: every path segment that is not a plain word and
    every query value that may be a credential become ``***``.

    Apprise's privacy URLs hide passwords and some tokens, but not a token in a ``json://``
    path or in a ``+Authorization`` header or a ``-token`` parameter.
    """
    head, _, query = url.partition("?")
    scheme, sep, rest = head.partition("://")
    if not sep:
        return "***"
    authority, slash, path = rest.partition("/")
    segments = [s if not s or _PUBLIC_SEGMENT.fullmatch(s) else "***" for s in path.split("/")]
    masked = f"{scheme}://{authority}{slash}{'/'.join(segments)}"
    if not query:
        return masked
    pairs = []
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        decoded = unquote(key)
        public = not _SECRET_KEY.search(decoded) and _PUBLIC_VALUE.fullmatch(unquote(value))
        pairs.append(f"{key}{eq}{value if public else '***'}")
    return f"{masked}?{'&'.join(pairs)}"


def _secret_parts(url: str, masked: str) -> list[str]:
    """The pieces of a channel URL that its masked form hides (tokens, passwords...), and
    their decoded and URL-encoded forms."""
    found: set[str] = set()
    # the scheme and the query's keys name things; they hold nothing secret
    named = {url.partition("://")[0]}
    named.update(pair.partition("=")[0] for pair in unquote(url.partition("?")[2]).split("&"))
    for text in (url, unquote(url)):
        for part in re.split(r"[/:@?&=#,+\s]", text):
            if len(part) >= 4 and part not in masked and part.lstrip("+-:") not in named:
                found.update(redact.pieces(part))
    return sorted((p for p in found if p not in masked), key=len, reverse=True)


class Notifier:
    """Sends messages to named channels, one Apprise object each."""

    def __init__(self, channels: Mapping[str, str], *, timeout: float = 30.0) -> None:
        _install_answer_hook()
        _capture_apprise_warnings()
        self.timeout = timeout
        self._channels: dict[str, apprise.Apprise] = {}
        self._secrets: dict[str, list[str]] = {}
        self._socket_timeout: dict[str, float] = {}
        for name, url in channels.items():
            obj = apprise.Apprise()
            obj.add(url)
            self._channels[name] = obj
            masked = " ".join(self.describe(name))
            self._secrets[name] = _secret_parts(url, masked)
            # also out of every log line: urllib3 logs the paths Apprise posts to
            redact.register_logged(self._secrets[name])

    @property
    def names(self) -> tuple[str, ...]:
        """The configured channel names."""
        return tuple(self._channels)

    def describe(self, channel: str) -> list[str]:
        """The channel's service URLs with secrets masked."""
        return [
            mask_url(str(service.url(privacy=True)))  # type: ignore[no-untyped-call]
            for service in self._channels[channel]
        ]

    def format_for(self, channel: str) -> Format:
        """Markdown if every service of the channel prefers Markdown or HTML, else text."""
        obj = self._channels.get(channel)
        if obj is None or len(obj) == 0:
            return "text"
        for service in obj:
            preferred = service.notify_format
            if isinstance(preferred, tuple | list):
                preferred = preferred[0] if preferred else None
            if str(getattr(preferred, "value", preferred)) not in ("markdown", "html"):
                return "text"
        return "markdown"

    def scrub(self, channel: str, text: str) -> str:
        """`text` with every secret part of the channel's URL masked."""
        for part in self._secrets.get(channel, ()):
            text = text.replace(part, "***")
        return text

    def _limit_sockets(self, channel: str, obj: apprise.Apprise, timeout: float) -> None:
        # A send we stop waiting for keeps a worker thread until its socket gives up: make the
        # sockets give up when we do, so that a hanging service cannot pile up threads.
        if self._socket_timeout.get(channel) == timeout:
            return
        self._socket_timeout[channel] = timeout
        for service in obj:
            for attr in ("socket_connect_timeout", "socket_read_timeout"):
                current = getattr(service, attr, None)
                if isinstance(current, int | float) and (current <= 0 or current > timeout):
                    setattr(service, attr, timeout)

    async def send(
        self,
        channel: str,
        title: str,
        body: str,
        kind: Event | None = None,
        *,
        severity: str | None = None,
        body_format: Format = "text",
        # the per-send limit handed to Apprise, which enforces it on its worker threads
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> str:
        """Send one message; return what the services answered, or raise `NotifyError`.

        The Apprise type is `severity`, else that of `kind`. The whole send is bounded by
        `timeout` (default: the notifier's). The error's `retry_after` is the longest
        ``Retry-After`` a service answered with a 429 or 503, in seconds.
        """
        obj = self._channels.get(channel)
        if obj is None:
            raise NotifyError(channel, "channel is not configured")
        limit = self.timeout if timeout is None else timeout
        self._limit_sockets(channel, obj, limit)
        notify_type = severity or (EVENT_SEVERITY[kind] if kind is not None else "info")
        answers: list[tuple[int, str | None]] = []
        token = _ANSWERS.set(answers)
        try:
            # Apprise's own deadline reports TIMEOUT; ours is the backstop if that fails.
            result = await asyncio.wait_for(
                obj.async_notify(
                    body=body,
                    title=title,
                    notify_type=notify_type,
                    body_format=body_format,
                    timeout=limit,
                ),
                timeout=limit + 5.0,
            )
        except TimeoutError:
            raise NotifyError(channel, f"no answer within {limit:g}s") from None
        finally:
            _ANSWERS.reset(token)
        answer = self.scrub(channel, _answer(result, answers))
        if not result:
            raise NotifyError(channel, answer, retry_after=_retry_after(answers))
        return answer


def _retry_after(answers: Sequence[tuple[int, str | None]]) -> float | None:
    # imported here: the HTTP stack of the sources is heavy, and CLI commands that only read the
    # config should not load it
    from poller.http import parse_retry_after

    waits = [
        wait
        for status, header in answers
        if status in (429, 503) and (wait := parse_retry_after(header, time.time())) is not None
    ]
    return max(waits) if waits else None


def _answer(result: Any, answers: Sequence[tuple[int, str | None]]) -> str:
    """A one-line account of what each service answered; URLs are Apprise's masked ones."""
    parts = []
    for outcome in getattr(result, "results", ()):
        status = outcome.status.name.lower()
        # the query string holds Apprise's defaults (method, overflow...): noise in an answer
        line = f"{mask_url(str(outcome.url).split('?', 1)[0])} {status}"
        if not outcome:
            messages = [
                entry.message for entry in outcome.logs() if entry.level in ("WARNING", "ERROR")
            ]
            if messages:
                line += f": {one_line(messages[-1], 300)}"
        parts.append(line)
    failed = [(status, header) for status, header in answers if status >= 400]
    if failed:
        status, header = failed[-1]
        parts.append(
            f"HTTP {status}" + (f", Retry-After: {one_line(header, 40)}" if header else "")
        )
    if not parts:
        status_name = getattr(getattr(result, "status", None), "name", "")
        if status_name == "NOMATCH":
            return "no service is loaded for this channel"
        return "ok" if result else "no service accepted the message"
    return "; ".join(parts)
