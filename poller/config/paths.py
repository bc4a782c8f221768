"""Places in a config: the key path of a value and how a problem prints it."""

from __future__ import annotations

from collections.abc import Sequence

#: A place in the config: mapping keys and list indexes from the root.
KeyPath = tuple[str | int, ...]


def format_path(path: Sequence[str | int]) -> str:
    """The path as a person reads it: ``jobs[2].polling.interval``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
