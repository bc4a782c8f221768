"""Notifications, one module per job; this package re-exports what the rest of poller uses.

- `routing`: which channels an event goes to (`route`).
- `text`: cleaning hostile text (mentions, one-line fields, Markdown escaping, cutting).
- `render`: an event's facts, poller's own messages, digests, and the fallbacks that never fail.
- `templates`: users' Jinja2 templates in a sandbox with limits, checked at load time.
- `apprise`: sending through Apprise (`Notifier`), the services' answers, masked URLs, and
  Apprise's logger.

Inside the package imports point one way: `text` imports nothing of notify, `render`
imports `text`, `templates` imports `render` and `text`, `apprise` imports `text`.
"""

from __future__ import annotations

from poller.events import MAX_COUNT
from poller.notify.apprise import MAX_ANSWER_BYTES, Notifier, mask_url, quiet_apprise
from poller.notify.render import (
    DETAILED_DIGEST,
    GROUPS,
    MARKERS,
    VERBS,
    event_facts,
    minimal_message,
    render,
    render_digest,
    render_digest_safely,
    render_report,
    render_report_safely,
    render_safely,
)
from poller.notify.routing import RuleLike, route
from poller.notify.templates import (
    SAMPLE_EVENTS,
    TEMPLATE_TIME_LIMIT,
    TEMPLATE_VARIABLES,
    MessageTemplate,
    TemplateLimit,
    TemplateProblem,
    check_template,
    compile_template,
    render_limited,
)
from poller.notify.text import MAX_BODY, MAX_FIELD, MAX_TITLE, Format, clean, md_escape, one_line

__all__ = [
    "DETAILED_DIGEST",
    "GROUPS",
    "MARKERS",
    "MAX_ANSWER_BYTES",
    "MAX_BODY",
    "MAX_COUNT",
    "MAX_FIELD",
    "MAX_TITLE",
    "SAMPLE_EVENTS",
    "TEMPLATE_TIME_LIMIT",
    "TEMPLATE_VARIABLES",
    "VERBS",
    "Format",
    "MessageTemplate",
    "Notifier",
    "RuleLike",
    "TemplateLimit",
    "TemplateProblem",
    "check_template",
    "clean",
    "compile_template",
    "event_facts",
    "mask_url",
    "md_escape",
    "minimal_message",
    "one_line",
    "quiet_apprise",
    "render",
    "render_digest",
    "render_digest_safely",
    "render_limited",
    "render_report",
    "render_report_safely",
    "render_safely",
    "route",
]
