"""The pure delivery policy: storms and digests, retries and their bounds, pauses, giving up."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from poller.config import DeliveryConfig
from poller.models import MAX_WAIT, Delivery, DeliveryOutcome, Event
from poller.rules.delivery import (
    MISSING_CHANNEL_RECHECK,
    ChannelState,
    Hold,
    SendDigest,
    SendEach,
    digest_failed,
    failed,
    keep_for_missing_channel,
    lane_kinds,
    lanes,
    may_send_at_once,
    pause,
    plan,
    retry_wait,
    should_pause,
)

T0 = 1_000_000.0


@dataclass(frozen=True)
class Digest:
    enabled: bool = True
    threshold: int = 10
    window: float = 60.0
    wait: float = 2.0


@dataclass(frozen=True)
class Settings:
    retry_initial: float = 5.0
    retry_max: float = 900.0
    give_up_after: float = 86400.0
    digest: Digest = field(default_factory=Digest)


def delivery(id: int, created_at: float, attempts: int = 0) -> Delivery:
    return Delivery(id, "hook", attempts, created_at, Event.FAILED, {"key": f"job-{id}"})


digests = st.builds(
    Digest,
    enabled=st.booleans(),
    threshold=st.integers(1, 20),
    window=st.floats(0.5, 120),
    wait=st.floats(0, 10),
)
retry_settings = st.floats(0.1, 60).flatmap(
    lambda initial: st.builds(
        Settings,
        retry_initial=st.just(initial),
        retry_max=st.floats(initial, 3600),
        give_up_after=st.floats(1, 100_000),
        digest=digests,
    )
)
rands = st.floats(0, 1).map(lambda r: lambda: r)


def test_the_config_is_what_the_policy_reads() -> None:
    """`config.DeliveryConfig` carries the settings the policy takes (mypy checks the types)."""
    config = DeliveryConfig()
    assert plan(ChannelState(None, 0), [delivery(1, T0)], config, T0) == SendEach()


class TestPlan:
    """Storm control: send each, gather, digest, or hold for the window."""

    def test_a_lone_event_on_a_quiet_channel_goes_at_once(self) -> None:
        assert plan(ChannelState(None, 0), [delivery(1, T0)], Settings(), T0) == SendEach()

    def test_events_together_wait_for_others_to_join_them(self) -> None:
        claimed = [delivery(1, T0), delivery(2, T0 + 0.5)]
        assert plan(ChannelState(None, 0), claimed, Settings(), T0 + 1) == Hold(T0 + 2, False)

    def test_a_storm_makes_one_digest_then_one_message_per_window(self) -> None:
        claimed = [delivery(i, T0) for i in range(11)]
        now = T0 + 3
        assert plan(ChannelState(None, 0), claimed, Settings(), now) == SendDigest()
        held = plan(ChannelState(now, 11), claimed[:3], Settings(), now + 5)
        assert held == Hold(now + 60, True)
        assert plan(ChannelState(now, 11), [delivery(1, now)], Settings(), now + 5) == held

    def test_without_storm_control_each_goes_at_once(self) -> None:
        claimed = [delivery(i, T0) for i in range(50)]
        off = Settings(digest=Digest(enabled=False))
        assert plan(ChannelState(T0, 500), claimed, off, T0) == SendEach()

    @given(
        digest=digests,
        recent=st.integers(0, 50),
        last=st.none() | st.floats(0, 200),
        ages=st.lists(st.floats(0, 300), min_size=1, max_size=30),
        attempts=st.integers(0, 3),
        now_after=st.floats(0, 300),
    )
    def test_digests_only_above_the_threshold_and_holds_only_ahead(
        self,
        digest: Digest,
        recent: int,
        last: float | None,
        ages: list[float],
        attempts: int,
        now_after: float,
    ) -> None:
        """A digest only for several deliveries that take the channel above its threshold,
        never within a window of its last message; a hold always ends in the future."""
        now = T0 + 300 + now_after
        claimed = [delivery(i, now - age, attempts) for i, age in enumerate(ages)]
        last_sent = None if last is None else now - last
        decision = plan(ChannelState(last_sent, recent), claimed, Settings(digest=digest), now)
        if isinstance(decision, SendDigest):
            assert digest.enabled and len(claimed) > 1
            assert recent + len(claimed) > digest.threshold
            assert last_sent is None or now >= last_sent + digest.window
        elif isinstance(decision, Hold):
            assert digest.enabled and decision.until > now
            if decision.storm:
                assert last_sent is not None and decision.until == last_sent + digest.window
            else:
                assert decision.until <= now + digest.wait

    @settings(max_examples=60)
    @given(
        digest=digests,
        arrivals=st.lists(st.floats(0, 600), min_size=1, max_size=60),
    )
    def test_every_delivery_is_in_exactly_one_message(
        self, digest: Digest, arrivals: list[float]
    ) -> None:
        """A channel whose sends all succeed, served as the engine serves it: each delivery
        goes out in exactly one message, never before its event, and a digest comes at least
        a window after the channel's previous message."""
        rules = Settings(digest=digest)
        ready = {i: T0 + at for i, at in enumerate(sorted(arrivals))}
        created = dict(ready)
        messages: list[tuple[float, list[int], bool]] = []
        for _round in range(10 * len(arrivals) + 10):
            if not ready:
                break
            now = min(ready.values())
            ids = sorted(i for i, at in ready.items() if at <= now)
            claimed = [delivery(i, created[i]) for i in ids]
            last = messages[-1][0] if messages else None
            recent = sum(len(m[1]) for m in messages if m[0] > now - digest.window)
            match plan(ChannelState(last, recent), claimed, rules, now):
                case Hold(until=until):
                    assert until > now
                    for i in ids:
                        ready[i] = until
                    continue
                case SendDigest():
                    assert last is None or now >= last + digest.window
                    messages.append((now, ids, True))
                case _:
                    messages.extend((now, [i], False) for i in ids)
            for i in ids:
                del ready[i]
        assert not ready, "the channel stopped sending"
        sent = [i for _at, ids, _digest in messages for i in ids]
        assert sorted(sent) == sorted(created)
        assert all(at >= created[i] for at, ids, _ in messages for i in ids)


class TestRetries:
    """Retry waits stay within their bounds; Retry-After is honoured up to its cap."""

    @given(
        rules=retry_settings,
        attempts=st.integers(0, 60),
        rand=rands,
        retry_after=st.none() | st.floats(0, 100_000),
    )
    def test_retry_waits_within_their_bounds(
        self, rules: Settings, attempts: int, rand: Callable[[], float], retry_after: float | None
    ) -> None:
        """Between half and the whole of retry_initial doubling per attempt up to retry_max,
        and at least a Retry-After (believed up to MAX_WAIT)."""
        now = T0 + 0.5  # younger than any give_up_after (at least 1 s)
        outcome = failed(delivery(1, T0, attempts), "boom", retry_after, rules, now, rand)
        assert outcome.retry_at is not None and not outcome.sent
        wait = outcome.retry_at - now
        step = min(rules.retry_initial * 2.0 ** min(attempts, 30), rules.retry_max)
        low = max(step / 2, min(retry_after or 0.0, MAX_WAIT))
        high = max(step, min(retry_after or 0.0, MAX_WAIT))
        assert low - 1e-6 <= wait <= high + 1e-6
        assert rules.retry_initial / 2 - 1e-6 <= wait <= max(rules.retry_max, MAX_WAIT)

    def test_jitter_spreads_retries(self) -> None:
        """Different random draws give different waits for the same failure."""
        rng = random.Random(3)
        waits = {round(retry_wait(3, None, Settings(), rng.random), 3) for _ in range(20)}
        assert len(waits) > 10 and all(10 <= w <= 20 for w in waits)

    @given(
        rules=retry_settings,
        age=st.floats(0, 200_000),
        attempts=st.integers(0, 20),
        rand=rands,
    )
    def test_given_up_exactly_after_give_up_after(
        self, rules: Settings, age: float, attempts: int, rand: Callable[[], float]
    ) -> None:
        """A failed delivery is given up (no retry) if and only if it is give_up_after old."""
        now = T0 + 200_000
        outcome = failed(delivery(1, now - age, attempts), "boom", None, rules, now, rand)
        assert (outcome.retry_at is None) == (now - (now - age) >= rules.give_up_after)


class TestFailingChannel:
    """A failed digest, a paused channel, a missing channel: each row has one fate."""

    @given(
        rules=retry_settings,
        rows=st.lists(st.tuples(st.floats(0, 200_000), st.integers(0, 9)), min_size=1, max_size=20),
        rand=rands,
        retry_after=st.none() | st.floats(0, 100),
    )
    def test_a_failed_digest_retries_its_rows_together(
        self,
        rules: Settings,
        rows: list[tuple[float, int]],
        rand: Callable[[], float],
        retry_after: float | None,
    ) -> None:
        """One outcome per row: the overdue give up, the others are retried (at one time if the
        most tried row is not overdue; the policy then times each on its own)."""
        now = T0 + 200_000
        claimed = [delivery(i, now - age, n) for i, (age, n) in enumerate(rows)]
        outcomes = digest_failed(claimed, "boom", retry_after, rules, now, rand)
        assert [o.id for o in outcomes] == [d.id for d in claimed]
        assert not any(o.sent for o in outcomes)
        for d, o in zip(claimed, outcomes, strict=True):
            assert (o.retry_at is None) == (now - d.created_at >= rules.give_up_after)
        worst = max(claimed, key=lambda d: d.attempts)
        if now - worst.created_at < rules.give_up_after:
            # retried together, when the most tried of them is
            assert len({o.retry_at for o in outcomes if o.retry_at is not None}) == 1

    @given(
        rules=retry_settings,
        ages=st.lists(st.floats(0, 200_000), max_size=20),
        retry_at=st.none() | st.floats(1, 1000),
        rand=rands,
    )
    def test_a_pause_gives_up_the_overdue_and_holds_the_rest(
        self, rules: Settings, ages: list[float], retry_at: float | None, rand: Callable[[], float]
    ) -> None:
        now = T0 + 200_000
        rest = [delivery(i, now - age) for i, age in enumerate(ages)]
        last = DeliveryOutcome(99, sent=False, error="boom", retry_at=retry_at and now + retry_at)
        paused = pause(rest, last, rules, now, rand)
        given_up = [d.id for d, _o in paused.given_up]
        waiting = [d.id for d in paused.waiting]
        assert sorted(given_up + waiting) == [d.id for d in rest]
        assert all(now - rest[i].created_at >= rules.give_up_after for i in given_up)
        assert all(
            o.retry_at is None and "not tried" in (o.error or "") for _d, o in paused.given_up
        )
        if retry_at is not None:
            assert paused.until == now + retry_at
        else:
            assert now + rules.retry_initial / 2 <= paused.until <= now + rules.retry_initial

    def test_two_failures_or_a_retry_after_pause_the_channel(self) -> None:
        assert not should_pause(1, None, 5)
        assert should_pause(2, None, 5)
        assert should_pause(1, 30.0, 5)
        assert not should_pause(2, 30.0, 0)  # nothing left to hold

    @given(rules=retry_settings, ages=st.lists(st.floats(0, 200_000), max_size=20))
    def test_a_missing_channel_keeps_what_is_not_overdue(
        self, rules: Settings, ages: list[float]
    ) -> None:
        now = T0 + 200_000
        claimed = [delivery(i, now - age) for i, age in enumerate(ages)]
        keep = keep_for_missing_channel("hook", claimed, rules, now)
        given_up = [d.id for d, _o in keep.given_up]
        kept = [d.id for d in keep.kept]
        assert sorted(given_up + kept) == [d.id for d in claimed]
        assert all(now - claimed[i].created_at >= rules.give_up_after for i in given_up)
        if keep.kept:
            assert keep.until is not None and now <= keep.until <= now + MISSING_CHANNEL_RECHECK
            assert keep.until <= min(d.created_at for d in keep.kept) + rules.give_up_after
        else:
            assert keep.until is None


def test_a_quiet_channel_may_send_at_once() -> None:
    assert may_send_at_once(None, T0, 2.0)
    assert may_send_at_once(T0 - 2.0, T0, 2.0)
    assert not may_send_at_once(T0 - 1.0, T0, 2.0)


class TestLanes:
    """Each severity of a channel is a lane with its own storm window, served worst first."""

    def test_lanes_are_worst_first_and_keep_the_claim_order(self) -> None:
        """Started, failed, succeeded, failed: the failures first (in order), info last."""
        kinds = [Event.STARTED, Event.FAILED, Event.SUCCEEDED, Event.UNREACHABLE, Event.STALLED]
        claimed = [
            Delivery(id=n, channel="c", attempts=0, created_at=T0, kind=kind, payload={})
            for n, kind in enumerate(kinds)
        ]
        assert [(lane, [d.id for d in rows]) for lane, rows in lanes(claimed)] == [
            ("failure", [1, 3]),
            ("warning", [4]),
            ("success", [2]),
            ("info", [0]),
        ]
        assert lanes([]) == []
        every = sorted(
            k.value for lane in ("failure", "warning", "success", "info") for k in lane_kinds(lane)
        )
        assert every == sorted(k.value for k in Event if k is not Event.REPORT)

    def test_reports_do_not_count_toward_the_info_window(self) -> None:
        """A scheduled report is sent alone, never digested: it is not in any lane's count."""
        assert Event.REPORT not in lane_kinds("info")
        assert lane_kinds("info") == [Event.STARTED, Event.RECOVERED]
