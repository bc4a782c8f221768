"""The pure decisions: what one poll outcome means for a watch.

`decide` takes the watch's progress so far, one poll outcome, the polling policy, the time and
a random number (for jitter), and returns the new progress, the transition (if the state
changed), the events to notify, and when to poll next. It does no I/O, so the rules of polling
("a job is never reported terminal unless the remote API said so", backoff, timeouts, stalls,
outages) are tested exhaustively here and nowhere else.
"""

from __future__ import annotations

from dataclasses import replace

from poller.errors import BACKING_OFF
from poller.models import (
    MAX_WAIT,
    TERMINAL_STATES,
    Event,
    Policy,
    PollFailure,
    PollOutcome,
    PollResult,
    State,
    Transition,
    WatchProgress,
    record,
)

#: How many 404s in a row it takes before a job counts as missing (and can be unreachable).
NOT_FOUND_AFTER = 3
#: With a continuous policy (a long-polling source), the least time from one request about a
#: job to the next after a readable answer.
MIN_CONTINUOUS_GAP = 1.0
#: Error backoff never waits less than this, so a tiny interval cannot hammer a failing API.
MIN_ERROR_WAIT = 1.0


@record
class Decision:
    """What one poll changes: new progress, an optional transition, events, next poll time."""

    progress: WatchProgress
    transition: Transition | None
    events: tuple[Event, ...]
    next_poll_at: float | None

    @property
    def active(self) -> bool:
        """Whether the watch is still polled."""
        return self.progress.active


def is_terminal(state: State | None) -> bool:
    """Whether a state ends a watch."""
    return state in TERMINAL_STATES


def error_wait(policy: Policy, error_count: int, rand: float) -> float:
    """The wait after `error_count` consecutive failed polls: exponential, with jitter.

    Full jitter between half and the whole of the exponential step spreads retries of many
    watches on one failing host instead of synchronising them.
    """
    exponent = min(max(error_count - 1, 0), 30)
    step = min(max(policy.interval, MIN_ERROR_WAIT) * (2.0**exponent), policy.max_interval)
    return max(MIN_ERROR_WAIT, step * (0.5 + 0.5 * rand))


def postponed_wait(policy: Policy, failure: PollFailure, error_count: int, rand: float) -> float:
    """The wait after a failed poll: `error_wait`, or later if the source asked for a pause.

    A poll that was not even sent (`BACKING_OFF`: its source is paused) waits for the pause
    alone, not for this watch's own error backoff: the source's breaker already decides how
    often it is asked, and a watch must be back soon after the pause to see the source recover.
    Either way the watches that one pause or one `Retry-After` holds are spread over the next
    `interval` instead of all coming back at the same instant, where they would fail (or
    succeed) together.
    """
    if failure.retry_after is None:
        return error_wait(policy, error_count, rand)
    after_pause = failure.retry_after + rand * policy.interval
    if failure.kind == BACKING_OFF:
        return max(MIN_ERROR_WAIT, after_pause)
    return max(error_wait(policy, error_count, rand), after_pause)


def next_quiet_wait(policy: Policy, previous_wait: float | None, changed: bool) -> float:
    """The wait after a readable answer: back to `interval` on change, else grow by `backoff`."""
    if changed or previous_wait is None:
        return policy.interval
    return min(previous_wait * policy.backoff, max(policy.max_interval, policy.interval))


def decide(
    watch: WatchProgress,
    outcome: PollOutcome,
    policy: Policy,
    now: float,
    rand: float = 0.5,
    asked_at: float | None = None,
) -> Decision:
    """Apply one poll outcome to a watch; see the module docstring.

    `asked_at` is when the request that answered was sent (None: `now`): with a `continuous`
    policy the job is asked again at once, but never more often than once per
    `MIN_CONTINUOUS_GAP` from one request to the next, even from a server that ignores the
    long poll's wait.
    """
    if not watch.active:
        return Decision(watch, None, (), None)
    if isinstance(outcome, PollResult):
        progress, transition, events, wait = _on_result(watch, outcome, policy, now)
        if policy.continuous:
            start = now if asked_at is None else asked_at
            wait = max(0.0, start + MIN_CONTINUOUS_GAP - now)
    else:
        progress, transition, events, wait = _on_failure(watch, outcome, policy, now, rand)

    if progress.active:
        deadline = progress.created_at + policy.timeout
        if now >= deadline:
            progress = replace(progress, active=False, ended_at=now)
            return Decision(progress, transition, (*events, Event.TIMED_OUT), None)
        next_poll_at = min(now + min(wait, MAX_WAIT), deadline)
        # Wake up in time to report a stall or an outage when it is due, not a backoff later.
        if progress.state == State.RUNNING and not progress.stalled and progress.last_change_at:
            next_poll_at = min(next_poll_at, max(now, progress.last_change_at + policy.stall_after))
        if progress.error_since is not None and not progress.unreachable:
            next_poll_at = min(next_poll_at, max(now, progress.error_since + policy.error_after))
        return Decision(progress, transition, events, next_poll_at)
    return Decision(progress, transition, events, None)


def _on_result(
    watch: WatchProgress, result: PollResult, policy: Policy, now: float
) -> tuple[WatchProgress, Transition | None, tuple[Event, ...], float]:
    """Apply a readable answer: new progress, transition, events and the wait before the next poll.

    The transition and stall rules live in their own helpers; they return plain values (no
    tuples), so splitting them out allocates nothing more on this every-poll path.
    """
    events: list[Event] = []
    if watch.unreachable:
        events.append(Event.RECOVERED)

    new_state = result.state if result.state is not None else State.UNKNOWN
    state_changed = new_state != watch.state
    raw_changed = result.remote_status != watch.remote_status
    progress_changed = result.progress is not None and result.progress != watch.progress
    changed = state_changed or raw_changed or progress_changed

    transition = _result_transition(watch, result, new_state, state_changed, raw_changed, now)

    started_at = watch.started_at
    if new_state == State.RUNNING and started_at is None:
        started_at = now
        events.append(Event.STARTED)

    terminal = is_terminal(new_state)
    if terminal and state_changed:
        events.append(Event(new_state.value))

    stalled = watch.stalled and not changed
    last_change_at = now if changed or watch.last_change_at is None else watch.last_change_at
    if _starts_stall(new_state, terminal, stalled, last_change_at, policy, now):
        stalled = True
        events.append(Event.STALLED)

    # built whole rather than with `replace`, which costs twice as much: this runs every poll
    progress = WatchProgress(
        state=new_state,
        remote_status=result.remote_status,
        progress=result.progress if result.progress is not None else watch.progress,
        details=dict(result.details) if result.details else watch.details,
        created_at=watch.created_at,
        started_at=started_at,
        ended_at=now if terminal else None,
        wait=next_quiet_wait(policy, watch.wait, changed),
        last_change_at=last_change_at,
        error_since=None,
        error_count=0,
        last_error=None,
        unreachable=False,
        stalled=stalled,
        active=not terminal,
    )
    return progress, transition, tuple(events), progress.wait or policy.interval


def _result_transition(
    watch: WatchProgress,
    result: PollResult,
    new_state: State,
    state_changed: bool,
    raw_changed: bool,
    now: float,
) -> Transition | None:
    """The transition a readable answer records, or None if it records none.

    A change of state is a transition; so is a new remote status within the same state (an
    unknown status, Immuta's ``retry`` while running, Prefect's "Late" while pending): the
    history then shows each status the API displayed, with ``from_state == to_state``. Such
    a transition sends nothing; only events do. A status that only changes case is the same
    status (an API may spell it one way in a list and another in a job's own answer).
    """
    if not state_changed and not (
        raw_changed and result.remote_status.lower() != (watch.remote_status or "").lower()
    ):
        return None
    return Transition(
        from_state=watch.state,
        to_state=new_state,
        remote_status=result.remote_status,
        progress=result.progress,
        at=now,
    )


def _starts_stall(
    new_state: State,
    terminal: bool,
    stalled: bool,
    last_change_at: float,
    policy: Policy,
    now: float,
) -> bool:
    """Whether this answer newly stalls the watch: RUNNING, unchanged for `stall_after`.

    Only a job that is running can stall (a queued one is waiting, a finished one is done),
    and a watch already stalled is not reported again until it changes.
    """
    return (
        not terminal
        and new_state == State.RUNNING
        and not stalled
        and now - last_change_at >= policy.stall_after
    )


def _on_failure(
    watch: WatchProgress, failure: PollFailure, policy: Policy, now: float, rand: float
) -> tuple[WatchProgress, Transition | None, tuple[Event, ...], float]:
    events: list[Event] = []
    error_since = watch.error_since if watch.error_since is not None else now
    count = watch.error_count + 1
    unreachable = watch.unreachable
    # One 404 may be an API that has not caught up with a job it just created; only a run of
    # them means the job is gone.
    convincing = failure.kind != "not_found" or count >= NOT_FOUND_AFTER
    if not unreachable and convincing and now - error_since >= policy.error_after:
        unreachable = True
        events.append(Event.UNREACHABLE)
    wait = postponed_wait(policy, failure, count, rand)
    progress = replace(
        watch,
        error_since=error_since,
        error_count=count,
        last_error=f"{failure.kind}: {failure.message}"
        + (f" ({count} in a row)" if failure.kind == "not_found" else ""),
        unreachable=unreachable,
    )
    return progress, None, tuple(events), wait


def delivery_wait(attempts: int, rand: float, base: float = 5.0, cap: float = 900.0) -> float:
    """The wait before retrying a delivery that failed `attempts` times (>= 1), with jitter."""
    step = min(base * (2.0 ** min(max(attempts - 1, 0), 30)), cap)
    return step * (0.5 + 0.5 * rand)
