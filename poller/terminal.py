"""Text from job APIs, configs and users, made safe to show on a terminal.

Ids, names, statuses and errors are data, never instructions to the terminal: a remote status
``[/]`` must not be read as rich markup (it crashed `poller status`), and an id that Immuta
discovery supplies with an escape sequence must not move the cursor or recolour the screen.
Every command prints such values through `printable` (plain ``print``) or `plain` (rich).
"""

from __future__ import annotations

import re

from rich.text import Text

#: C0 and C1 controls (ESC starts every escape sequence), DEL, and the characters that
#: reorder or break lines on a terminal (bidirectional overrides and isolates, line and
#: paragraph separators): each is shown as an escape instead.
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(value: object, *, lines: bool = False) -> str:
    """`value` as text that shows as itself: every control character becomes a visible
    escape (``\\x1b``, ``\\n``, ``\\u202e``). With `lines`, newlines (a message body's) stay."""
    text = str(value)
    if lines:
        return "\n".join(printable(line) for line in text.split("\n"))
    return _UNPRINTABLE.sub(_escape, text) if _UNPRINTABLE.search(text) else text


def plain(value: object, *, style: str = "", lines: bool = False) -> Text:
    """`printable(value)` as a rich `Text`: printed as it is, never parsed as markup."""
    return Text(printable(value, lines=lines), style=style)
