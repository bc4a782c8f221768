"""The pure delivery policy: what to do with what was claimed for one channel.

Like `rules.polling.decide` for polls, these functions take typed records in (the channel's state,
the claimed outbox rows, the delivery settings, the time and a random source for jitter) and
return a decision; they do no I/O. `delivery.DeliveryEngine` does the database round trips
and the sends around them. The rules they encode (README "Delivery"):

- storm control, per lane (a channel's events of one severity, `lanes`): a lone event for a
  quiet lane goes out at once; several due together on a quiet lane wait `digest.wait` for
  others to join them; when more than `digest.threshold` deliveries would reach the lane
  within `digest.window`, the due ones go out as one digest, and the lane gets at most one
  message per window while the storm lasts. Each lane has its own window, so failures never
  wait behind a storm of information (as Alertmanager groups per alert);
- retries: a failed send waits `retry_initial` doubling up to `retry_max`, with jitter, and
  never less than a believable `Retry-After`;
- pauses: two failures in a row, or a `Retry-After`, pause the channel: the rest of what was
  claimed waits for the same retry instead of piling more failed sends on it;
- giving up: a delivery still failing `give_up_after` after its event is given up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

from poller.models import EVENT_SEVERITY, MAX_WAIT, Delivery, DeliveryOutcome, Event, record
from poller.rules.polling import delivery_wait

#: Failed sends in a row after which the rest of a channel's due deliveries wait for the retry.
FAILURES_BEFORE_PAUSE = 2
#: How often deliveries for a channel that is not in the config look for it again (a reload
#: that brings the channel back makes them due at once; this covers replicas not reloaded yet).
MISSING_CHANNEL_RECHECK = 60.0


class DigestSettings(Protocol):
    """Storm control settings (`config.DigestConfig` is one)."""

    @property
    def enabled(self) -> bool:
        """Whether storm control is on."""

    @property
    def threshold(self) -> int:
        """More deliveries than this within `window` make a storm."""

    @property
    def window(self) -> float:
        """Seconds over which deliveries are counted; a storm sends once per window."""

    @property
    def wait(self) -> float:
        """Seconds that events arriving together wait for others to join them."""


class DeliverySettings(Protocol):
    """Retry and storm settings (`config.DeliveryConfig` is one)."""

    @property
    def retry_initial(self) -> float:
        """The first retry's wait, in seconds."""

    @property
    def retry_max(self) -> float:
        """The longest retry wait (before jitter), in seconds."""

    @property
    def give_up_after(self) -> float:
        """Seconds after its event when a failing delivery is given up."""

    @property
    def digest(self) -> DigestSettings:
        """Storm control."""


#: The lanes of a channel, worst first: one per severity (the Apprise type of its events).
LANES: tuple[str, ...] = ("failure", "warning", "success", "info")


def lane_of(kind: Event) -> str:
    """The lane of an event: its severity."""
    return EVENT_SEVERITY[kind]


def lane_kinds(severity: str) -> list[Event]:
    """The events whose sends count toward lane `severity`'s storm window.

    Reports are left out: they are scheduled, sent alone and never digested, so a daily
    report must not push the lane's next ``started`` events into a digest.
    """
    return [k for k, lane in EVENT_SEVERITY.items() if lane == severity and k is not Event.REPORT]


def lanes(claimed: Sequence[Delivery]) -> list[tuple[str, list[Delivery]]]:
    """`claimed` by lane, worst lane first, each in the order claimed; empty lanes left out."""
    by_lane: dict[str, list[Delivery]] = {}
    for delivery in claimed:
        by_lane.setdefault(lane_of(delivery.kind), []).append(delivery)
    return [(lane, by_lane[lane]) for lane in LANES if lane in by_lane]


@record
class ChannelState:
    """What the engine knows of one lane of a channel: when it last sent a message, and how
    many deliveries it sent within the digest window before now."""

    last_sent: float | None
    recent: int


@record
class SendEach:
    """Send the claimed deliveries one by one."""


@record
class SendDigest:
    """Send the claimed deliveries as one digest message."""


@record
class Hold:
    """Put the claimed deliveries back until `until`; the channel sends nothing before then.

    `storm` says why: True while a storm limits the channel to one message per window (worth
    a log line), False while new events wait for others to join them.
    """

    until: float
    storm: bool


Plan = SendEach | SendDigest | Hold


def plan(
    state: ChannelState, claimed: Sequence[Delivery], settings: DeliverySettings, now: float
) -> Plan:
    """What to do with `claimed` (one lane's due deliveries, at least one) at `now`."""
    digest = settings.digest
    if not digest.enabled:
        return SendEach()
    window_ends = None if state.last_sent is None else state.last_sent + digest.window
    in_window = window_ends is not None and now < window_ends
    if len(claimed) > 1:
        fresh = [d.created_at for d in claimed if d.attempts == 0]
        if fresh and min(fresh) > now - digest.wait:
            # several at once on a quiet channel: give others `wait` to join them
            return Hold(min(fresh) + digest.wait, storm=False)
        if state.recent + len(claimed) > digest.threshold:
            # a storm: one digest now, then at most one message per window
            if in_window and window_ends is not None:
                return Hold(window_ends, storm=True)
            return SendDigest()
        return SendEach()
    if state.recent + 1 > digest.threshold and in_window and window_ends is not None:
        return Hold(window_ends, storm=True)
    return SendEach()


def may_send_at_once(last_sent: float | None, now: float, wait: float) -> bool:
    """Whether a channel (or a lane) has been quiet for `wait` (it may send a new event
    without waiting for others to join it)."""
    return now - (-math.inf if last_sent is None else last_sent) >= wait


def retry_wait(
    attempts: int,
    retry_after: float | None,
    settings: DeliverySettings,
    rand: Callable[[], float],
) -> float:
    """The wait before retrying after `attempts` failed sends (>= 1): exponential from
    `retry_initial` up to `retry_max` with jitter, and at least a `Retry-After` the service
    gave (believed up to `MAX_WAIT`)."""
    wait = delivery_wait(attempts, rand(), base=settings.retry_initial, cap=settings.retry_max)
    if retry_after is not None:
        wait = max(wait, min(retry_after, MAX_WAIT))
    return wait


def overdue(delivery: Delivery, settings: DeliverySettings, now: float) -> bool:
    """Whether `delivery` is `give_up_after` old or older: if it is not sent now, never."""
    return now - delivery.created_at >= settings.give_up_after


def failed(
    delivery: Delivery,
    error: str,
    retry_after: float | None,
    settings: DeliverySettings,
    now: float,
    rand: Callable[[], float],
    *,
    retry_at: float | None = None,
) -> DeliveryOutcome:
    """The outcome of a failed send of `delivery`: given up if it is overdue, else retried at
    `retry_at` (by default after `retry_wait`). `rand` is drawn only for a retry it times."""
    if overdue(delivery, settings, now):
        return DeliveryOutcome(delivery.id, sent=False, error=error, retry_at=None)
    if retry_at is None:
        retry_at = now + retry_wait(delivery.attempts + 1, retry_after, settings, rand)
    return DeliveryOutcome(delivery.id, sent=False, error=error, retry_at=retry_at)


def digest_failed(
    claimed: Sequence[Delivery],
    error: str,
    retry_after: float | None,
    settings: DeliverySettings,
    now: float,
    rand: Callable[[], float],
) -> list[DeliveryOutcome]:
    """The outcomes of a digest that failed: one attempt for all of its deliveries, retried
    together when the most tried of them would be (each on its own if that one is given up);
    the overdue ones are given up."""
    worst = max(claimed, key=lambda d: d.attempts)
    head = failed(worst, error, retry_after, settings, now, rand)
    return [
        failed(d, error, retry_after, settings, now, rand, retry_at=head.retry_at) for d in claimed
    ]


def should_pause(failures_in_a_row: int, retry_after: float | None, left: int) -> bool:
    """Whether the channel is failing, so that the `left` deliveries not tried yet wait for its
    retry: two failures in a row, or a `Retry-After`, mean the channel itself is in trouble."""
    return left > 0 and (failures_in_a_row >= FAILURES_BEFORE_PAUSE or retry_after is not None)


@record
class Pause:
    """A failing channel's untried deliveries: those given up, and those waiting `until`."""

    until: float
    given_up: tuple[tuple[Delivery, DeliveryOutcome], ...]
    waiting: tuple[Delivery, ...]


def pause(
    rest: Sequence[Delivery],
    last_failure: DeliveryOutcome,
    settings: DeliverySettings,
    now: float,
    rand: Callable[[], float],
) -> Pause:
    """The channel is failing: the rest waits for its retry (that of `last_failure`, or a
    first retry's wait if that was given up); the overdue ones are given up untried."""
    until = last_failure.retry_at
    if until is None:
        until = now + retry_wait(1, None, settings, rand)
    error = f"{last_failure.error} (not tried: the channel was failing)"
    given_up = tuple(
        (d, DeliveryOutcome(d.id, sent=False, error=error, retry_at=None))
        for d in rest
        if overdue(d, settings, now)
    )
    waiting = tuple(d for d in rest if not overdue(d, settings, now))
    return Pause(until, given_up, waiting)


@record
class Keep:
    """Deliveries of a channel missing from the config: those given up, and those kept until
    `until` (None when none are kept)."""

    given_up: tuple[tuple[Delivery, DeliveryOutcome], ...]
    kept: tuple[Delivery, ...]
    until: float | None


def keep_for_missing_channel(
    channel: str, claimed: Sequence[Delivery], settings: DeliverySettings, now: float
) -> Keep:
    """`channel` is not in the config in force: its deliveries are kept, and look for it again
    after `MISSING_CHANNEL_RECHECK` (or at their deadline, if sooner); only the overdue ones
    are given up."""
    error = f"channel {channel} is no longer in the config"
    given_up = tuple(
        (d, DeliveryOutcome(d.id, sent=False, error=error))
        for d in claimed
        if overdue(d, settings, now)
    )
    kept = tuple(d for d in claimed if not overdue(d, settings, now))
    until = None
    if kept:
        deadline = min(d.created_at for d in kept) + settings.give_up_after
        until = min(deadline, now + MISSING_CHANNEL_RECHECK)
    return Keep(given_up, kept, until)
