"""Cleaning hostile text for a message: mentions, one-line fields, Markdown, length.

Everything a message shows from a job API or a user (names, reasons, failing rows, outputs) is
hostile until cleaned: mass mentions are defused, single-line fields stay on one line (a title
becomes an email subject), Markdown and HTML in it are escaped, and long text is cut.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from poller.units import shorten

#: How a message body is written: plain text, or Markdown (which Apprise turns into HTML for
#: email and into each chat service's own markup).
Format = Literal["text", "markdown"]

#: The longest field, title and body a message holds; longer text is cut with a marker.
MAX_FIELD = 500
MAX_TITLE = 250
MAX_BODY = 8000

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


def clean(text: object, limit: int = MAX_FIELD) -> str:
    """Text from a remote API or a user made safe for any channel.

    Mass, user and role mentions are defused (Slack, Discord, Teams, Matrix): a zero-width
    space keeps them readable but inert. Long text is cut with a marker. Line breaks are kept:
    callers that need one line use `one_line`.
    """
    value = text if isinstance(text, str) else str(text)
    value = _MENTION.sub(
        lambda m: m.group(0).replace("@", "@\u200b").replace("<!", "<\u200b!"), value
    )
    return shorten(value, limit)


def one_line(text: object, limit: int = 200) -> str:
    """`clean`, on one line: a title or field can then not start a mail header or a paragraph."""
    return clean(" ".join(str(text).split()), limit)


def md_escape(text: str) -> str:
    """Escape what would let text become a link, an image or raw HTML in Markdown.

    Emphasis characters are left alone: at worst they make text bold, and escaping them shows
    stray backslashes in Slack.
    """
    return _MARKDOWN_ACTIVE.sub(r"\\\1", text)


def fenced(lines: Iterable[str]) -> str:
    """A Markdown code block whose content cannot close it early."""
    body = "\n".join(line.replace("```", "`\u200b`\u200b`") for line in lines)
    return f"```\n{body}\n```"
