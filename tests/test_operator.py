"""The operator's hands and hostile input (issue 11, items 7, 13, 14, 16 and 17): limits that
both databases share, `add` and `remove` that say what they did and keep it, data printed as
text, and keys and URLs that name one job. Everything runs `poller` as a subprocess against
loopback APIs, real SQLite files and the real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from world import SITE, DaemonWorld, World, eventually, job_yaml

from poller.models import State, WatchSpec
from poller.store.repo import Store, WriteBack
from poller.testing import ImmutaSim, JsonJobSim, RulerSim, SimThread, WebhookSink

LONG_ID = "x" * 257
TRACEBACK = "Traceback"


def poller(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """One `poller` command with `config`, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-m", "poller", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def ruler_config(tmp: Path, database: str, ruler: RulerSim, jobs: str = "  []") -> Path:
    path = tmp / "config.yaml"
    path.write_text(f"""
database: {database}
sources:
  ruler-prod: {{type: ruler, base_url: "{ruler.base_url}", token: {ruler.token}}}
polling: {{interval: 100ms, max_interval: 200ms, timeout: 3s}}
jobs:
{jobs}
""")
    return path


@pytest.fixture
def ruler() -> Iterator[RulerSim]:
    sim = RulerSim(token="op-token")
    with SimThread(sim):
        yield sim


def created(config: Path) -> Path:
    """`config`, once `poller run` (the only command that creates a database) has made its
    database: the other commands then find it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.pop("NOTIFY_SOCKET", None)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "poller", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        eventually(lambda: poller(config, "status").returncode == 0, what="the database")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    return config


def keys(config: Path) -> dict[str, Any]:
    """`poller status --json`, the watches by key."""
    result = poller(config, "status", "--json")
    assert result.returncode == 0, result.stderr
    return {w["key"]: w for w in json.loads(result.stdout)["watches"]}


# -- item 7: one set of limits, checked before either database --------------------------------


class TestLimits:
    """Ids, sites, names and tags longer than the store holds are refused where they come in,
    the same on SQLite and PostgreSQL."""

    def test_add_refuses_what_the_store_cannot_hold(
        self, tmp_path: Path, db_url: str, ruler: RulerSim
    ) -> None:
        """Too long an id, site, name or tag, or a key too long as a whole: exit 2 with the
        reason, no traceback, nothing stored; the longest allowed id is watched."""
        config = created(ruler_config(tmp_path, db_url, ruler))
        refused = {
            "id": ["add", "ruler-prod", LONG_ID, "--site", SITE],
            "site": ["add", "ruler-prod", "j1", "--site", "s" * 257],
            "name": ["add", "ruler-prod", "j1", "--site", SITE, "--name", "n" * 513],
            "tag": ["add", "ruler-prod", "j1", "--site", SITE, "--tag", "t" * 257],
            "the key": ["add", "ruler-prod", "x" * 256, "--site", "s" * 256],
        }
        for part, args in refused.items():
            result = poller(config, *args)
            assert result.returncode == 2, (part, result.stdout, result.stderr)
            assert TRACEBACK not in result.stderr, result.stderr
            assert f"{part} " in result.stderr and "at most" in result.stderr, result.stderr
        assert keys(config) == {}
        ok = poller(config, "add", "ruler-prod", "x" * 256, "--site", SITE, "--name", "n" * 512)
        assert ok.returncode == 0, ok.stderr
        assert list(keys(config)) == [f"ruler-prod/{SITE}/{'x' * 256}"]

    def test_config_with_a_long_id_is_refused_with_its_line(
        self, tmp_path: Path, pg_url: str, ruler: RulerSim
    ) -> None:
        """`check` names file:line; `run` exits 2 (no restart loop), not a DataError at start."""
        config = ruler_config(
            tmp_path,
            pg_url,
            ruler,
            jobs=f"  - {{source: ruler-prod, site: '{SITE}', id: j1}}\n"
            f"  - {{source: ruler-prod, site: '{SITE}', id: {LONG_ID}}}\n",
        )
        check = poller(config, "check")
        assert check.returncode == 2, check.stdout
        assert f"{config}:8: jobs[1].id: is 257 characters long" in check.stderr, check.stderr
        run = poller(config, "run", timeout=30)
        assert run.returncode == 2, run.stderr
        assert TRACEBACK not in run.stderr and "DataError" not in run.stderr

    def test_discovery_skips_the_one_job_whose_id_is_too_long(
        self, tmp_path: Path, db_url: str
    ) -> None:
        """One such id in a bulk costs that job alone: the rest of the bulk is watched and the
        daemon warns about the one it skipped."""
        sim = ImmutaSim("im-key")
        with SimThread(sim):
            for job_id in ("good-1", LONG_ID, "good-2"):
                sim.add_job(job_id, bulk_id="b1")
            config = tmp_path / "config.yaml"
            config.write_text(f"""
database: {db_url}
sources:
  im: {{type: immuta, base_url: "{sim.base_url}", token: im-key, discovery_interval: 1s}}
polling: {{interval: 200ms, max_interval: 500ms}}
jobs:
  - {{source: im, bulk: b1}}
""")
            # the Ruler API and the sink are not started: this world only runs the daemon
            world = DaemonWorld(tmp_path, RulerSim(), WebhookSink())
            try:
                world.start()
                eventually(
                    lambda: {"im/good-1", "im/good-2"} <= set(keys(config)),
                    what="the good jobs of the bulk watched",
                )
                eventually(
                    lambda: b"discovered job not watched" in world.log.read_bytes(),
                    what="a warning about the skipped job",
                )
                assert world.stop(world.daemons[0]) == 0
            finally:
                world.close()
        assert set(keys(config)) == {"im/good-1", "im/good-2"}
        log = world.log.read_text()
        assert "DataError" not in log and "discovery crashed" not in log, log[-3000:]


# -- item 13: `add` never loses what is known --------------------------------------------------


class TestAddAgain:
    """`poller add` of a watched job keeps its name and tags and says what it changed."""

    def test_add_keeps_labels_unless_asked_and_says_what_changed(
        self, tmp_path: Path, ruler: RulerSim
    ) -> None:
        config = created(ruler_config(tmp_path, f"sqlite:///{tmp_path}/poller.db", ruler))
        key = f"ruler-prod/{SITE}/j1"
        add = ["add", "ruler-prod", "j1", "--site", SITE]
        assert poller(config, *add, "--name", "Nightly", "--tag", "etl").stdout == (
            f"watching {key}\n"
        )
        again = poller(config, *add)
        assert again.returncode == 0 and again.stdout == f"already watching {key}\n"
        assert (keys(config)[key]["name"], keys(config)[key]["tags"]) == ("Nightly", ["etl"])

        renamed = poller(config, *add, "--name", "Weekly")
        assert renamed.stdout == (
            f"already watching {key}; name changed from 'Nightly' to 'Weekly'\n"
        )
        retagged = poller(config, *add, "--tag", "etl", "--tag", "ops")
        assert retagged.stdout == (
            f"already watching {key}; tags changed from 'etl' to 'etl, ops'\n"
        )
        watch = keys(config)[key]
        assert (watch["name"], watch["tags"]) == ("Weekly", ["etl", "ops"])

    def test_again_rearms_an_ended_watch_from_its_last_state(self, world: World) -> None:
        """`add` of an ended watch leaves it ended and says how to watch it again; `add
        --again` does: a re-run job is a transition from the old end, a `started` and a new
        end, each notified; a job still as it ended ends the watch again without a message."""
        world.ruler.add_job(SITE, "r1", status="complete")
        daemon = world.start()
        key = f"ruler-prod/{SITE}/r1"
        add = ["add", "ruler-prod", "r1", "--site", SITE]
        world.cli(*add)
        eventually(lambda: not world.status()[key]["active"], what="the first end")
        assert len(world.messages("success")) == 1

        plain = world.cli(*add)
        assert plain.stdout == (
            f"already watching {key} (it has ended; `poller add --again` watches it again)\n"
        )
        assert not world.status()[key]["active"]

        world.ruler.set_job(SITE, "r1", status="processing", processed_rows=10)
        again = world.cli(*add, "--again")
        assert again.stdout == f"watching {key} again from its last state (succeeded)\n"
        eventually(lambda: world.status()[key]["state"] == "running", what="the re-run seen")
        world.ruler.set_job(SITE, "r1", status="complete", processed_rows=100)
        eventually(lambda: not world.status()[key]["active"], what="the second end")
        titles = [m["title"] for m in world.sink.wait_for(3, 10)]
        assert sum("started" in t for t in titles) == 1, titles
        assert sum("succeeded" in t for t in titles) == 2, titles
        history = json.loads(world.cli("history", key, "--json").stdout)["history"]
        moves = [(h["from"], h["to"]) for h in history if h["kind"] == "transition"]
        assert moves[-2:] == [("succeeded", "running"), ("running", "succeeded")], moves

        # still ended as it was: armed again, it ends again at its next poll, without a word
        world.cli(*add, "--again")
        eventually(lambda: not world.status()[key]["active"], what="ended again")
        assert world.stop(daemon) == 0
        assert len(world.sink.messages) == 3

    def test_store_add_keeps_what_is_known_on_both_databases(self, db_url: str) -> None:
        """`Store.add` on an existing watch: labels and origin kept unless given, each change
        reported, a removed watch re-activated."""
        store = Store(db_url)
        store.migrate()
        try:
            first = WatchSpec("im", "j1", name="A", tags=("x",), origin="discovered")
            assert store.add(first, 1.0).created
            same = store.add(WatchSpec("im", "j1"), 2.0)
            assert not same.created and not same.changes and not same.reactivated
            assert (same.watch.name, same.watch.tags, same.watch.origin) == (
                "A",
                ("x",),
                "discovered",
            )
            store.remove_watch("im/j1", 3.0)
            again = store.add(WatchSpec("im", "j1", name="B", tags=("x", "y")), 4.0)
            assert again.reactivated and again.watch.progress.active
            assert again.changes == {"name": ("A", "B"), "tags": (("x",), ("x", "y"))}
        finally:
            store.close()

    def test_store_add_again_on_both_databases(self, db_url: str) -> None:
        """`Store.add(again=True)` arms an ended watch from its last state with a fresh
        timeout; without it, or on an active watch, nothing changes."""
        store = Store(db_url)
        store.migrate()
        try:
            store.add(WatchSpec("im", "j1", name="A"), 1.0)
            (watch,) = store.claim_due("me", 2.0, 10, 30)
            ended = replace(
                watch.progress,
                state=State.SUCCEEDED,
                remote_status="completed",
                progress=100.0,
                started_at=1.5,
                ended_at=2.0,
                active=False,
            )
            store.write_back(
                "me", [WriteBack(watch=watch, progress=ended, next_poll_at=None, polled_at=2.0)]
            )
            plain = store.add(WatchSpec("im", "j1"), 3.0)
            assert not plain.rearmed and not plain.watch.progress.active
            again = store.add(WatchSpec("im", "j1"), 4.0, again=True)
            p = again.watch.progress
            assert again.rearmed and p.active and again.watch.next_poll_at == 4.0
            assert (p.state, p.remote_status, p.progress) == (State.SUCCEEDED, "completed", 100.0)
            assert (p.created_at, p.started_at, p.ended_at) == (4.0, None, None)
            assert again.watch.name == "A"
            assert not store.add(WatchSpec("im", "j1"), 5.0, again=True).rearmed
        finally:
            store.close()


# -- item 14: `remove` of a config job ---------------------------------------------------------


class TestRemoveConfigJob:
    """A job the config lists is removed in the config: `remove` says so instead of pretending,
    and nothing the CLI does is undone by a reload."""

    def test_remove_and_relabel_of_a_config_job_are_refused_and_reload_keeps_it(
        self, world: World
    ) -> None:
        world.write_config(jobs=job_yaml("c1", name="From config"))
        world.ruler.add_job(SITE, "c1", status="processing")
        world.ruler.add_job(SITE, "h1", status="processing")
        daemon = world.start()
        key, by_hand = f"ruler-prod/{SITE}/c1", f"ruler-prod/{SITE}/h1"
        world.cli("add", "ruler-prod", "h1", "--site", SITE)

        refused = world.cli("remove", key, check=False)
        assert refused.returncode == 2, refused.stdout
        assert "jobs[0] in" in refused.stderr and "remove it from there" in refused.stderr
        relabel = world.cli("add", "ruler-prod", "c1", "--site", SITE, "--name", "X", check=False)
        assert relabel.returncode == 2 and "jobs[0] in" in relabel.stderr
        assert world.cli("remove", by_hand).stdout == f"stopped watching {by_hand}\n"

        daemon.send_signal(signal.SIGHUP)
        eventually(lambda: b'"reloaded"' in world.log.read_bytes(), what="reload")
        status = world.status()
        assert status[key]["active"] and status[key]["name"] == "From config"
        assert status[by_hand]["removed"] and not status[by_hand]["active"]

        # the way that works: take it out of the config and reload
        world.write_config(jobs="")
        daemon.send_signal(signal.SIGHUP)
        eventually(lambda: world.status()[key]["removed"], what="removed by the reload")
        assert world.stop(daemon) == 0


# -- item 16: data is printed as text ----------------------------------------------------------


class TestHostileText:
    """Remote statuses, ids and names reach the terminal as text: never markup, never raw
    control sequences."""

    def test_markup_and_escape_sequences_are_shown_as_text(self, world: World) -> None:
        """A status from the API with markup and an escape sequence, a name with markup: shown
        as text by every command. An id or a name with a control character is refused, by
        the CLI as by the config, with the character shown as an escape."""
        esc_status = "\x1b[2J\x1b[31mred[/]"
        world.write_config(
            jobs="  - {source: ruler-prod, site: '4f2a', id: c1, name: '[bold]x[/'}\n"
        )
        world.ruler.add_job(SITE, "c1", status="[/]")
        world.ruler.add_job(SITE, "c2", status=esc_status)
        check = world.cli("check", check=False)
        assert check.returncode == 0, check.stderr
        assert "[bold]x[/" in check.stdout

        daemon = world.start()
        for bad in (["\x1b[2Jc3"], ["c3", "--name", "n\x07"], ["c3", "--tag", "\udcff"]):
            refused = world.cli("add", "ruler-prod", *bad, "--site", SITE, check=False)
            assert refused.returncode == 2, (bad, refused.stderr)
            assert TRACEBACK not in refused.stderr and "\x1b" not in refused.stderr
        assert (
            "control character (U+001B)"
            in world.cli("add", "ruler-prod", "\x1b[2Jc3", "--site", SITE, check=False).stderr
        )
        added = world.cli("add", "ruler-prod", "c2", "--site", SITE, "--name", "[red]n")
        assert added.returncode == 0
        eventually(
            lambda: (
                {w.get("remote_status") for k, w in world.status().items() if k != "_deliveries"}
                == {"[/]", esc_status}
            ),
            what="both polled",
        )
        assert world.stop(daemon) == 0
        c2 = f"ruler-prod/{SITE}/c2"
        for args in (("status",), ("history", c2), ("history", f"ruler-prod/{SITE}/c1")):
            shown = world.cli(*args, check=False)
            assert shown.returncode == 0, (args, shown.stderr)
            assert TRACEBACK not in shown.stderr
            assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout, args
        status = world.cli("status").stdout
        assert "unknown ([/])" in status and "[bold]x[/" in status and "[red]n" in status
        assert "\\x1b[2J\\x1b[31mred[/]" in status
        assert "\\x1b[2J\\x1b[31mred[/]" in world.cli("history", c2).stdout
        missing = world.cli("history", "no\x1b]0;title\x07", check=False)
        assert missing.returncode == 1 and "\x1b" not in missing.stderr

    def test_console_log_shows_escape_sequences_as_text(
        self, tmp_path: Path, ruler: RulerSim
    ) -> None:
        """`poller run` with ``log.format: console`` (a terminal's format) prints an id's
        API's status with an escape sequence escaped, not raw."""
        ruler.add_job(SITE, "gone", status="\x1b[2Jgone")
        ruler_config(  # DaemonWorld runs tmp_path/config.yaml
            tmp_path,
            f"sqlite:///{tmp_path}/poller.db",
            ruler,
            jobs=f'  - {{source: ruler-prod, site: "{SITE}", id: gone}}\n'
            "log: {level: debug, format: console}\n",
        )
        world = DaemonWorld(tmp_path, ruler, WebhookSink())
        try:
            daemon = world.start(wait=False)
            eventually(lambda: b"\\x1b[2Jgone" in world.log.read_bytes(), what="the id in the log")
            assert world.stop(daemon) == 0
        finally:
            world.close()
        assert b"\x1b[2J" not in world.log.read_bytes()


# -- item 17: a key names one job, an id is one path segment -----------------------------------


class TestKeysAndSegments:
    """Keys cannot collide, ids never walk the URL path, and the CLI and the config accept
    exactly the same ids."""

    def test_a_site_with_a_slash_is_refused_by_the_cli_and_the_config(
        self, tmp_path: Path, ruler: RulerSim
    ) -> None:
        """`add r b/c --site a` and `add r c --site a/b` would both be r/a/b/c."""
        config = created(ruler_config(tmp_path, f"sqlite:///{tmp_path}/poller.db", ruler))
        assert poller(config, "add", "ruler-prod", "b/c", "--site", "a").returncode == 0
        clash = poller(config, "add", "ruler-prod", "c", "--site", "a/b")
        assert clash.returncode == 2 and "site must not contain '/'" in clash.stderr
        assert list(keys(config)) == ["ruler-prod/a/b/c"]
        in_file = ruler_config(
            tmp_path,
            f"sqlite:///{tmp_path}/poller.db",
            ruler,
            "  - {source: ruler-prod, site: a/b, id: c}\n",
        )
        check = poller(in_file, "check")
        assert (
            check.returncode == 2 and f"{in_file}:7: jobs[0].site: must not contain" in check.stderr
        )

    def test_empty_ids_are_refused_by_the_cli_as_by_the_config(
        self, tmp_path: Path, ruler: RulerSim
    ) -> None:
        config = created(ruler_config(tmp_path, f"sqlite:///{tmp_path}/poller.db", ruler))
        for args in (
            ("add", "ruler-prod", "", "--site", SITE),
            ("add", "ruler-prod", " ", "--site", SITE),
            ("add", "ruler-prod", "j1", "--site", ""),
            ("add", "ruler-prod", "j1", "--site", SITE, "--tag", ""),
            ("wait", "ruler-prod", "", "--site", SITE),
        ):
            result = poller(config, *args)
            assert result.returncode == 2, (args, result.stdout)
            assert "must not be empty" in result.stderr, result.stderr
        assert keys(config) == {}
        for job in ("id: ''", "id: ' '"):
            in_file = ruler_config(
                tmp_path,
                f"sqlite:///{tmp_path}/poller.db",
                ruler,
                f"  - {{source: ruler-prod, site: s, {job}}}\n",
            )
            assert "must not be empty" in poller(in_file, "check").stderr

    @pytest.mark.parametrize(
        ("job_id", "segment"),
        [(".", "%2E"), ("..", "%2E%2E"), ("a/..", "a%2F.."), ("%2E%2E", "%252E%252E")],
    )
    def test_ruler_ids_are_one_encoded_path_segment(
        self, tmp_path: Path, ruler: RulerSim, job_id: str, segment: str
    ) -> None:
        """`..` asked for /v1/{site}/status; now the API sees the id as one segment."""
        ruler.add_job(SITE, job_id, status="complete")
        config = ruler_config(tmp_path, f"sqlite:///{tmp_path}/poller.db", ruler)
        result = poller(config, "wait", "ruler-prod", job_id, "--site", SITE)
        assert result.returncode == 0, (result.stdout, result.stderr)
        targets = [target for _method, target in ruler.request_log]
        assert targets == [f"/v1/{SITE}/batch/{segment}/status"], targets

    def test_http_source_ids_are_one_encoded_path_segment(self, tmp_path: Path) -> None:
        api = JsonJobSim("tok")
        with SimThread(api):
            api.add_job("..", status="DONE")
            config = tmp_path / "config.yaml"
            config.write_text(f"""
database: sqlite:///{tmp_path}/poller.db
sources:
  wh:
    type: http
    url: {api.base_url}/jobs/{{id}}
    headers: {{Authorization: "Bearer tok"}}
    state: data.status
    states: {{DONE: succeeded}}
polling: {{interval: 100ms, timeout: 3s}}
""")
            result = poller(config, "wait", "wh", "..")
            assert result.returncode == 0, (result.stdout, result.stderr)
            assert [t for _m, t in api.request_log] == ["/v2/jobs/%2E%2E"]
