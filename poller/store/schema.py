"""The tables: watches (the schedule), transitions, events and deliveries (the outbox).

Times are float UNIX epoch seconds: one representation that compares and indexes the same way
on SQLite and PostgreSQL. JSON columns hold what the job APIs answered (never a secret).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    or_,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement

from poller.models import MAX_LENGTH

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class CleanText(TypeDecorator[str]):
    """Text as PostgreSQL can store it: a NUL character, which it refuses in any text column
    and which a job API's answer may hold, becomes U+FFFD. SQLite gets the same, so both
    databases store the same text."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        """The value to send: NULs replaced."""
        if isinstance(value, str) and "\x00" in value:
            return value.replace("\x00", "\ufffd")
        return value


class CleanLongText(CleanText):
    """`CleanText` of any length: TEXT, the type the migrations give such a column (an
    unbounded `String` would be VARCHAR, the same on both databases but not the same type
    to alembic's comparison of this schema with the migrations)."""

    impl = Text
    cache_ok = True


watches = Table(
    "watches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", CleanText(MAX_LENGTH["key"]), nullable=False, unique=True),
    Column("source", CleanText(MAX_LENGTH["source"]), nullable=False),
    Column("job_id", CleanText(MAX_LENGTH["job_id"]), nullable=False),
    Column("site", CleanText(MAX_LENGTH["site"])),
    Column("name", CleanText(MAX_LENGTH["name"])),
    Column("tags", JSON, nullable=False, default=list),
    # config | cli | discovered: a reload only stops the config watches it no longer lists
    Column("origin", CleanText(16), nullable=False),
    Column("overrides", JSON, nullable=False, default=dict),
    Column("state", CleanText(32)),
    Column("remote_status", CleanText(256)),
    Column("progress", Float),
    Column("details", JSON, nullable=False, default=dict),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("wait", Float),
    Column("last_change_at", Float),
    Column("error_since", Float),
    Column("error_count", Integer, nullable=False, default=0),
    Column("last_error", CleanLongText()),
    Column("unreachable", Boolean, nullable=False, default=False),
    Column("stalled", Boolean, nullable=False, default=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("removed_at", Float),
    Column("last_poll_at", Float),
    Column("next_poll_at", Float),
    Column("lease_owner", CleanText(128)),
    Column("lease_until", Float),
    # bumped by every write-back: a write based on an older read is refused (fencing)
    Column("version", Integer, nullable=False, default=0),
    # the config's bulk or search that found a discovered watch (`discovery.entry_key`):
    # when the entry leaves the config, its watches stop
    Column("discovered_by", CleanText(512)),
)
Index("ix_watches_due", watches.c.active, watches.c.next_poll_at)

#: the bulks and searches listed at least once: a first listing notifies no job that had
#: already ended (unless the entry says ``notify_existing``)
discovery_entries = Table(
    "discovery_entries",
    metadata,
    Column("entry", CleanText(512), primary_key=True),
    Column("listed_at", Float, nullable=False),
)

#: the discovered jobs retention pruned (`Retention.prune`), by entry and watch key: discovery
#: never adds them again while their entry's listings still hold them; a complete listing
#: without the job drops its row (`Store.drop_tombstones`)
tombstones = Table(
    "tombstones",
    metadata,
    Column("entry", CleanText(512), primary_key=True),
    Column("key", CleanText(MAX_LENGTH["key"]), primary_key=True),
    Column("pruned_at", Float, nullable=False),
)

transitions = Table(
    "transitions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("watch_id", Integer, ForeignKey("watches.id", ondelete="CASCADE"), nullable=False),
    Column("at", Float, nullable=False),
    Column("from_state", CleanText(32)),
    Column("to_state", CleanText(32), nullable=False),
    Column("remote_status", CleanText(256)),
    Column("progress", Float),
)
Index("ix_transitions_watch", transitions.c.watch_id, transitions.c.id)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # None for an event about no watch: a scheduled report (`report_runs`)
    Column("watch_id", Integer, ForeignKey("watches.id", ondelete="CASCADE")),
    Column("at", Float, nullable=False),
    Column("kind", CleanText(32), nullable=False),
    # a snapshot of everything a message may show, taken when the event happened
    Column("payload", JSON, nullable=False),
)
Index("ix_events_watch", events.c.watch_id, events.c.id)

#: each report (``reports:`` in the config) once per scheduled time: its primary key is what
#: makes replicas sharing a database enqueue the 09:00 report once (`Outbox.enqueue_report`)
report_runs = Table(
    "report_runs",
    metadata,
    Column("report", CleanText(MAX_LENGTH["name"]), primary_key=True),
    Column("scheduled_at", Float, primary_key=True),
    Column("event_id", Integer, ForeignKey("events.id", ondelete="CASCADE")),
    Column("created_at", Float, nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", Integer, ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    Column("channel", CleanText(MAX_LENGTH["channel"]), nullable=False),
    # pending -> sent | given_up
    Column("status", CleanText(16), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("sent_at", Float),
    Column("last_error", CleanLongText()),
    Column("lease_owner", CleanText(128)),
    Column("lease_until", Float),
)
Index("ix_deliveries_due", deliveries.c.status, deliveries.c.next_attempt_at)
Index("ix_deliveries_event", deliveries.c.event_id)


def lease_free(table: Table, now: float) -> ColumnElement[bool]:
    """Rows of `table` (watches or deliveries) that no lease holds at `now`: never leased,
    released, or leased by a process that stopped renewing before `now`."""
    return or_(table.c.lease_until.is_(None), table.c.lease_until < now)
