"""The pure decisions: transitions, events, backoff, timeouts, stalls and outages."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from poller.models import (
    MAX_WAIT,
    TERMINAL_STATES,
    Event,
    Policy,
    PollFailure,
    PollResult,
    State,
    WatchProgress,
)
from poller.rules.polling import decide, delivery_wait, error_wait, next_quiet_wait

POLICY = Policy(
    interval=30, backoff=2, max_interval=600, timeout=86400, stall_after=3600, error_after=900
)
T0 = 1_000_000.0


def result(
    state: State | None, remote: str | None = None, progress: float | None = None, **details: object
) -> PollResult:
    return PollResult(
        remote_status=remote or (state.value if state else "weird"),
        state=state,
        progress=progress,
        details=details,
    )


def fresh() -> WatchProgress:
    return WatchProgress(created_at=T0)


def run(
    outcomes: list[PollResult | PollFailure], step: float = 30.0, policy: Policy = POLICY
) -> list:
    """Feed outcomes one per `step` seconds; return the decisions."""
    watch, decisions, now = fresh(), [], T0
    for outcome in outcomes:
        decision = decide(watch, outcome, policy, now)
        decisions.append(decision)
        watch = decision.progress
        now += step
    return decisions


class TestTransitions:
    """State changes become transitions and events."""

    def test_happy_path_emits_started_then_succeeded_once(self) -> None:
        """pending -> running -> succeeded gives one started and one succeeded event."""
        ds = run(
            [
                result(State.PENDING),
                result(State.RUNNING, progress=10),
                result(State.RUNNING, progress=50),
                result(State.SUCCEEDED, progress=100),
            ]
        )
        assert [d.events for d in ds] == [(), (Event.STARTED,), (), (Event.SUCCEEDED,)]
        assert [d.transition.to_state if d.transition else None for d in ds] == [
            State.PENDING,
            State.RUNNING,
            None,
            State.SUCCEEDED,
        ]
        assert ds[-1].active is False and ds[-1].next_poll_at is None

    def test_first_seen_terminal_reports_terminal_without_started(self) -> None:
        """A job already finished when first polled reports only its end."""
        (d,) = run([result(State.FAILED, failure_reason="bad file")])
        assert d.events == (Event.FAILED,)
        assert d.transition is not None and d.transition.from_state is None

    def test_unknown_remote_status_is_recorded_and_never_terminal(self) -> None:
        """A status poller does not know is kept raw, polled on, never terminal."""
        ds = run(
            [
                result(None, remote="ARCHIVING"),
                result(None, remote="ARCHIVING"),
                result(None, remote="MOVING"),
            ]
        )
        assert all(d.active for d in ds)
        assert ds[0].progress.state == State.UNKNOWN
        assert ds[0].progress.remote_status == "ARCHIVING"
        assert ds[1].transition is None
        assert ds[2].transition is not None and ds[2].transition.remote_status == "MOVING"
        assert all(not d.events for d in ds)

    def test_a_new_display_status_within_a_state_is_recorded(self) -> None:
        """Late then AwaitingRetry while pending: each is a transition in the history, with
        the same state on both sides, and no event; a change of case alone is none."""
        ds = run(
            [
                result(State.PENDING, remote="Scheduled"),
                result(State.PENDING, remote="Late"),
                result(State.PENDING, remote="LATE"),
                result(State.PENDING, remote="AwaitingRetry"),
            ]
        )
        shown = [
            (d.transition.from_state, d.transition.remote_status) if d.transition else None
            for d in ds
        ]
        assert shown == [
            (None, "Scheduled"),
            (State.PENDING, "Late"),
            None,
            (State.PENDING, "AwaitingRetry"),
        ]
        assert all(d.transition is None or d.transition.to_state == State.PENDING for d in ds)
        assert all(not d.events for d in ds)

    def test_inactive_watch_is_left_alone(self) -> None:
        """A finished watch ignores late outcomes."""
        done = replace(fresh(), active=False, state=State.SUCCEEDED)
        d = decide(done, result(State.FAILED), POLICY, T0)
        assert d.progress is done and d.events == () and d.next_poll_at is None


class TestBackoff:
    """Quiet polls back off; changes and errors have their own waits."""

    def test_no_change_multiplies_wait_up_to_max(self) -> None:
        """Each unchanged poll waits `backoff` times longer, capped at max_interval."""
        ds = run([result(State.RUNNING, progress=5)] * 8, step=1)
        waits = [d.progress.wait for d in ds]
        assert waits[:5] == [30, 60, 120, 240, 480]
        assert waits[5:] == [600, 600, 600]

    def test_progress_resets_wait(self) -> None:
        """A change of progress goes back to `interval`."""
        ds = run(
            [result(State.RUNNING, progress=5)] * 4 + [result(State.RUNNING, progress=6)], step=1
        )
        assert ds[-2].progress.wait == 240 and ds[-1].progress.wait == 30

    def test_errors_back_off_exponentially_with_jitter(self) -> None:
        """Consecutive errors double the wait; jitter keeps it within [half, whole]."""
        assert [error_wait(POLICY, n, 1.0) for n in (1, 2, 3, 4, 5, 6)] == [
            30,
            60,
            120,
            240,
            480,
            600,
        ]
        assert error_wait(POLICY, 3, 0.0) == 60

    def test_retry_after_is_obeyed_but_capped(self) -> None:
        """Retry-After lengthens the wait, but never past MAX_WAIT."""
        d = decide(fresh(), PollFailure("rate_limited", "429", retry_after=120), POLICY, T0, 0)
        assert d.next_poll_at == T0 + 120
        d = decide(fresh(), PollFailure("rate_limited", "429", retry_after=10**9), POLICY, T0)
        assert d.next_poll_at is not None and d.next_poll_at - T0 <= MAX_WAIT

    def test_quiet_wait_starts_at_interval(self) -> None:
        """The first wait is the interval."""
        assert next_quiet_wait(POLICY, None, changed=False) == 30

    def test_delivery_wait_grows_and_is_capped(self) -> None:
        """Delivery retries back off to a cap."""
        assert delivery_wait(1, 1.0) == 5 and delivery_wait(2, 1.0) == 10
        assert delivery_wait(50, 1.0) == 900


class TestContinuous:
    """A long-polling source's policy: asked again at once after an answer, at most once a
    second per job; errors back off as always."""

    POLICY = replace(POLICY, continuous=True)

    def test_answer_is_followed_at_once_whatever_the_interval(self) -> None:
        """A long poll sent at T0 that answered 25 s later is due again at once, unchanged
        or not; the stored quiet wait still grows, for when long-poll is turned off."""
        watch = fresh()
        for _ in range(3):
            decision = decide(watch, result(State.RUNNING), self.POLICY, T0 + 25, 0.5, T0)
            assert decision.next_poll_at == T0 + 25
            watch = decision.progress
        assert watch.wait == 120

    def test_never_more_than_once_a_second(self) -> None:
        """A server that ignores the wait and answers in 0.1 s is asked again 1 s after the
        last request was sent, not at once."""
        decision = decide(fresh(), result(State.RUNNING), self.POLICY, T0 + 0.1, 0.5, T0)
        assert decision.next_poll_at == T0 + 1.0

    def test_errors_still_back_off(self) -> None:
        """A failed long poll waits its error backoff, not zero."""
        failure = PollFailure("timeout", "no answer")
        decision = decide(fresh(), failure, self.POLICY, T0 + 30, 1.0, T0)
        assert decision.next_poll_at == T0 + 30 + error_wait(self.POLICY, 1, 1.0)

    def test_it_comes_from_the_source_not_from_overrides(self, tmp_path: Path) -> None:
        """`continuous` is the source's long_poll; a job's stored overrides cannot set it."""
        from poller.config import load_config

        path = tmp_path / "config.yaml"
        path.write_text(
            "sources:\n"
            "  lp: {type: immuta, base_url: 'http://x', token: k, long_poll: 20s}\n"
            "  plain: {type: immuta, base_url: 'http://x', token: k}\n"
        )
        config = load_config(path, environ={})
        assert config.policy_for("lp", {"continuous": 0.0}).continuous
        assert not config.policy_for("plain", {"continuous": 1.0}).continuous


class TestTimeoutsAndOutages:
    """timed_out, unreachable, recovered and stalled."""

    def test_timeout_stops_the_watch(self) -> None:
        """Not terminal after `timeout`: event timed_out, watch stops."""
        policy = replace(POLICY, timeout=100)
        ds = run([result(State.RUNNING, progress=1)] * 10, step=30, policy=policy)
        ended = [d for d in ds if Event.TIMED_OUT in d.events]
        assert len(ended) == 1 and ended[0].active is False

    def test_next_poll_never_passes_the_deadline(self) -> None:
        """The poll that detects a timeout happens at the deadline, not a backoff later."""
        policy = replace(POLICY, timeout=100, interval=80)
        d = decide(fresh(), result(State.RUNNING), policy, T0 + 50)
        assert d.next_poll_at == T0 + 100

    def test_errors_make_unreachable_once_then_recovered(self) -> None:
        """error_after of failures gives one unreachable; the next good poll recovered."""
        failure = PollFailure("network", "refused")
        ds = run([failure] * 40 + [result(State.RUNNING)], step=60)
        kinds = [e for d in ds for e in d.events]
        assert kinds.count(Event.UNREACHABLE) == 1
        assert kinds[-2:] == [Event.RECOVERED, Event.STARTED]
        assert all(d.active for d in ds[:-1])
        assert ds[-1].progress.error_count == 0

    def test_no_progress_for_stall_after_is_stalled_once(self) -> None:
        """A running job without progress for stall_after is stalled, reported once."""
        ds = run([result(State.RUNNING, progress=3)] * 200, step=60)
        kinds = [e for d in ds for e in d.events]
        assert kinds.count(Event.STALLED) == 1

    def test_not_found_needs_several_in_a_row(self) -> None:
        """A lone 404 past error_after is not yet unreachable; a run of them is."""
        policy = replace(POLICY, error_after=0)
        missing = PollFailure("not_found", "HTTP 404", transient=False)
        ds = run([missing] * 4, step=60, policy=policy)
        assert [bool(d.events) for d in ds] == [False, False, True, False]
        assert ds[2].events == (Event.UNREACHABLE,)
        assert ds[1].progress.last_error is not None
        assert ds[1].progress.last_error.endswith("(2 in a row)")

    def test_failures_never_make_a_watch_terminal(self) -> None:
        """Errors alone end a watch only by timeout."""
        ds = run([PollFailure("auth", "401", transient=False)] * 30, step=60)
        assert all(d.progress.state is None for d in ds)


outcomes = st.one_of(
    st.builds(
        PollResult,
        remote_status=st.text(max_size=12),
        state=st.one_of(st.none(), st.sampled_from([s for s in State if s != State.UNKNOWN])),
        progress=st.one_of(st.none(), st.floats(0, 100)),
    ),
    st.builds(
        PollFailure,
        kind=st.sampled_from(["network", "timeout", "auth", "bad_answer", "backing_off"]),
        message=st.text(max_size=10),
        retry_after=st.one_of(st.none(), st.floats(0, 10**7)),
    ),
)


class TestProperties:
    """Invariants over any sequence of outcomes."""

    @given(st.lists(st.tuples(outcomes, st.floats(0, 5000), st.floats(0, 1)), max_size=40))
    def test_invariants(self, steps: list[tuple[PollResult | PollFailure, float, float]]) -> None:
        """Terminal only from the API; one terminal event; waits bounded; time moves on."""
        watch, now, terminal_events = fresh(), T0, 0
        for outcome, step, rand in steps:
            before = watch
            d = decide(watch, outcome, POLICY, now, rand)
            watch = d.progress
            terminal_events += sum(e.value in {s.value for s in TERMINAL_STATES} for e in d.events)
            if watch.state in TERMINAL_STATES and watch.state != before.state:
                assert isinstance(outcome, PollResult) and outcome.state == watch.state
            if d.active:
                assert d.next_poll_at is not None
                assert now <= d.next_poll_at <= now + MAX_WAIT
                assert d.next_poll_at <= watch.created_at + POLICY.timeout
            else:
                assert d.next_poll_at is None
            if not before.active:
                assert d.events == ()
            now += step
        assert terminal_events <= 1
