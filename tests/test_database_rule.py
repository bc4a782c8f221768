"""One database for the daemon and every command, wherever they are run from.

With no ``database`` key it is ``poller.db`` next to the config file; a relative SQLite path
is relative to the config file; only `poller run` creates or migrates a database, and every
other command on a missing one exits 1 saying where it looked, creating nothing; URLs of
databases poller does not support are config errors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from world import eventually

from poller.testing import RulerSim, SimThread

SITE = "s1"


def poller(*args: str, config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """One `poller` command run from `cwd`, as an operator in another directory would."""
    return subprocess.run(
        [sys.executable, "-m", "poller", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        env=_environment(),
        cwd=cwd,
        timeout=60,
    )


@pytest.fixture
def ruler() -> Iterator[RulerSim]:
    sim = RulerSim(token="db-token")
    with SimThread(sim):
        yield sim


def write_config(directory: Path, ruler: RulerSim, database: str | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(
        (f"database: {database}\n" if database is not None else "")
        + "sources:\n"
        + f"  ruler-prod: {{type: ruler, base_url: '{ruler.base_url}', token: db-token}}\n"
        + "polling: {interval: 100ms, max_interval: 200ms}\n"
    )
    return path


def dirs(tmp: Path, *names: str) -> list[Path]:
    made = [tmp / name for name in names]
    for path in made:
        path.mkdir()
    return made


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.pop("STATE_DIRECTORY", None)
    return env


@contextmanager
def running(config: Path, cwd: Path) -> Iterator[None]:
    """`poller run` started from `cwd` until it logged "started"; SIGTERM at the end."""
    log = cwd / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "poller", "run", "-c", str(config)],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_environment(),
        )
    try:
        eventually(
            lambda: b'"started"' in log.read_bytes() or daemon.poll() is not None, 20, "start"
        )
        assert daemon.poll() is None, log.read_text()[-2000:]
        yield
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=15)


def no_database_in(*places: Path) -> None:
    for place in places:
        assert not list(place.glob("poller.db*")), f"a database appeared in {place}"


class TestOneDatabase:
    """The daemon and the commands agree on the database from any directory."""

    def test_default_is_next_to_the_config_wherever_commands_run(
        self, tmp_path: Path, ruler: RulerSim
    ) -> None:
        """No ``database`` key: `poller run` in one directory, `add` and `status` in others,
        all on the config's poller.db; before `run`, `status` fails and creates nothing."""
        config = write_config(tmp_path / "etc", ruler, None)
        a, b, c = dirs(tmp_path, "a", "b", "c")
        expected = tmp_path / "etc" / "poller.db"

        early = poller("status", config=config, cwd=c)
        assert early.returncode == 1, early.stdout
        assert f"no poller database at {expected}" in early.stderr
        no_database_in(tmp_path / "etc", a, b, c)

        ruler.add_job(SITE, "j1", status="processing")
        with running(config, cwd=a):
            added = poller("add", "ruler-prod", "j1", "--site", SITE, config=config, cwd=b)
            assert added.returncode == 0 and "watching ruler-prod/s1/j1" in added.stdout

            def seen() -> bool:
                doc = json.loads(poller("status", "--json", config=config, cwd=c).stdout)
                return any(w["state"] == "running" for w in doc["watches"])

            eventually(seen, 20, "the daemon polls the job `add` wrote from another directory")
        assert expected.is_file()
        no_database_in(a, b, c)

    def test_relative_path_is_relative_to_the_config(self, tmp_path: Path, ruler: RulerSim) -> None:
        """``sqlite:///state/poller.db`` is under the config's directory, not the cwd."""
        config = write_config(tmp_path / "etc", ruler, "sqlite:///state/poller.db")
        (elsewhere,) = dirs(tmp_path, "elsewhere")
        checked = poller("check", config=config, cwd=elsewhere)
        assert checked.returncode == 0, checked.stderr
        assert f"database: sqlite:///{tmp_path}/etc/state/poller.db" in checked.stdout
        r = poller("status", config=config, cwd=elsewhere)
        assert r.returncode == 1
        assert f"no poller database at {tmp_path}/etc/state/poller.db" in r.stderr
        assert not (tmp_path / "etc" / "state").exists()
        assert not (elsewhere / "state").exists()


class TestOnlyRunCreates:
    """`status`, `history`, `add` and `remove` never create or migrate a database."""

    @pytest.mark.parametrize(
        "args",
        [
            ("status",),
            ("status", "--json"),
            ("history", "ruler-prod/s1/j1"),
            ("add", "ruler-prod", "j1", "--site", SITE),
            ("remove", "ruler-prod/s1/j1"),
        ],
        ids=lambda a: "-".join(a[:2]),
    )
    def test_missing_sqlite_file(
        self, tmp_path: Path, ruler: RulerSim, args: tuple[str, ...]
    ) -> None:
        """A database path that does not exist: exit 1 with the path, no directory, no file."""
        missing = tmp_path / "missing" / "x.db"
        config = write_config(tmp_path, ruler, f"sqlite:///{missing}")
        r = poller(*args, config=config, cwd=tmp_path)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert f"no poller database at {missing}" in r.stderr
        assert "Traceback" not in r.stderr
        assert not missing.parent.exists()

    def test_sqlite_file_without_tables(self, tmp_path: Path, ruler: RulerSim) -> None:
        """A file that is not poller's database is left alone."""
        other = tmp_path / "other.db"
        other.touch()
        config = write_config(tmp_path, ruler, f"sqlite:///{other}")
        r = poller("status", config=config, cwd=tmp_path)
        assert r.returncode == 1 and f"no poller tables in {other}" in r.stderr
        assert other.stat().st_size == 0

    def test_postgresql_without_tables(self, tmp_path: Path, ruler: RulerSim, pg_url: str) -> None:
        """A PostgreSQL database without poller's tables: exit 1, no table created; after
        `poller run` made them, `status` works."""
        config = write_config(tmp_path, ruler, pg_url)
        r = poller("status", config=config, cwd=tmp_path)
        assert r.returncode == 1, r.stdout
        assert "no poller tables in postgresql+psycopg://" in r.stderr
        engine = sa.create_engine(pg_url)
        try:
            with engine.connect() as conn:
                assert sa.inspect(conn).get_table_names() == []
        finally:
            engine.dispose()
        with running(config, cwd=tmp_path):
            pass
        assert poller("status", config=config, cwd=tmp_path).returncode == 0


class TestUnsupportedUrls:
    """Only SQLite and PostgreSQL: anything else is refused by `check` with file:line."""

    def test_mysql_is_a_config_error(self, tmp_path: Path, ruler: RulerSim) -> None:
        """`check` and every command exit 2 naming the scheme, never the password."""
        config = write_config(tmp_path, ruler, "mysql://poller:pw-s3cret@db.example/poller")
        for args in (("check",), ("status",)):
            r = poller(*args, config=config, cwd=tmp_path)
            assert r.returncode == 2, (args, r.stdout, r.stderr)
            assert f"{config}:1: database: unsupported database 'mysql'" in r.stderr
            assert "pw-s3cret" not in r.stdout + r.stderr and "Traceback" not in r.stderr

    def test_postgresql_without_a_driver_uses_psycopg(
        self, tmp_path: Path, ruler: RulerSim
    ) -> None:
        """``postgresql://`` means the psycopg 3 poller ships (SQLAlchemy would ask for
        psycopg2 and fail at every command)."""
        config = write_config(tmp_path, ruler, "postgresql://poller@db.example/poller")
        r = poller("check", config=config, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "database: postgresql+psycopg://poller@db.example/poller" in r.stdout
