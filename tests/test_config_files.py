"""Hostile files and bytes in the config, as an operator meets them through `poller check`
and a reload of `poller run`: whatever a file named by the config is, or whatever byte the
YAML holds, the answer is a config problem with its ``file:line`` (exit 2), never a
traceback, a hang or a value that fails later."""

from __future__ import annotations

import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from world import SITE, World, eventually, job_yaml

from poller.config import CONFIG_FILE_LIMIT, VALUE_FILE_LIMIT

#: Reading /dev/zero whole would take every byte of memory the machine has: the child gets
#: an address-space limit, so a regression fails this test instead of the machine.
MEMORY_LIMIT = 2 * 1024**3


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def check(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`poller check -c config` as a user runs it; a hang fails the test after 20 s."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    return subprocess.run(
        [sys.executable, "-m", "poller", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        env=base | (env or {}),
        timeout=20,
        preexec_fn=_limit_memory,
    )


def ruler_config(tmp: Path, token_line: str, extra: str = "") -> Path:
    """A config with one ruler source whose token is given by `token_line` (line 5)."""
    path = tmp / "config.yaml"
    path.write_text(
        f"database: sqlite:///{tmp}/poller.db\n"
        "sources:\n"
        "  r:\n"
        "    type: ruler\n"
        f"    {token_line}\n"
        f"{extra}"
    )
    return path


def refused(result: subprocess.CompletedProcess[str]) -> str:
    """stderr of a `check` that refused the config as a user error (exit 2, no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


class TestValueFiles:
    """``x_file`` keys: only regular files, at most `VALUE_FILE_LIMIT`, secrets on one line."""

    @pytest.mark.parametrize(
        ("make", "reason"),
        [
            (lambda tmp: "/dev/zero", "a character device, not a regular file"),
            (lambda tmp: (os.mkfifo(tmp / "fifo"), str(tmp / "fifo"))[1], "a FIFO, not a regular"),
            (lambda tmp: (os.mkdir(tmp / "dir"), str(tmp / "dir"))[1], "a directory, not a"),
        ],
        ids=["device", "fifo", "directory"],
    )
    def test_not_a_regular_file(self, tmp_path: Path, make: object, reason: str) -> None:
        """A device, a FIFO without a writer or a directory: refused at once, with file:line."""
        target = make(tmp_path)  # type: ignore[operator]
        config = ruler_config(tmp_path, f"token_file: {target}")
        err = refused(check(config))
        assert f"{config}:5: sources.r.token_file: cannot read {target}: {reason}" in err

    def test_too_big(self, tmp_path: Path) -> None:
        """A secret file over the limit is refused, however it got there."""
        big = tmp_path / "big"
        big.write_bytes(b"x" * (VALUE_FILE_LIMIT + 1))
        config = ruler_config(tmp_path, f"token_file: {big}")
        assert f"cannot read {big}: larger than 64 KiB" in refused(check(config))
        big.write_bytes(b"x" * VALUE_FILE_LIMIT)
        assert check(config).returncode == 0

    def test_secret_with_an_inner_newline(self, tmp_path: Path) -> None:
        """A trailing newline is dropped; one inside the secret is a config error (it would
        fail every poll), named by its line in the file and never quoted."""
        secret = tmp_path / "token"
        secret.write_text("tok-first-half\ntok-second-half\n")
        config = ruler_config(tmp_path, f"token_file: {secret}")
        err = refused(check(config))
        assert (
            f"{config}:5: sources.r.token_file: cannot read {secret}: holds more than one line"
        ) in err
        secret.write_text("tok\x1bhalf\n")
        assert f"cannot read {secret}: line 1 holds a control character (U+001B)" in refused(
            check(config)
        )
        assert "half" not in err
        secret.write_text("tok-whole\n")
        assert check(config).returncode == 0

    def test_secrets_from_the_environment_or_the_file_itself(self, tmp_path: Path) -> None:
        """The same rule for a token, a header and a channel URL given any other way."""
        config = ruler_config(
            tmp_path,
            "token: ${TOKEN}",
            "  h:\n"
            "    type: http\n"
            "    url: https://h/{id}\n"
            '    headers: {X-Key: "bell\\x07key"}\n'
            "    state: s\n"
            "    states: {A: failed}\n"
            "channels:\n"
            '  c: "json://localhost/\\x00"\n',
        )
        err = refused(check(config, env={"TOKEN": "abc\r\ndef"}))
        assert f"{config}:5: sources.r.token: holds a control character (U+000D)" in err
        assert f"{config}:9: sources.h.headers.X-Key: holds a control character (U+0007)" in err
        assert f"{config}:13: channels.c: holds a control character (U+0000)" in err
        assert "abc" not in err and "bell" not in err

    def test_template_files(self, tmp_path: Path) -> None:
        """A template file may span lines; it must still be a regular file under the limit."""
        body = tmp_path / "body.j2"
        body.write_text("{{ name }}\n{{ state }}\n")
        rule = (
            "channels: {c: json://localhost}\n"
            "rules:\n"
            "  - on: failed\n"
            "    notify: c\n"
            "    template:\n"
            f"      body_file: {body}\n"
        )
        config = ruler_config(tmp_path, "token: t", rule)
        assert check(config).returncode == 0, check(config).stderr
        body.unlink()
        os.mkfifo(body)
        err = refused(check(config))
        assert f"{config}:11: rules[0].template.body_file: cannot read {body}: a FIFO" in err


class TestConfigFile:
    """The config file itself."""

    def test_fifo_and_too_big(self, tmp_path: Path) -> None:
        """A FIFO as the config does not hang `check`; a config over the limit is refused."""
        fifo = tmp_path / "config.yaml"
        os.mkfifo(fifo)
        err = refused(check(fifo))
        assert f"{fifo}: cannot read the config file: a FIFO, not a regular file" in err
        big = tmp_path / "big.yaml"
        big.write_text("# " + "x" * CONFIG_FILE_LIMIT + "\n")
        assert f"{big}: cannot read the config file: larger than 1 MiB" in refused(check(big))

    @pytest.mark.parametrize(("char", "code"), [("\x07", "U+0007"), ("\x00", "U+0000")])
    def test_control_character_in_yaml(self, tmp_path: Path, char: str, code: str) -> None:
        """A control character YAML does not allow: exit 2 with its line, no traceback."""
        config = ruler_config(tmp_path, f"token: abc{char}def")
        err = refused(check(config))
        assert f"{config}:5: invalid YAML: control character {code} is not allowed" in err

    def test_wrong_value_is_named_unless_secret(self, tmp_path: Path) -> None:
        """A wrong choice, duration or number is quoted; a secret never is."""
        config = ruler_config(
            tmp_path,
            "token: t",
            "    request_timeout: soon\n  x:\n    type: nosuchapi\n  y:\n    type: ${KIND}\n",
        )
        err = refused(check(config, env={"KIND": "s3cret-kind"}))
        assert f"{config}:6: sources.r.request_timeout: expected a duration" in err
        assert "; got 'soon'" in err
        assert (
            f"{config}:8: sources.x.type: unknown source type 'nosuchapi'; expected one of: "
            "ruler, immuta, http"
        ) in err
        assert f"{config}:10: sources.y.type: unknown source type; expected" in err
        assert "s3cret" not in err


class TestReload:
    """SIGHUP with a config that cannot be used: refused, logged, READY=1, still running."""

    def test_any_bad_reload_is_refused_with_ready(self, world: World, tmp_path: Path) -> None:
        """A secret file that is a FIFO (it used to hang the daemon) and a control character
        in the YAML (it used to kill the reload task): each reload is refused with the
        reason, systemd hears READY=1 again, and a good reload after them still works."""
        path = str(tmp_path / "notify.sock")
        good = world.config.read_text()
        fifo = tmp_path / "token.fifo"
        os.mkfifo(fifo)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(10)
            daemon = world.start(env=world.env() | {"NOTIFY_SOCKET": path})
            assert b"READY=1" in sock.recv(4096)
            bad_configs = [
                good.replace("token: ${RULER_TOKEN}", f"token_file: {fifo}"),
                good.replace("log: {level: debug}", "log: {level: debug}\n# bell \x07"),
            ]
            for number, bad in enumerate(bad_configs, start=1):
                world.config.write_text(bad)
                daemon.send_signal(signal.SIGHUP)
                assert b"RELOADING=1" in sock.recv(4096)
                assert b"READY=1" in sock.recv(4096)
                eventually(
                    lambda n=number: world.log.read_bytes().count(b"reload refused") == n,
                    what="refusal",
                )
                assert daemon.poll() is None
            log = world.log.read_text()
            assert "a FIFO, not a regular file" in log
            assert "control character U+0007" in log
            assert "never retrieved" not in log and "Traceback" not in log
            world.config.write_text(good)
            daemon.send_signal(signal.SIGHUP)
            assert b"RELOADING=1" in sock.recv(4096)
            assert b"READY=1" in sock.recv(4096)
            eventually(lambda: b'"reloaded"' in world.log.read_bytes(), what="good reload")
            assert world.stop(daemon) == 0

    def test_reload_whose_job_sync_fails_is_refused(self, world: World, tmp_path: Path) -> None:
        """Not only a bad file: a reload whose jobs cannot be written (here the watches table
        is gone for a moment) is refused with the reason, READY=1 follows, the old config
        stays in force, and the same reload works once the table is back."""
        path = str(tmp_path / "notify.sock")
        database = Path(world.database.removeprefix("sqlite:///"))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(10)
            daemon = world.start(env=world.env() | {"NOTIFY_SOCKET": path})
            assert b"READY=1" in sock.recv(4096)
            world.ruler.add_job(SITE, "late", status="processing")
            world.write_config(job_yaml("late"))
            with closing(sqlite3.connect(database)) as conn:
                conn.execute("ALTER TABLE watches RENAME TO watches_away")
            daemon.send_signal(signal.SIGHUP)
            assert b"RELOADING=1" in sock.recv(4096)
            assert b"READY=1" in sock.recv(4096)
            eventually(lambda: b"reload refused" in world.log.read_bytes(), what="refusal")
            assert "no such table" in world.log.read_text()
            assert "never retrieved" not in world.log.read_text()
            with closing(sqlite3.connect(database)) as conn:
                conn.execute("ALTER TABLE watches_away RENAME TO watches")
            assert daemon.poll() is None
            daemon.send_signal(signal.SIGHUP)
            assert b"RELOADING=1" in sock.recv(4096)
            assert b"READY=1" in sock.recv(4096)
            eventually(lambda: "ruler-prod/4f2a/late" in world.status(), what="the job synced")
            assert world.stop(daemon) == 0
