"""The database itself: opening it (SQLite pragmas, file modes), its schema revision, the
daemon's lock, and the write transactions every other room of the store runs in.

Write transactions on SQLite begin IMMEDIATE so that a CLI `add` and the daemon queue on the
busy timeout instead of failing with "database is locked" when a read would have to be
upgraded to a write. A transaction PostgreSQL breaks off as a deadlock is run again
(`Database._retrying`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url

from poller.errors import StoreError
from poller.models import JsonValue

T = TypeVar("T")

#: The newest migration; a test checks it against alembic's head. Comparing it with the
#: database's version lets every CLI call skip loading alembic when nothing needs doing.
HEAD_REVISION = "0004"
MIGRATIONS = Path(__file__).parent / "migrations"


def _json_loads(text: str) -> JsonValue:
    """`json.loads`, quicker for the empty values most watches hold (every claim reads
    three JSON columns per row)."""
    if text == "{}":
        return {}
    if text == "[]":
        return []
    value: JsonValue = json.loads(text)  # what a JSON column holds: no check needed
    return value


#: PostgreSQL's SQLSTATEs for "run the transaction again": deadlock, serialization failure
_RETRYABLE = ("40P01", "40001")

#: keys per `IN (...)` list: well under SQLite's and PostgreSQL's parameter limits
IN_CHUNK = 500


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for PostgreSQL and for SQLite in memory or by URI."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


_NO_TABLES = (
    "no poller tables in {where} (only `poller run` creates them: is this the daemon's config?)"
)


def _has_poller_tables(path: Path) -> bool:
    """Whether the SQLite file at `path` has poller's schema, asked without writing to it."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            ).fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the database {path}: {exc}") from None
    return found is not None


def _prepare_sqlite_file(path: Path) -> None:
    """Create the database file owner-only before SQLite does; its WAL inherits the mode."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


class Database:
    """One poller database (SQLite file or PostgreSQL): the base of `Store`'s rooms."""

    def __init__(self, url: str, *, busy_timeout: float = 30.0, create: bool = True) -> None:
        """Open the database at `url`.

        With `create` (what `poller run` does) a missing SQLite file is created, owner-only,
        with its directory. Without it a missing file is a `StoreError` naming the path, and
        nothing is created on disk.
        """
        self.url = url
        self._lock_file: IO[bytes] | None = None
        try:
            self.sqlite_path = _sqlite_path(url)
            self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
            if self.sqlite_path is not None:
                if create:
                    _prepare_sqlite_file(self.sqlite_path)
                elif not self.sqlite_path.is_file():
                    raise StoreError(
                        f"no poller database at {self.sqlite_path} "
                        "(only `poller run` creates one: is this the daemon's config?)"
                    )
                elif not _has_poller_tables(self.sqlite_path):
                    # asked read-only: opening it for poller would turn it to WAL mode
                    raise StoreError(_NO_TABLES.format(where=self.sqlite_path))
            self.engine: Engine = sa.create_engine(
                url,
                pool_pre_ping=not self.is_sqlite,
                hide_parameters=True,
                json_deserializer=_json_loads,
                **({"connect_args": {"timeout": busy_timeout}} if self.is_sqlite else {}),
            )
        except sa.exc.ArgumentError:
            # its message quotes the URL, password included
            raise StoreError("cannot open the database: not a URL SQLAlchemy reads") from None
        except (OSError, ImportError, sa.exc.SQLAlchemyError) as exc:
            # ImportError: a URL whose driver is not installed (the config refuses those)
            raise StoreError(f"cannot open the database: {_describe(exc)}") from None
        if self.is_sqlite:
            self._setup_sqlite(busy_timeout)

    def _setup_sqlite(self, busy_timeout: float) -> None:
        """Every new connection: WAL, the busy timeout, foreign keys; writes begin IMMEDIATE."""

        @sa.event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @sa.event.listens_for(self.engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("poller_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Release every pooled connection, then the daemon lock (if held)."""
        # In this order: the lock is a descriptor of the database file itself, and closing any
        # descriptor of a file drops the POSIX locks the process's SQLite connections hold on it.
        self.engine.dispose()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def migrate(self) -> None:
        """Bring the schema to the newest revision; cheap when it is already there."""
        try:
            if self.current_revision() == HEAD_REVISION:
                return
            from alembic import command
            from alembic.config import Config as AlembicConfig

            cfg = AlembicConfig()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            with self._write() as conn:
                if not self.is_sqlite:
                    # Replicas starting together migrate one at a time.
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(74207001)")
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot migrate the database: {_describe(exc)}") from None

    def require_schema(self) -> None:
        """A `StoreError` unless the database holds poller's tables at `HEAD_REVISION`.

        What every command but `poller run` asks before it reads or writes: it never creates
        or migrates the schema itself, so a wrong URL cannot grow a second database.
        """
        try:
            revision = self.current_revision()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot open the database: {_describe(exc)}") from None
        where = self.sqlite_path if self.sqlite_path is not None else safe_url(self.url)
        if revision is None:
            raise StoreError(_NO_TABLES.format(where=where))
        if revision != HEAD_REVISION:
            raise StoreError(
                f"the database {where} is at schema revision {revision}, not {HEAD_REVISION}; "
                "`poller run` of this version migrates it"
            )

    def current_revision(self) -> str | None:
        """The schema revision the database is at, or None for an empty database."""
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()

    def acquire_daemon_lock(self) -> None:
        """Refuse a second daemon on the same SQLite file (PostgreSQL shares work instead).

        The lock is an `flock` on the database file itself, not on a file named after it: a
        symlink or a hard link to the database is the same file (the same inode), so a daemon
        started through one finds the lock of a daemon started through another. SQLite locks
        with `fcntl` byte ranges, which `flock` does not interact with on Linux.
        """
        if self.sqlite_path is None:
            return
        try:
            handle = open(self.sqlite_path, "rb")  # noqa: SIM115 -- held until close()
        except OSError as exc:
            raise StoreError(f"cannot open the database: {_describe(exc)}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StoreError(
                f"another `poller run` is already using {self.sqlite_path}"
                f" ({os.path.realpath(self.sqlite_path)}); use PostgreSQL to run several"
                " replicas"
            ) from None
        self._lock_file = handle

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A connection in one write transaction (IMMEDIATE on SQLite), committed on exit."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(poller_write=True)
            with conn.begin():
                yield conn

    def _retrying(self, work: Callable[[Connection], T]) -> T:
        """`work` in one write transaction, run again (up to 3 times in all) if PostgreSQL
        broke it off as a deadlock or a serialization failure: another replica's transaction
        took the same rows in another order, and a second try usually goes through. Without
        it a group commit's results would be dropped and polled again after the lease."""
        for attempt in range(3):
            try:
                with self._write() as conn:
                    return work(conn)
            except sa.exc.OperationalError as exc:
                if attempt == 2 or getattr(exc.orig, "sqlstate", None) not in _RETRYABLE:
                    raise
            time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")


def safe_url(url: str) -> str:
    """A database URL with any password masked, fit for logs and output."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(a database URL that cannot be parsed)"


def _describe(exc: BaseException) -> str:
    """An error's first line, without the SQL and parameters SQLAlchemy appends."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__
