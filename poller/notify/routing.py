"""Routing: which channels an event goes to, from the config's rules."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from poller.models import Event


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
