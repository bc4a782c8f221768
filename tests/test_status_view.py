"""`poller status`, `history` and `prune` as an operator reads them (issue 14): a table that
never breaks a key, problems first with their condition in the state column, filters and a
limit answered by the database, a summary line, outages condensed in `history`, ISO 8601 in
every JSON time, and retention. The watches are written through the real store into real
SQLite files and PostgreSQL databases; the commands run as users run them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from poller.app import Daemon, config_watch_specs
from poller.cli import app
from poller.config import load_config
from poller.engine.runtime import Tuning
from poller.events import EventPayload
from poller.models import Event, EventRecord, State, Transition, WatchSpec
from poller.store.repo import Store, WriteBack

NOW = time.time()
DAY = 86400.0
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
LONG_KEY = "ruler-prod/site1/slow-ok-with-a-rather-long-job-id"


def config_file(tmp: Path, database: str, extra: str = "") -> Path:
    """A config with one source (never reached: these commands only read the database)."""
    path = tmp / "config.yaml"
    path.write_text(
        f"""
database: {database}
sources:
  ruler-prod: {{type: ruler, base_url: "http://127.0.0.1:9/v1", token: t}}
  other: {{type: ruler, base_url: "http://127.0.0.1:9/v1", token: t}}
{extra}"""
    )
    return path


def cli(config: Path, *args: str, columns: int | None = None) -> Any:
    """One command through typer's runner (no terminal needed); the result."""
    env = {"COLUMNS": str(columns)} if columns else {}
    return CliRunner().invoke(app, [*args, "-c", str(config)], env=env)


def payload(kind: Event, key: str, at: float, **fields: Any) -> dict[str, Any]:
    """An event's stored payload, as polling writes it."""
    return EventPayload(event=kind.value, key=key, at=at, **fields).to_json()


def written(
    store: Store,
    key: str,
    progress: dict[str, Any],
    *,
    at: float,
    transition: Transition | None = None,
    records: tuple[EventRecord, ...] = (),
) -> None:
    """Write one poll result for the watch `key`, as the daemon does (claim, write back)."""
    claimed = store.claim_due("me", at + 1e6, 1000, 30)
    (watch,) = [w for w in claimed if w.key == key]
    store.release_watches("me", [w.id for w in claimed if w.key != key])
    store.write_back(
        "me",
        [
            WriteBack(
                watch=watch,
                progress=replace(watch.progress, **progress),
                next_poll_at=None if progress.get("active") is False else at + 60,
                polled_at=at,
                transition=transition,
                events=records,
            )
        ],
    )


def populate(url: str) -> None:
    """Six watches, one in each condition the table must tell apart."""
    store = Store(url)
    store.migrate()
    try:
        add = [
            ("ruler-prod", "site1", "slow-ok-with-a-rather-long-job-id", "Nightly load", ()),
            ("ruler-prod", "site1", "failed-1", "Orders", ("nightly",)),
            ("ruler-prod", "site2", "unreach", None, ("nightly", "eu")),
            ("ruler-prod", "site2", "stall", None, ("eu",)),
            ("other", "site3", "done", None, ()),
            ("other", "site3", "late", None, ()),
        ]
        for source, site, job, name, tags in add:
            store.add(WatchSpec(source, job, site=site, name=name, tags=tags), NOW - 3 * DAY)
        key = "ruler-prod/site1/failed-1"
        details = {"failure_reason": "out of memory", "total_rows": 100, "processed_rows": 90}
        details |= {"failed_rows": [], "remote_completed_at": NOW - DAY}
        written(
            store,
            key,
            {"state": State.FAILED, "remote_status": "failed", "details": details}
            | {"ended_at": NOW - DAY, "active": False},
            at=NOW - DAY,
            transition=Transition(None, State.FAILED, "failed", None, NOW - DAY),
            records=(
                EventRecord(
                    Event.FAILED,
                    NOW - DAY,
                    payload(Event.FAILED, key, NOW - DAY, state="failed", details=details),
                    ("hook",),
                ),
            ),
        )
        written(
            store,
            "ruler-prod/site2/unreach",
            {"state": State.RUNNING, "error_since": NOW - 3600, "error_count": 315}
            | {"last_error": "server_error: HTTP 500", "unreachable": True},
            at=NOW - 60,
        )
        written(
            store,
            "ruler-prod/site2/stall",
            {"state": State.RUNNING, "progress": 42.0, "stalled": True},
            at=NOW - 60,
        )
        written(
            store,
            "other/site3/done",
            {"state": State.SUCCEEDED, "ended_at": NOW - 2 * DAY, "active": False},
            at=NOW - 2 * DAY,
        )
        written(
            store,
            "other/site3/late",
            {"state": State.RUNNING, "ended_at": NOW - DAY, "active": False},
            at=NOW - DAY,
        )
    finally:
        store.close()


@pytest.fixture
def sqlite_config(tmp_path: Path) -> Path:
    url = f"sqlite:///{tmp_path}/poller.db"
    populate(url)
    return config_file(tmp_path, url)


@pytest.fixture
def any_config(tmp_path: Path, db_url: str) -> Path:
    populate(db_url)
    return config_file(tmp_path, db_url)


def json_times(document: Any, place: str = "") -> Iterator[tuple[str, Any]]:
    """Every (place, value) in `document` whose name says it is a time (``at``, ``..._at``)."""
    if isinstance(document, dict):
        for name, value in document.items():
            here = f"{place}.{name}"
            if (name == "at" or name.endswith("_at")) and not isinstance(value, dict | list):
                yield here, value
            else:
                yield from json_times(value, here)
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from json_times(value, f"{place}[{index}]")


class TestTable:
    """The table in a terminal of 80 and 110 columns ($COLUMNS), run as a subprocess."""

    @pytest.mark.parametrize("columns", [80, 110])
    def test_keys_whole_conditions_shown_and_a_summary(
        self, sqlite_config: Path, columns: int
    ) -> None:
        """Every key is whole on one line; stalled, unreachable and timed out show in the
        state column; problems come first; the summary counts each state."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        env["COLUMNS"] = str(columns)
        run = subprocess.run(
            [sys.executable, "-m", "poller", "status", "-c", str(sqlite_config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        assert all(len(line) <= columns for line in lines), run.stdout
        keys = [
            "ruler-prod/site2/unreach",
            "ruler-prod/site2/stall",
            "other/site3/late",
            "ruler-prod/site1/failed-1",
            LONG_KEY,
            "other/site3/done",
        ]
        starts = [next(i for i, ln in enumerate(lines) if ln.startswith(k + " ")) for k in keys]
        # problems first, in this order (ended badly: the latest end first)
        assert starts == sorted(starts), run.stdout
        row = {key: lines[i] for key, i in zip(keys, starts, strict=True)}
        assert "unreachable" in row["ruler-prod/site2/unreach"]
        assert "stalled" in row["ruler-prod/site2/stall"]
        assert "timed out" in row["other/site3/late"]
        assert (
            "6 watches: 1 unreachable, 1 stalled, 1 timed out, 1 failed, 1 new, 1 succeeded; "
            "deliveries: 1 pending"
        ) in " ".join(run.stdout.split())  # a narrow terminal may wrap it


class TestFilters:
    """--active, --state, --source, --tag and --limit, on SQLite and PostgreSQL."""

    def keys(self, config: Path, *args: str) -> list[str]:
        result = cli(config, "status", "--json", *args)
        assert result.exit_code == 0, result.output
        return [w["key"] for w in json.loads(result.output)["watches"]]

    def test_each_filter(self, any_config: Path) -> None:
        """Each filter narrows the list, the sort stays problems first."""
        c = any_config
        assert self.keys(c, "--active") == [
            "ruler-prod/site2/unreach",
            "ruler-prod/site2/stall",
            LONG_KEY,
        ]
        assert self.keys(c, "--state", "stalled", "--state", "timed-out") == [
            "ruler-prod/site2/stall",
            "other/site3/late",
        ]
        assert self.keys(c, "--source", "other") == ["other/site3/late", "other/site3/done"]
        assert self.keys(c, "--tag", "nightly") == [
            "ruler-prod/site2/unreach",
            "ruler-prod/site1/failed-1",
        ]
        assert self.keys(c, "--tag", "nightly", "--tag", "eu") == ["ruler-prod/site2/unreach"]

    def test_limit_says_how_many_more(self, any_config: Path) -> None:
        """--limit shows the first N; the table says how many more there are, and the
        summary still counts them all; --json says so too."""
        text = cli(any_config, "status", "--limit", "2").output
        assert "4 more; use --limit N or --all" in text
        assert "6 watches:" in text and LONG_KEY not in text
        doc = json.loads(cli(any_config, "status", "--json", "--limit", "2").output)
        assert (len(doc["watches"]), doc["matched"], doc["more"]) == (2, 6, 4)
        assert doc["counts"]["unreachable"] == 1
        assert len(json.loads(cli(any_config, "status", "--json", "--all").output)["watches"]) == 6

    def test_nothing_matches_and_a_wrong_state(self, any_config: Path) -> None:
        """A filter that matches nothing says so; an unknown state is a usage error that
        lists the states."""
        result = cli(any_config, "status", "--source", "nope")
        assert "no watches match" in result.output and "0 watches" in result.output
        wrong = cli(any_config, "status", "--state", "runing")
        assert wrong.exit_code == 2 and "unreachable, stalled, timed_out" in wrong.output


class TestJsonTimes:
    """Every time in `status --json` and `history --json` is ISO 8601, never an epoch float."""

    def test_status_and_history(self, any_config: Path) -> None:
        """Watch times, the API's own times in details, deliveries and history entries."""
        status = json.loads(cli(any_config, "status", "--json").output)
        history = json.loads(
            cli(any_config, "history", "ruler-prod/site1/failed-1", "--json").output
        )
        times = list(json_times(status)) + list(json_times(history))
        places = {re.sub(r"\[\d+\]", "[]", place) for place, _ in times}
        assert ".watches[].details.remote_completed_at" in places
        assert ".history[].deliveries[].sent_at" in places and ".channels[].oldest_at" in places
        for place, value in times:
            assert value is None or (isinstance(value, str) and ISO.match(value)), (place, value)


class TestHistory:
    """Outages condensed to one line each; transitions with the job's reason and counts."""

    def test_an_outage_that_recovered_and_one_in_progress(
        self, tmp_path: Path, db_url: str
    ) -> None:
        """315 failed polls show as one outage: since when, how many, the error, when it
        recovered; a failing run still in progress shows as failing."""
        populate(db_url)
        key = "ruler-prod/site1/failed-1"
        store = Store(db_url)
        try:
            store.add(WatchSpec("ruler-prod", "flaky", site="s"), NOW - DAY)
            flaky = "ruler-prod/s/flaky"
            start, down, back = NOW - 7200, NOW - 7000, NOW - 3600
            written(
                store,
                flaky,
                {"state": State.RUNNING, "error_since": start, "error_count": 12}
                | {"last_error": "server_error: HTTP 503", "unreachable": True},
                at=down,
                transition=Transition(None, State.RUNNING, "processing", None, start - 10),
                records=(
                    EventRecord(
                        Event.UNREACHABLE,
                        down,
                        payload(
                            Event.UNREACHABLE,
                            flaky,
                            down,
                            error="server_error: HTTP 503",
                            error_count=12,
                            outage_since=start,
                        ),
                        ("hook",),
                    ),
                ),
            )
            written(
                store,
                flaky,
                {"error_since": None, "error_count": 0, "last_error": None, "unreachable": False},
                at=back,
                records=(
                    EventRecord(
                        Event.RECOVERED,
                        back,
                        payload(Event.RECOVERED, flaky, back, error_count=315, outage_since=start),
                        ("hook",),
                    ),
                ),
            )
            written(
                store,
                flaky,
                {"error_since": NOW - 120, "error_count": 4, "last_error": "timeout: 30s"},
                at=NOW - 60,
            )
        finally:
            store.close()
        config = config_file(tmp_path, db_url)
        text = cli(config, "history", flaky).output.splitlines()
        outages = [line for line in text if "outage" in line]
        assert len(outages) == 2, text
        assert "polling failing, 315 failed polls: server_error: HTTP 503; recovered" in outages[0]
        assert "after 1h" in outages[0] and "[hook: pending, hook: pending]" in outages[0]
        assert "4 failed polls: timeout: 30s; still failing" in outages[1]
        assert not any(" event " in line and "unreachable" in line for line in text)
        doc = json.loads(cli(config, "history", flaky, "--json").output)
        (outage, _) = [e for e in doc["history"] if e["kind"] == "outage"]
        assert (outage["failed_polls"], outage["error"]) == (315, "server_error: HTTP 503")
        assert ISO.match(outage["since_at"]) and ISO.match(outage["recovered_at"])

        failed = cli(config, "history", key).output
        assert (
            "transition  new -> failed (remote failed); reason: out of memory; "
            "rows: 90 processed of 100\n"
        ) in failed
        assert "event       failed  [hook: pending]" in failed  # the reason said once


class TestPrune:
    """`poller prune` and the `retention` key, on SQLite and PostgreSQL."""

    def test_prune_says_what_it_removed_and_keeps_pending(
        self, tmp_path: Path, db_url: str
    ) -> None:
        """Ended longer ago than the cutoff goes with its history; a watch with a pending
        delivery, a job of the config and a recent end stay."""
        populate(db_url)
        config = config_file(tmp_path, db_url, "retention: 36h\n")
        result = cli(config, "prune")
        # done (2 days ago) goes; failed-1 (1 day) is recent, and has a pending delivery
        assert result.exit_code == 0, result.output
        assert "1 watch, 0 transitions, 0 events, 0 deliveries" in result.output
        keys = [w["key"] for w in json.loads(cli(config, "status", "--json").output)["watches"]]
        assert "other/site3/done" not in keys and len(keys) == 5

        again = cli(config, "prune", "--older-than", "1h")
        # late (timed out a day ago) goes; failed-1 stays for its pending delivery
        assert "1 watch, 0 transitions" in again.output
        store = Store(db_url)
        try:
            assert store.get_watch("ruler-prod/site1/failed-1") is not None
            (delivery,) = store.claim_deliveries("me", NOW, 10, 30, channel="hook")
            store.finish_deliveries("me", [_sent(delivery.id)], NOW)
        finally:
            store.close()
        last = cli(config, "prune", "--older-than", "1h")
        assert "1 watch, 1 transition, 1 event, 1 delivery" in last.output

    def test_a_config_job_stays_and_zero_keeps(self, tmp_path: Path, db_url: str) -> None:
        """A job the config lists is never pruned (a reload would watch it again as new);
        `retention: 0` keeps everything."""
        populate(db_url)
        jobs = "jobs:\n  - {source: other, site: site3, id: done}\n"
        store = Store(db_url)
        try:
            specs = config_watch_specs(load_config(config_file(tmp_path, db_url, jobs)))
            store.sync_config_jobs(specs, NOW)
        finally:
            store.close()
        config = config_file(tmp_path, db_url, jobs + "retention: 0\n")
        assert "keep for ever" in cli(config, "prune").output
        result = cli(config, "prune", "--older-than", "1h")
        assert "pruned" in result.output and "1 watch," in result.output  # late only
        keys = [w["key"] for w in json.loads(cli(config, "status", "--json").output)["watches"]]
        assert "other/site3/done" in keys and "other/site3/late" not in keys

    def test_retention_is_checked_with_its_line(self, tmp_path: Path) -> None:
        """A bad retention is a config problem with its file and line."""
        config = config_file(tmp_path, f"sqlite:///{tmp_path}/p.db", "retention: soon\n")
        result = CliRunner().invoke(app, ["check", "-c", str(config)])
        assert result.exit_code == 2
        assert re.search(r"config\.yaml:6: retention: ", result.output), result.output

    def test_the_daemon_prunes_on_its_own(self, tmp_path: Path) -> None:
        """`poller run` prunes by itself (its daily duty, run soon after start here)."""
        url = f"sqlite:///{tmp_path}/poller.db"
        populate(url)
        # a channel that refuses: the failed job's delivery stays pending (retried)
        channel = "channels: {hook: 'json://127.0.0.1:9/'}\n"
        config = load_config(config_file(tmp_path, url, channel + "retention: 36h\n"))

        async def go() -> bool:
            daemon = Daemon(config, tuning=Tuning(idle_wait=0.1, prune_first=0.2))
            runner = asyncio.create_task(daemon.run())
            store = Store(url)
            try:
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    if store.get_watch("other/site3/done") is None:
                        break
                gone = store.get_watch("other/site3/done") is None
                kept = store.get_watch("ruler-prod/site1/failed-1") is not None
            finally:
                store.close()
                daemon.stop()
            assert await runner == 0
            return gone and kept

        assert asyncio.run(go())


def _sent(delivery_id: int) -> Any:
    from poller.models import DeliveryOutcome

    return DeliveryOutcome(delivery_id, True, "")
