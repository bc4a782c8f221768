"""The repository: every read and write poller makes, in synchronous SQLAlchemy Core.

One `Store` per process. The daemon calls it from a single writer thread (see `service.py`),
so SQLite sees one writer; CLI commands call it directly. Write transactions on SQLite begin
IMMEDIATE so that a CLI `add` and the daemon queue on the busy timeout instead of failing
with "database is locked" when a read would have to be upgraded to a write.

Claims set `lease_owner`/`lease_until`; a write-back only counts while the claimer still holds
the lease and the row's `version` is the one it read (fencing), so a slow or paused process
can never overwrite newer state. On PostgreSQL claims use `FOR UPDATE SKIP LOCKED`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import operator
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url

from poller.errors import StoreError
from poller.models import (
    Delivery,
    DeliveryOutcome,
    Event,
    EventRecord,
    State,
    Transition,
    Watch,
    WatchProgress,
    WatchSpec,
    record,
)
from poller.store.schema import deliveries, events, transitions, watches

T = TypeVar("T")

#: The newest migration; a test checks it against alembic's head. Comparing it with the
#: database's version lets every CLI call skip loading alembic when nothing needs doing.
HEAD_REVISION = "0001"
MIGRATIONS = Path(__file__).parent / "migrations"


@record
class WriteBack:
    """The result of polling one claimed watch, to be written with its events in one go."""

    watch: Watch
    progress: WatchProgress
    next_poll_at: float | None
    polled_at: float
    transition: Transition | None = None
    events: Sequence[EventRecord] = ()


@dataclass
class WriteReport:
    """What a group commit did: rows written, rows refused by fencing, deliveries queued."""

    written: int = 0
    fenced: list[str] = field(default_factory=list)
    deliveries: int = 0


@dataclass(frozen=True)
class SyncReport:
    """What syncing the config's jobs into the watches table changed, by key."""

    added: tuple[str, ...]
    updated: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True)
class Added:
    """What `Store.add` did: the watch, whether it is new or was started again after a
    removal, and each label it changed, as ``{label: (old, new)}``."""

    watch: Watch
    created: bool
    reactivated: bool = False
    changes: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a watch's history: a transition or an event, with its deliveries."""

    at: float
    kind: str  # "transition" | "event"
    what: str
    detail: Mapping[str, Any]


@dataclass(frozen=True)
class Undelivered:
    """A delivery that has not gone out: pending (still retried) or given up."""

    id: int
    key: str
    name: str | None
    event: str
    channel: str
    status: str
    attempts: int
    created_at: float
    next_attempt_at: float | None
    last_error: str | None


def _json_loads(text: str) -> Any:
    """`json.loads`, quicker for the empty values most watches hold (every claim reads
    three JSON columns per row)."""
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return json.loads(text)


#: PostgreSQL's SQLSTATEs for "run the transaction again": deadlock, serialization failure
_RETRYABLE = ("40P01", "40001")

#: keys per `IN (...)` list: well under SQLite's and PostgreSQL's parameter limits
_IN_CHUNK = 500


def _sqlite_path(url: str) -> Path | None:
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


class Store:
    """Access to one poller database (SQLite file or PostgreSQL)."""

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
        insert = sqlite_insert if self.is_sqlite else postgresql_insert
        self._insert_new_watches = insert(watches).on_conflict_do_nothing(
            index_elements=[watches.c.key]
        )
        #: one new watch, returning its id: none comes back if the key exists
        self._insert_new_watch = self._insert_new_watches.returning(watches.c.id)

    def _setup_sqlite(self, busy_timeout: float) -> None:
        @sa.event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
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
        with self.engine.connect() as conn:
            conn = conn.execution_options(poller_write=True)
            with conn.begin():
                yield conn

    # -- registering watches ---------------------------------------------------------------

    def add_watch(self, spec: WatchSpec, now: float) -> tuple[Watch, bool]:
        """`add`, answering only the watch and whether it is new."""
        added = self.add(spec, now)
        return added.watch, added.created

    def add(self, spec: WatchSpec, now: float) -> Added:
        """Start watching a job (`poller add`), and say what that changed.

        A key that exists keeps everything known about it (origin, polling overrides, and its
        name and tags unless `spec` gives a name or tags), and is re-activated if it was
        removed before it ended.
        """
        with self._write() as conn:
            select = sa.select(watches).where(watches.c.key == spec.key)
            row = conn.execute(select).one_or_none()
            # ON CONFLICT DO NOTHING: another `add` or a replica's sync may insert it meanwhile
            if (
                row is None
                and conn.execute(self._insert_new_watch, _new_watch_row(spec, now)).first()
            ):
                return Added(_watch_from_row(conn.execute(select).one()), created=True)
            if row is None:
                row = conn.execute(select).one()
            changes: dict[str, tuple[Any, Any]] = {}
            if spec.name is not None and spec.name != row.name:
                changes["name"] = (row.name, spec.name)
            if spec.tags and list(spec.tags) != list(row.tags):
                changes["tags"] = (tuple(row.tags), spec.tags)
            values: dict[str, Any] = {label: new for label, (_old, new) in changes.items()}
            if "tags" in values:
                values["tags"] = list(spec.tags)
            reactivated = row.removed_at is not None and row.ended_at is None
            if reactivated:
                values.update(_reactivation(now))
            if values:
                conn.execute(
                    sa.update(watches)
                    .where(watches.c.id == row.id)
                    .values(version=watches.c.version + 1, **values)
                )
                row = conn.execute(select).one()
        return Added(_watch_from_row(row), False, reactivated, changes)

    def add_new_watches(self, specs: Sequence[WatchSpec], now: float) -> list[str]:
        """Start watching each spec whose key has no watch yet (a removed one counts); the keys
        added. For discovery: thousands of jobs cost a few statements, not one transaction
        each. A key another replica inserts meanwhile is left as that replica wrote it (no
        error), though it is still among the keys returned."""
        # In key order: replicas inserting the same keys together wait for one another
        # instead of deadlocking; a deadlock PostgreSQL breaks off anyway is run again.
        ordered = sorted(specs, key=lambda spec: spec.key)

        def add(conn: Connection) -> list[str]:
            added: list[str] = []
            for first in range(0, len(ordered), _IN_CHUNK):
                chunk = {spec.key: spec for spec in ordered[first : first + _IN_CHUNK]}
                existing = set(
                    conn.execute(
                        sa.select(watches.c.key).where(watches.c.key.in_(list(chunk)))
                    ).scalars()
                )
                rows = [_new_watch_row(s, now) for k, s in chunk.items() if k not in existing]
                if rows:
                    conn.execute(self._insert_new_watches, rows)
                    added += [row["key"] for row in rows]
            return added

        return self._retrying(add)

    def sync_config_jobs(self, specs: Sequence[WatchSpec], now: float) -> SyncReport:
        """Make the config's watches match `specs`: add new ones, stop the ones it dropped.

        Idempotent, and safe for any number of replicas at once: a key another replica adds
        meanwhile is left as it wrote it, and a transaction PostgreSQL breaks off as a deadlock
        is run again (`_retrying`)."""
        wanted = {spec.key: spec for spec in specs}

        def sync(conn: Connection) -> SyncReport:
            added: list[str] = []
            updated: list[str] = []
            removed: list[str] = []
            existing = {
                row.key: row
                for row in conn.execute(
                    sa.select(
                        watches.c.key, watches.c.origin, watches.c.active, watches.c.removed_at
                    ).where(watches.c.origin == "config")
                )
            }
            # In key order: replicas syncing together lock the same rows in the same order.
            for key, spec in sorted(wanted.items()):
                if _upsert_watch(conn, self._insert_new_watch, spec, now):
                    added.append(key)
                elif key in existing:
                    updated.append(key)
            for key, row in existing.items():
                if key not in wanted and row.removed_at is None:
                    conn.execute(_removal(key, now))
                    removed.append(key)
            return SyncReport(tuple(added), tuple(updated), tuple(removed))

        return self._retrying(sync)

    def remove_watch(self, key: str, now: float) -> Watch | None:
        """Stop watching `key` (its history stays); None if there is no such watch."""
        with self._write() as conn:
            conn.execute(_removal(key, now))
            row = conn.execute(sa.select(watches).where(watches.c.key == key)).one_or_none()
        return _watch_from_row(row) if row is not None else None

    # -- reading -----------------------------------------------------------------------

    def get_watch(self, key: str) -> Watch | None:
        """One watch by key."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(watches).where(watches.c.key == key)).one_or_none()
        return _watch_from_row(row) if row is not None else None

    def list_watches(self) -> list[Watch]:
        """Every watch, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(watches).order_by(watches.c.id)).all()
        return [_watch_from_row(row) for row in rows]

    def history(self, key: str) -> list[HistoryEntry] | None:
        """A watch's transitions and events (with their deliveries), oldest first."""
        with self.engine.connect() as conn:
            watch_id = conn.execute(
                sa.select(watches.c.id).where(watches.c.key == key)
            ).scalar_one_or_none()
            if watch_id is None:
                return None
            entries = [
                HistoryEntry(
                    at=row.at,
                    kind="transition",
                    what=f"{row.from_state or 'new'} -> {row.to_state}",
                    detail={
                        "from": row.from_state,
                        "to": row.to_state,
                        "remote_status": row.remote_status,
                        "progress": row.progress,
                    },
                )
                for row in conn.execute(
                    sa.select(transitions).where(transitions.c.watch_id == watch_id)
                )
            ]
            delivery_rows = conn.execute(
                sa.select(
                    deliveries.c.event_id,
                    deliveries.c.channel,
                    deliveries.c.status,
                    deliveries.c.attempts,
                    deliveries.c.sent_at,
                    deliveries.c.last_error,
                )
                .join(events, events.c.id == deliveries.c.event_id)
                .where(events.c.watch_id == watch_id)
            ).all()
            by_event: dict[int, list[dict[str, Any]]] = {}
            for d in delivery_rows:
                by_event.setdefault(d.event_id, []).append(
                    {
                        "channel": d.channel,
                        "status": d.status,
                        "attempts": d.attempts,
                        "sent_at": d.sent_at,
                        "last_error": d.last_error,
                    }
                )
            for row in conn.execute(sa.select(events).where(events.c.watch_id == watch_id)):
                entries.append(
                    HistoryEntry(
                        at=row.at,
                        kind="event",
                        what=row.kind,
                        detail={"deliveries": by_event.get(row.id, [])},
                    )
                )
        # Transitions sort before the events they caused at the same instant.
        entries.sort(key=lambda e: (e.at, e.kind != "transition"))
        return entries

    def delivery_counts(self) -> dict[str, int]:
        """How many deliveries are pending, sent and given up."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(deliveries.c.status, sa.func.count()).group_by(deliveries.c.status)
            ).all()
        return {status: count for status, count in rows}

    # -- the schedule ------------------------------------------------------------------

    def next_due_at(self, now: float) -> float | None:
        """When the earliest active watch that no lease holds at `now` is due."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.min(watches.c.next_poll_at)).where(
                    watches.c.active,
                    sa.or_(watches.c.lease_until.is_(None), watches.c.lease_until < now),
                )
            ).scalar()

    def claim_due(
        self, owner: str, now: float, limit: int, lease: float, ahead: float = 0.0
    ) -> list[Watch]:
        """Lease up to `limit` watches due by `now + ahead` to `owner`, earliest first."""
        if limit <= 0:
            return []
        params: dict[str, Any] = {"due": now + ahead, "now": now, "limit": limit}
        params |= {"owner": owner, "until": now + lease}
        with self._write() as conn:
            # SQLite has no UPDATE in a WITH: read, then lease, in one IMMEDIATE transaction
            found = conn.execute(_SQLITE_DUE if self.is_sqlite else _POSTGRES_CLAIM, params)
            claimed = json.loads(found.scalar_one())
            if self.is_sqlite and claimed:
                ids = json.dumps([row[0] for row in claimed])
                conn.execute(_SQLITE_LEASE, {**params, "ids": ids})
        return sorted((_watch_from_row(row) for row in claimed), key=_due_time)

    def renew(self, owner: str, until: float) -> int:
        """Extend every lease `owner` still holds to `until`; returns how many rows."""
        renewed = 0
        with self._write() as conn:
            for table in (watches, deliveries):
                renewed += conn.execute(
                    sa.update(table).where(table.c.lease_owner == owner).values(lease_until=until)
                ).rowcount
        return renewed

    def release(self, owner: str | None) -> None:
        """Give back the leases `owner` holds, so another process may take over at once.

        `None` clears every lease: only for a single owner (SQLite) starting after a crash.
        """
        with self._write() as conn:
            for table in (watches, deliveries):
                held = (
                    table.c.lease_owner.is_not(None)
                    if owner is None
                    else table.c.lease_owner == owner
                )
                conn.execute(
                    sa.update(table).where(held).values(lease_owner=None, lease_until=None)
                )

    def release_watches(self, owner: str, ids: Sequence[int]) -> int:
        """Give back `owner`'s leases on these watches, due as they were (polled again)."""
        with self._write() as conn:
            return conn.execute(
                sa.update(watches)
                .where(watches.c.id.in_(list(ids)), watches.c.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            ).rowcount

    def write_back(self, owner: str, items: Sequence[WriteBack]) -> WriteReport:
        """Write poll results in one transaction: watch rows, transitions, events, outbox.

        A row whose lease or version moved on since it was claimed is skipped (and reported):
        its result is stale and must not produce a transition or a message.
        """
        if not items:
            return WriteReport()
        params = [_write_back_params(owner, item) for item in items]

        def write(conn: Connection) -> WriteReport:
            report = WriteReport()
            written = self._fenced_updates(conn, params)
            new_transitions = []
            for item, ok in zip(items, written, strict=True):
                if not ok:
                    report.fenced.append(item.watch.key)
                    continue
                report.written += 1
                if item.transition is not None:
                    t = item.transition
                    new_transitions.append(
                        {
                            "watch_id": item.watch.id,
                            "at": t.at,
                            "from_state": t.from_state.value if t.from_state else None,
                            "to_state": t.to_state.value,
                            "remote_status": t.remote_status,
                            "progress": t.progress,
                        }
                    )
                report.deliveries += _insert_events(conn, item.watch.id, item.events)
            if new_transitions:
                conn.execute(sa.insert(transitions), new_transitions)
            return report

        return self._retrying(write)

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

    def _fenced_updates(self, conn: Connection, params: list[dict[str, Any]]) -> list[bool]:
        """`_fenced_update` for rows of both shapes (quiet and full); results in order."""
        quiet = [i for i, row in enumerate(params) if _is_quiet(row)]
        if not quiet or len(quiet) == len(params):
            return self._fenced_update(conn, params)
        full = [i for i, row in enumerate(params) if not _is_quiet(row)]
        written = [False] * len(params)
        for indexes in (quiet, full):
            oks = self._fenced_update(conn, [params[i] for i in indexes])
            for i, ok in zip(indexes, oks, strict=True):
                written[i] = ok
        return written

    def _fenced_update(self, conn: Connection, params: list[dict[str, Any]]) -> list[bool]:
        """Run the fenced UPDATE for every row; which rows did it change?

        The common case (every lease still held) is one statement for the batch: quiet rows
        as one statement (`_quiet_update`), others as one executemany. Only when the row
        count says some row was fenced is the batch redone row by row to find which.
        """
        if len(params) > 1 and self.engine.dialect.supports_sane_multi_rowcount:
            savepoint = conn.begin_nested()
            if _is_quiet(params[0]):
                changed = self._quiet_update(conn, params)
            else:
                changed = conn.execute(_WRITE_BACK, params).rowcount
            if changed == len(params):
                savepoint.commit()
                return [True] * len(params)
            savepoint.rollback()
        return [conn.execute(_WRITE_BACK, row).rowcount == 1 for row in params]

    def _quiet_update(self, conn: Connection, params: list[dict[str, Any]]) -> int:
        """The schedules of quiet polls in one statement; returns the rows it changed.

        One statement rather than an executemany because the SQLite driver gives up the GIL
        around every statement it steps: next to a busy event loop, each row's hand-off cost
        the loop measurable CPU (README "Performance"). On PostgreSQL the rows travel as five
        arrays, so the statement's text is the same for every batch (psycopg parses each new
        text in Python).
        """
        if not self.is_sqlite:
            columns = {name: [p[name] for p in params] for name in _QUIET_COLUMNS}
            owner = params[0]["w_owner"]
            return int(conn.execute(_POSTGRES_QUIET, {**columns, "owner": owner}).rowcount)
        row = "(" + ", ".join(f"CAST(? AS {t})" for t in _QUIET_TYPES) + ")"
        sql = (
            "UPDATE watches SET wait = v.column3, last_poll_at = v.column4,"
            " next_poll_at = v.column5, lease_owner = NULL, lease_until = NULL,"
            " version = watches.version + 1"
            f" FROM (VALUES {', '.join([row] * len(params))}) AS v"
            " WHERE watches.id = v.column1 AND watches.version = v.column2"
            " AND watches.lease_owner = ?"
        )
        values: list[Any] = []
        for p in params:
            values += (p[name] for name in _QUIET_COLUMNS)
        values.append(params[0]["w_owner"])
        return int(conn.exec_driver_sql(sql, tuple(values)).rowcount)

    # -- the outbox --------------------------------------------------------------------

    def next_delivery_at(self) -> float | None:
        """When the earliest pending delivery is due."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.min(deliveries.c.next_attempt_at)).where(
                    deliveries.c.status == "pending"
                )
            ).scalar()

    def finish_deliveries(self, owner: str, outcomes: Sequence[DeliveryOutcome], now: float) -> int:
        """Record delivery attempts; returns how many rows this owner still held.

        Sent rows become `sent`; failed rows are retried at `retry_at`, or `given_up` when it
        is None. The lease check means a process that lost its lease records nothing.
        """
        done = 0
        with self._write() as conn:
            for outcome in outcomes:
                if outcome.sent:
                    values: dict[str, Any] = {"status": "sent", "sent_at": now}
                elif outcome.retry_at is None:
                    values = {"status": "given_up"}
                else:
                    values = {"next_attempt_at": outcome.retry_at}
                result = conn.execute(
                    sa.update(deliveries)
                    .where(deliveries.c.id == outcome.id, deliveries.c.lease_owner == owner)
                    .values(
                        attempts=deliveries.c.attempts + 1,
                        last_error=outcome.error,
                        lease_owner=None,
                        lease_until=None,
                        **values,
                    )
                )
                done += result.rowcount
        return done

    # -- the outbox, one channel at a time (delivery engine, status) -------------------------

    def ready_channels(self, now: float, wait: float) -> list[str]:
        """Channels with a delivery ready to go: due, not leased, and either a retry or a first
        attempt that has waited `wait` seconds for others to join it (digests)."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(deliveries.c.channel)
                    .where(
                        deliveries.c.status == "pending",
                        deliveries.c.next_attempt_at <= now,
                        sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now),
                        sa.or_(deliveries.c.attempts > 0, deliveries.c.created_at <= now - wait),
                    )
                    .distinct()
                ).scalars()
            )

    def next_delivery_ready_at(
        self, wait: float, exclude: Sequence[str] = (), now: float | None = None
    ) -> float | None:
        """When the earliest delivery not leased (at `now`) and not for `exclude` is ready."""
        first_ready = sa.case(
            (deliveries.c.attempts > 0, deliveries.c.next_attempt_at),
            (
                deliveries.c.next_attempt_at > deliveries.c.created_at + wait,
                deliveries.c.next_attempt_at,
            ),
            else_=deliveries.c.created_at + wait,
        )
        query = sa.select(sa.func.min(first_ready)).where(deliveries.c.status == "pending")
        if now is not None:
            query = query.where(
                sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now)
            )
        if exclude:
            query = query.where(deliveries.c.channel.not_in(list(exclude)))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def claim_deliveries(
        self, owner: str, now: float, limit: int, lease: float, channel: str | None = None
    ) -> list[Delivery]:
        """Lease up to `limit` due deliveries (of one channel, if given) to `owner`, oldest
        first."""
        due = (
            sa.select(deliveries.c.id)
            .where(
                deliveries.c.channel == channel if channel is not None else sa.true(),
                deliveries.c.status == "pending",
                deliveries.c.next_attempt_at <= now,
                sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now),
            )
            .order_by(deliveries.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self._write() as conn:
            ids = (
                conn.execute(
                    sa.update(deliveries)
                    .where(deliveries.c.id.in_(due.scalar_subquery()))
                    .values(lease_owner=owner, lease_until=now + lease)
                    .returning(deliveries.c.id)
                )
                .scalars()
                .all()
            )
            if not ids:
                return []
            rows = conn.execute(
                sa.select(
                    deliveries.c.id,
                    deliveries.c.channel,
                    deliveries.c.attempts,
                    deliveries.c.created_at,
                    events.c.kind,
                    events.c.payload,
                )
                .join(events, events.c.id == deliveries.c.event_id)
                .where(deliveries.c.id.in_(ids))
                .order_by(deliveries.c.id)
            ).all()
        return [
            Delivery(
                id=row.id,
                channel=row.channel,
                attempts=row.attempts,
                created_at=row.created_at,
                kind=Event(row.kind),
                payload=row.payload,
            )
            for row in rows
        ]

    def defer_deliveries(
        self, owner: str, ids: Sequence[int], until: float, note: str | None = None
    ) -> int:
        """Give back leased deliveries untried, due again at `until` (no attempt is counted);
        `note`, if given, becomes their `last_error` (what `poller status` shows)."""
        if not ids:
            return 0
        noted = {} if note is None else {"last_error": note}
        with self._write() as conn:
            return conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.id.in_(list(ids)), deliveries.c.lease_owner == owner)
                .values(next_attempt_at=until, lease_owner=None, lease_until=None, **noted)
            ).rowcount

    def follow_channels(
        self, renamed: Mapping[str, str], present: Sequence[str], note: str, now: float
    ) -> tuple[int, int]:
        """After a reload or at start: pending deliveries of each renamed channel (old name ->
        new name) move to the new name, and those deferred with `note` (their channel was
        missing) whose channel is in `present` are due at once. Returns (moved, due again)."""

        def follow(conn: Connection) -> tuple[int, int]:
            moved = due = 0
            for old, new in renamed.items():
                moved += conn.execute(
                    sa.update(deliveries)
                    .where(deliveries.c.channel == old, deliveries.c.status == "pending")
                    .values(channel=new)
                ).rowcount
            for first in range(0, len(present), _IN_CHUNK):
                due += conn.execute(
                    sa.update(deliveries)
                    .where(
                        deliveries.c.channel.in_(list(present[first : first + _IN_CHUNK])),
                        deliveries.c.status == "pending",
                        deliveries.c.last_error == note,
                        deliveries.c.next_attempt_at > now,
                    )
                    .values(next_attempt_at=now)
                ).rowcount
            return moved, due

        # replicas reloading together update the same rows: a deadlock is run again
        return self._retrying(follow)

    def keep_deliveries(self, owner: str, ids: Sequence[int], until: float) -> set[int]:
        """Extend `owner`'s lease on these deliveries to `until`; returns the ids it still held.

        A process that was frozen past its lease (SIGSTOP, a VM pause) asks this before it
        sends what it claimed: another replica may have taken the rows over and sent them.
        """
        if not ids:
            return set()
        with self._write() as conn:
            return set(
                conn.execute(
                    sa.update(deliveries)
                    .where(
                        deliveries.c.id.in_(list(ids)),
                        deliveries.c.lease_owner == owner,
                        deliveries.c.status == "pending",
                    )
                    .values(lease_until=until)
                    .returning(deliveries.c.id)
                ).scalars()
            )

    def sent_times(self, channel: str, since: float) -> list[float]:
        """When each delivery to `channel` sent since `since` went out (a digest's share one)."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(deliveries.c.sent_at)
                    .where(
                        deliveries.c.channel == channel,
                        deliveries.c.status == "sent",
                        deliveries.c.sent_at >= since,
                    )
                    .order_by(deliveries.c.sent_at)
                ).scalars()
            )

    def undelivered(self, status: str = "given_up", limit: int = 50) -> list[Undelivered]:
        """Deliveries with `status` (``given_up`` or ``pending``), newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    deliveries.c.id,
                    deliveries.c.channel,
                    deliveries.c.attempts,
                    deliveries.c.created_at,
                    deliveries.c.next_attempt_at,
                    deliveries.c.last_error,
                    events.c.kind,
                    watches.c.key,
                    watches.c.name,
                )
                .join(events, events.c.id == deliveries.c.event_id)
                .join(watches, watches.c.id == events.c.watch_id)
                .where(deliveries.c.status == status)
                .order_by(deliveries.c.id.desc())
                .limit(limit)
            ).all()
        return [
            Undelivered(
                id=row.id,
                key=row.key,
                name=row.name,
                event=row.kind,
                channel=row.channel,
                status=status,
                attempts=row.attempts,
                created_at=row.created_at,
                next_attempt_at=row.next_attempt_at if status == "pending" else None,
                last_error=row.last_error,
            )
            for row in rows
        ]

    def undelivered_by_watch(self) -> dict[str, dict[str, int]]:
        """Pending and given-up deliveries per watch key: ``{key: {status: count}}``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(watches.c.key, deliveries.c.status, sa.func.count())
                .select_from(deliveries)
                .join(events, events.c.id == deliveries.c.event_id)
                .join(watches, watches.c.id == events.c.watch_id)
                .where(deliveries.c.status.in_(("pending", "given_up")))
                .group_by(watches.c.key, deliveries.c.status)
            ).all()
        found: dict[str, dict[str, int]] = {}
        for key, status, count in rows:
            found.setdefault(key, {})[status] = count
        return found


#: The write-back of one poll, built once: building statements per row costs more than running
#: them. Rows are matched by id, claimed version and lease owner (the fence).
_WRITE_BACK = (
    sa.update(watches)
    .where(
        watches.c.id == sa.bindparam("w_id"),
        watches.c.version == sa.bindparam("w_version"),
        watches.c.lease_owner == sa.bindparam("w_owner"),
    )
    .values(version=watches.c.version + 1)
)


#: a quiet row's values (`_write_back_params`) and their SQL types
_QUIET_COLUMNS = ("w_id", "w_version", "wait", "last_poll_at", "next_poll_at")
_QUIET_TYPES = ("BIGINT", "INTEGER", "DOUBLE PRECISION", "DOUBLE PRECISION", "DOUBLE PRECISION")
_POSTGRES_QUIET = sa.text(
    "UPDATE watches SET wait = v.wait, last_poll_at = v.last_poll_at,"
    " next_poll_at = v.next_poll_at, lease_owner = NULL, lease_until = NULL,"
    " version = watches.version + 1"
    " FROM unnest("
    + ", ".join(
        f"CAST(:{name} AS {t}[])" for name, t in zip(_QUIET_COLUMNS, _QUIET_TYPES, strict=True)
    )
    + ") AS v(id, version, wait, last_poll_at, next_poll_at)"
    " WHERE watches.id = v.id AND watches.version = v.version AND watches.lease_owner = :owner"
)

# -- claims ----------------------------------------------------------------------------------
# A claim comes back as one JSON value, one array per watch, in the order of
# `watches.c`, because the SQLite driver gives up the GIL for every row it steps (and
# SQLAlchemy builds a Row for each): one value is one hand-off per claim instead of hundreds.
# JSON columns are embedded as JSON (both databases copy a JSON value's text as it was, numbers
# included) and floats travel with 17 digits, so that nothing changes on the way; the new
# lease is what the claim sets.

_DUE = (
    "active = TRUE AND next_poll_at <= :due AND (lease_until IS NULL OR lease_until < :now)"
    " ORDER BY next_poll_at LIMIT :limit"
)


def _sqlite_value(column: sa.Column[Any]) -> str:
    if column.name in ("lease_owner", "lease_until"):
        return f":{column.name.removeprefix('lease_')}"
    if isinstance(column.type, sa.Float):
        # json_array() would give 15 digits; 17 give back the same double
        name = column.name
        return f"json(CASE WHEN {name} IS NULL THEN 'null' ELSE printf('%!.17g', {name}) END)"
    if isinstance(column.type, sa.JSON):
        return f"json({column.name})"
    return column.name


_SQLITE_DUE = sa.text(
    "SELECT json_group_array(json_array("
    + ", ".join(_sqlite_value(c) for c in watches.c)
    + f")) FROM (SELECT * FROM watches WHERE {_DUE})"
)
_SQLITE_LEASE = sa.text(
    "UPDATE watches SET lease_owner = :owner, lease_until = :until"
    " WHERE id IN (SELECT value FROM json_each(:ids))"
)
_POSTGRES_CLAIM = sa.text(
    f"WITH due AS (SELECT id FROM watches WHERE {_DUE} FOR UPDATE SKIP LOCKED),"
    " claimed AS (UPDATE watches SET lease_owner = :owner, lease_until = :until"
    " FROM due WHERE watches.id = due.id RETURNING watches.*)"
    " SELECT coalesce(json_agg(json_build_array("
    + ", ".join(f"{c.name}::json" if isinstance(c.type, sa.JSON) else c.name for c in watches.c)
    + ")), '[]')::text FROM claimed"
)


def _due_time(watch: Watch) -> float:
    return watch.next_poll_at or 0.0


#: what a quiet poll leaves as it was: every progress field but the backoff (`wait`)
_QUIET_FIELDS = operator.attrgetter(
    *(f.name for f in dataclasses.fields(WatchProgress) if f.name != "wait")
)


def _is_quiet(row: Mapping[str, Any]) -> bool:
    """Whether `_write_back_params` made these the parameters of a quiet poll."""
    return "state" not in row


def _write_back_params(owner: str, item: WriteBack) -> dict[str, Any]:
    """The fenced UPDATE's parameters: for a quiet poll (no transition, no event, nothing but
    the backoff changed), only the schedule; else the whole row."""
    p, before = item.progress, item.watch.progress
    fence = {"w_id": item.watch.id, "w_version": item.watch.version, "w_owner": owner}
    schedule = {
        "wait": p.wait,
        "last_poll_at": item.polled_at,
        "next_poll_at": item.next_poll_at,
        "lease_owner": None,
        "lease_until": None,
    }
    if item.transition is None and not item.events and _QUIET_FIELDS(p) == _QUIET_FIELDS(before):
        return fence | schedule
    return (
        fence
        | schedule
        | {
            "state": p.state.value if p.state else None,
            "remote_status": p.remote_status,
            "progress": p.progress,
            "details": dict(p.details),
            "started_at": p.started_at,
            "ended_at": p.ended_at,
            "last_change_at": p.last_change_at,
            "error_since": p.error_since,
            "error_count": p.error_count,
            "last_error": p.last_error,
            "unreachable": p.unreachable,
            "stalled": p.stalled,
            "active": p.active,
        }
    )


def _insert_events(conn: Connection, watch_id: int, records: Sequence[EventRecord]) -> int:
    queued = 0
    for event in records:
        event_id = conn.execute(
            sa.insert(events)
            .values(
                watch_id=watch_id,
                at=event.at,
                kind=event.kind.value,
                payload=dict(event.payload),
            )
            .returning(events.c.id)
        ).scalar_one()
        if event.channels:
            conn.execute(
                sa.insert(deliveries),
                [
                    {
                        "event_id": event_id,
                        "channel": channel,
                        "status": "pending",
                        "attempts": 0,
                        "created_at": event.at,
                        "next_attempt_at": event.at,
                    }
                    for channel in event.channels
                ],
            )
            queued += len(event.channels)
    return queued


def _labels(spec: WatchSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "tags": list(spec.tags),
        "overrides": dict(spec.overrides),
        "origin": spec.origin,
    }


def _new_watch_row(spec: WatchSpec, now: float) -> dict[str, Any]:
    """The columns of a new watch, due now."""
    return {
        "key": spec.key,
        "source": spec.source,
        "job_id": spec.job_id,
        "site": spec.site,
        "created_at": now,
        "details": {},
        "error_count": 0,
        "unreachable": False,
        "stalled": False,
        "active": True,
        "next_poll_at": now,
        "version": 0,
        **_labels(spec),
    }


def _reactivation(now: float) -> dict[str, Any]:
    """A watch removed before its job ended starts again, with a fresh timeout."""
    return {"active": True, "removed_at": None, "created_at": now, "next_poll_at": now}


def _upsert_watch(conn: Connection, insert_new: sa.Insert, spec: WatchSpec, now: float) -> bool:
    """Insert a watch, or refresh its labels; returns True when it was inserted.

    `insert_new` is the INSERT ... ON CONFLICT DO NOTHING RETURNING id of `Store`: replicas
    started together all sync the config at once, and a plain INSERT of a key that another
    replica inserted after this one looked would fail on `uq_watches_key`. Losing that race is
    not an error: the row is then read again and treated as an existing watch.

    A watch whose labels are already these is not written at all: every replica syncs the
    config when it starts, and a write would take the row's lock (against the polls other
    replicas write back: a deadlock, in another order) and fence their polls in flight.
    """
    labels = (watches.c.name, watches.c.tags, watches.c.overrides, watches.c.origin)
    find = sa.select(watches.c.id, watches.c.removed_at, watches.c.ended_at, *labels).where(
        watches.c.key == spec.key
    )
    row = conn.execute(find).one_or_none()
    if row is None:
        if conn.execute(insert_new, _new_watch_row(spec, now)).first() is not None:
            return True
        row = conn.execute(find).one()
    values: dict[str, Any] = _labels(spec)
    if row.removed_at is not None and row.ended_at is None:
        values.update(_reactivation(now))
    elif all(row._mapping[name] == value for name, value in values.items()):
        return False
    conn.execute(
        sa.update(watches)
        .where(watches.c.id == row.id)
        .values(version=watches.c.version + 1, **values)
    )
    return False


def _removal(key: str, now: float) -> sa.Update:
    return (
        sa.update(watches)
        .where(watches.c.key == key, watches.c.removed_at.is_(None))
        .values(
            active=False,
            removed_at=now,
            next_poll_at=None,
            lease_owner=None,
            lease_until=None,
            version=watches.c.version + 1,
        )
    )


#: `State` by its stored value (an Enum call by value is slower, and claims read thousands)
_STATES = {state.value: state for state in State}


def _watch_from_row(row: Sequence[Any]) -> Watch:
    """A watch from its row's values in the order of `watches.c` (a Row, or a claim's list),
    JSON columns decoded. Unpacking fails loudly if a column is added and not read here."""
    (
        id_,
        key,
        source,
        job_id,
        site,
        name,
        tags,
        origin,
        overrides,
        state,
        remote_status,
        progress,
        details,
        created_at,
        started_at,
        ended_at,
        wait,
        last_change_at,
        error_since,
        error_count,
        last_error,
        unreachable,
        stalled,
        active,
        removed_at,
        last_poll_at,
        next_poll_at,
        lease_owner,
        _lease_until,
        version,
    ) = row
    return Watch(
        id=id_,
        key=key,
        source=source,
        job_id=job_id,
        site=site,
        name=name,
        tags=tuple(tags or ()),
        origin=origin,
        overrides=overrides or {},
        progress=WatchProgress(
            state=_STATES[state] if state else None,
            remote_status=remote_status,
            progress=progress,
            details=details or {},
            created_at=created_at,
            started_at=started_at,
            ended_at=ended_at,
            wait=wait,
            last_change_at=last_change_at,
            error_since=error_since,
            error_count=error_count,
            last_error=last_error,
            unreachable=bool(unreachable),
            stalled=bool(stalled),
            active=bool(active),
        ),
        next_poll_at=next_poll_at,
        last_poll_at=last_poll_at,
        removed_at=removed_at,
        version=version,
        lease_owner=lease_owner,
    )


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
