"""Discovery of Immuta bulks and searches into watches, and the daemon watching Immuta jobs end
to end (single jobs with long-polling, bulks, searches)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs
from world import eventually

from poller.config import Config, load_config
from poller.engine.discovery import (
    DEFAULT_INTERVAL,
    Discovery,
    DiscoveryReport,
    discovery_interval,
)
from poller.models import State, WatchSpec
from poller.sources import Source
from poller.sources.immuta.adapter import ImmutaAdapter
from poller.store.repo import Store
from poller.store.schema import tombstones
from poller.testing import ImmutaSim, SimThread, WebhookSink

KEY = "immuta-key-2468"
POLLER = [sys.executable, "-m", "poller"]


@pytest.fixture
def sim() -> Iterator[ImmutaSim]:
    server = ImmutaSim(KEY, max_page_size=5)
    with SimThread(server):
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path}/poller.db")
    opened.migrate()
    try:
        yield opened
    finally:
        opened.close()


def write_config(tmp_path: Path, base_url: str, jobs: str, source_extra: str = "") -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(f"""
database: sqlite:///{tmp_path}/poller.db
sources:
  im:
    type: immuta
    base_url: {base_url}
    token: {KEY}
{source_extra}
jobs:
{jobs}
""")
    return load_config(path, environ={})


class Run:
    """Discovery against a real store and a real adapter; counts what reaches the store."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store, self.config = store, config
        self.sent: list[int] = []
        self.discovery = Discovery(self, log=_logger())

    async def listed(self, entries: Sequence[str]) -> set[str]:
        return self.store.listed_entries(entries)

    async def add(self, specs: Sequence[WatchSpec]) -> list[str]:
        self.sent.append(len(specs))
        return self.store.add_new_watches(specs, time.time())

    async def mark_listed(self, entries: Sequence[str]) -> None:
        self.store.mark_listed(entries, time.time())

    async def drop_tombstones(self, complete: Collection[str], listed: Collection[str]) -> int:
        return self.store.drop_tombstones(complete, listed)

    def __call__(self, sources: dict[str, Source] | None = None) -> DiscoveryReport:
        async def go() -> DiscoveryReport:
            adapters: dict[str, Source] = (
                sources if sources is not None else {"im": ImmutaAdapter(self.config.sources["im"])}
            )
            try:
                return await self.discovery.run(self.config, adapters)
            finally:
                for adapter in adapters.values():
                    await adapter.aclose()

        return asyncio.run(go())


class TestDiscovery:
    """Bulks and searches become watches; later jobs are picked up."""

    def test_bulk_jobs_become_watches_with_the_entry_labels(
        self, tmp_path: Path, sim: ImmutaSim, store: Store
    ) -> None:
        """Every job of the bulk, across pages, is watched with the entry's name and tags."""
        for i in range(12):
            sim.add_job(f"b-{i}", bulk_id="bulk-1")
        sim.add_job("elsewhere", bulk_id="bulk-2")
        config = write_config(
            tmp_path,
            sim.base_url,
            "  - {source: im, bulk: bulk-1, name: Nightly load, tags: [etl],"
            " polling: {interval: 5s}}",
        )
        report = Run(store, config)()
        assert report.found == 12 and len(report.added) == 12 and report.failed == ()
        watch = store.get_watch("im/b-7")
        assert watch is not None
        assert (watch.origin, watch.name, watch.tags) == ("discovered", "Nightly load", ("etl",))
        assert watch.overrides == {"interval": 5.0}
        assert store.get_watch("im/elsewhere") is None

    def test_later_jobs_are_picked_up_and_only_they_reach_the_store(
        self, tmp_path: Path, sim: ImmutaSim, store: Store
    ) -> None:
        """A second run adds the new job alone and sends nothing else to the store."""
        sim.add_job("a", bulk_id="b")
        config = write_config(tmp_path, sim.base_url, "  - {source: im, bulk: b}")
        run = Run(store, config)
        assert run().added == ("im/a",)
        version = store.get_watch("im/a").version  # type: ignore[union-attr]
        sim.add_job("z", bulk_id="b")
        assert run().added == ("im/z",)
        assert run().added == ()
        assert run.sent == [1, 1]
        assert store.get_watch("im/a").version == version  # type: ignore[union-attr]

    def test_existing_and_removed_watches_are_left_alone(
        self, tmp_path: Path, sim: ImmutaSim, store: Store
    ) -> None:
        """A watch from the config keeps its labels; one removed by hand stays removed."""
        for job_id in ("kept", "removed", "new"):
            sim.add_job(job_id, bulk_id="b")
        now = time.time()
        store.add_watch(WatchSpec("im", "kept", name="By hand", origin="config"), now)
        store.add_watch(WatchSpec("im", "removed"), now)
        store.remove_watch("im/removed", now)
        config = write_config(tmp_path, sim.base_url, "  - {source: im, bulk: b, name: Bulk}")
        assert Run(store, config)().added == ("im/new",)
        kept, removed = store.get_watch("im/kept"), store.get_watch("im/removed")
        assert kept is not None and (kept.name, kept.origin) == ("By hand", "config")
        assert removed is not None and removed.removed_at is not None

    def test_search_with_filters(self, tmp_path: Path, sim: ImmutaSim, store: Store) -> None:
        """A search's filters reach the API; what it finds is watched."""
        sim.add_job("f1", state="failed", job_type="policyUpdate")
        sim.add_job("f2", state="failed", job_type="sdd")
        sim.add_job("ok", state="completed", job_type="policyUpdate")
        config = write_config(
            tmp_path,
            sim.base_url,
            "  - {source: im, search: {jobType: [policyUpdate], state: failed}}",
        )
        assert Run(store, config)().added == ("im/f1",)

    def test_a_failing_entry_does_not_stop_the_others(
        self, tmp_path: Path, sim: ImmutaSim, store: Store
    ) -> None:
        """The search fails (logged, without the key); the bulk is still added."""
        sim.add_job("a", bulk_id="b", state="failed")
        sim.fail("/jobs/search", status=503)
        config = write_config(
            tmp_path,
            sim.base_url,
            "  - {source: im, bulk: b}\n  - {source: im, search: {state: failed}}",
        )
        run = Run(store, config)
        with capture_logs() as logs:
            report = run()
        assert report.added == ("im/a",)
        assert report.failed == ("jobs[1] (search on im)",)
        (failed,) = [e for e in logs if e["event"] == "discovery failed"]
        assert failed["kind"] == "unavailable"
        assert KEY not in repr(logs)
        # the next run tries again
        assert run().failed == ()

    def test_a_source_that_cannot_discover(self, tmp_path: Path, store: Store) -> None:
        """An entry whose source has no adapter is reported, not raised."""
        config = write_config(tmp_path, "http://127.0.0.1:9", "  - {source: im, bulk: b}")
        report = Run(store, config)({})
        assert report.failed == ("jobs[0] (bulk b on im)",)

    def test_first_listing_records_ended_jobs_quietly_even_after_a_restart(
        self, tmp_path: Path, sim: ImmutaSim, store: Store
    ) -> None:
        """The first listing adds ended jobs as ended (not due, no poll); running ones are
        due. A later listing, by a new process too, adds ended jobs as due (to be notified);
        changed filters are a new entry, listed quietly again."""
        sim.add_job("done", state="failed", job_type="sdd")
        sim.add_job("busy", state="active", job_type="sdd")
        config = write_config(tmp_path, sim.base_url, "  - {source: im, search: {jobType: sdd}}")
        report = Run(store, config)()
        assert report.recorded == ("im/done",) and sorted(report.added) == ["im/busy", "im/done"]
        done, busy = store.get_watch("im/done"), store.get_watch("im/busy")
        assert done is not None and busy is not None
        assert (done.progress.state, done.progress.active, done.next_poll_at) == (
            State.FAILED,
            False,
            None,
        )
        assert busy.progress.active and busy.next_poll_at is not None
        sim.add_job("later", state="failed", job_type="sdd")
        again = Run(store, config)()  # a new process: the database remembers the entry
        assert (again.added, again.recorded) == (("im/later",), ())
        later = store.get_watch("im/later")
        assert later is not None and later.progress.active
        other = write_config(
            tmp_path, sim.base_url, "  - {source: im, search: {jobType: sdd, state: failed}}"
        )
        sim.add_job("newest", state="failed", job_type="sdd")
        assert Run(store, other)().recorded == ("im/newest",)

    def test_a_listing_of_bare_ids_is_never_taken_for_ended(
        self, tmp_path: Path, store: Store
    ) -> None:
        """A source type whose listing gives ids without states: its first listing adds them
        all as due watches, none recorded as ended."""
        config = write_config(tmp_path, "http://127.0.0.1:9", "  - {source: im, bulk: b}")
        report = Run(store, config)({"im": _BareIds()})
        assert (sorted(report.added), report.recorded) == (["im/x", "im/y"], ())
        assert all(w.progress.active for w in store.list_watches())

    def test_a_pruned_job_stays_away_until_a_complete_listing_drops_it(
        self, tmp_path: Path, sim: ImmutaSim, store: Store
    ) -> None:
        """Pruning an ended discovered watch leaves a tombstone: a new process's discovery
        does not add the job again. A failed or incomplete listing keeps the tombstone; a
        complete one without the job drops it, and the job listed again later is new."""
        sim.add_job("done", state="failed", job_type="sdd")
        config = write_config(tmp_path, sim.base_url, "  - {source: im, search: {jobType: sdd}}")
        assert Run(store, config)().recorded == ("im/done",)
        pruned = store.prune(time.time() + 1)
        assert (pruned.watches, pruned.tombstones) == (1, 1)
        assert Run(store, config)().added == ()  # a new process: the tombstone keeps it away
        assert store.get_watch("im/done") is None
        sim.remove_job("done")
        assert Run(store, config)({}).failed  # no source: a failed listing
        Run(store, config)({"im": _BareIds()})  # ids without `complete`: maybe truncated
        assert _tombstones(store) == [("im/done",)]
        Run(store, config)()  # complete, without the job
        assert _tombstones(store) == []
        sim.add_job("done", state="failed", job_type="sdd")
        assert Run(store, config)().added == ("im/done",)

    def test_interval_is_the_shortest_of_the_sources_that_discover(self, tmp_path: Path) -> None:
        """discovery_interval of sources with bulks or searches; the default otherwise."""
        fast = write_config(
            tmp_path,
            "http://127.0.0.1:9",
            "  - {source: im, bulk: b}",
            "    discovery_interval: 15s",
        )
        assert discovery_interval(fast) == 15
        none = write_config(tmp_path, "http://127.0.0.1:9", "  - {source: im, id: x}")
        assert discovery_interval(none) == DEFAULT_INTERVAL
        # a config without bulks or searches: a run that lists nothing and adds nothing
        assert asyncio.run(Discovery(_Never(), log=_logger()).run(none, {})) == DiscoveryReport()


class _BareIds:
    """A source whose listing is a plain list of ids."""

    async def poll(self, jobs: Sequence[Any]) -> dict[str, Any]:
        return {}

    async def discover(self, job: Any) -> list[str]:
        return ["x", "y"]

    async def aclose(self) -> None:
        pass


class _Never:
    """A ledger that must not be used."""

    async def listed(self, entries: Sequence[str]) -> set[str]:
        raise AssertionError("nothing to list")

    async def add(self, specs: Sequence[WatchSpec]) -> list[str]:
        raise AssertionError("nothing to add")

    async def mark_listed(self, entries: Sequence[str]) -> None:
        raise AssertionError("nothing to mark")

    async def drop_tombstones(self, complete: Collection[str], listed: Collection[str]) -> int:
        raise AssertionError("nothing to drop")


def _tombstones(store: Store) -> list[tuple[str, ...]]:
    """The watch keys the tombstones table holds."""
    with store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(tombstones.c.key))]


def _logger() -> Any:
    from poller.logs import get_logger

    return get_logger("test")


# -- end to end ------------------------------------------------------------------------------


class Daemon:
    """`poller run` on a config file, against an Immuta simulator and a webhook sink."""

    def __init__(
        self,
        tmp: Path,
        immuta: ImmutaSim,
        sink: WebhookSink,
        jobs: str,
        *,
        source: str = "long_poll: 2s\n    discovery_interval: 500ms",
        polling: str = "polling: {interval: 200ms, max_interval: 500ms}",
        database: str | None = None,
    ) -> None:
        self.sink, self.tmp, self.immuta = sink, tmp, immuta
        self.database = database or f"sqlite:///{tmp}/poller.db"
        self.log = tmp / "daemon.log"
        self.config = tmp / "config.yaml"
        self.write(jobs, source=source, polling=polling)
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        env["IMMUTA_KEY"] = KEY
        env.pop("NOTIFY_SOCKET", None)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "poller", "run", "-c", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def write(self, jobs: str, *, source: str, polling: str) -> None:
        """Write the config file (a running daemon reads it again on `reload`)."""
        self.config.write_text(f"""
database: {self.database}
log: {{level: debug}}
sources:
  immuta:
    type: immuta
    base_url: {self.immuta.base_url}
    token: ${{IMMUTA_KEY}}
    {source}
channels:
  hook: {self.sink.apprise_url}
rules:
  - on: [succeeded, failed, cancelled, expired, started]
    notify: [hook]
{polling}
jobs:
{jobs}
""")

    def reload(self) -> None:
        """SIGHUP, and wait until the daemon says it reloaded."""
        before = self.log.read_text().count('"reloaded"')
        self.proc.send_signal(signal.SIGHUP)
        eventually(lambda: self.log.read_text().count('"reloaded"') > before, what="reload")

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sink.messages if m["type"] == kind]

    def about(self, kind: str, text: str) -> list[dict[str, Any]]:
        return [m for m in self.messages(kind) if text in m["message"]]

    def names(self, key: str) -> list[dict[str, Any]]:
        """The messages that name the watch `key` (alone on a line, as bodies and digests do)."""
        return [
            m
            for m in self.sink.messages
            if any(line.split()[-1:] == [key] for line in m["message"].splitlines())
        ]

    def watch(self, key: str) -> dict[str, Any]:
        """The watch `key` as `poller status --json` shows it."""
        shown = subprocess.run(
            [*POLLER, "status", "--json", "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "IMMUTA_KEY": KEY},
        )
        assert shown.returncode == 0, shown.stderr
        (found,) = [w for w in json.loads(shown.stdout)["watches"] if w["key"] == key]
        return dict(found)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A `poller` command on the daemon's config."""
        return subprocess.run(
            [*POLLER, *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "IMMUTA_KEY": KEY},
        )

    def seen_at(self, key: str, state: str) -> float:
        """When the daemon logged the watch's transition to `state` (epoch seconds)."""
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("watch") == key and entry.get("to_state") == state:
                    return datetime.fromisoformat(entry["timestamp"]).timestamp()
        raise AssertionError(f"no transition of {key} to {state} in the log")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, ImmutaSim, WebhookSink]]:
    immuta, sink = ImmutaSim(KEY, max_page_size=2), WebhookSink()
    with SimThread(immuta, sink):
        yield tmp_path, immuta, sink


class TestImmutaEndToEnd:
    """The daemon watches single, bulk and searched Immuta jobs and notifies their ends."""

    def test_single_bulk_and_search(self, world: tuple[Path, ImmutaSim, WebhookSink]) -> None:
        """Ends reach the webhook promptly (long-poll); a job added to the bulk later too."""
        tmp, immuta, sink = world
        immuta.add_job("one", state="active")
        for i in range(3):
            immuta.add_job(f"bulk-{i}", state="created", bulk_id="B7")
        immuta.add_job("found", state="failed", job_type="sdd", output={"message": "boom"})
        immuta.add_job("ignored", state="failed", job_type="other")
        daemon = Daemon(
            tmp,
            immuta,
            sink,
            "  - {source: immuta, id: one, name: Policy sync}\n"
            "  - {source: immuta, bulk: B7, name: Bulk load, tags: [bulk]}\n"
            "  - {source: immuta, search: {jobType: [sdd], state: failed}, name: Failed SDD}",
        )
        try:
            eventually(lambda: daemon.about("info", "immuta/one"), what="one started")
            # the search's first listing records "found" (failed before) without a message;
            # a job that fails later is found by a later listing and notified
            immuta.add_job("found-late", state="failed", job_type="sdd", output={"message": "boom"})
            (found,) = eventually(lambda: daemon.about("failure", "immuta/found-late"))
            assert "Failed SDD" in found["title"]
            assert "boom" in found["message"]
            assert not daemon.names("immuta/found")
            found_watch = daemon.watch("immuta/found")
            assert (found_watch["state"], found_watch["terminal"]) == ("failed", True)
            assert found_watch["last_poll_at"] is None  # recorded as listed, never polled

            immuta.set_job("one", state="completed")
            ended = time.time()
            eventually(lambda: daemon.about("success", "immuta/one"), what="one succeeded")
            # the poll saw the end within about a second (delivery has its own pace)
            assert daemon.seen_at("immuta/one", "succeeded") - ended < 1.6

            immuta.set_job("bulk-1", state="cancelled")
            immuta.add_job("bulk-late", state="expired", bulk_id="B7")
            eventually(lambda: daemon.about("failure", "immuta/bulk-1"), what="bulk-1")
            (late,) = eventually(lambda: daemon.about("failure", "immuta/bulk-late"))
            assert "Bulk load" in late["title"] and "expired" in late["title"]
            assert not daemon.about("failure", "immuta/ignored")
            # long-polling: a first poll does not wait; then a lone job waits 2 s and several
            # wait 1 s (the 200 ms interval plays no part)
            bodies = immuta.statuses_bodies
            assert all(b["wait"] in ((0, 2) if len(b["jobIds"]) == 1 else (0, 1)) for b in bodies)
            assert any(b["wait"] == 2 for b in bodies)
            assert daemon.stop() == 0
        finally:
            daemon.kill()
        log = daemon.log.read_text()
        assert '"discovered"' in log
        assert KEY not in log


class TestContinuousLongPoll:
    """With long_poll, a statuses request is always outstanding: ends are seen within about a
    second at the default polling settings (interval 30 s), one long job holding none back."""

    def test_ends_are_seen_within_about_a_second_at_default_settings(
        self, world: tuple[Path, ImmutaSim, WebhookSink]
    ) -> None:
        """Ten running jobs (more than the six long-wait slots) end one by one, each seen within
        about a second of its change, while one job never ends; the daemon stops cleanly."""
        tmp, immuta, sink = world
        ids = [f"j{i}" for i in range(10)]
        for job_id in [*ids, "forever"]:
            immuta.add_job(job_id, state="active")
        jobs = "\n".join(f"  - {{source: immuta, id: {j}}}" for j in [*ids, "forever"])
        # default polling settings; no digests, whose storm control would hold messages back
        daemon = Daemon(
            tmp,
            immuta,
            sink,
            jobs,
            source="long_poll: 25s",
            polling="delivery: {digest: {enabled: false}}",
        )
        try:
            # eleven started events come as digests: wait until every job is named
            eventually(
                lambda: all(
                    f"immuta/{j}" in " ".join(m["message"] for m in daemon.messages("info"))
                    for j in [*ids, "forever"]
                ),
                what="every job started",
            )
            late: list[float] = []
            for job_id in ids:
                time.sleep(0.4)
                immuta.set_job(job_id, state="completed" if job_id != "j3" else "failed")
                changed = time.time()
                kind = "failure" if job_id == "j3" else "success"
                eventually(lambda j=job_id, k=kind: daemon.about(k, f"immuta/{j}"), what=job_id)  # type: ignore[misc]
                late.append(
                    daemon.seen_at(f"immuta/{job_id}", "failed" if job_id == "j3" else "succeeded")
                    - changed
                )
            # the interval is 30 s: only a request kept outstanding sees ends this soon
            assert max(late) < 2.0, late
            bodies = immuta.statuses_bodies
            singles = [b for b in bodies if len(b["jobIds"]) == 1]
            shared = [b for b in bodies if len(b["jobIds"]) > 1]
            # alone: the whole long_poll while slots are free (else a second); shared: a second
            # (a first poll, of every job at once, does not wait)
            assert any(b["wait"] == 25 for b in singles)
            assert all(b["wait"] in (25, 1) for b in singles)
            assert all(b["wait"] == 1 for b in shared[1:]) and shared[0]["wait"] == 0
            assert len(bodies) < 100  # about one shared request a second, not one per job
            assert not daemon.about("success", "immuta/forever")
            assert daemon.stop() == 0
        finally:
            daemon.kill()
        log = daemon.log.read_text()
        assert "stale results dropped" not in log


class TestQuietDiscovery:
    """A first listing records what had already ended without a message (unless
    notify_existing); a reload stops the watches of a removed entry and applies a new
    discovery_interval."""

    def test_notify_existing_then_reload(self, world: tuple[Path, ImmutaSim, WebhookSink]) -> None:
        """notify_existing notifies a job that had failed before; removing the bulk from the
        config stops its watches (history kept); a shorter discovery_interval takes effect."""
        tmp, immuta, sink = world
        immuta.add_job("old-fail", state="failed", job_type="sdd", output={"message": "old"})
        immuta.add_job("b-done", state="completed", bulk_id="B1")
        immuta.add_job("b-run", state="active", bulk_id="B1")
        search = (
            "  - {source: immuta, search: {jobType: [sdd], state: failed}, notify_existing: true}"
        )
        bulk = "  - {source: immuta, bulk: B1, name: Bulk one}"
        polling = "polling: {interval: 200ms, max_interval: 500ms}"
        daemon = Daemon(
            tmp,
            immuta,
            sink,
            f"{search}\n{bulk}",
            source="discovery_interval: 1h",
            polling=polling,
        )
        try:
            # notify_existing: the search's first listing notifies the job that failed before
            eventually(lambda: daemon.about("failure", "immuta/old-fail"), what="old-fail")
            eventually(lambda: daemon.names("immuta/b-run"), what="b-run started")
            # the bulk's first listing (no notify_existing) recorded b-done without a message
            assert not daemon.names("immuta/b-done")
            assert daemon.watch("immuta/b-done")["state"] == "succeeded"

            daemon.write(search, source="discovery_interval: 300ms", polling=polling)
            daemon.reload()
            gone = daemon.watch("immuta/b-run")
            assert (gone["removed"], gone["active"]) == (True, False)
            history = subprocess.run(
                [*POLLER, "history", "-c", str(daemon.config), "immuta/b-run", "--json"],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "IMMUTA_KEY": KEY},
            )
            assert history.returncode == 0 and "running" in history.stdout
            # listed every 300 ms now (not every hour): a job failing later is found promptly
            time.sleep(1.0)
            immuta.add_job("new-fail", state="failed", job_type="sdd")
            eventually(lambda: daemon.about("failure", "immuta/new-fail"), timeout=8, what="new")
            immuta.set_job("b-run", state="completed")
            time.sleep(1.0)
            assert not daemon.names("immuta/b-run")[1:]  # only its start was ever sent
            assert daemon.stop() == 0
        finally:
            daemon.kill()


class TestTombstones:
    """Retention prunes ended discovered watches; discovery does not bring them back."""

    def test_pruned_job_is_not_added_again_nor_notified(
        self, world: tuple[Path, ImmutaSim, WebhookSink], db_url: str
    ) -> None:
        """A searched job ends and is notified; `poller prune` removes it while the daemon
        runs, and neither that daemon nor a restarted one (which has forgotten what it saw)
        adds it again or notifies it, though the search still lists it. `poller add` watches
        it again on request. Once the search stops listing it, its tombstone goes."""
        tmp, immuta, sink = world
        immuta.add_job("s-1", state="active", job_type="sdd")
        jobs = "  - {source: immuta, search: {jobType: [sdd]}, name: Searched}"
        daemon = Daemon(tmp, immuta, sink, jobs, database=db_url)
        try:
            eventually(lambda: daemon.about("info", "immuta/s-1"), what="s-1 started")
            immuta.set_job("s-1", state="completed")
            eventually(lambda: daemon.about("success", "immuta/s-1"), what="s-1 succeeded")
            # once its deliveries are done (a pending one keeps it) and it ended over 1 s ago
            pruned = eventually(
                lambda: daemon.cli("prune", "--older-than", "1s").stdout.partition("1 watch")[2],
                what="s-1 pruned",
            )
            assert pruned.startswith(" (1 discovered, tombstoned), 2 transitions, 2 events")
            told = len(daemon.names("immuta/s-1"))
            immuta.add_job("s-2", state="failed", job_type="sdd")  # a later listing finds it
            eventually(lambda: daemon.about("failure", "immuta/s-2"), what="s-2 failed")
            assert daemon.stop() == 0
        finally:
            daemon.kill()

        # a new process lists the search afresh: only the tombstone keeps s-1 away
        again = Daemon(tmp, immuta, sink, jobs, database=db_url)
        try:
            immuta.add_job("s-3", state="failed", job_type="sdd")
            eventually(lambda: again.about("failure", "immuta/s-3"), what="s-3 failed")
            keys = [w["key"] for w in json.loads(again.cli("status", "--json").stdout)["watches"]]
            assert "immuta/s-1" not in keys and "immuta/s-2" in keys
            assert len(again.names("immuta/s-1")) == told
            assert _tombstones_at(db_url) == [("immuta/s-1",)]

            immuta.remove_job("s-1")  # the search lists it no more: its tombstone goes
            eventually(lambda: _tombstones_at(db_url) == [], what="tombstone dropped")
            added = again.cli("add", "immuta", "s-1")  # an explicit add still watches it
            assert added.returncode == 0, added.stderr
            assert again.watch("immuta/s-1")["key"] == "immuta/s-1"
            assert again.stop() == 0
        finally:
            again.kill()


def _tombstones_at(url: str) -> list[tuple[str, ...]]:
    store = Store(url)
    try:
        return _tombstones(store)
    finally:
        store.close()
