"""Retention: watches that ended long ago are deleted with their history (`poller prune`, and
the daemon's daily duty).

A watch may go when it has not been polled since before the cutoff (it ended, timed out or
was removed before it) and nothing brings it back or still needs it:

- a watch with a pending delivery stays, so that its message still goes out (a message is
  never lost to pruning);
- a watch the config still lists stays: the next reload would add it again as new and
  notify its end a second time (a removed config watch may go);
- a discovered watch goes, leaving a tombstone (`schema.tombstones`, written in the
  transaction that deletes it) while its bulk or search is in the config: discovery never
  adds a tombstoned job again (nor notifies its end a second time), and a complete listing
  of the entry that no longer holds the job drops the tombstone. One whose entry left the
  config (stopped, its entry forgotten) goes without one. Watches discovered before poller
  recorded their entry stay, as there is nothing to key a tombstone by.

Reports (events about no watch) go the same way: those queued before the cutoff whose
deliveries are all done, with their run's row (so the same scheduled time is never sent
again: it is long past the hour a missed report is made up in).

Each batch of watches goes in one transaction with its transitions, events and deliveries,
and the watches are read again under that transaction (locked on PostgreSQL) so that one
re-armed meanwhile (`poller add --again`) stays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from poller.store.db import IN_CHUNK, Database
from poller.store.schema import (
    deliveries,
    discovery_entries,
    events,
    report_runs,
    tombstones,
    transitions,
    watches,
)


@dataclass
class Pruned:
    """What a prune deleted, table by table."""

    watches: int = 0
    transitions: int = 0
    events: int = 0
    deliveries: int = 0
    #: discovered watches among `watches` that left a tombstone
    tombstones: int = 0


def prunable(before: float) -> ColumnElement[bool]:
    """Watches that retention lets go at cutoff `before` (module docstring)."""
    pending = (
        sa.select(sa.literal(1))
        .select_from(deliveries.join(events, events.c.id == deliveries.c.event_id))
        .where(events.c.watch_id == watches.c.id, deliveries.c.status == "pending")
    )
    listed = sa.select(sa.literal(1)).where(discovery_entries.c.entry == watches.c.discovered_by)
    return sa.and_(
        sa.not_(watches.c.active),
        sa.or_(watches.c.ended_at.is_not(None), watches.c.removed_at.is_not(None)),
        sa.or_(watches.c.ended_at.is_(None), watches.c.ended_at < before),
        sa.or_(watches.c.removed_at.is_(None), watches.c.removed_at < before),
        sa.or_(
            watches.c.origin == "cli",
            sa.and_(watches.c.origin != "discovered", watches.c.removed_at.is_not(None)),
            sa.and_(
                watches.c.origin == "discovered",
                watches.c.discovered_by.is_not(None),
                # its entry listed (a tombstone keeps it away), or left the config
                sa.or_(sa.exists(listed), watches.c.removed_at.is_not(None)),
            ),
        ),
        sa.not_(sa.exists(pending)),
    )


class Retention(Database):
    """Deleting what retention no longer keeps."""

    def prune(self, before: float) -> Pruned:
        """Delete the watches `prunable` at `before`, with their history; what went."""
        pruned = Pruned()
        while True:
            batch = self._retrying(lambda conn: _prune_batch(conn, before, self.is_sqlite))
            pruned.watches += batch.watches
            pruned.transitions += batch.transitions
            pruned.events += batch.events
            pruned.deliveries += batch.deliveries
            pruned.tombstones += batch.tombstones
            if batch.watches < IN_CHUNK:
                break
        gone = self._retrying(lambda conn: _prune_reports(conn, before))
        pruned.events += gone.events
        pruned.deliveries += gone.deliveries
        return pruned


def _prune_batch(conn: Connection, before: float, sqlite: bool) -> Pruned:
    """Delete up to `IN_CHUNK` prunable watches and their rows, in this transaction."""
    query = sa.select(watches.c.id).where(prunable(before)).order_by(watches.c.id).limit(IN_CHUNK)
    if not sqlite:
        # rows a re-arm or a removal changes meanwhile wait for this transaction, or are skipped
        query = query.with_for_update(skip_locked=True)
    ids = list(conn.execute(query).scalars())
    if not ids:
        return Pruned()
    event_ids = sa.select(events.c.id).where(events.c.watch_id.in_(ids)).scalar_subquery()
    # children first: SQLite enforces no ON DELETE CASCADE unless told to
    gone_deliveries = conn.execute(
        sa.delete(deliveries).where(deliveries.c.event_id.in_(event_ids))
    ).rowcount
    gone_events = conn.execute(sa.delete(events).where(events.c.watch_id.in_(ids))).rowcount
    gone_transitions = conn.execute(
        sa.delete(transitions).where(transitions.c.watch_id.in_(ids))
    ).rowcount
    # a discovered job whose entry is listed: discovery must not add it again as new
    buried = sa.select(watches.c.discovered_by, watches.c.key).where(
        watches.c.id.in_(ids),
        watches.c.origin == "discovered",
        watches.c.discovered_by.in_(sa.select(discovery_entries.c.entry)),
        # one there already (another replica pruned the same job before) stays as it is
        sa.not_(
            sa.exists().where(
                tombstones.c.entry == watches.c.discovered_by, tombstones.c.key == watches.c.key
            )
        ),
    )
    now = time.time()
    rows = [{"entry": e, "key": k, "pruned_at": now} for e, k in conn.execute(buried)]
    if rows:
        conn.execute(sa.insert(tombstones), rows)
    gone_watches = conn.execute(sa.delete(watches).where(watches.c.id.in_(ids))).rowcount
    return Pruned(gone_watches, gone_transitions, gone_events, gone_deliveries, len(rows))


def _prune_reports(conn: Connection, before: float) -> Pruned:
    """Delete the reports queued before `before` that have no pending delivery."""
    pending = (
        sa.select(sa.literal(1))
        .select_from(deliveries)
        .where(deliveries.c.event_id == events.c.id, deliveries.c.status == "pending")
    )
    old = (
        sa.select(events.c.id)
        .where(events.c.watch_id.is_(None), events.c.at < before, sa.not_(sa.exists(pending)))
        .scalar_subquery()
    )
    ids = list(conn.execute(sa.select(events.c.id).where(events.c.id.in_(old))).scalars())
    if not ids:
        return Pruned()
    gone = Pruned()
    for first in range(0, len(ids), IN_CHUNK):
        chunk = ids[first : first + IN_CHUNK]
        conn.execute(sa.delete(report_runs).where(report_runs.c.event_id.in_(chunk)))
        gone.deliveries += conn.execute(
            sa.delete(deliveries).where(deliveries.c.event_id.in_(chunk))
        ).rowcount
        gone.events += conn.execute(sa.delete(events).where(events.c.id.in_(chunk))).rowcount
    return gone
