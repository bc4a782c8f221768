"""Several `poller run` replicas on one PostgreSQL database share the work."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import PG_ADMIN_URL
from world import SITE, World, eventually, job_yaml

from poller.models import watch_key
from poller.store.repo import Store

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_world(world: World, pg_url: str) -> World:
    world.database = pg_url
    return world


def pending_jobs(world: World, count: int) -> None:
    """`count` jobs that stay pending until `script_jobs` moves them."""
    for i in range(count):
        world.ruler.add_job(SITE, f"job-{i}")


def script_jobs(world: World, count: int, end_by: float) -> None:
    """Each job starts and ends at its own moment within `end_by` seconds from now: called
    once every replica is up, so that the changes come while they all run, however long a
    loaded machine takes to start them."""
    rng = random.Random(7)
    for i in range(count):
        start = rng.uniform(0.2, end_by / 2)
        world.ruler.script_job(
            SITE,
            f"job-{i}",
            [
                (start, {"status": "processing", "processed_rows": 10}),
                (rng.uniform(start + 0.5, end_by), {"status": "complete"}),
            ],
        )


def transitions_per_watch(url: str) -> dict[str, list[str]]:
    store = Store(url)
    try:
        result = {}
        for watch in store.list_watches():
            history = store.history(watch.key) or []
            result[watch.key] = [h.what for h in history if h.kind == "transition"]
        return result
    finally:
        store.close()


class TestReplicas:
    """Three replicas, one killed: nothing lost, nothing polled twice, few duplicates."""

    def test_three_replicas_one_killed(self, pg_world: World, tmp_path: Path) -> None:
        """300 jobs end; a replica is SIGKILLed mid-run; every success arrives once."""
        world = pg_world
        count = 300
        pending_jobs(world, count)
        # One message per job (no digests), so that every job's message can be counted.
        world.write_config(
            "".join(job_yaml(f"job-{i}") for i in range(count)),
            extra="delivery:\n  digest: {enabled: false}\nreplicas:\n  lease: 4s",
        )
        replicas = [world.start(log=tmp_path / f"replica-{n}.log") for n in range(3)]
        script_jobs(world, count, end_by=6.0)
        time.sleep(3.0)
        replicas[0].send_signal(signal.SIGKILL)
        replicas[0].wait()
        killed_at = time.monotonic()
        eventually(
            lambda: len({m["title"] for m in world.messages("success")}) >= count,
            timeout=90,
            what="every success message",
        )
        time.sleep(1.0)
        titles = Counter(m["title"] for m in world.messages("success"))
        assert len(titles) == count  # 0 lost
        assert sum(titles.values()) - count <= 1  # duplicates at most one per kill
        # No poll was committed twice: every watch has one clean path to succeeded.
        for key, path in transitions_per_watch(world.database).items():
            assert path[-1].endswith("-> succeeded"), (key, path)
            assert len(path) == len(set(path)), (key, path)
        takeover = time.monotonic() - killed_at
        assert takeover < 4 + 1 + 20  # lease + claim interval + the jobs' own schedule
        for proc in replicas[1:]:
            assert world.stop(proc) == 0
        logs = [
            json.loads(line)
            for n in range(1, 3)
            for line in (tmp_path / f"replica-{n}.log").read_text().splitlines()
            if line.startswith("{")
        ]
        assert sum(1 for e in logs if e.get("event") == "transition") > 0


class TestPausedReplicas:
    """Replicas frozen past their lease cannot overwrite newer state when they wake."""

    def test_two_paused_around_the_lease_boundary(self, pg_world: World, tmp_path: Path) -> None:
        """SIGSTOP two of three replicas past the lease, SIGCONT: no poll committed twice."""
        world = pg_world
        count = 120
        pending_jobs(world, count)
        world.write_config(
            "".join(job_yaml(f"job-{i}") for i in range(count)),
            extra="delivery:\n  digest: {enabled: false}\nreplicas:\n  lease: 2s",
        )
        replicas = [world.start(log=tmp_path / f"replica-{n}.log") for n in range(3)]
        script_jobs(world, count, end_by=8.0)
        time.sleep(2.0)
        for proc in replicas[:2]:
            proc.send_signal(signal.SIGSTOP)
        time.sleep(3.0)  # past the lease: the third replica takes their work over
        for proc in replicas[:2]:
            proc.send_signal(signal.SIGCONT)
        eventually(
            lambda: len({m["title"] for m in world.messages("success")}) >= count,
            timeout=60,
            what="every success message",
        )
        time.sleep(1.0)
        titles = Counter(m["title"] for m in world.messages("success"))
        assert len(titles) == count
        assert sum(titles.values()) - count <= 2  # at most one repeat per paused replica
        for key, path in transitions_per_watch(world.database).items():
            assert path[-1].endswith("-> succeeded"), (key, path)
            assert len(path) == len(set(path)), (key, path)
        for proc in replicas:
            assert world.stop(proc) == 0

    def test_frozen_mid_batch_does_not_resend_what_was_taken_over(
        self, pg_world: World, tmp_path: Path
    ) -> None:
        """A replica frozen while sending a batch wakes to find it taken over: it sends none."""
        world = pg_world
        count = 15
        for i in range(count):
            world.ruler.add_job(SITE, f"job-{i}", status="complete")
        world.write_config(
            "".join(job_yaml(f"job-{i}") for i in range(count)),
            extra="delivery:\n  digest: {enabled: false}\nreplicas:\n  lease: 2s",
        )
        world.sink.answer(200, mode="delay", delay=0.3)  # a slow channel: batches take a while
        first = world.start(log=tmp_path / "first.log")
        eventually(lambda: world.messages("success"), timeout=20, what="a first message")
        first.send_signal(signal.SIGSTOP)
        second = world.start(log=tmp_path / "second.log")
        time.sleep(4.0)  # past the first one's lease: the second takes its batch over
        first.send_signal(signal.SIGCONT)
        eventually(
            lambda: len({m["title"] for m in world.messages("success")}) >= count,
            timeout=30,
            what="every success message",
        )
        time.sleep(1.5)  # what the first would resend arrives by now
        titles = Counter(m["title"] for m in world.messages("success"))
        assert len(titles) == count
        # at most the message that was on the wire when the first one froze
        assert sum(titles.values()) - count <= 1, titles
        for proc in (first, second):
            assert world.stop(proc) == 0


class TestDatabaseTrouble:
    """A replica that loses its database connections reconnects and carries on."""

    def test_connections_killed_then_work_goes_on(self, pg_world: World, tmp_path: Path) -> None:
        """Every server-side connection is terminated; the daemon stays up and delivers."""
        world = pg_world
        world.ruler.add_job(SITE, "steady", status="processing")
        world.write_config(job_yaml("steady"))
        daemon = world.start()
        eventually(lambda: world.messages("info"), what="started delivered")
        name = sa.engine.make_url(world.database).database
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                killed = conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                ).scalar()
        finally:
            admin.dispose()
        assert killed and killed >= 1
        world.ruler.set_job(SITE, "steady", status="complete")
        eventually(lambda: world.messages("success"), timeout=30, what="success after outage")
        assert daemon.poll() is None
        assert world.stop(daemon) == 0


def all_waiting(url: str, procs: list[subprocess.Popen[bytes]]) -> bool:
    """Whether every one of `procs` waits for a lock in this database (or one has exited)."""
    return waiting_on_locks(url) >= len(procs) or any(p.poll() is not None for p in procs)


def waiting_on_locks(url: str) -> int:
    """How many sessions of this database wait for a lock."""
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = :name AND wait_event_type = 'Lock'"
                    ),
                    {"name": name},
                ).scalar_one()
            )
    finally:
        admin.dispose()


class TestReplicasStartTogether:
    """Any number of replicas can start at the same moment, again and again."""

    def test_four_replicas_started_at_once_all_stay_up(
        self, pg_world: World, tmp_path: Path
    ) -> None:
        """Four `poller run` on a fresh database, then twice more with new jobs in the config
        and their config syncs lined up on a table lock: all start, none logs an error."""
        world = pg_world
        replicas = 4
        rounds = 3
        for round_ in range(rounds):
            jobs = [f"job-{round_}-{i}" for i in range(20)]
            for job in jobs:
                world.ruler.add_job(SITE, job, status="processing")
            world.write_config("".join(job_yaml(job) for job in jobs))
            logs = [tmp_path / f"round-{round_}-{n}.log" for n in range(replicas)]
            gate: sa.Connection | None = None
            if round_ > 0:
                # Hold every insert into watches back until all replicas reached theirs, so
                # that their syncs overlap for sure (the first round races on a fresh database
                # with nothing lined up).
                gate = sa.create_engine(world.database).connect()
                gate.exec_driver_sql("LOCK TABLE watches IN EXCLUSIVE MODE")
            procs = [world.start(log=log, wait=False) for log in logs]
            if gate is not None:
                eventually(
                    partial(all_waiting, world.database, procs),
                    timeout=60,
                    what="every replica waiting to insert its watches",
                )
                gate.rollback()
                gate.close()
                gate.engine.dispose()
            for proc, log in zip(procs, logs, strict=True):
                eventually(
                    lambda log=log, proc=proc: (
                        b'"started"' in log.read_bytes() or proc.poll() is not None
                    ),
                    timeout=60,
                    what="replica start",
                )
            texts = [log.read_text() for log in logs]
            for proc, text in zip(procs, texts, strict=True):
                assert proc.poll() is None, text[-3000:]
                assert "Traceback" not in text, text[-3000:]
                assert '"level": "error"' not in text, text[-3000:]
            assert {watch_key("ruler-prod", job, SITE) for job in jobs} <= set(
                transitions_per_watch(world.database)
            )
            for proc in procs:
                assert world.stop(proc) == 0
