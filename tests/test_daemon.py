"""End to end: the real `poller` command against a loopback Ruler API and webhook receiver."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from world import SITE, World, eventually, job_yaml

from poller.testing import RulerSim, SimThread


class TestLifecycle:
    """A job watched from start to end."""

    def test_pending_processing_complete_sends_one_success(self, world: World) -> None:
        """pending → processing → complete: one success message, polling stops."""
        world.ruler.add_job(SITE, "j1", status="pending")
        world.write_config(job_yaml("j1", "Nightly revenue upload"))
        daemon = world.start()
        eventually(lambda: world.status()["ruler-prod/4f2a/j1"]["state"] == "pending")
        world.ruler.set_job(SITE, "j1", status="processing", processed_rows=40)
        eventually(lambda: world.messages("info"), what="started message")
        world.ruler.set_job(
            SITE, "j1", status="complete", processed_rows=100, success_count=100, failure_count=0
        )
        (done,) = eventually(lambda: world.messages("success"), what="success message")
        assert "Nightly revenue upload" in done["title"] and "succeeded" in done["title"]
        assert "ruler-prod/4f2a/j1" in done["message"]
        assert "100 succeeded" in done["message"]
        watch = eventually(lambda: (w := world.status()["ruler-prod/4f2a/j1"])["terminal"] and w)
        assert watch["state"] == "succeeded" and watch["progress"] == 100
        # Polling has stopped: no more status requests for this job.
        before = world.ruler.requests["status"]
        time.sleep(1.5)
        assert world.ruler.requests["status"] == before
        assert len(world.messages("success")) == 1
        assert world.stop(daemon) == 0
        history = world.cli("history", "ruler-prod/4f2a/j1", "--json")
        whats = [h["what"] for h in json.loads(history.stdout)["history"]]
        assert whats == [
            "new -> pending",
            "pending -> running",
            "started",
            "running -> succeeded",
            "succeeded",
        ]

    def test_partial_and_failed_carry_counts_and_reason(self, world: World) -> None:
        """The messages say how many rows failed and why."""
        world.ruler.add_job(SITE, "p1", status="processing", total_rows=1000)
        world.ruler.add_job(SITE, "f1", status="processing")
        world.write_config(job_yaml("p1", "CRM import") + job_yaml("f1", "Ledger sync"))
        world.start()
        eventually(lambda: len(world.messages("info")) == 2, what="two started")
        world.ruler.set_job(
            SITE,
            "p1",
            status="partialcomplete",
            processed_rows=1000,
            success_count=980,
            failure_count=20,
        )
        world.ruler.set_job(
            SITE, "f1", status="failed", failure_reason="Column 'amount' is missing"
        )
        (partial,) = eventually(lambda: world.messages("warning"), what="partial")
        (failed,) = eventually(lambda: world.messages("failure"), what="failed")
        assert "CRM import" in partial["title"]
        assert "980 succeeded" in partial["message"] and "20 failed" in partial["message"]
        assert "Ledger sync" in failed["title"] and "failed" in failed["title"]
        assert "Column 'amount' is missing" in failed["message"]

    def test_poll_errors_are_recorded_and_never_terminal(self, world: World) -> None:
        """A failing API shows in status as an error; the job is not ended."""
        world.ruler.add_job(SITE, "e1", status="processing")
        world.ruler.fail("e1", status=500, times=None)
        world.write_config(job_yaml("e1"))
        world.start()
        watch = eventually(lambda: (w := world.status()["ruler-prod/4f2a/e1"])["last_error"] and w)
        assert "server_error" in watch["last_error"]
        assert watch["terminal"] is False and watch["state"] is None
        table = world.cli("status").stdout
        assert "ruler-prod/4f2a/e1" in table and "server_error" in table


def run_to_exit(world: World) -> subprocess.CompletedProcess[str]:
    """`poller run` in the foreground, for a daemon that is expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "poller", "run", "-c", str(world.config)],
        capture_output=True,
        text=True,
        env=world.env(),
        timeout=30,
    )


class TestRestarts:
    """Nothing is sent twice across restarts."""

    def test_clean_restart_sends_nothing_again(self, world: World) -> None:
        """Stop after delivery, start again: no message is repeated."""
        world.ruler.add_job(SITE, "r1", status="complete")
        world.ruler.add_job(SITE, "r2", status="processing")
        world.write_config(job_yaml("r1") + job_yaml("r2"))
        first = world.start()
        eventually(lambda: world.messages("success") and world.messages("info"))
        assert world.stop(first) == 0
        world.start()
        world.ruler.set_job(SITE, "r2", status="complete")
        eventually(lambda: len(world.messages("success")) == 2, what="r2 success")
        time.sleep(1.0)
        titles = [m["title"] for m in world.messages()]
        assert len(titles) == len(set(titles)) == 3, titles

    def test_sigterm_exits_zero_quickly(self, world: World) -> None:
        """SIGTERM stops gracefully with exit 0 well within 10 s, even mid-poll."""
        world.ruler.add_job(SITE, "slow", status="processing")
        world.ruler.fail("slow", mode="hang", times=None)
        world.write_config(job_yaml("slow"))
        daemon = world.start()
        time.sleep(0.5)
        started = time.monotonic()
        assert world.stop(daemon) == 0
        assert time.monotonic() - started < 10

    def test_second_daemon_on_same_sqlite_refuses(self, world: World) -> None:
        """A second `poller run` on the same file exits 1 with a clear message."""
        world.start()
        second = run_to_exit(world)
        assert second.returncode == 1
        assert "already using" in second.stdout + second.stderr

    @pytest.mark.parametrize("link", ["symlink", "hardlink"])
    def test_second_daemon_through_a_link_refuses(self, world: World, link: str) -> None:
        """The lock belongs to the database file, however it is named: a second `poller run`
        through a symlink or a hard link to the first one's file exits 1 and clears nothing."""
        world.ruler.add_job(SITE, "slow", status="processing")
        world.write_config(job_yaml("slow"))
        first = world.start()
        db = world.tmp / "poller.db"
        other = world.tmp / "elsewhere"
        other.mkdir()
        alias = other / "alias.db"
        if link == "symlink":
            alias.symlink_to(db)
        else:
            os.link(db, alias)
        world.database = f"sqlite:///{alias}"
        world.write_config(job_yaml("slow"))
        second = run_to_exit(world)
        assert second.returncode == 1, second.stdout[-2000:]
        assert "already using" in second.stdout + second.stderr
        assert first.poll() is None


class TestRegistration:
    """add, remove and reload while the daemon runs."""

    def test_add_while_running_is_polled_within_seconds(self, world: World) -> None:
        """`poller add` reaches the running daemon without a restart."""
        world.ruler.add_job(SITE, "late", status="failed", failure_reason="nope")
        world.start()
        out = world.cli(
            "add", "ruler-prod", "late", "--site", SITE, "--name", "Late job", "--tag", "revenue"
        ).stdout
        assert "watching ruler-prod/4f2a/late" in out
        added = time.monotonic()
        (msg,) = eventually(lambda: world.messages("failure"), timeout=5, what="failure")
        assert time.monotonic() - added < 5
        assert "Late job" in msg["title"] and "nope" in msg["message"]
        assert world.status()["ruler-prod/4f2a/late"]["tags"] == ["revenue"]

    def test_remove_stops_polling_and_keeps_history(self, world: World) -> None:
        """`poller remove` stops the watch; `history` still answers."""
        world.ruler.add_job(SITE, "gone", status="processing")
        world.start()
        world.cli("add", "ruler-prod", "gone", "--site", SITE)
        eventually(lambda: world.messages("info"), what="started")
        assert "stopped watching" in world.cli("remove", "ruler-prod/4f2a/gone").stdout
        time.sleep(0.5)
        before = world.ruler.requests["status"]
        time.sleep(1.5)
        assert world.ruler.requests["status"] == before
        assert "pending -> running" not in world.cli("history", "ruler-prod/4f2a/gone").stdout
        assert "new -> running" in world.cli("history", "ruler-prod/4f2a/gone").stdout
        assert world.status()["ruler-prod/4f2a/gone"]["removed"] is True

    def test_add_refuses_bad_usage(self, world: World) -> None:
        """Unknown source or missing --site is exit 2 with the reason."""
        r = world.cli("add", "nope", "x", check=False)
        assert r.returncode == 2 and "no source nope" in r.stderr
        r = world.cli("add", "ruler-prod", "x", check=False)
        assert r.returncode == 2 and "--site" in r.stderr
        world.start()  # only `poller run` creates the database
        r = world.cli("remove", "ruler-prod/none/x", check=False)
        assert r.returncode == 1 and "no watch" in r.stderr

    def test_sighup_reload_adds_and_stops_jobs_and_keeps_bad_config_out(self, world: World) -> None:
        """SIGHUP: new jobs start, dropped jobs stop, an invalid file is refused."""
        world.ruler.add_job(SITE, "a", status="processing")
        world.ruler.add_job(SITE, "b", status="processing")
        world.write_config(job_yaml("a"))
        daemon = world.start()
        eventually(lambda: len(world.messages("info")) == 1)
        world.write_config(job_yaml("b"))
        daemon.send_signal(signal.SIGHUP)
        eventually(lambda: len(world.messages("info")) == 2, what="b started")
        status = eventually(lambda: (s := world.status())["ruler-prod/4f2a/a"]["removed"] and s)
        assert status["ruler-prod/4f2a/b"]["active"] is True
        world.config.write_text(world.config.read_text() + "\nbogus_key: 1\n")
        daemon.send_signal(signal.SIGHUP)
        eventually(lambda: b"reload refused" in world.log.read_bytes(), what="refusal")
        assert daemon.poll() is None
        world.ruler.set_job(SITE, "b", status="complete")
        eventually(lambda: world.messages("success"), what="b still watched")


class TestSystemd:
    """sd_notify over a real UNIX datagram socket."""

    def test_ready_reloading_and_stopping(self, world: World, tmp_path: Path) -> None:
        """READY=1 after start, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM."""
        path = str(tmp_path / "notify.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(10)
            env = world.env() | {"NOTIFY_SOCKET": path}
            daemon = world.start(env=env)
            assert b"READY=1" in sock.recv(4096)
            daemon.send_signal(signal.SIGHUP)
            reloading = sock.recv(4096)
            assert b"RELOADING=1" in reloading and b"MONOTONIC_USEC=" in reloading
            assert b"READY=1" in sock.recv(4096)
            daemon.send_signal(signal.SIGTERM)
            assert b"STOPPING=1" in sock.recv(4096)
            assert daemon.wait(timeout=10) == 0

    def test_watchdog_pings_at_half_the_deadline(self, world: World, tmp_path: Path) -> None:
        """With WATCHDOG_USEC set, WATCHDOG=1 arrives about every half of it."""
        path = str(tmp_path / "watchdog.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(5)
            env = world.env() | {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"}
            world.start(env=env)
            received: list[bytes] = []
            started = time.monotonic()
            while time.monotonic() - started < 2.0:
                received.append(sock.recv(4096))
            pings = [m for m in received if m == b"WATCHDOG=1"]
            assert len(pings) >= 4, received


class TestReloadKeepsWork:
    """A reload changes what is configured without dropping watches or deliveries."""

    def test_pending_delivery_and_changed_source_survive_reload(self, world: World) -> None:
        """A message held by a channel outage is still sent after a reload; a source's new
        base_url takes effect for the watches it already had."""
        world.ruler.add_job(SITE, "keep", status="processing")
        world.sink.answer(500)
        world.write_config(job_yaml("keep"))
        daemon = world.start()
        eventually(lambda: world.status()["_deliveries"].get("pending"), what="held message")
        other = RulerSim(token=world.ruler.token)
        other.add_job(SITE, "keep", status="complete")
        with SimThread(other):
            world.config.write_text(
                world.config.read_text().replace(world.ruler.base_url, other.base_url)
            )
            daemon.send_signal(signal.SIGHUP)
            eventually(lambda: b'"reloaded"' in world.log.read_bytes(), what="reload")
            world.sink.answer()
            eventually(
                lambda: world.messages("info") and world.messages("success"),
                timeout=20,
                what="both messages",
            )
            assert other.requests["status"] >= 1
        status = world.status()
        assert status["ruler-prod/4f2a/keep"]["state"] == "succeeded"
        assert status["_deliveries"] == {"sent": 2}


class TestConcurrentCommands:
    """The CLI and the daemon share the SQLite file without 'database is locked'."""

    def test_many_cli_calls_while_polling(self, world: World) -> None:
        """Parallel add, status and remove all succeed while the daemon writes."""
        for i in range(30):
            world.ruler.add_job(SITE, f"busy-{i}", status="processing")
        # busy-0..5, removed below, are added by hand: `remove` refuses a job the config lists
        world.write_config("".join(job_yaml(f"busy-{i}") for i in range(6, 30)))
        world.start()
        for i in range(6):
            world.cli("add", "ruler-prod", f"busy-{i}", "--site", SITE)
        eventually(lambda: len(world.status()) == 31, what="watches loaded")
        env = world.env()
        commands = [("add", "ruler-prod", f"extra-{i}", "--site", SITE) for i in range(6)]
        commands += [("status", "--json")] * 4
        commands += [("remove", f"ruler-prod/4f2a/busy-{i}") for i in range(6)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "poller", *args, "-c", str(world.config)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            for args in commands
        ]
        results = [(p.wait(timeout=60), p.communicate()) for p in procs]
        for (code, (_out, err)), args in zip(results, commands, strict=True):
            assert code == 0, (args, err)
            assert b"locked" not in err
        status = world.status()
        assert sum(1 for k in status if "/extra-" in k) == 6
        assert sum(1 for k, w in status.items() if "/busy-" in k and w["removed"]) == 6
