"""The Ruler source type (``type: ruler``): its config model (`config`), its adapter
(`adapter`, imported at the first build) and, here, its registration."""

from __future__ import annotations

from poller.sources.base import SourceType, lazy_build, register
from poller.sources.ruler.config import RulerSource

__all__ = ["RULER", "RulerSource"]

#: Its jobs are named by a site and an id; a site's job list needs a bigger answer cap.
RULER = register(
    SourceType(
        "ruler",
        RulerSource,
        lazy_build("poller.sources.ruler.adapter:RulerAdapter"),
        needs_site=True,
        answer_cap=RulerSource.ANSWER_CAP,
    )
)
