"""Cleaning hostile text for a message: mentions, one-line fields, Markdown, length.

Everything a message shows from a job API or a user (names, reasons, failing rows, outputs) is
hostile until cleaned: mass mentions are defused, single-line fields stay on one line (a title
becomes an email subject), Markdown and HTML in it are escaped, and long text is cut.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import Literal
from urllib.parse import urlsplit
from xml.etree import ElementTree

import markdown
import markdown.treeprocessors

from poller.units import shorten

#: How a message body is written: plain text, or Markdown (which poller turns into HTML for the
#: services that show HTML, email and Matrix, and Apprise into each chat service's own markup).
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


#: Characters a link's target cannot hold as they are in Markdown (``[label](target)``).
_LINK_UNSAFE = re.compile(r"[\s()<>\\\[\]`]")


def md_link(url: str) -> str:
    """`url` (already `clean`) as a Markdown link, so that email and chat show a link; only
    ``http`` and ``https`` URLs become links (never ``javascript:`` or ``data:``), anything else
    stays escaped text."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme not in ("http", "https") or any(ord(c) < 32 for c in url):
        return md_escape(url)
    target = _LINK_UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group(0).encode()), url)
    return f"[{md_escape(url)}]({target})"


#: Python-Markdown's extensions for messages: code blocks, and a line break kept as one
#: (poller's fields are one per line; plain Markdown would run them into one paragraph).
_MARKDOWN_EXTENSIONS = ("fenced_code", "nl2br")
#: ``\\<`` that `md_escape` wrote (not an escaped backslash before ``<``).
_ESCAPED_ANGLE = re.compile(r"(?<!\\)((?:\\\\)*)\\<")


class _SafeLinks(markdown.treeprocessors.Treeprocessor):
    """Links only to http(s) and mail addresses, and no images (a remote image in a mail is
    a tracker): what a template writes cannot make a ``javascript:`` link."""

    def run(self, root: ElementTree.Element) -> None:
        for element in root.iter():
            if element.tag == "img":
                element.tag, element.text = "span", element.get("alt", "")
                element.attrib.clear()
            elif element.tag == "a":
                href = element.get("href", "")
                scheme = href.partition(":")[0].lower() if ":" in href else ""
                if scheme not in ("http", "https", "mailto"):
                    element.tag = "span"
                    element.attrib.clear()


def markdown_to_html(text: str) -> str:
    """A Markdown body as HTML for a service that shows HTML (email, Matrix).

    Line breaks stay line breaks (``<br>``), with no newline after them: Apprise writes an
    email's text part from this HTML, and a newline after ``<br>`` became a space starting
    every line there. Raw HTML is shown as text, never passed on (whatever a value or a
    template holds); links are those Markdown writes (`md_link`), and only http(s) ones.
    """
    converter = markdown.Markdown(extensions=list(_MARKDOWN_EXTENSIONS), output_format="html")
    # raw HTML off: ``<b>`` stays text (Python-Markdown's own advice, in place of safe mode);
    # so are ``<https://...>`` and ``<a@b>``: a link is a ``[label](url)`` that Markdown wrote
    converter.preprocessors.deregister("html_block")
    for pattern in ("html", "autolink", "automail"):
        converter.inlinePatterns.deregister(pattern)
    converter.treeprocessors.register(_SafeLinks(converter), "poller_safe_links", 0)
    # ``\<`` is `md_escape`'s guard for renderers that take HTML; here ``<`` is text already
    rendered = converter.convert(_ESCAPED_ANGLE.sub(r"\1<", text))
    return rendered.replace("<br>\n", "<br>")


def text_to_html(text: str) -> str:
    """A plain-text body as HTML: escaped, its line breaks and leading spaces kept."""
    lines = []
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        lines.append("&nbsp;" * (len(line) - len(stripped)) + html.escape(stripped, quote=False))
    return "<br>".join(lines)
