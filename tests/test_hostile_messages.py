"""Messages under hostile input, end to end: numbers that cannot be formatted, templates that
never end, and mentions, each driven through `poller run` against loopback APIs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from delivery_world import DeliveryWorld
from world import eventually

from poller.sim import JsonJobSim, RulerSim, SimThread, WebhookSink

WH_TOKEN = "wh-token-" + "5a17c0de"


@pytest.fixture
def hworld(tmp_path: Path) -> Iterator[tuple[DeliveryWorld, JsonJobSim]]:
    """A delivery world with a generic JSON job API beside the Ruler one."""
    ruler, sink = RulerSim(token="tok-" + os.urandom(4).hex()), WebhookSink()
    api = JsonJobSim(WH_TOKEN)
    with SimThread(ruler, sink, api):
        w = DeliveryWorld(tmp_path, ruler, sink)
        try:
            yield w, api
        finally:
            w.close()


def http_source(api: JsonJobSim, details: dict[str, str]) -> str:
    """The YAML of an ``http`` source `wh` reading `details` (name: JMESPath) from `api`."""
    detail = "".join(f"      {name}: {expr}\n" for name, expr in details.items())
    return (
        f"  wh:\n    type: http\n    url: {api.base_url}/jobs/{{id}}\n"
        f"    headers: {{Authorization: 'Bearer {WH_TOKEN}'}}\n"
        "    state: data.status\n"
        f"    detail:\n{detail}"
        "    states: {RUNNING: running, DONE: succeeded, ERROR: failed}\n"
    )


def wh_job(job_id: str, name: str = "") -> str:
    text = f"  - {{source: wh, id: '{job_id}'"
    return text + (f", name: {json.dumps(name)}}}\n" if name else "}\n")


class TestNumbersThatCannotBeFormatted:
    """Item 3: nothing an API sends can stop a message."""

    def test_a_400_digit_row_count_still_reaches_the_channel(
        self, hworld: tuple[DeliveryWorld, JsonJobSim]
    ) -> None:
        """Counts beyond any float, and times at the ends of the float range, in one job: the
        message goes out once, on its first attempt, and the other job's too."""
        w, api = hworld
        huge = int("9" * 400)
        api.add_job(
            "big",
            status="ERROR",
            total=huge,
            failed=huge,
            rows=[{"row": huge, "message": "bad"}],
            started=-1.7e308,
            ended=1.7e308,
            reason="disk full",
        )
        api.add_job("small", status="ERROR", total=10, failed=1, reason="bad row")
        w.write_config(
            wh_job("big", "Huge import") + wh_job("small", "Small import"),
            sources=http_source(
                api,
                {
                    "total_rows": "data.total",
                    "failure_count": "data.failed",
                    "processed_rows": "data.total",
                    "failed_rows": "data.rows",
                    "remote_created_at": "data.started",
                    "remote_completed_at": "data.ended",
                    "failure_reason": "data.reason",
                },
            ),
            rules="  - on: [failed]\n    notify: [hook]\n",
            delivery="  digest: {enabled: false}\n",
        )
        w.start()
        said = eventually(
            lambda: len(w.messages()) >= 2 and "\n".join(m["title"] for m in w.messages()),
            what="both messages",
        )
        assert "Huge import failed" in said and "Small import failed" in said
        rows = w.query("SELECT status, attempts FROM deliveries ORDER BY id")
        assert rows == [("sent", 1), ("sent", 1)]
        assert not [e for e in w.logs() if e.get("event") == "delivery failed"]
