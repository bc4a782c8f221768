"""Registering watches: add, sync with the config, discovery, removal (the reports on them
are `reports.Reports`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from poller.models import Watch, WatchSpec
from poller.store.db import IN_CHUNK, Database
from poller.store.rows import WATCH_COLUMNS, watch_from_row
from poller.store.schema import discovery_entries, tombstones, watches


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
    #: an ended watch armed again (`add(..., again=True)`)
    rearmed: bool = False


class Watches(Database):
    """The watches table as `poller add`, `remove`, a config sync and discovery change it."""

    @cached_property
    def _insert_new_watches(self) -> sa.Insert:
        """INSERT of new watches that skips any key already there (a replica may add it)."""
        insert = sqlite_insert if self.is_sqlite else postgresql_insert
        return insert(watches).on_conflict_do_nothing(index_elements=[watches.c.key])

    @cached_property
    def _insert_new_watch(self) -> sa.Insert:
        """One new watch, returning its id: none comes back if the key exists."""
        return self._insert_new_watches.returning(watches.c.id)

    def add_watch(self, spec: WatchSpec, now: float) -> tuple[Watch, bool]:
        """`add`, answering only the watch and whether it is new."""
        added = self.add(spec, now)
        return added.watch, added.created

    def add(self, spec: WatchSpec, now: float, *, again: bool = False) -> Added:
        """Start watching a job (`poller add`), and say what that changed.

        A key that exists keeps everything known about it (origin, polling overrides, and its
        name and tags unless `spec` gives a name or tags), and is re-activated if it was
        removed before it ended. With `again`, a watch that has ended (or timed out) is armed
        again from its last state (`_rearming`): a resumed or re-run job is watched anew.
        """
        with self._write() as conn:
            select = sa.select(*WATCH_COLUMNS).where(watches.c.key == spec.key)
            row = conn.execute(select).one_or_none()
            # ON CONFLICT DO NOTHING: another `add` or a replica's sync may insert it meanwhile
            if (
                row is None
                and conn.execute(self._insert_new_watch, _new_watch_row(spec, now)).first()
            ):
                return Added(watch_from_row(conn.execute(select).one()), created=True)
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
            rearmed = again and not reactivated and not (row.active and row.removed_at is None)
            if reactivated:
                values.update(_reactivation(now))
            elif rearmed:
                values.update(_rearming(now))
            if values:
                conn.execute(
                    sa.update(watches)
                    .where(watches.c.id == row.id)
                    .values(version=watches.c.version + 1, **values)
                )
                row = conn.execute(select).one()
        return Added(watch_from_row(row), False, reactivated, changes, rearmed)

    def add_new_watches(self, specs: Sequence[WatchSpec], now: float) -> list[str]:
        """Start watching each spec whose key has no watch yet (a removed one counts) and no
        tombstone (retention pruned it; whichever entry found it, as bulks and searches may
        overlap); the keys added. For discovery:
        thousands of jobs cost a few statements, not one transaction each. A key another
        replica inserts meanwhile is left as that replica wrote it (no error), though it is
        still among the keys returned."""
        # In key order: replicas inserting the same keys together wait for one another
        # instead of deadlocking; a deadlock PostgreSQL breaks off anyway is run again.
        ordered = sorted(specs, key=lambda spec: spec.key)

        def add(conn: Connection) -> list[str]:
            added: list[str] = []
            for first in range(0, len(ordered), IN_CHUNK):
                chunk = {spec.key: spec for spec in ordered[first : first + IN_CHUNK]}
                existing = set(
                    conn.execute(
                        sa.select(watches.c.key).where(watches.c.key.in_(list(chunk)))
                    ).scalars()
                )
                # read after the watches: a prune committing in between deleted the watch and
                # wrote its tombstone together, so one of the two reads sees the job
                existing.update(
                    conn.execute(
                        sa.select(tombstones.c.key).where(tombstones.c.key.in_(list(chunk)))
                    ).scalars()
                )
                rows = [_new_watch_row(s, now) for k, s in chunk.items() if k not in existing]
                if rows:
                    conn.execute(self._insert_new_watches, rows)
                    added += [row["key"] for row in rows]
            return added

        return self._retrying(add)

    def listed_entries(self, entries: Sequence[str]) -> set[str]:
        """Which of these discovery entries (`engine.discovery.entry_key`) have been listed."""
        if not entries:
            return set()
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(discovery_entries.c.entry).where(
                    discovery_entries.c.entry.in_(list(entries))
                )
            ).scalars()
            return set(found)

    def mark_listed(self, entries: Sequence[str], now: float) -> None:
        """Record that these discovery entries have been listed (a key already there stays)."""
        if not entries:
            return
        insert = sqlite_insert if self.is_sqlite else postgresql_insert
        statement = insert(discovery_entries).on_conflict_do_nothing(
            index_elements=[discovery_entries.c.entry]
        )

        def mark(conn: Connection) -> None:
            conn.execute(statement, [{"entry": e, "listed_at": now} for e in sorted(entries)])

        self._retrying(mark)

    def drop_tombstones(self, complete: Collection[str], listed: Collection[str]) -> int:
        """Drop the tombstones of the entries listed completely (`complete`) whose job no
        listing of the run holds (`listed`: every watch key listed), so that the table
        holds no more than the APIs list; how many went."""

        def drop(conn: Connection) -> int:
            gone = 0
            entries = sorted(complete)
            for first in range(0, len(entries), IN_CHUNK):
                found = conn.execute(
                    sa.select(tombstones.c.entry, tombstones.c.key).where(
                        tombstones.c.entry.in_(entries[first : first + IN_CHUNK])
                    )
                ).all()
                for entry, key in found:
                    if key not in listed:
                        gone += conn.execute(
                            sa.delete(tombstones).where(
                                tombstones.c.entry == entry, tombstones.c.key == key
                            )
                        ).rowcount
            return gone

        return self._retrying(drop)

    def stop_discovered(self, entries: Sequence[str], now: float) -> list[str]:
        """Stop the discovered watches whose bulk or search is not among `entries` (the
        config's), history kept, and forget that those entries were listed (and their
        tombstones: an entry back in the config lists quietly again); the keys stopped.
        Watches discovered before poller recorded their entry are left alone."""
        keep = list(entries)

        def stop(conn: Connection) -> list[str]:
            gone = sa.and_(
                watches.c.discovered_by.is_not(None),
                watches.c.removed_at.is_(None),
                watches.c.discovered_by.not_in(keep),
            )
            keys = sorted(conn.execute(sa.select(watches.c.key).where(gone)).scalars())
            for key in keys:
                conn.execute(_removal(key, now))
            conn.execute(sa.delete(discovery_entries).where(discovery_entries.c.entry.not_in(keep)))
            conn.execute(sa.delete(tombstones).where(tombstones.c.entry.not_in(keep)))
            return keys

        return self._retrying(stop)

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
            row = conn.execute(sa.select(*WATCH_COLUMNS).where(watches.c.key == key)).one_or_none()
        return watch_from_row(row) if row is not None else None

    # -- reading -----------------------------------------------------------------------

    def get_watch(self, key: str) -> Watch | None:
        """One watch by key."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(*WATCH_COLUMNS).where(watches.c.key == key)).one_or_none()
        return watch_from_row(row) if row is not None else None


def _labels(spec: WatchSpec) -> dict[str, Any]:
    """The columns a watch takes from whoever registers it (not from its job)."""
    return {
        "name": spec.name,
        "tags": list(spec.tags),
        "overrides": dict(spec.overrides),
        "origin": spec.origin,
    }


def _new_watch_row(spec: WatchSpec, now: float) -> dict[str, Any]:
    """The columns of a new watch, due now (or, `WatchSpec.ended_as`, ended as listed)."""
    row = {
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
        "discovered_by": spec.entry,
        "state": None,
        "remote_status": None,
        "ended_at": None,
        **_labels(spec),
    }
    if spec.ended_as is not None:
        state, remote = spec.ended_as
        row |= {"state": state.value, "remote_status": remote[:256], "ended_at": now}
        row |= {"active": False, "next_poll_at": None}
    return row


def _reactivation(now: float) -> dict[str, Any]:
    """A watch removed before its job ended starts again, with a fresh timeout."""
    return {"active": True, "removed_at": None, "created_at": now, "next_poll_at": now}


def _rearming(now: float) -> dict[str, Any]:
    """An ended watch polled again from its last state, with a fresh timeout.

    The state, status, progress and details stay, so the next poll compares with them: a job
    still ended as it was ends the watch again without an event, and a re-run job is a
    transition (and `started` again, since `started_at` is cleared) and then a new end.
    """
    return _reactivation(now) | {
        "ended_at": None,
        "started_at": None,
        "wait": None,
        "last_change_at": None,
        "error_since": None,
        "error_count": 0,
        "last_error": None,
        "unreachable": False,
        "stalled": False,
    }


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
    """Stop the watch `key` (unless it is stopped already): no lease, never due."""
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
