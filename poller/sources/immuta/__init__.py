"""The Immuta source type (``type: immuta``): its config model and search filters (`config`),
its adapter (`adapter`, imported at the first build) and, here, its registration."""

from __future__ import annotations

from poller.sources.base import SourceType, lazy_build, register
from poller.sources.immuta.config import ImmutaSource, SearchSpec

__all__ = ["IMMUTA", "ImmutaSource", "SearchSpec"]

#: Its adapter lists the jobs of ``bulk`` and ``search`` entries (a `Discoverer`).
IMMUTA = register(
    SourceType(
        "immuta",
        ImmutaSource,
        lazy_build("poller.sources.immuta.adapter:ImmutaAdapter"),
        discovers=("bulk", "search"),
    )
)
