"""The store contract, on a real SQLite file and on the real PostgreSQL."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from itertools import count
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.errors import StoreError
from poller.models import (
    DeliveryOutcome,
    Event,
    EventRecord,
    State,
    Transition,
    WatchProgress,
    WatchSpec,
)
from poller.store.repo import HEAD_REVISION, MIGRATIONS, Store, WriteBack
from poller.store.schema import tombstones

T0 = 1_700_000_000.0
#: unique job ids across hypothesis examples, which share one database
_JOBS = count()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    yield s
    s.close()


def tombstone_keys(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return sorted(conn.execute(sa.select(tombstones.c.key)).scalars())


def spec(job: str = "j1", **kw: object) -> WatchSpec:
    return WatchSpec(source="ruler-prod", job_id=job, site="s1", **kw)  # type: ignore[arg-type]


def finished(watch_progress: WatchProgress) -> WatchProgress:
    return replace(
        watch_progress,
        state=State.SUCCEEDED,
        remote_status="complete",
        active=False,
        ended_at=T0 + 5,
    )


class TestMigrations:
    """The schema is created and versioned by alembic."""

    def test_head_constant_matches_alembic(self) -> None:
        """HEAD_REVISION names alembic's newest migration."""
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD_REVISION

    def test_migrate_creates_schema_and_is_idempotent(self, db_url: str) -> None:
        """A new database migrates to head; migrating again changes nothing."""
        s = Store(db_url)
        try:
            assert s.current_revision() is None
            s.migrate()
            s.migrate()
            assert s.current_revision() == HEAD_REVISION
            assert s.list_watches() == []
        finally:
            s.close()

    def test_replicas_starting_together_migrate_once(self, pg_url: str) -> None:
        """Several processes migrating one fresh PostgreSQL at once all succeed."""
        code = (
            "import sys; from poller.store.repo import Store; "
            "s = Store(sys.argv[1]); s.migrate(); print(s.current_revision()); s.close()"
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, pg_url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert out.strip() == HEAD_REVISION

    def test_schema_agrees_with_the_migrations(self, db_url: str) -> None:
        """`schema.py` (what the code reads and writes) and the migrations (what `poller run`
        creates) describe the same tables: alembic's comparison of a freshly migrated database
        with the schema finds no difference, on SQLite and on PostgreSQL."""
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext

        from poller.store.schema import metadata

        s = Store(db_url)
        try:
            s.migrate()
            with s.engine.connect() as conn:
                differences = compare_metadata(MigrationContext.configure(conn), metadata)
        finally:
            s.close()
        assert differences == []


class TestSqliteFiles:
    """SQLite specifics: file modes, WAL, one daemon per file."""

    def test_database_and_wal_are_owner_only(self, tmp_path: Path) -> None:
        """The database, its WAL and its directory are readable by the owner only."""
        path = tmp_path / "state" / "poller.db"
        s = Store(f"sqlite:///{path}")
        s.migrate()
        s.add_watch(spec(), T0)
        try:
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            for p in path.parent.iterdir():
                assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
            assert (path.parent / "poller.db-wal").exists()
        finally:
            s.close()

    def test_second_daemon_lock_is_refused(self, tmp_path: Path) -> None:
        """Only one daemon may hold a SQLite file."""
        url = f"sqlite:///{tmp_path}/poller.db"
        first, second = Store(url), Store(url)
        try:
            first.acquire_daemon_lock()
            with pytest.raises(StoreError, match="already using"):
                second.acquire_daemon_lock()
        finally:
            first.close()
            second.close()

    def test_unwritable_location_is_a_store_error(self, tmp_path: Path) -> None:
        """A database path that cannot be created is a clear StoreError."""
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(StoreError, match="cannot open"):
            Store(f"sqlite:///{blocker}/sub/poller.db")


class TestWatches:
    """Registering, syncing and removing watches."""

    def test_add_is_idempotent_and_keeps_labels_fresh(self, store: Store) -> None:
        """Adding the same key twice keeps one watch and updates its name."""
        w, created = store.add_watch(spec(name="a"), T0)
        assert created and w.key == "ruler-prod/s1/j1" and w.next_poll_at == T0
        w2, created2 = store.add_watch(spec(name="b"), T0 + 1)
        assert not created2 and w2.id == w.id and w2.name == "b"

    def test_discovered_watches_follow_their_entries(self, store: Store) -> None:
        """Entries are remembered as listed; a watch listed as ended is stored ended and never
        due; the watches of an entry that left the config stop (history kept), others stay."""
        found = [
            WatchSpec("im", "a", origin="discovered", entry="im/bulk/B"),
            WatchSpec(
                "im", "b", origin="discovered", entry="im/bulk/B", ended_as=(State.FAILED, "failed")
            ),
            WatchSpec("im", "c", origin="discovered", entry="im/bulk/C"),
        ]
        assert sorted(store.add_new_watches(found, T0)) == ["im/a", "im/b", "im/c"]
        ended = store.get_watch("im/b")
        assert ended is not None and ended.next_poll_at is None
        assert (ended.progress.state, ended.progress.remote_status) == (State.FAILED, "failed")
        assert not ended.progress.active and ended.removed_at is None
        assert store.listed_entries(["im/bulk/B", "im/bulk/C"]) == set()
        store.mark_listed(["im/bulk/B", "im/bulk/C"], T0)
        store.mark_listed(["im/bulk/B"], T0 + 1)  # again: no conflict
        assert store.listed_entries(["im/bulk/B", "x"]) == {"im/bulk/B"}
        assert store.stop_discovered(["im/bulk/C"], T0 + 2) == ["im/a", "im/b"]
        stopped = store.get_watch("im/a")
        assert stopped is not None and stopped.removed_at == T0 + 2
        still = store.get_watch("im/c")
        assert still is not None and still.removed_at is None and still.progress.active
        assert store.listed_entries(["im/bulk/B", "im/bulk/C"]) == {"im/bulk/C"}
        assert store.stop_discovered([], T0 + 3) == ["im/c"]

    def test_pruned_discovered_watches_leave_tombstones(self, store: Store) -> None:
        """Pruning an ended discovered watch of a listed entry leaves a tombstone that keeps
        discovery from adding the job again; one of an entry never listed stays unpruned; an
        explicit add is not refused; a complete listing without the job, or the entry leaving
        the config, drops the tombstone."""
        ended = (State.FAILED, "failed")
        found = [
            WatchSpec("im", "a", origin="discovered", entry="im/bulk/B", ended_as=ended),
            WatchSpec("im", "b", origin="discovered", entry="im/bulk/B", ended_as=ended),
            WatchSpec("im", "c", origin="discovered", entry="im/bulk/C", ended_as=ended),
        ]
        store.add_new_watches(found, T0)
        store.mark_listed(["im/bulk/B"], T0)
        pruned = store.prune(T0 + 1)
        assert (pruned.watches, pruned.tombstones) == (2, 2)
        assert [w.key for w in store.list_watches()] == ["im/c"]
        assert store.add_new_watches(found[:2], T0 + 2) == []
        # another bulk or search listing the same job does not bring it back either
        elsewhere = WatchSpec("im", "b", origin="discovered", entry="im/bulk/C")
        assert store.add_new_watches([elsewhere], T0 + 2) == []
        assert store.add_watch(WatchSpec("im", "a"), T0 + 2)[1]  # `poller add` watches it
        assert store.drop_tombstones(["im/bulk/B"], {"im/a"}) == 1  # b is listed no more
        assert tombstone_keys(store) == ["im/a"]
        store.stop_discovered(["im/bulk/C"], T0 + 3)
        assert tombstone_keys(store) == []

    def test_sync_adds_and_stops_config_watches_only(self, store: Store) -> None:
        """A job dropped from the config stops; CLI watches are untouched."""
        store.add_watch(spec("cli-job"), T0)
        r1 = store.sync_config_jobs([spec("a", origin="config"), spec("b", origin="config")], T0)
        assert sorted(r1.added) == ["ruler-prod/s1/a", "ruler-prod/s1/b"]
        r2 = store.sync_config_jobs([spec("a", origin="config")], T0 + 1)
        assert r2.removed == ("ruler-prod/s1/b",) and r2.updated == ("ruler-prod/s1/a",)
        active = {w.key for w in store.list_watches() if w.progress.active}
        assert active == {"ruler-prod/s1/a", "ruler-prod/s1/cli-job"}

    def test_syncing_an_unchanged_config_writes_nothing(self, store: Store) -> None:
        """Every replica syncs the config when it starts: for watches it does not change, that
        must not touch their rows (it would fence the polls other replicas have in flight, and
        lock rows against their write-backs)."""
        store.sync_config_jobs([spec("a", name="A", origin="config")], T0)
        (claimed,) = store.claim_due("r1", T0, 10, 30)
        store.sync_config_jobs([spec("a", name="A", origin="config")], T0 + 1)
        written = store.write_back(
            "r1",
            [WriteBack(claimed, claimed.progress, next_poll_at=T0 + 5, polled_at=T0 + 2)],
        )
        assert written.written == 1 and written.fenced == []
        store.sync_config_jobs([spec("a", name="renamed", origin="config")], T0 + 3)
        got = store.get_watch(claimed.key)
        assert got is not None and got.name == "renamed"

    def test_remove_keeps_history_and_readd_restarts(self, store: Store) -> None:
        """remove stops polling; adding the key again resumes an unfinished job."""
        store.add_watch(spec(), T0)
        removed = store.remove_watch("ruler-prod/s1/j1", T0 + 1)
        assert removed is not None and not removed.progress.active
        assert store.claim_due("me", T0 + 10, 10, 30) == []
        assert store.remove_watch("nope", T0) is None
        w, _ = store.add_watch(spec(), T0 + 20)
        assert w.progress.active and w.removed_at is None


class TestClaimsAndWrites:
    """The schedule: leases, fencing and the outbox written with the state change."""

    def test_claim_takes_due_watches_once(self, store: Store) -> None:
        """A claimed watch is not claimed again while the lease holds."""
        for job in ("a", "b", "c"):
            store.add_watch(spec(job), T0)
        first = store.claim_due("r1", T0 + 1, 2, 30)
        second = store.claim_due("r2", T0 + 1, 10, 30)
        assert len(first) == 2 and len(second) == 1
        assert {w.key for w in first}.isdisjoint({w.key for w in second})
        assert store.claim_due("r3", T0 + 2, 10, 30) == []
        # Expired leases are taken over.
        assert len(store.claim_due("r3", T0 + 40, 10, 30)) == 3

    def test_write_back_records_transition_events_and_deliveries(self, store: Store) -> None:
        """One write stores the new state, the transition, events and one delivery each."""
        store.add_watch(spec(), T0)
        (w,) = store.claim_due("r1", T0, 10, 30)
        record = EventRecord(Event.SUCCEEDED, T0 + 5, {"key": w.key}, ("slack", "mail"))
        report = store.write_back(
            "r1",
            [
                WriteBack(
                    watch=w,
                    progress=finished(w.progress),
                    next_poll_at=None,
                    polled_at=T0 + 5,
                    transition=Transition(None, State.SUCCEEDED, "complete", 100.0, T0 + 5),
                    events=[record],
                )
            ],
        )
        assert report.written == 1 and report.deliveries == 2 and report.fenced == []
        after = store.get_watch(w.key)
        assert after is not None and after.progress.state == State.SUCCEEDED
        assert after.lease_owner is None and not after.progress.active
        history = store.history(w.key)
        assert history is not None
        assert [(h.kind, h.what) for h in history] == [
            ("transition", "new -> succeeded"),
            ("event", "succeeded"),
        ]
        assert store.delivery_counts() == {"pending": 2}

    def test_stale_write_is_fenced(self, store: Store) -> None:
        """A write from a claimer that lost its lease changes nothing and queues nothing."""
        store.add_watch(spec(), T0)
        (old,) = store.claim_due("slow", T0, 10, 30)
        (new,) = store.claim_due("fast", T0 + 31, 10, 30)
        record = EventRecord(Event.FAILED, T0 + 40, {"key": old.key}, ("slack",))
        stale = WriteBack(
            watch=old,
            progress=finished(old.progress),
            next_poll_at=None,
            polled_at=T0 + 40,
            events=[record],
        )
        report = store.write_back("slow", [stale])
        assert report.written == 0 and report.fenced == [old.key]
        assert store.delivery_counts() == {}
        fresh_write = WriteBack(
            watch=new, progress=new.progress, next_poll_at=T0 + 90, polled_at=T0 + 41
        )
        assert store.write_back("fast", [fresh_write]).written == 1

    def test_one_stale_row_in_a_batch_does_not_block_the_others(self, store: Store) -> None:
        """In a group commit, only the fenced row is dropped; the rest are written."""
        for job in ("a", "b", "c"):
            store.add_watch(spec(job), T0)
        claimed = store.claim_due("r1", T0, 10, 30)
        store.remove_watch(claimed[1].key, T0 + 1)
        record = EventRecord(Event.SUCCEEDED, T0 + 2, {"key": "x"}, ("slack",))
        items = [
            WriteBack(
                watch=w,
                progress=finished(w.progress),
                next_poll_at=None,
                polled_at=T0 + 2,
                events=[record],
            )
            for w in claimed
        ]
        report = store.write_back("r1", items)
        assert report.written == 2 and report.fenced == [claimed[1].key]
        assert report.deliveries == 2 and store.delivery_counts() == {"pending": 2}
        states = {w.key: w.progress.state for w in store.list_watches()}
        assert states[claimed[1].key] is None
        assert states[claimed[0].key] == states[claimed[2].key] == State.SUCCEEDED

    def test_quiet_and_changed_rows_in_one_batch(self, store: Store) -> None:
        """A poll that found nothing new writes only its schedule; one beside it that found a
        change writes the whole row; a fenced quiet row is reported like any other."""
        for job in ("quiet", "changed", "gone"):
            store.add_watch(spec(job), T0)
        claimed = {w.job_id: w for w in store.claim_due("r1", T0, 10, 30)}
        store.remove_watch(claimed["gone"].key, T0 + 1)
        quiet, changed, gone = claimed["quiet"], claimed["changed"], claimed["gone"]
        backed_off = replace(quiet.progress, wait=7.5)
        items = [
            WriteBack(watch=quiet, progress=backed_off, next_poll_at=T0 + 9, polled_at=T0 + 2),
            WriteBack(
                watch=changed,
                progress=replace(changed.progress, remote_status="processing", progress=40.0),
                next_poll_at=T0 + 5,
                polled_at=T0 + 2,
            ),
            WriteBack(watch=gone, progress=gone.progress, next_poll_at=T0 + 9, polled_at=T0 + 2),
        ]
        report = store.write_back("r1", items)
        assert report.written == 2 and report.fenced == [gone.key]
        after = {w.job_id: w for w in store.list_watches()}
        assert after["quiet"].progress == backed_off
        assert after["quiet"].next_poll_at == T0 + 9 and after["quiet"].last_poll_at == T0 + 2
        assert after["quiet"].version == quiet.version + 1
        assert after["quiet"].lease_owner is None
        assert after["changed"].progress.remote_status == "processing"
        assert after["changed"].progress.progress == 40.0
        assert after["gone"].version == gone.version + 1  # by remove, not by the stale write
        assert not after["gone"].progress.active

    def test_claim_ahead_takes_watches_about_to_be_due(self, store: Store) -> None:
        """`ahead` claims what comes due within it, and nothing later; leases run from now."""
        for job in ("a", "b"):
            store.add_watch(spec(job), T0)
        claimed = store.claim_due("r1", T0, 10, 30)
        store.write_back(
            "r1",
            [
                WriteBack(watch=w, progress=w.progress, next_poll_at=T0 + due, polled_at=T0)
                for w, due in zip(claimed, (10.0, 10.5), strict=True)
            ],
        )
        assert [w.job_id for w in store.claim_due("r1", T0 + 9.8, 10, 30, ahead=0.25)] == ["a"]
        assert store.next_due_at(T0 + 9.8) == T0 + 10.5
        later = store.claim_due("r2", T0 + 9.8 + 30.1, 10, 30)
        assert [w.job_id for w in later] == ["a", "b"]  # the first lease ran from T0 + 9.8

    @settings(
        max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        times=st.lists(st.floats(0, 4e9) | st.none(), min_size=5, max_size=5),
        progress=st.floats(0, 100) | st.none(),
        # no lone surrogates: text that no database driver encodes never reaches the store
        # (answers are cleaned by `load_json`, names and ids refused by `models.text_problem`)
        text=st.text(
            st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=40
        ),
        detail=st.dictionaries(
            st.text(max_size=8),
            st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=12)
            | st.booleans(),
            max_size=3,
        ),
        tags=st.lists(st.text(min_size=1, max_size=8), max_size=3),
    )
    def test_a_claim_reads_back_exactly_what_was_written(
        self,
        store: Store,
        times: list[float | None],
        progress: float | None,
        text: str,
        detail: dict[str, object],
        tags: list[str],
    ) -> None:
        """Every field, floats to the last bit and JSON as it was, comes back from a claim
        as `get_watch` reads it (claims travel as one JSON value)."""
        job = f"j{next(_JOBS)}"
        store.add_watch(spec(job, name=text or None, tags=tuple(tags), overrides={"a": 1.5}), T0)
        (w,) = store.claim_due("r1", T0 + 5e9, 1, 30)
        started, ended, wait, changed, since = times
        written = replace(
            w.progress,
            state=State.RUNNING,
            remote_status=text,
            progress=progress,
            details=detail,
            started_at=started,
            ended_at=ended,
            wait=wait,
            last_change_at=changed,
            error_since=since,
            error_count=3,
            last_error=text,
            stalled=True,
        )
        due = T0 + 5e9 + (progress or 0.0) / 3
        store.write_back(
            "r1", [WriteBack(watch=w, progress=written, next_poll_at=due, polled_at=T0 + 0.1)]
        )
        (again,) = store.claim_due("r2", due, 1, 30)
        assert again.progress == written
        assert again.next_poll_at == due and again.last_poll_at == T0 + 0.1
        stored = store.get_watch(w.key)
        assert stored is not None
        assert again == replace(stored, lease_owner="r2")
        store.remove_watch(w.key, T0)  # out of the next example's claims

    def test_a_nul_in_an_answer_is_stored_not_fatal(self, store: Store) -> None:
        """PostgreSQL refuses NUL in text: a job API that sends one must not fail the whole
        group commit. Both databases store U+FFFD in its place."""
        for job in ("nul", "other"):
            store.add_watch(spec(job), T0)
        claimed = {w.job_id: w for w in store.claim_due("r1", T0, 10, 30)}
        items = [
            WriteBack(
                watch=w,
                progress=replace(
                    w.progress, state=State.RUNNING, remote_status=f"{job}\x00!", last_error="\x00"
                ),
                next_poll_at=T0 + 5,
                polled_at=T0 + 1,
                transition=Transition(None, State.RUNNING, f"{job}\x00!", None, T0 + 1),
            )
            for job, w in claimed.items()
        ]
        assert store.write_back("r1", items).written == 2
        stored = store.get_watch(claimed["nul"].key)
        assert stored is not None and stored.progress.remote_status == "nul\ufffd!"
        assert stored.progress.last_error == "\ufffd"

    def test_removed_while_polling_is_fenced(self, store: Store) -> None:
        """A poll that finishes after `remove` does not bring the watch back."""
        store.add_watch(spec(), T0)
        (w,) = store.claim_due("r1", T0, 10, 30)
        store.remove_watch(w.key, T0 + 1)
        report = store.write_back(
            "r1", [WriteBack(watch=w, progress=w.progress, next_poll_at=T0 + 30, polled_at=T0 + 2)]
        )
        assert report.written == 0
        got = store.get_watch(w.key)
        assert got is not None and not got.progress.active

    def test_renew_keeps_a_working_claim(self, store: Store) -> None:
        """A renewed lease is not taken over; a lease lost before renewal is not renewed."""
        for job in ("a", "b"):
            store.add_watch(spec(job), T0)
        store.claim_due("r1", T0, 1, 30)
        assert store.renew("r1", T0 + 100) == 1
        assert [w.key for w in store.claim_due("r2", T0 + 50, 10, 30)] == ["ruler-prod/s1/b"]
        assert store.renew("nobody", T0 + 100) == 0

    def test_next_due_ignores_leased_watches(self, store: Store) -> None:
        """A leased watch does not count as due for the dispatcher's sleep."""
        store.add_watch(spec("a"), T0)
        assert store.next_due_at(T0) == T0
        store.claim_due("r1", T0, 10, 30)
        assert store.next_due_at(T0 + 1) is None


class TestOutbox:
    """Deliveries are claimed, sent, retried and given up."""

    def _queue(self, store: Store, channels: tuple[str, ...] = ("slack",)) -> None:
        store.add_watch(spec(), T0)
        (w,) = store.claim_due("r1", T0, 10, 30)
        record = EventRecord(Event.FAILED, T0, {"key": w.key}, channels)
        store.write_back(
            "r1",
            [
                WriteBack(
                    watch=w,
                    progress=finished(w.progress),
                    next_poll_at=None,
                    polled_at=T0,
                    events=[record],
                )
            ],
        )

    def test_claim_send_and_retry(self, store: Store) -> None:
        """A failed attempt is retried later; a sent one is never claimed again."""
        self._queue(store, ("slack", "mail"))
        claimed = store.claim_deliveries("r1", T0, 10, 60)
        assert sorted(d.channel for d in claimed) == ["mail", "slack"]
        assert claimed[0].kind == Event.FAILED and claimed[0].payload["key"]
        assert store.claim_deliveries("r2", T0, 10, 60) == []
        by = {d.channel: d for d in claimed}
        store.finish_deliveries(
            "r1",
            [
                DeliveryOutcome(by["slack"].id, sent=True),
                DeliveryOutcome(by["mail"].id, sent=False, error="HTTP 500", retry_at=T0 + 10),
            ],
            T0 + 1,
        )
        assert store.claim_deliveries("r1", T0 + 5, 10, 60) == []
        (retry,) = store.claim_deliveries("r1", T0 + 10, 10, 60)
        assert retry.channel == "mail" and retry.attempts == 1
        store.finish_deliveries("r1", [DeliveryOutcome(retry.id, sent=False, error="x")], T0)
        assert store.delivery_counts() == {"sent": 1, "given_up": 1}

    def test_finish_without_lease_is_ignored(self, store: Store) -> None:
        """A process whose delivery lease was taken over records nothing."""
        self._queue(store)
        (d,) = store.claim_deliveries("r1", T0, 10, 60)
        store.claim_deliveries("r2", T0 + 61, 10, 60)
        assert store.finish_deliveries("r1", [DeliveryOutcome(d.id, sent=True)], T0 + 62) == 0
        assert store.delivery_counts() == {"pending": 1}

    def test_release_returns_leases(self, store: Store) -> None:
        """After release, another owner can claim at once."""
        self._queue(store)
        store.claim_deliveries("r1", T0, 10, 60)
        store.release("r1")
        assert len(store.claim_deliveries("r2", T0 + 1, 10, 60)) == 1


def test_a_deadlocked_group_commit_is_tried_again(pg_url: str) -> None:
    """Another transaction takes the same rows in the other order: PostgreSQL breaks the group
    commit off as a deadlock, and the store runs it again instead of dropping its results."""
    import threading

    import sqlalchemy as sa
    from world import eventually

    store = Store(pg_url)
    store.migrate()
    for job in ("a", "b"):
        store.add_watch(spec(job), T0)
    claimed = sorted(store.claim_due("r1", T0, 10, 30), key=lambda w: w.id)
    items = [WriteBack(w, w.progress, next_poll_at=T0 + 5, polled_at=T0 + 1) for w in claimed]
    engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")

    def deadlocks() -> int:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            found = conn.exec_driver_sql(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
            ).scalar()
        return int(found or 0)

    def waiting() -> bool:
        with engine.connect() as conn:
            found = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).scalar()
        return bool(found)

    before = deadlocks()
    results: list[object] = []
    with engine.connect() as other:
        other.exec_driver_sql("SET deadlock_timeout = '20s'")  # the store's side gives way
        other.exec_driver_sql("BEGIN")
        other.exec_driver_sql("UPDATE watches SET name = 'x' WHERE job_id = 'b'")
        writer = threading.Thread(
            target=lambda: results.append(_outcome(lambda: store.write_back("r1", items)))
        )
        writer.start()
        eventually(waiting, what="the group commit to hold a and wait for b")
        other.exec_driver_sql("UPDATE watches SET name = 'x' WHERE job_id = 'a'")
        other.exec_driver_sql("COMMIT")
        writer.join(30)
    (report,) = results
    assert not isinstance(report, Exception), report
    assert report.written == 2 and report.fenced == []  # type: ignore[attr-defined]
    eventually(lambda: deadlocks() > before, what="PostgreSQL to count the deadlock")
    engine.dispose()
    store.close()


def _outcome(call: Callable[[], object]) -> object:
    """What `call` returned, or the exception it raised."""
    try:
        return call()
    except Exception as exc:
        return exc


def test_claims_search_the_due_index(tmp_path: Path) -> None:
    """The claim reads the due watches off the (active, next_poll_at) index: a scan would cost
    every claim the whole table (it did, once, when the query said `active` for `active = 1`).
    """
    import sqlite3

    from poller.store import claims

    store = Store(f"sqlite:///{tmp_path}/plan.db")
    store.migrate()
    store.close()
    sql = claims._SQLITE_DUE.text
    for name in ("due", "now", "limit", "owner", "until"):
        sql = sql.replace(f":{name}", "?")
    with sqlite3.connect(tmp_path / "plan.db") as conn:
        plan = " / ".join(
            row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (1,) * sql.count("?"))
        )
    assert "USING INDEX ix_watches_due" in plan, plan
    assert "SCAN watches" not in plan, plan


def test_watch_columns_are_what_watch_from_row_unpacks() -> None:
    """`WATCH_COLUMNS` is the one list of a watch's columns that the selects and the claims'
    SQL read: `watch_from_row` unpacks a row into variables named after those columns, in
    their order, and every column of the table but the lease's end is among them (a new
    column is read, or left out here on purpose)."""
    from poller.store.rows import WATCH_COLUMNS, watch_from_row
    from poller.store.schema import watches

    names = tuple(column.name for column in WATCH_COLUMNS)
    code = watch_from_row.__code__
    # the function's first locals, in the order the unpacking assigns them
    unpacked = code.co_varnames[code.co_argcount : code.co_argcount + len(names)]
    assert unpacked == names
    # discovered_by is read only by the config sync (`stop_discovered`), never by a claim
    assert [c.name for c in watches.c if c.name not in names] == ["lease_until", "discovered_by"]


def test_sqlite_permissions_do_not_depend_on_umask(tmp_path: Path) -> None:
    """Even with a permissive umask the database stays owner-only."""
    old = os.umask(0o000)
    try:
        s = Store(f"sqlite:///{tmp_path}/open/poller.db")
        s.migrate()
        s.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "open" / "poller.db").stat().st_mode) == 0o600
