"""The outbox: the deliveries a write-back queued, as the delivery engine leases and sends
them, and as `poller status` reports the ones not sent.

A delivery's lease moves in four ways, one method each (the delivery engine's words too):

- claim (`claim_deliveries`): lease due rows of a channel to this process;
- renew (`renew_deliveries`): extend the lease on rows it still holds, and learn which;
- release (`release_deliveries`): give rows back untried, due again at a given time (now,
  the end of a digest wait, a failing channel's retry, a missing channel's next look);
- finish (`finish_deliveries`): record an attempt (sent, retried later, or given up).

The whole process's leases, watches included, are renewed and released by `claims.Claims`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from poller.models import Delivery, DeliveryOutcome, Event, EventRecord, JsonValue
from poller.store.db import IN_CHUNK, Database
from poller.store.schema import deliveries, events, lease_free, report_runs, watches


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


#: deliveries with their event (its kind, its payload), and with the watch it is about (none
#: for a report)
_WITH_EVENT = deliveries.join(events, events.c.id == deliveries.c.event_id)
_WITH_WATCH = _WITH_EVENT.outerjoin(watches, watches.c.id == events.c.watch_id)
#: what both a claim (`Delivery`) and `poller status` (`Undelivered`) read of a delivery
#: under the same names; each also reads its event's kind (an `Event`, or text to show)
_LISTED = (deliveries.c.id, deliveries.c.channel, deliveries.c.attempts, deliveries.c.created_at)


def _listed(row: sa.Row[*tuple[Any, ...]]) -> dict[str, Any]:
    """The `_LISTED` fields of a row, by name."""
    return {column.name: getattr(row, column.name) for column in _LISTED}


class Outbox(Database):
    """The deliveries table: claimed, renewed, released and finished per channel; reported."""

    def next_delivery_at(self) -> float | None:
        """When the earliest pending delivery is due."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.min(deliveries.c.next_attempt_at)).where(
                    deliveries.c.status == "pending"
                )
            ).scalar()

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
                        lease_free(deliveries, now),
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
            query = query.where(lease_free(deliveries, now))
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
                lease_free(deliveries, now),
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
                sa.select(*_LISTED, events.c.kind, events.c.payload)
                .select_from(_WITH_EVENT)
                .where(deliveries.c.id.in_(ids))
                .order_by(deliveries.c.id)
            ).all()
        return [Delivery(**_listed(row), kind=Event(row.kind), payload=row.payload) for row in rows]

    def renew_deliveries(self, owner: str, ids: Sequence[int], until: float) -> set[int]:
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

    def release_deliveries(
        self, owner: str, ids: Sequence[int], until: float, note: str | None = None
    ) -> int:
        """Give `owner`'s leased deliveries back untried, due again at `until` (no attempt is
        counted); `note`, if given, becomes their `last_error` (what `poller status` shows).
        Returns how many rows `owner` still held."""
        if not ids:
            return 0
        noted = {} if note is None else {"last_error": note}
        with self._write() as conn:
            return conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.id.in_(list(ids)), deliveries.c.lease_owner == owner)
                .values(next_attempt_at=until, lease_owner=None, lease_until=None, **noted)
            ).rowcount

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

    def follow_channels(
        self, renamed: Mapping[str, str], present: Sequence[str], note: str, now: float
    ) -> tuple[int, int]:
        """After a reload or at start: pending deliveries of each renamed channel (old name ->
        new name) move to the new name, and those released with `note` (their channel was
        missing) whose channel is in `present` are due at once. Returns (moved, due again)."""

        def follow(conn: Connection) -> tuple[int, int]:
            moved = due = 0
            for old, new in renamed.items():
                moved += conn.execute(
                    sa.update(deliveries)
                    .where(deliveries.c.channel == old, deliveries.c.status == "pending")
                    .values(channel=new)
                ).rowcount
            for first in range(0, len(present), IN_CHUNK):
                due += conn.execute(
                    sa.update(deliveries)
                    .where(
                        deliveries.c.channel.in_(list(present[first : first + IN_CHUNK])),
                        deliveries.c.status == "pending",
                        deliveries.c.last_error == note,
                        deliveries.c.next_attempt_at > now,
                    )
                    .values(next_attempt_at=now)
                ).rowcount
            return moved, due

        # replicas reloading together update the same rows: a deadlock is run again
        return self._retrying(follow)

    def sent_times(
        self, channel: str, since: float, kinds: Sequence[Event] | None = None
    ) -> list[float]:
        """When each delivery to `channel` (of an event of `kinds`, if given) sent since `since`
        went out (a digest's share one)."""
        query = (
            sa.select(deliveries.c.sent_at)
            .where(
                deliveries.c.channel == channel,
                deliveries.c.status == "sent",
                deliveries.c.sent_at >= since,
            )
            .order_by(deliveries.c.sent_at)
        )
        if kinds is not None:
            query = query.select_from(_WITH_EVENT).where(
                events.c.kind.in_([kind.value for kind in kinds])
            )
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def undelivered(
        self, status: str = "given_up", limit: int = 50, since: float | None = None
    ) -> list[Undelivered]:
        """Deliveries with `status` (``given_up`` or ``pending``), newest first; only those
        queued at or after `since`, when given. A report's key is ``report``."""
        where = [deliveries.c.status == status]
        if since is not None:
            where.append(deliveries.c.created_at >= since)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    *_LISTED,
                    events.c.kind,
                    deliveries.c.next_attempt_at,
                    deliveries.c.last_error,
                    sa.func.coalesce(watches.c.key, events.c.kind).label("key"),
                    watches.c.name,
                )
                .select_from(_WITH_WATCH)
                .where(*where)
                .order_by(deliveries.c.id.desc())
                .limit(limit)
            ).all()
        return [
            Undelivered(
                **_listed(row),
                key=row.key,
                name=row.name,
                event=row.kind,
                status=status,
                next_attempt_at=row.next_attempt_at if status == "pending" else None,
                last_error=row.last_error,
            )
            for row in rows
        ]

    # -- scheduled reports ---------------------------------------------------------------

    def report_enqueued(self, report: str, scheduled_at: float) -> bool:
        """Whether the run of `report` scheduled at `scheduled_at` is in the outbox already."""
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(sa.literal(1)).where(
                    report_runs.c.report == report, report_runs.c.scheduled_at == scheduled_at
                )
            ).first()
        return found is not None

    def enqueue_report(
        self,
        report: str,
        scheduled_at: float,
        payload: Mapping[str, JsonValue],
        channels: Sequence[str],
        now: float,
    ) -> bool:
        """Queue `report`'s run scheduled at `scheduled_at`: an event (about no watch) and one
        delivery per channel, in one transaction; False if that run was queued already.

        The run's row is inserted first, keyed by report and scheduled time: of replicas that
        enqueue the 09:00 report together, PostgreSQL makes all but the first wait for its
        commit and then insert nothing, so one message goes out.
        """

        def write(conn: Connection) -> bool:
            insert = (
                _insert_ignoring_duplicates(conn, report_runs)
                .values(report=report, scheduled_at=scheduled_at, created_at=now)
                .returning(report_runs.c.report)
            )
            # RETURNING says whether the row went in (psycopg gave a rowcount of 1 for a
            # row ON CONFLICT skipped)
            if conn.execute(insert).first() is None:
                return False
            event = EventRecord(Event.REPORT, now, payload, tuple(channels))
            event_id = insert_event(conn, None, event)
            conn.execute(
                sa.update(report_runs)
                .where(report_runs.c.report == report, report_runs.c.scheduled_at == scheduled_at)
                .values(event_id=event_id)
            )
            return True

        return self._retrying(write)

    def report_deliveries(
        self, report: str, scheduled_at: float
    ) -> list[tuple[str, str, str | None]]:
        """The deliveries of `report`'s run scheduled at `scheduled_at`: (channel, status, last
        error) each, by channel."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(deliveries.c.channel, deliveries.c.status, deliveries.c.last_error)
                .join(report_runs, report_runs.c.event_id == deliveries.c.event_id)
                .where(report_runs.c.report == report, report_runs.c.scheduled_at == scheduled_at)
                .order_by(deliveries.c.channel)
            ).all()
        return [(row.channel, row.status, row.last_error) for row in rows]


def insert_event(conn: Connection, watch_id: int | None, event: EventRecord) -> int:
    """Store an event (of a watch; of none for a report) and queue a delivery to each of its
    channels, in `conn`'s transaction; returns the event's id."""
    event_id: int = conn.execute(
        sa.insert(events)
        .values(watch_id=watch_id, at=event.at, kind=event.kind.value, payload=dict(event.payload))
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
    return event_id


def _insert_ignoring_duplicates(conn: Connection, table: sa.Table) -> Any:
    """An INSERT of `table` that inserts nothing where the primary key is taken (each
    database's own ON CONFLICT DO NOTHING)."""
    from sqlalchemy.dialects import postgresql, sqlite

    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return postgresql.insert(table).on_conflict_do_nothing()
