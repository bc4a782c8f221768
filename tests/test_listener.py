"""The daemon's HTTP listener (issue 15, first slice): ``http.listen``, ``/healthz``,
``/readyz`` and ``/metrics``, asked over real HTTP of a real `poller run` that polls the
loopback Ruler API and delivers to a loopback webhook, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from world import SITE, World, eventually, job_yaml

import poller
from poller.app import open_store
from poller.config import Config, load_config
from poller.engine.runtime import DbThread
from poller.engine.stats import POLL_BUCKETS, Stats, Timings
from poller.engine.summaries import (
    JOB_TYPE,
    MAX_JOB_TYPES,
    MAX_STATES,
    STATE,
    Summaries,
    bounded,
)
from poller.errors import ConfigError
from poller.sources import JobCount, JobSummary
from poller.sources.immuta import ImmutaSource
from poller.store.repo import Store
from poller.testing import ImmutaSim, SimThread
from poller.web import DatabaseReads, DatabaseUnavailable

#: The loopback Immuta API's key.
IMMUTA_KEY = "immuta-key-0123456789"
#: A job the loopback Ruler API does not know: every poll of it is a 404 (``not_found``).
MISSING = "never-there"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], str]:
    """GET `path` from the listener: status, headers, body (an error status is an answer)."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read().decode()


def answers(port: int, path: str) -> tuple[int, dict[str, str], str] | None:
    """`get`, or None while nothing listens (the daemon starting or gone)."""
    try:
        return get(port, path)
    except (urllib.error.URLError, ConnectionError):
        return None


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus-client: (name, labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scrape: str, name: str, **labels: str) -> float | None:
    """One sample's value, or None if the scrape does not have it."""
    return samples(scrape).get((name, tuple(sorted(labels.items()))))


def listening(world: World, port: int, jobs: str) -> None:
    """Write the world's config with these jobs and the listener on `port`."""
    world.write_config(jobs, extra=f'http:\n  listen: "127.0.0.1:{port}"\n')


def scrape(port: int) -> str:
    status, headers, body = get(port, "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
    return body


class TestEndpoints:
    """What a monitoring system sees of a daemon that polls and delivers."""

    def test_health_readiness_and_metrics_of_a_working_daemon(self, any_world: World) -> None:
        """/healthz and /readyz answer 200; /metrics counts polls by outcome (an error kind
        included), events and deliveries by channel, and shows the database's gauges, with
        no job id or token in any label."""
        world, port = any_world, free_port()
        world.ruler.add_job(SITE, "j1", status="processing")
        listening(world, port, job_yaml("j1", "Nightly upload") + job_yaml(MISSING))
        daemon = world.start()

        status, headers, body = get(port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert headers["Cache-Control"] == "no-store"
        status, _headers, body = eventually(lambda: (a := get(port, "/readyz"))[0] == 200 and a)
        assert json.loads(body)["ready"] is True and json.loads(body)["replica"]

        world.ruler.set_job(SITE, "j1", status="complete", processed_rows=100, success_count=100)
        eventually(lambda: world.messages("success"), what="the success message")
        text = eventually(
            lambda: (
                (s := scrape(port))
                and (value(s, "poller_deliveries_sent_total", channel="hook") or 0) >= 2
                and (value(s, "poller_polls_total", source="ruler-prod", outcome="not_found") or 0)
                >= 1
                and value(s, "poller_watches", source="ruler-prod", state="succeeded") == 1
                and s
            ),
            what="polls, deliveries and watches counted",
        )
        assert (value(text, "poller_polls_total", source="ruler-prod", outcome="ok") or 0) >= 2
        assert value(text, "poller_events_total", kind="started") == 1
        assert value(text, "poller_events_total", kind="succeeded") == 1
        assert value(text, "poller_events_total", kind="failed") == 0
        assert value(text, "poller_delivery_failures_total", channel="hook") == 0
        assert value(text, "poller_deliveries_given_up_total", channel="hook") == 0
        assert value(text, "poller_deliveries_pending", channel="hook") == 0
        assert value(text, "poller_delivery_oldest_pending_age_seconds", channel="hook") == 0
        # the missing job is still polled: never answered, so its state is "new"
        assert value(text, "poller_watches", source="ruler-prod", state="new") == 1
        assert value(text, "poller_source_breaker_open", source="ruler-prod") == 0
        assert value(text, "poller_database_up") == 1
        assert value(text, "poller_schedule_lateness_seconds") is not None
        assert value(text, "poller_leases_held", kind="watch") is not None
        assert value(text, "poller_leases_held", kind="delivery") is not None
        assert (value(text, "poller_poll_duration_seconds_count", source="ruler-prod") or 0) >= 3
        assert (value(text, "poller_group_commit_duration_seconds_count") or 0) >= 1
        assert (value(text, "poller_event_loop_lag_seconds_count") or 0) >= 1
        # the README's table names every metric a scrape has
        readme = (Path(__file__).parent.parent / "README.md").read_text()
        for family in text_string_to_metric_families(text):
            name = family.name + ("_total" if family.type == "counter" else "")
            assert f"`{name}`" in readme, name
        build = [k for k in samples(text) if k[0] == "poller_build_info"]
        assert build and ("version", poller.__version__) in build[0][1]
        # labels are sources, channels, kinds and states: never a job id or a secret
        labels = {v for _name, pairs in samples(text) for _key, v in pairs}
        for secret_or_id in ("j1", MISSING, world.ruler.token, "Nightly upload"):
            assert all(secret_or_id not in label for label in labels), secret_or_id
        assert world.stop(daemon) == 0

    def test_failing_channel_and_failing_source(self, any_world: World) -> None:
        """A channel that refuses: its failed attempts, its pending delivery and how old it
        is. An API that fails every request: its polls by error kind and its breaker open,
        then closed once the API is back."""
        world, port = any_world, free_port()
        world.sink.answer(500)
        world.ruler.add_job(SITE, "j1", status="processing")
        listening(world, port, job_yaml("j1"))
        world.start()
        text = eventually(
            lambda: (
                (s := scrape(port))
                and (value(s, "poller_delivery_failures_total", channel="hook") or 0) >= 1
                and s
            ),
            what="a failed delivery attempt",
        )
        assert value(text, "poller_deliveries_pending", channel="hook") == 1
        assert (value(text, "poller_delivery_oldest_pending_age_seconds", channel="hook") or 0) > 0
        assert value(text, "poller_deliveries_sent_total", channel="hook") == 0

        world.ruler.fail("", status=500, times=None)
        text = eventually(
            lambda: (
                (s := scrape(port))
                and value(s, "poller_source_breaker_open", source="ruler-prod") == 1
                and s
            ),
            what="the breaker open",
        )
        counted = {
            outcome: value(text, "poller_polls_total", source="ruler-prod", outcome=outcome)
            for outcome in ("ok", "server_error")
        }
        assert all(counted.values()), counted
        world.ruler.clear_faults()
        world.sink.answer()
        eventually(
            lambda: value(scrape(port), "poller_source_breaker_open", source="ruler-prod") == 0,
            what="the breaker closed",
        )
        eventually(
            lambda: value(scrape(port), "poller_deliveries_sent_total", channel="hook") == 1,
            timeout=30,
            what="the delivery retried and sent",
        )

    def test_promtool_accepts_the_scrape(self, world: World) -> None:
        """`promtool check metrics` (Debian's prometheus package) finds nothing to say."""
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip("promtool is not installed (Debian package prometheus)")
        port = free_port()
        world.ruler.add_job(SITE, "j1", status="processing")
        listening(world, port, job_yaml("j1") + job_yaml(MISSING))
        world.start()
        text = eventually(
            lambda: (
                (s := scrape(port))
                and value(s, "poller_polls_total", source="ruler-prod", outcome="not_found")
                and s
            )
        )
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked

    def test_other_paths_and_methods_are_refused(self, world: World) -> None:
        """An unknown path is 404 and a POST is 405, with the same hardening headers."""
        port = free_port()
        listening(world, port, "")
        world.start()
        status, headers, _body = get(port, "/watches/../../etc/passwd")
        assert status == 404 and headers["X-Content-Type-Options"] == "nosniff"
        request = urllib.request.Request(f"http://127.0.0.1:{port}/readyz", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405
        refused.value.close()

    def test_a_half_sent_request_is_dropped(self, world: World) -> None:
        """A client that starts a request and sends no more holds its socket 15 s at most,
        while others are answered meanwhile."""
        port = free_port()
        listening(world, port, "")
        world.start()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            assert get(port, "/healthz")[0] == 200
            assert slow.recv(1024) == b""  # closed by the listener, with no answer
            assert time.monotonic() - started > 10  # by the idle timeout, not at once


@contextlib.contextmanager
def sqlite_write_lock(path: Path) -> Iterator[None]:
    """Another process's write transaction on the SQLite file: the daemon's next write waits
    for it (up to its busy timeout) in the database thread, and so does every read queued
    behind that write."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@contextlib.contextmanager
def postgres_refusing(url: str) -> Iterator[None]:
    """The daemon's PostgreSQL database refuses every connection, its open ones ended."""
    database = sa.engine.make_url(url).database
    admin = sa.create_engine(
        sa.engine.make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
        yield
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        admin.dispose()


class TestReadiness:
    """/readyz says 503 with the reason whenever the daemon should not be counted on."""

    def test_database_away_then_back(self, any_world: World) -> None:
        """While the database cannot be used (PostgreSQL refusing connections; a SQLite
        file another process holds locked), /readyz is 503 saying so and /metrics still
        answers with the in-memory numbers; once it is back, both are whole again."""
        world, port = any_world, free_port()
        world.ruler.add_job(SITE, "j1", status="processing")
        listening(world, port, job_yaml("j1"))
        world.start()
        eventually(lambda: get(port, "/readyz")[0] == 200, what="ready")
        eventually(
            lambda: value(scrape(port), "poller_polls_total", source="ruler-prod", outcome="ok"),
            what="a poll",
        )
        if world.database.startswith("sqlite"):
            away = sqlite_write_lock(world.tmp / "poller.db")
            said = "did not answer within 2s"
        else:
            away = postgres_refusing(world.database)
            said = "cannot be read"
        with away:
            _status, _headers, body = eventually(
                lambda: (a := get(port, "/readyz"))[0] == 503 and a, what="not ready"
            )
            reason = json.loads(body)["reason"]
            assert said in reason, reason
            assert "postgres@" not in reason and world.ruler.token not in reason
            # the scrape answers (within `get`'s timeout), without the database's gauges
            text = scrape(port)
            assert value(text, "poller_database_up") == 0
            assert value(text, "poller_watches", source="ruler-prod", state="running") is None
            assert (value(text, "poller_polls_total", source="ruler-prod", outcome="ok") or 0) > 0
            assert get(port, "/healthz")[0] == 200
        eventually(lambda: get(port, "/readyz")[0] == 200, timeout=45, what="ready again")

        # Every scrape is whole: database_up 1 with the watch counted (in the state the
        # database holds: "new" while the outage kept its first answer from being written),
        # or 0 with no gauge of the database at all; never 1 without the gauges.
        def whole() -> bool:
            s = scrape(port)
            counted = {
                labels: n
                for (name, labels), n in samples(s).items()
                if name == "poller_watches" and ("source", "ruler-prod") in labels
            }
            if value(s, "poller_database_up") == 0:
                assert not counted, s
                assert value(s, "poller_schedule_lateness_seconds") is None, s
                return False
            assert value(s, "poller_database_up") == 1, s
            assert sum(counted.values()) == 1, s
            assert value(s, "poller_schedule_lateness_seconds") is not None, s
            return value(s, "poller_watches", source="ruler-prod", state="running") == 1

        eventually(whole, timeout=45, what="the database's gauges back")
        for _ in range(5):  # and every scrape after it too
            assert whole()

    def test_starting_is_not_ready(self, world: World) -> None:
        """While the daemon cannot open its database yet (another process holds the SQLite
        file locked), /healthz answers and /readyz is 503 "starting"; then it starts."""
        port = free_port()
        listening(world, port, job_yaml("j1"))
        assert world.stop(world.start()) == 0  # the database exists, at its schema
        with sqlite_write_lock(world.tmp / "poller.db"):
            world.start(wait=False)
            _status, _headers, body = eventually(
                lambda: (a := answers(port, "/readyz")) and a[0] == 503 and a,
                what="503 while starting",
            )
            assert json.loads(body)["reason"] == "starting"
            assert get(port, "/healthz")[0] == 200
        eventually(lambda: get(port, "/readyz")[0] == 200, what="ready once started")

    def test_stopping_is_not_ready(self, world: World) -> None:
        """From SIGTERM until the listener closes, /readyz is 503 "stopping"."""
        port = free_port()
        world.ruler.add_job(SITE, "slow", status="processing")
        world.ruler.fail("slow", mode="hang", times=None)  # the stop waits for this poll
        listening(world, port, job_yaml("slow"))
        daemon = world.start()
        eventually(lambda: get(port, "/readyz")[0] == 200, what="ready")
        time.sleep(0.5)  # the poll is under way
        daemon.send_signal(signal.SIGTERM)
        answer = eventually(
            lambda: (a := answers(port, "/readyz")) and a[0] == 503 and a,
            what="503 while stopping",
        )
        assert json.loads(answer[2]) == {
            "ready": False,
            "reason": "stopping",
            "replica": json.loads(answer[2])["replica"],
        }
        assert daemon.wait(timeout=15) == 0
        assert answers(port, "/readyz") is None


class TestStart:
    """Turning the listener on, and what keeps the daemon from starting."""

    def test_address_in_use_stops_the_daemon(self, world: World) -> None:
        """A taken port: `poller run` exits 1 at once, naming the address and the reason,
        before it creates the database."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            listening(world, port, "")
            run = subprocess.run(
                [sys.executable, "-m", "poller", "run", "-c", str(world.config)],
                capture_output=True,
                text=True,
                env=world.env(),
                timeout=30,
            )
        said = run.stdout + run.stderr
        assert run.returncode == 1, said
        assert f"cannot listen on 127.0.0.1:{port}" in said and "Address already in use" in said
        assert "Traceback" not in said
        assert not (world.tmp / "poller.db").exists()

    def test_a_new_address_takes_a_restart(self, world: World) -> None:
        """A reload with another ``http.listen`` says so and keeps serving where it was."""
        port, other = free_port(), free_port()
        listening(world, port, "")
        daemon = world.start()
        listening(world, other, job_yaml("j1"))
        daemon.send_signal(signal.SIGHUP)
        eventually(lambda: "a new http.listen takes a restart" in world.log.read_text())
        eventually(lambda: '"reloaded"' in world.log.read_text(), what="the rest reloaded")
        assert get(port, "/readyz")[0] == 200
        assert answers(other, "/healthz") is None
        assert world.stop(daemon) == 0

    def test_off_without_the_key(self, world: World) -> None:
        """Without ``http.listen`` nothing listens (several daemons on one host never fight
        over a port)."""
        world.write_config(job_yaml("j1"))
        daemon = world.start()
        log = world.log.read_text()
        assert '"listening"' not in log
        assert world.stop(daemon) == 0

    @pytest.mark.parametrize(
        ("written", "said"),
        [
            ('"127.0.0.1:0"', "http.listen: the port must be from 1 to 65535"),
            ("9180", "http.listen: expected an address to listen on as host:port"),
            ('"127.0.0.1"', "http.listen: expected an address to listen on as host:port"),
            ('"[nonsense]:9180"', "http.listen: expected an address to listen on as host:port"),
            ('"http://127.0.0.1:9180"', "http.listen: expected an address"),
        ],
    )
    def test_bad_address_is_a_config_problem_with_its_line(
        self, tmp_path: Path, written: str, said: str
    ) -> None:
        """`poller check` names file:line and the key path, exit 2."""
        config = tmp_path / "config.yaml"
        config.write_text(f"sources: {{}}\nhttp:\n  listen: {written}\n")
        check = subprocess.run(
            [sys.executable, "-m", "poller", "check", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 2, check.stdout
        assert f"{config}:3: {said}" in check.stderr, check.stderr

    def test_good_addresses(self, tmp_path: Path) -> None:
        """IPv4, bracketed IPv6 and host names are taken as written; an unknown key under
        ``http`` is refused."""
        config = tmp_path / "config.yaml"
        for written in ("127.0.0.1:9180", "[::1]:9180", "localhost:9180", "0.0.0.0:80"):
            config.write_text(f"http:\n  listen: '{written}'\n")
            assert load_config(config, environ={}).http.listen == written
        config.write_text("http:\n  listen: '127.0.0.1:9180'\n  tls: true\n")
        with pytest.raises(ConfigError) as refused:
            load_config(config, environ={})
        assert f"{config}:3: http.tls: unknown key" in str(refused.value)


@dataclass
class Bare:
    """The least a daemon shows the listener (`web.DaemonView`), around a real database
    thread: for what is easier to see from inside than over HTTP."""

    config: Config
    db: DbThread
    owner: str = "test-replica"
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    stats: Stats = field(default_factory=Stats)
    summaries: Summaries = field(default_factory=lambda: Summaries(time.time))

    def clock(self) -> float:
        return time.time()

    def database(self) -> DbThread | None:
        return self.db

    def adapters(self) -> dict[str, object]:
        return {}


class TestDatabaseReads:
    """The listener's database reads are bounded and shared."""

    def test_a_busy_database_thread_holds_one_read_of_each_kind(self, tmp_path: Path) -> None:
        """While the database thread is busy, twenty requests for the same read wait for one
        read, each gives up at the deadline, and the read runs once when the thread is free."""
        config_file = tmp_path / "config.yaml"
        config_file.write_text("sources: {}\n")
        config = load_config(config_file, environ={})
        store = open_store(config, daemon=True)
        db = DbThread(store)
        runs: list[float] = []

        def counted(store: Store) -> int:
            runs.append(time.monotonic())
            store.ping()
            return len(runs)

        async def scenario() -> list[BaseException | int]:
            reads = DatabaseReads(Bare(config, db), deadline=0.3)
            busy = asyncio.ensure_future(db.call(time.sleep, 1.0))  # a slow group commit
            answers = await asyncio.gather(
                *(reads.read("ping", counted) for _ in range(20)), return_exceptions=True
            )
            await busy
            await asyncio.sleep(0.2)  # the one queued read runs now
            answers.append(await reads.read("ping", counted))
            await reads.close()
            return answers

        try:
            answers = asyncio.run(scenario())
        finally:
            db.close()
            store.close()
        assert all(isinstance(a, DatabaseUnavailable) for a in answers[:20]), answers
        assert "did not answer within 0.3s" in str(answers[0])
        assert len(runs) == 2 and answers[20] == 2


class TestSourceSummaries:
    """Immuta's job counts (GET /jobs/summary) on /metrics and the status page, fetched by the
    daemon on its own interval: never per request, bounded, stale (never broken) on failure."""

    def test_counts_on_metrics_and_page_then_stale_then_back(self, world: World) -> None:
        """The simulator's counts show per source, job type and state; job types past the cap
        are counted as ``other``; a scrape or a page never asks the API; a failed fetch keeps
        the last counts, shown as stale with the reason (escaped, no token), and the next
        answer brings fresh ones."""
        port = free_port()
        sim = ImmutaSim(IMMUTA_KEY)
        now = datetime.now(UTC)
        for i in range(3):
            sim.add_job(f"p{i}", state="completed", created=now)
        sim.add_job("p-failed", state="failed", created=now)
        sim.add_job("s", state="active", job_type="sdd", created=now)
        for i in range(40):  # 30 of these fit under the cap, beside policyUpdate and sdd
            sim.add_job(f"t{i}", job_type=f"t{i:02d}", created=now)
        sim.add_job("odd", job_type="<b>odd</b>", created=now)  # no plain name: other
        with SimThread(sim):
            world.config.write_text(f"""
database: {world.database}
sources:
  im: {{type: immuta, base_url: '{sim.base_url}', token: {IMMUTA_KEY}, summary_interval: 5s}}
  quiet: {{type: immuta, base_url: '{sim.base_url}', token: {IMMUTA_KEY}, summary_interval: 0}}
http:
  listen: "127.0.0.1:{port}"
jobs: []
""")
            world.start()
            text = eventually(
                lambda: (
                    (s := scrape(port)) and value(s, "poller_source_summary_up", source="im") and s
                ),
                what="the first summary",
            )
            jobs = {
                dict(labels)["job_type"] + "/" + dict(labels)["state"]: n
                for (name, labels), n in samples(text).items()
                if name == "poller_source_jobs"
            }
            assert jobs["policyUpdate/completed"] == 3 and jobs["policyUpdate/failed"] == 1
            assert jobs["sdd/active"] == 1 and jobs["t29/created"] == 1
            assert jobs["other/created"] == 11 and "t30/created" not in jobs
            assert len({k.split("/")[0] for k in jobs}) == 33 and sum(jobs.values()) == 46
            assert all(dict(k)["source"] == "im" for (n, k) in samples(text) if "source_jobs" in n)
            assert value(text, "poller_source_summary_up", source="quiet") is None
            assert (value(text, "poller_source_summary_age_seconds", source="im") or 0) < 10
            status, _headers, page = get(port, "/")
            assert status == 200
            assert "im: 46 jobs" in page and "Counted" in page and "Stale" not in page
            assert '<td class="job-type">policyUpdate</td>' in page and "<b>odd" not in page

            # the counts come from memory: scrapes and pages do not ask the API
            asked = sim.requests["summary"]
            for _ in range(5):
                scrape(port)
                get(port, "/")
            assert sim.requests["summary"] - asked <= 1

            # the next fetch fails: the last counts stay, stale, with the reason
            sim.set_job("s", state="completed")
            sim.fail(
                "/jobs/summary", status=400, body={"message": f"<i>no</i> {IMMUTA_KEY}"}, times=1
            )
            text = eventually(
                lambda: (
                    (s := scrape(port))
                    and value(s, "poller_source_summary_up", source="im") == 0
                    and s
                ),
                what="a stale summary",
            )
            assert (
                value(text, "poller_source_jobs", source="im", job_type="sdd", state="active") == 1
            )
            status, _headers, page = get(port, "/")
            assert status == 200 and "Stale" in page and "im: 46 jobs" in page
            assert "failed: http: HTTP 400" in page
            assert "<i>no" not in page and IMMUTA_KEY not in page
            # and the next one answers again, with the change
            text = eventually(
                lambda: (
                    (s := scrape(port))
                    and value(s, "poller_source_summary_up", source="im") == 1
                    and s
                ),
                what="a fresh summary again",
            )
            assert (
                value(text, "poller_source_jobs", source="im", job_type="sdd", state="completed")
                == 1
            )
            assert (
                value(text, "poller_source_jobs", source="im", job_type="sdd", state="active")
                is None
            )

    @given(
        st.lists(
            st.tuples(st.text(max_size=70), st.text(max_size=40), st.integers(0, 10**9)),
            max_size=200,
        )
    )
    def test_what_is_kept_is_bounded(self, rows: list[tuple[str, str, int]]) -> None:
        """Whatever an API counts, what becomes labels is at most 32 job types and 16 states
        per source (plus ``other``), each a plain name, and every job is still counted."""
        kept = bounded(JobSummary(tuple(JobCount(t, s, n) for t, s, n in rows)))
        types = {c.job_type for c in kept}
        states = {c.state for c in kept}
        assert len(types - {"other"}) <= MAX_JOB_TYPES and len(states - {"other"}) <= MAX_STATES
        assert all(t == "other" or JOB_TYPE.fullmatch(t) for t in types)
        assert all(s == "other" or STATE.fullmatch(s) for s in states)
        assert sum(c.count for c in kept) == sum(n for _t, _s, n in rows)
        assert len({(c.job_type, c.state) for c in kept}) == len(kept)

    def test_summary_interval_is_checked(self, tmp_path: Path) -> None:
        """``summary_interval`` is 60s by default, 0 turns it off, and less than 5s is
        refused with the file and line."""
        config = tmp_path / "config.yaml"
        source = "sources:\n  im: {type: immuta, base_url: 'http://127.0.0.1:9', token: k"
        config.write_text(source + "}\n")
        immuta = load_config(config, environ={}).sources["im"]
        assert isinstance(immuta, ImmutaSource) and immuta.summary_interval == 60.0
        config.write_text(source + ", summary_interval: 0}\n")
        immuta = load_config(config, environ={}).sources["im"]
        assert isinstance(immuta, ImmutaSource) and immuta.summary_interval is None
        config.write_text(source + ",\n    summary_interval: 2s}\n")
        with pytest.raises(ConfigError) as refused:
            load_config(config, environ={})
        assert f"{config}:3: sources.im.summary_interval: must be 0 (off) or at least 5s" in str(
            refused.value
        )


class TestTimings:
    """The in-memory histogram Prometheus reads."""

    @given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
    def test_cumulative_buckets(self, values: list[float]) -> None:
        """Each bucket counts the observations at or below its bound; +Inf counts them all."""
        timings = Timings(POLL_BUCKETS)
        for seconds in values:
            timings.observe(seconds)
        for bound, count in timings.cumulative():
            assert count == sum(1 for v in values if v <= bound)
        assert timings.count == len(values)
        assert timings.total == pytest.approx(sum(values))
