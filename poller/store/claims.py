"""Claims: leasing due watches to a poller, and writing their polls back in group commits.

Claims set `lease_owner`/`lease_until`; a write-back only counts while the claimer still holds
the lease and the row's `version` is the one it read (fencing), so a slow or paused process
can never overwrite newer state. On PostgreSQL claims use `FOR UPDATE SKIP LOCKED`.
"""

from __future__ import annotations

import dataclasses
import json
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from poller.models import EventRecord, Transition, Watch, WatchProgress, record
from poller.store.db import Database
from poller.store.outbox import insert_event
from poller.store.rows import WATCH_COLUMNS, watch_from_row
from poller.store.schema import deliveries, lease_free, transitions, watches


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


class Claims(Database):
    """Leases on watches (and on deliveries, for `renew` and `release`) and write-backs."""

    def next_due_at(self, now: float) -> float | None:
        """When the earliest active watch that no lease holds at `now` is due."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.min(watches.c.next_poll_at)).where(
                    watches.c.active,
                    lease_free(watches, now),
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
        return sorted((watch_from_row(row) for row in claimed), key=_due_time)

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
# A claim comes back as one JSON value, one array per watch of the `WATCH_COLUMNS` in their
# order (what `watch_from_row` reads), because the SQLite driver gives up the GIL for every row
# it steps (and SQLAlchemy builds a Row for each): one value is one hand-off per claim instead
# of hundreds.
# JSON columns are embedded as JSON (both databases copy a JSON value's text as it was, numbers
# included) and floats travel with 17 digits, so that nothing changes on the way; the new
# lease is what the claim sets.

#: due and free (`schema.lease_free`, written out: these statements are text)
_DUE = (
    "active = TRUE AND next_poll_at <= :due AND (lease_until IS NULL OR lease_until < :now)"
    " ORDER BY next_poll_at LIMIT :limit"
)


def _sqlite_value(column: sa.Column[Any]) -> str:
    """How SQLite's claim reads `column` into the JSON array of a watch."""
    if column.name == "lease_owner":
        # read before the lease is set (SQLite has no UPDATE in a WITH): the new owner
        return ":owner"
    if isinstance(column.type, sa.Float):
        # json_array() would give 15 digits; 17 give back the same double
        name = column.name
        return f"json(CASE WHEN {name} IS NULL THEN 'null' ELSE printf('%!.17g', {name}) END)"
    if isinstance(column.type, sa.JSON):
        return f"json({column.name})"
    return column.name


_SQLITE_DUE = sa.text(
    "SELECT json_group_array(json_array("
    + ", ".join(_sqlite_value(c) for c in WATCH_COLUMNS)
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
    + ", ".join(f"{c.name}::json" if isinstance(c.type, sa.JSON) else c.name for c in WATCH_COLUMNS)
    + ")), '[]')::text FROM claimed"
)


def _due_time(watch: Watch) -> float:
    """A claimed watch's place in the order claims are polled in: earliest due first."""
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
    """Store a poll's events and queue a delivery per channel; returns the deliveries."""
    for event in records:
        insert_event(conn, watch_id, event)
    return sum(len(event.channels) for event in records)
