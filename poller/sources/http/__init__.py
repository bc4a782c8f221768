"""The http source type (``type: http``, any JSON job-status endpoint): its config model
(`config`), its adapter (`adapter`, imported at the first build) and, here, its registration."""

from __future__ import annotations

from poller.sources.base import SourceType, lazy_build, register
from poller.sources.http.config import HttpExpressions, HttpSource

__all__ = ["HTTP", "HttpExpressions", "HttpSource"]

#: Its adapter lists the jobs of ``bulk`` entries on a source with ``discover``.
HTTP = register(
    SourceType(
        "http",
        HttpSource,
        lazy_build("poller.sources.http.adapter:HttpAdapter"),
        # a job may have a site: the {site} of the templates (Airflow: the dag of a dag run)
        takes_site=True,
        discovers=("bulk",),
        discovers_with="discover",
    )
)
