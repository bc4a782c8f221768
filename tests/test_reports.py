"""Scheduled reports end to end: `poller run` and `poller report` against the loopback Ruler
API, delivered by Apprise to a loopback webhook, on SQLite and PostgreSQL; and what `poller
check` says about a report's mistakes.

A report's cron fires within a test by its optional sixth field (seconds, first): the daemon
then runs the same cron duty it runs at 09:00, only every two or three seconds.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from world import SITE, World, eventually, job_yaml

from poller.config import ReportConfig, load_config
from poller.engine.reporting import build_report, due_run
from poller.engine.scheduling import cron_trigger
from poller.errors import ConfigError
from poller.models import DeliveryOutcome, WatchSpec
from poller.notify import render_report
from poller.store.repo import Store

REPORT = "📋 "


def report_yaml(cron: str, *, name: str = "daily", timezone: str = "UTC", more: str = "") -> str:
    return f"""reports:
  - name: {name}
    cron: "{cron}"
    notify: [hook]
    window: 1h
    timezone: {timezone}
{more}"""


def reports(world: World) -> list[dict[str, object]]:
    """The report messages the sink received."""
    return [m for m in world.sink.messages if str(m["title"]).startswith(REPORT)]


def report_runs(world: World) -> list[tuple[str, float, str]]:
    """Each run in the database: (report, scheduled time, its delivery's status)."""
    engine = sa.create_engine(world.database)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT r.report, r.scheduled_at, d.status FROM report_runs r "
                    "JOIN deliveries d ON d.event_id = r.event_id ORDER BY r.scheduled_at"
                )
            ).all()
    finally:
        engine.dispose()
    return [(row[0], row[1], row[2]) for row in rows]


def three_jobs(world: World) -> str:
    world.ruler.add_job(SITE, "ok1", status="processing")
    world.ruler.add_job(SITE, "bad1", status="processing")
    world.ruler.add_job(SITE, "run1", status="processing", total_rows=100)
    world.ruler.set_job(SITE, "run1", processed_rows=40)
    return job_yaml("ok1", "nightly-load") + job_yaml("bad1", "billing-export") + job_yaml("run1")


def end_two(world: World) -> None:
    world.ruler.set_job(SITE, "ok1", status="complete")
    world.ruler.set_job(SITE, "bad1", status="failed", failure_reason="quota exceeded")
    eventually(
        lambda: {"failure", "success"} <= {m["type"] for m in world.messages()},
        what="the two end messages",
    )


class TestReportNow:
    """`poller report NAME --now` sends one report at once, with or without a daemon."""

    def test_sections_names_reasons_progress(self, any_world: World) -> None:
        """What ended (by outcome, with names and reasons) and what still runs (with its
        progress), in one message; the daemon, stopped, had no part in sending it."""
        world = any_world
        world.write_config(three_jobs(world), report_yaml("0 0 1 1 *"))
        proc = world.start()
        end_two(world)
        assert world.stop(proc) == 0
        result = world.cli("report", "daily", "--now")
        assert result.stdout.strip() == "hook: ok"
        (message,) = reports(world)
        assert message["title"] == "📋 daily: 1 failed, 1 succeeded, 1 still running"
        body = str(message["message"])
        assert "Failed (1):\n- billing-export (ruler-prod/4f2a/bad1): quota exceeded" in body
        assert "Succeeded (1):\n- nightly-load (ruler-prod/4f2a/ok1)" in body
        assert "Still running (1):\n- ruler-prod/4f2a/run1: running, 40%, ETA " in body
        # queued once, sent once: a second --now is another run, the first stays sent
        assert [status for _, _, status in report_runs(world)] == ["sent"]

    def test_without_now_prints_and_sends_nothing(self, world: World) -> None:
        """`poller report NAME` prints what the report says now and queues nothing."""
        world.write_config(three_jobs(world), report_yaml("0 0 1 1 *"))
        proc = world.start()
        end_two(world)
        world.stop(proc)
        before = len(world.sink.messages)
        printed = world.cli("report", "daily").stdout
        assert printed.startswith("📋 daily: 1 failed, 1 succeeded, 1 still running\n")
        assert "quota exceeded" in printed
        assert report_runs(world) == [] and len(world.sink.messages) == before
        checked = world.cli("check")
        assert "report daily: 0 0 1 1 * (UTC) -> hook; window 1h; next 20" in checked.stdout
        unknown = world.cli("report", "weekly", "--now", check=False)
        assert unknown.returncode == 2 and "no report weekly" in unknown.stderr


class TestSchedule:
    """The daemon sends each scheduled run once."""

    def test_cron_fires_while_running(self, any_world: World) -> None:
        """A report every two seconds: each run is one message, sent once."""
        world = any_world
        world.write_config("", report_yaml("*/2 * * * * *"))
        proc = world.start()
        eventually(lambda: len(reports(world)) >= 3, timeout=20, what="three reports")
        assert world.stop(proc) == 0
        runs = report_runs(world)
        assert len(runs) == len(reports(world)) >= 3
        assert all(status == "sent" for _, _, status in runs)
        # scheduled times are the cron's own (whole, even seconds), not when a loop got there
        assert all(at % 2 == 0 for _, at, _ in runs)

    def test_reload_schedules_and_stops_reports(self, world: World) -> None:
        """A report added by a reload fires at its times; one removed by a reload stops."""
        proc = world.start()
        world.write_config("", report_yaml("*/2 * * * * *", name="often"))
        proc.send_signal(signal.SIGHUP)
        eventually(lambda: len(reports(world)) >= 2, timeout=20, what="two reports")
        world.write_config("")
        proc.send_signal(signal.SIGHUP)
        eventually(lambda: world.log.read_text().count('"reloaded"') >= 2, what="2nd reload")
        time.sleep(0.5)
        sent = len(reports(world))
        time.sleep(4.5)
        assert len(reports(world)) == sent
        assert world.stop(proc) == 0

    def test_two_replicas_send_each_run_once(self, world: World, pg_url: str) -> None:
        """Two daemons sharing PostgreSQL both fire at each time; one message goes out."""
        world.database = pg_url
        world.write_config("", report_yaml("*/3 * * * * *"))
        first = world.start()
        second = world.start(log=world.tmp / "second.log")
        eventually(lambda: len(reports(world)) >= 3, timeout=30, what="three reports")
        assert world.stop(first) == 0 and world.stop(second) == 0
        time.sleep(0.5)
        runs = report_runs(world)
        assert len(runs) == len(reports(world)) >= 3
        assert len({at for _, at, _ in runs}) == len(runs)
        # both replicas did try: each logged the runs it queued, and neither queued them all
        queued = [
            log.read_text().count('"report queued"')
            for log in (world.log, world.tmp / "second.log")
        ]
        assert sum(queued) == len(runs), queued

    def test_missed_run_is_sent_once_at_start_within_the_hour(self, any_world: World) -> None:
        """A run due ten minutes ago (in the report's time zone) goes out when the daemon
        starts, once: a restart does not repeat it. One due two hours ago is left."""
        world = any_world
        paris = ZoneInfo("Europe/Paris")
        now = datetime.now(paris)
        recent, old = now - timedelta(minutes=10), now - timedelta(hours=2)
        world.write_config(
            "",
            report_yaml(f"{recent.minute} {recent.hour} * * *", timezone="Europe/Paris")
            + f"""  - name: stale
    cron: "{old.minute} {old.hour} * * *"
    notify: [hook]
    timezone: Europe/Paris
""",
        )
        proc = world.start()
        (message,) = world.sink.wait_for(1, timeout=15)
        assert message["title"].startswith("📋 daily: ")
        assert f"Report of {recent:%Y-%m-%d %H:%M} CET" in message["message"]
        assert world.stop(proc) == 0
        proc = world.start()
        time.sleep(2)
        assert world.stop(proc) == 0
        assert len(reports(world)) == 1
        assert [(name, status) for name, _, status in report_runs(world)] == [("daily", "sent")]


class TestConfig:
    """`poller check` and the loader refuse a report's mistakes at their lines."""

    def test_mistakes_at_their_lines(self, world: World) -> None:
        world.write_config(
            "",
            """reports:
  - name: daily
    cron: "61 9 * * 1-5"
    notify: [nowhere]
    window: soon
    timezone: Mars/Olympus
  - name: daily
    cron: "0 9 1 * mon"
    notify: hook
    sources: [nope]
""",
        )
        result = world.cli("check", check=False)
        assert result.returncode == 2
        lines = {line.split(": ", 2)[1]: line for line in result.stderr.splitlines()[1:]}
        config = str(world.config)
        text = world.config.read_text().splitlines()

        def at(path: str, needle: str) -> None:
            line = max(i for i, t in enumerate(text, 1) if needle in t)  # the last one
            assert lines[path].strip().startswith(f"{config}:{line}: {path}: "), lines

        at("reports[0].cron", "61 9")
        assert "the minute field '61'" in lines["reports[0].cron"]
        at("reports[0].notify[0]", "nowhere")
        at("reports[0].window", "soon")
        at("reports[0].timezone", "Mars")
        at("reports[1].name", "name: daily")
        assert "reports[0] has this name too" in lines["reports[1].name"]
        at("reports[1].cron", "0 9 1 * mon")
        at("reports[1].sources[0]", "nope")

    def test_reports_are_not_rule_events(self, world: World) -> None:
        """``on: report`` in a rule is refused: a report goes to its own channels."""
        text = world.config.read_text().replace("on: [succeeded,", "on: [report, succeeded,")
        world.config.write_text(text)
        with pytest.raises(ConfigError, match="recovered; got 'report'"):
            load_config(str(world.config))


class TestCron:
    """Cron expressions mean what crontab says, on APScheduler 3's trigger."""

    @pytest.mark.parametrize(
        ("cron", "after", "fires"),
        [
            # Friday 10:00 -> Monday 09:00 (APScheduler alone reads 1-5 as Tuesday-Saturday)
            ("0 9 * * 1-5", datetime(2026, 12, 4, 10, tzinfo=UTC), "Mon 2026-12-07 09:00"),
            ("0 9 * * 0", datetime(2026, 12, 4, 10, tzinfo=UTC), "Sun 2026-12-06 09:00"),
            ("0 9 * * 7", datetime(2026, 12, 4, 10, tzinfo=UTC), "Sun 2026-12-06 09:00"),
            ("0 9 * * sat-sun", datetime(2026, 12, 7, 10, tzinfo=UTC), "Sat 2026-12-12 09:00"),
            ("30 8 1 * *", datetime(2026, 12, 4, 10, tzinfo=UTC), "Fri 2027-01-01 08:30"),
            ("*/10 * * * * *", datetime(2026, 12, 4, 10, 0, 1, tzinfo=UTC), "Fri 2026-12-04 10:00"),
        ],
    )
    def test_next_time(self, cron: str, after: datetime, fires: str) -> None:
        found = cron_trigger(cron, "UTC").get_next_fire_time(None, after)
        assert found.strftime("%a %Y-%m-%d %H:%M") == fires

    def test_time_zone_and_previous_run(self) -> None:
        report = ReportConfig(name="r", cron="0 9 * * *", notify=("hook",), timezone="Asia/Tokyo")
        nine_tokyo = datetime(2026, 12, 4, 0, tzinfo=UTC).timestamp()
        assert due_run(report, nine_tokyo + 1800) == nine_tokyo
        assert due_run(report, nine_tokyo + 7200) is None
        assert due_run(report, nine_tokyo) == nine_tokyo


class TestBounded:
    """However many watches there are, a report names `max_jobs` per section and counts the
    rest; the message stays within Apprise's limits."""

    def test_many_watches(self, tmp_path: Path) -> None:
        store = Store(f"sqlite:///{tmp_path}/p.db")
        store.migrate()
        try:
            specs = [WatchSpec(source="s", job_id=f"j{i}") for i in range(1500)]
            store.sync_config_jobs(specs, 1000.0)
            report = ReportConfig(name="big", cron="0 9 * * *", notify=("hook",), max_jobs=7)
            payload = build_report(store, report, 2000.0, 2000.0)
        finally:
            store.close()
        (running,) = payload["sections"]  # type: ignore[misc]
        assert running["count"] == 1500 and len(running["jobs"]) == 7
        title, body = render_report(payload)
        assert title == "📋 big: 1500 still running"
        assert "… and 1,493 more" in body
        assert len(body) < 4000

    @pytest.mark.parametrize(
        "payload",
        [
            {},
            {"sections": 5, "given_up": "x", "timezone": "Nowhere/Else", "scheduled_at": "soon"},
            {"sections": [{"event": "exploded", "count": -3, "jobs": {"a": 1}}, "text"]},
            {"given_up": {"count": 10**40, "deliveries": [{"key": 5}, None]}, "window": 1e300},
        ],
    )
    def test_any_stored_payload_renders(self, payload: dict[str, object]) -> None:
        """A report's stored payload may be damaged: its message is still written."""
        for fmt in ("text", "markdown"):
            title, body = render_report(payload, fmt)  # type: ignore[arg-type]
            assert title.startswith(REPORT) and "\n" not in title and len(body) < 4000


class TestOnce:
    """The outbox takes each run of a report once, whoever queues it."""

    def test_second_enqueue_of_a_run_adds_nothing(self, db_url: str) -> None:
        first, second = Store(db_url), Store(db_url)
        first.migrate()
        try:
            assert first.enqueue_report("daily", 3600.0, {"name": "daily"}, ["a", "b"], 3601.0)
            assert not second.enqueue_report("daily", 3600.0, {"name": "daily"}, ["a"], 3602.0)
            assert second.report_enqueued("daily", 3600.0)
            assert second.enqueue_report("daily", 7200.0, {"name": "daily"}, ["a"], 7201.0)
            assert first.delivery_counts() == {"pending": 3}
            assert [c for c, _, _ in first.report_deliveries("daily", 3600.0)] == ["a", "b"]
            # sent, and older than the cutoff: retention takes it with its deliveries
            claimed = first.claim_deliveries("me", 9000.0, 10, 30.0)
            done = [DeliveryOutcome(d.id, sent=True) for d in claimed]
            assert first.finish_deliveries("me", done, 9001.0) == 3
            pruned = first.prune(5000.0)
            assert (pruned.events, pruned.deliveries) == (1, 2)
            assert not first.report_enqueued("daily", 3600.0)
            assert first.report_enqueued("daily", 7200.0)
        finally:
            first.close()
            second.close()
