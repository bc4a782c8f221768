"""A watch's row: reading a `Watch` from the values of its row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from poller.models import State, Watch, WatchProgress

#: `State` by its stored value (an Enum call by value is slower, and claims read thousands)
_STATES = {state.value: state for state in State}


def watch_from_row(row: Sequence[Any]) -> Watch:
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
