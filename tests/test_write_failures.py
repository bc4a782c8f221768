"""A group commit the database refuses is logged at once and retried; no result is dropped."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from world import SITE, World, eventually, job_yaml

from poller.models import watch_key

UNWRITTEN = "results not written before stopping; their watches will be polled again"
FAILED = "write-back failed; results kept and retried"
DROPPED = "poll result could not be stored; the watch will be polled again"
#: what the database answers while the trigger is in place
FULL = "No space left on device (test)"


class Refusal:
    """Makes the database refuse writes to a table, as a full disk would, until `lift`."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        self.postgres = self.engine.dialect.name == "postgresql"
        if self.postgres:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                    f" $$ BEGIN RAISE EXCEPTION '{FULL}'; END $$"
                )

    def impose(self, event: str, table: str, when: str = "") -> None:
        """Refuse `event` (``INSERT``, ``UPDATE``) on `table` (for rows matching `when`)."""
        when = f"WHEN ({when})" if when else ""
        with self.engine.begin() as conn:
            if self.postgres:
                conn.exec_driver_sql(
                    f"CREATE TRIGGER refuse BEFORE {event} ON {table} FOR EACH ROW {when}"
                    " EXECUTE FUNCTION refuse()"
                )
            else:
                conn.exec_driver_sql(
                    f"CREATE TRIGGER refuse BEFORE {event} ON {table} {when}"
                    f" BEGIN SELECT RAISE(ABORT, '{FULL}'); END"
                )

    def lift(self, table: str) -> None:
        """Take the refusal away."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql(
                f"DROP TRIGGER refuse ON {table}" if self.postgres else "DROP TRIGGER refuse"
            )

    def watch_id(self, key: str) -> int:
        """The id of a watch."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.text("SELECT id FROM watches WHERE key = :k"), {"k": key}).one()[0]
            )

    def close(self) -> None:
        """Close the connections."""
        self.engine.dispose()


@pytest.fixture
def refusal(any_world: World) -> Iterator[Refusal]:
    found = Refusal(any_world.database)
    yield found
    found.close()


def logged(world: World, event: str | None = None) -> list[dict[str, object]]:
    """The daemon's log lines (about `event`, if given)."""
    return [
        line
        for line in (json.loads(text) for text in world.log.read_text().splitlines() if text)
        if event is None or line.get("event") == event
    ]


def succeeded(world: World, job: str) -> bool:
    """Whether the success message of `job` arrived."""
    return any(job in m["title"] + m["message"] for m in world.messages("success"))


class TestRefusedWrites:
    """The database refuses writes while the daemon runs."""

    def test_refused_group_commit_is_logged_retried_and_kept(
        self, any_world: World, refusal: Refusal
    ) -> None:
        """While every write to the watches fails (a full disk), a job ends: the failure is
        logged at once, and once writes work again its result and message are not lost."""
        world = any_world
        world.ruler.add_job(SITE, "alpha", status="processing")
        world.write_config(job_yaml("alpha"), extra="delivery:\n  digest: {enabled: false}")
        daemon = world.start()
        eventually(lambda: world.messages("info"), what="the started message")
        # Claims and lease renewals still work; what gives a lease back (a write-back, a
        # release) fails, as writes do on a full disk while SQLite can still reuse a page.
        refusal.impose("UPDATE", "watches", "NEW.lease_owner IS NULL")
        world.ruler.set_job(SITE, "alpha", status="complete")
        failed = eventually(
            lambda: logged(world, FAILED),
            what="the failed write-back logged",
        )
        assert FULL in str(failed[0]["error"])
        assert not succeeded(world, "alpha")
        refusal.lift("watches")
        eventually(lambda: succeeded(world, "alpha"), timeout=30, what="the success message")
        assert world.stop(daemon) == 0

    def test_a_result_that_cannot_be_stored_costs_only_its_watch(
        self, any_world: World, refusal: Refusal
    ) -> None:
        """One watch's result is refused on its own: the others' results are written, that
        watch is logged and polled again, and its message arrives once the refusal ends."""
        world = any_world
        jobs = ["alpha", "bravo", "charlie"]
        for job in jobs:
            world.ruler.add_job(SITE, job, status="processing")
        world.write_config(
            "".join(job_yaml(job) for job in jobs), extra="delivery:\n  digest: {enabled: false}"
        )
        daemon = world.start()
        eventually(lambda: len(world.messages("info")) == len(jobs), what="started messages")
        poisoned = watch_key("ruler-prod", "bravo", SITE)
        refusal.impose("INSERT", "transitions", f"NEW.watch_id = {refusal.watch_id(poisoned)}")
        for job in jobs:
            world.ruler.set_job(SITE, job, status="complete")
        eventually(
            lambda: succeeded(world, "alpha") and succeeded(world, "charlie"),
            timeout=30,
            what="the other jobs' messages",
        )
        dropped = eventually(
            lambda: logged(world, DROPPED),
            what="the refused result logged",
        )
        assert {line["watch"] for line in dropped} == {poisoned}
        assert not succeeded(world, "bravo")
        refusal.lift("transitions")
        eventually(lambda: succeeded(world, "bravo"), timeout=30, what="bravo's message")
        assert world.stop(daemon) == 0

    def test_stopping_while_writes_fail_loses_nothing(
        self, any_world: World, refusal: Refusal
    ) -> None:
        """SIGTERM while results cannot be written: the daemon still exits 0 and says what it
        could not write; the next daemon polls that watch again and sends its message."""
        world = any_world
        world.ruler.add_job(SITE, "alpha", status="processing")
        world.write_config(
            job_yaml("alpha"), extra="delivery:\n  digest: {enabled: false}\nreplicas:\n  lease: 2s"
        )
        daemon = world.start()
        eventually(lambda: world.messages("info"), what="the started message")
        refusal.impose("UPDATE", "watches", "NEW.lease_owner IS NULL")
        world.ruler.set_job(SITE, "alpha", status="complete")
        eventually(lambda: logged(world, FAILED), what="the failed write-back logged")
        assert world.stop(daemon) == 0
        assert logged(
            world, "results not written before stopping; their watches will be polled again"
        )
        refusal.lift("watches")
        world.start()
        eventually(lambda: succeeded(world, "alpha"), timeout=30, what="the success message")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (a disk that can really fill up); skips unless this runs as root."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs takes root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode()[:200]}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` up; returns the file that takes the space (delete it to free the disk)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        chunk = b"\0" * 4096
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def test_a_full_disk_under_sqlite_loses_no_result(world: World, small_disk: Path) -> None:
    """The SQLite file's disk fills up while a poll is in flight: its write-back fails and is
    logged at once; once space is freed the result is written and the job still watched."""
    world.database = f"sqlite:///{small_disk}/poller.db"
    world.ruler.add_job(SITE, "alpha", status="processing")
    world.write_config(job_yaml("alpha"), extra="delivery:\n  digest: {enabled: false}")
    world.config.write_text(
        world.config.read_text().replace(
            "    token: ${RULER_TOKEN}\n", "    token: ${RULER_TOKEN}\n    request_timeout: 2s\n"
        )
    )
    daemon = world.start()
    eventually(lambda: world.messages("info"), what="the started message")
    # The next poll hangs until its request times out; the disk fills up meanwhile, so the
    # write-back of that poll's result (a timeout) is the write that fails.
    fault = world.ruler.fail("", mode="hang", times=1)
    eventually(lambda: fault.hits, what="a poll in flight")
    filler = fill(small_disk)
    failed = eventually(lambda: logged(world, FAILED), what="the failed write-back logged")
    assert "full" in str(failed[0]["error"])
    filler.unlink()
    world.ruler.set_job(SITE, "alpha", status="complete")
    eventually(lambda: succeeded(world, "alpha"), timeout=30, what="the success message")
    assert world.stop(daemon) == 0


def test_a_reload_the_database_refuses_is_logged(any_world: World, refusal: Refusal) -> None:
    """SIGHUP with a new job while the database refuses new watches: the failed reload is
    logged at once (it runs in the background, where no one awaits it), the daemon stays up,
    and the next reload adds the job."""
    world = any_world
    world.ruler.add_job(SITE, "alpha", status="processing")
    world.ruler.add_job(SITE, "bravo", status="complete")
    world.write_config(job_yaml("alpha"))
    daemon = world.start()
    refusal.impose("INSERT", "watches")
    world.write_config(job_yaml("alpha") + job_yaml("bravo"))
    daemon.send_signal(signal.SIGHUP)
    failed = eventually(
        lambda: [e for e in logged(world) if str(e["event"]).startswith("reload refused")],
        what="the failed reload logged",
    )
    assert FULL in str(failed[0]["error"])
    assert daemon.poll() is None
    refusal.lift("watches")
    daemon.send_signal(signal.SIGHUP)
    eventually(lambda: succeeded(world, "bravo"), timeout=30, what="bravo's message")
    assert world.stop(daemon) == 0
