"""A watch's row: the columns a `Watch` is read from, and the reading.

`WATCH_COLUMNS` is the one list of them, in order: the SQLAlchemy selects and the claims'
hand-written SQL select these columns in this order, and `watch_from_row` unpacks them so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from poller.models import State, Watch, WatchProgress
from poller.store.schema import watches

#: `State` by its stored value (an Enum call by value is slower, and claims read thousands)
_STATES = {state.value: state for state in State}


#: The columns a `Watch` is read from, in the order `watch_from_row` unpacks them (every column
#: but `lease_until`, which a `Watch` does not hold). Every query that reads whole watches selects
#: these, in this order; a test checks that the unpacking names the same columns in the same order.
WATCH_COLUMNS: tuple[sa.Column[Any], ...] = (
    watches.c.id,
    watches.c.key,
    watches.c.source,
    watches.c.job_id,
    watches.c.site,
    watches.c.name,
    watches.c.tags,
    watches.c.origin,
    watches.c.overrides,
    watches.c.state,
    watches.c.remote_status,
    watches.c.progress,
    watches.c.details,
    watches.c.created_at,
    watches.c.started_at,
    watches.c.ended_at,
    watches.c.wait,
    watches.c.last_change_at,
    watches.c.error_since,
    watches.c.error_count,
    watches.c.last_error,
    watches.c.unreachable,
    watches.c.stalled,
    watches.c.active,
    watches.c.removed_at,
    watches.c.last_poll_at,
    watches.c.next_poll_at,
    watches.c.lease_owner,
    watches.c.version,
)


def watch_from_row(row: Sequence[Any]) -> Watch:
    """A watch from its row's values in the order of `WATCH_COLUMNS` (a Row, or a claim's
    list), JSON columns decoded.

    The values are unpacked by position, into variables named after their columns: the
    quickest way to read the thousands of rows a claim returns.
    """
    (
        id,
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
        version,
    ) = row
    return Watch(
        id=id,
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
