"""Notifications: which channels an event goes to, what the message says, and Apprise.

One Apprise object per channel, so that a slow or broken channel fails alone and its answer
is known. Apprise reports results instead of raising; a failure becomes `NotifyError` with what
the service answered. Channel URLs hold secrets: only `url(privacy=True)` is ever shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import apprise

from poller.errors import NotifyError
from poller.models import EVENT_SEVERITY, Event

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

MAX_FIELD = 500
_MENTION = re.compile(r"<!(channel|here|everyone)[^>]*>|@(channel|here|everyone)\b", re.I)


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


def clean(text: Any, limit: int = MAX_FIELD) -> str:
    """Text from a remote API or a user made safe for any channel.

    Mass mentions are defused (Slack, Discord, Teams) and line breaks are kept out of
    single-line fields by the callers; long text is cut with a marker.
    """
    value = str(text)
    value = _MENTION.sub(
        lambda m: m.group(0).replace("@", "@\u200b").replace("<!", "<\u200b!"), value
    )
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _one_line(text: Any, limit: int = 200) -> str:
    return clean(" ".join(str(text).split()), limit)


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "?"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs or not parts:
        parts.append(f"{secs}s")
    return " ".join(parts)


def _rows(details: Mapping[str, Any]) -> str | None:
    """'980 succeeded, 20 failed of 1000', or what part of it the source gave."""
    succeeded, failed = details.get("success_count"), details.get("failure_count")
    total, processed = details.get("total_rows"), details.get("processed_rows")
    of_total = f" of {total}" if total is not None else ""
    if succeeded is not None or failed is not None:
        return f"{succeeded or 0} succeeded, {failed or 0} failed{of_total}"
    if processed is not None:
        return f"{processed} processed{of_total}"
    return None


def render(kind: Event, payload: Mapping[str, Any]) -> tuple[str, str]:
    """The title and body of the message for one event, from its stored payload."""
    label = _one_line(payload.get("name") or payload.get("key", "?"))
    title = f"{MARKERS[kind]} {label} {VERBS[kind]}"
    details: Mapping[str, Any] = payload.get("details") or {}
    lines = [f"Job: {_one_line(payload.get('key', '?'))}"]
    state, remote = payload.get("state"), payload.get("remote_status")
    if state:
        shown = f"{state} (remote: {_one_line(remote, 60)})" if remote else str(state)
        if payload.get("previous_state"):
            shown += f", was {payload['previous_state']}"
        lines.append(f"State: {shown}")
    progress = payload.get("progress")
    if isinstance(progress, int | float):
        lines.append(f"Progress: {progress:.0f}%")
    rows = _rows(details)
    if rows:
        lines.append(f"Rows: {rows}")
    if details.get("failure_reason"):
        lines.append(f"Reason: {clean(details['failure_reason'])}")
    started = details.get("remote_created_at") or payload.get("started_at")
    ended = details.get("remote_completed_at") or payload.get("ended_at")
    if isinstance(started, int | float):
        line = f"Started: {_when(started)}"
        if isinstance(ended, int | float):
            line += f", took {_duration(ended - started)}"
        lines.append(line)
    if payload.get("error"):
        lines.append(f"Error: {clean(payload['error'])}")
    if payload.get("tags"):
        lines.append("Tags: " + ", ".join(_one_line(t, 50) for t in payload["tags"]))
    return title, "\n".join(lines)


class Notifier:
    """Sends messages to named channels, one Apprise object each."""

    def __init__(self, channels: Mapping[str, str], *, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._channels: dict[str, apprise.Apprise] = {}
        for name, url in channels.items():
            obj = apprise.Apprise()
            obj.add(url)
            self._channels[name] = obj

    @property
    def names(self) -> tuple[str, ...]:
        """The configured channel names."""
        return tuple(self._channels)

    def describe(self, channel: str) -> list[str]:
        """The channel's service URLs with secrets masked."""
        return [str(service.url(privacy=True)) for service in self._channels[channel]]  # type: ignore[no-untyped-call]

    async def send(self, channel: str, title: str, body: str, kind: Event) -> str:
        """Send one message; return what the service answered, or raise `NotifyError`."""
        obj = self._channels.get(channel)
        if obj is None:
            raise NotifyError(channel, "channel is not configured")
        result = await obj.async_notify(
            body=body,
            title=title,
            notify_type=EVENT_SEVERITY[kind],
            timeout=self.timeout,
        )
        answer = _answer(obj, result)
        if not result:
            raise NotifyError(channel, answer)
        return answer


def _answer(obj: apprise.Apprise, result: Any) -> str:
    """A one-line account of what each service answered, URLs masked."""
    parts = []
    for service, outcome in zip(obj, getattr(result, "results", ()), strict=False):
        messages = [
            entry.message
            for attempt in outcome.attempts
            for entry in attempt.logs
            if entry.level in ("WARNING", "ERROR")
        ]
        status = outcome.status.name.lower()
        detail = f": {_one_line(messages[-1], 300)}" if messages and not outcome else ""
        parts.append(f"{service.url(privacy=True)} {status}{detail}")  # type: ignore[no-untyped-call]
    if not parts:
        return "ok" if result else "no service accepted the message"
    return "; ".join(parts)
