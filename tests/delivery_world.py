"""A daemon world for delivery tests: loopback Ruler API, webhook sink, config, `poller run`.

Shared by test_chaos, test_delivery, test_notify and test_email. Everything is real: the daemon
is `python -m poller run` in a subprocess, the job API and the webhook receiver are the
simulators of `poller.testing` on loopback, and the database is a SQLite file read back with the
standard library.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from world import DaemonWorld

from poller.testing import RulerSim, SimThread, WebhookSink

SITE = "s1"


def job_yaml(job_id: str, name: str = "", source: str = "ruler-prod", extra: str = "") -> str:
    """One entry of the config's ``jobs`` list."""
    text = f"  - {{source: {source}, site: '{SITE}', id: '{job_id}'"
    if name:
        text += f", name: {json.dumps(name)}"
    if extra:
        text += f", {extra}"
    return text + "}\n"


class DeliveryWorld(DaemonWorld):
    """The delivery tests' world: every event routed to the sink; sections overridable."""

    def __init__(self, tmp: Path, ruler: RulerSim, sink: WebhookSink) -> None:
        super().__init__(tmp, ruler, sink)
        self.db = tmp / "poller.db"

    def write_config(
        self,
        jobs: str = "",
        *,
        channels: str | None = None,
        rules: str | None = None,
        polling: str = "  interval: 100ms\n  max_interval: 500ms\n",
        delivery: str = "",
        sources: str = "",
    ) -> None:
        """Write the config; sections are YAML bodies indented by two spaces."""
        if channels is None:
            channels = f"  hook: {self.sink.apprise_url}\n"
        if rules is None:
            rules = (
                "  - on: [started, succeeded, partial, failed, cancelled, expired, timed_out,"
                " stalled, unreachable, recovered]\n    notify: [hook]\n"
            )
        text = f"""
database: sqlite:///{self.db}
log: {{level: debug, format: json}}
sources:
  ruler-prod:
    type: ruler
    base_url: {self.ruler.base_url}
    token: ${{RULER_TOKEN}}
{sources}
channels:
{channels}
rules:
{rules}
polling:
{polling}
"""
        if delivery:
            text += f"delivery:\n{delivery}\n"
        text += f"jobs:\n{jobs or '  []'}\n"
        self.config.write_text(text)

    def status(self) -> dict[str, Any]:
        """`poller status --json`."""
        doc: dict[str, Any] = json.loads(self.cli("status", "--json", "--all").stdout)
        return doc

    def logs(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines so far (lines that are not JSON are skipped)."""
        if not self.log.exists():
            return []
        lines = []
        for raw in self.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                lines.append(entry)
        return lines

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the database directly (read-only), e.g. to list recorded events."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def pending_deliveries(self) -> int:
        """Deliveries not yet sent nor given up."""
        return int(self.query("SELECT count(*) FROM deliveries WHERE status = 'pending'")[0][0])

    def messages(self, path: str | None = None) -> list[dict[str, Any]]:
        """Messages the sink received (on `path`, if given)."""
        return [m for m in self.sink.messages if path is None or m["path"] == path]


def named_keys(text: str) -> set[str]:
    """Every watch key (``source/site/job``) a message names."""
    return set(re.findall(r"[\w.-]+/[\w.-]+/[\w.-]+", text))


@pytest.fixture
def dworld(tmp_path: Path) -> Iterator[DeliveryWorld]:
    """A fresh world whose simulators run on a background thread."""
    ruler, sink = RulerSim(token="tok-" + os.urandom(4).hex()), WebhookSink()
    with SimThread(ruler, sink):
        w = DeliveryWorld(tmp_path, ruler, sink)
        try:
            yield w
        finally:
            w.close()
