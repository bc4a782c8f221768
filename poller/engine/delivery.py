"""Delivery: send due outbox rows with Apprise and record every attempt.

The outbox guarantees (README "Delivery"):

- A delivery row is marked sent only after Apprise reports success for its channel, and each
  attempt is recorded as soon as the channel answers: a crash can repeat at most the message
  being sent. A digest is one message: its rows are marked sent together, in one transaction,
  after it went out.
- Each channel is served by its own task, one message at a time and in order (a digest goes
  out before the digests and events of less severe lanes), so a channel that fails, refuses
  or hangs (every send is bounded by ``delivery.timeout``) never delays another one.
- A failed send is retried with exponential backoff and jitter (``retry_initial`` doubling up
  to ``retry_max``), never sooner than a ``Retry-After`` the service gave with a 429 or 503. Two
  failures in a row, or a ``Retry-After``, mean the channel itself is in trouble: what else was
  due for it waits for the same retry instead of piling more failed sends on it. A delivery
  still failing ``give_up_after`` after its event is given up and logged as an error.

The decisions (storm control, retries, pauses, giving up) are pure functions in
`rules.delivery`; this module does the I/O around them.

Leases: a channel's task claims its due rows (`Outbox.claim_deliveries`), renews their leases
only when it may have lost them (`_renew_if_in_doubt`), and ends each row with one of two
moves: finish (`_finish`: an attempt is recorded) or release (`_release`: given back untried,
due again at a given time). Whatever is not sent is released: while new events wait for
others or a storm waits for its window (`Hold`), while a channel is failing (`pause`), while it
is missing from the config (`keep_for_missing_channel`), at a stop, and after a failed round.

Storm control (``delivery.digest``) works per lane: a channel's events of one severity
(failure, warning, success, info; `rules.delivery.lanes`). A lone event for a quiet lane goes
out at once; events that come together, or follow a message within ``wait``, wait ``wait`` for
others to join them. When more than ``threshold`` events would reach a lane within ``window``,
the ones due go out as one digest, and the lane gets at most one message per ``window`` while
the storm lasts (the rest waits and joins the next digest). So 200 jobs failing within seconds
make two or three messages that name every job; two jobs ending together still make two
messages; and failures that follow a storm of ``started`` events go out within ``wait``, in a
digest of their own, instead of waiting for the info lane's next window. A channel's task
serves its lanes worst first, one message at a time.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Mapping, Sequence

from poller.config import DeliveryConfig
from poller.engine.runtime import Engine, Runtime, failure_wait
from poller.engine.stats import add
from poller.errors import NotifyError
from poller.logs import Logger
from poller.models import Delivery, DeliveryOutcome, Event
from poller.notify import (
    Format,
    one_line,
    render_digest_safely,
    render_report_safely,
    render_safely,
)
from poller.rules import delivery as policy
from poller.rules.delivery import ChannelState, Hold, SendDigest

#: How many due deliveries of one channel a digest may cover at once.
DIGEST_CLAIM_LIMIT = 2000
#: A channel's lane: its name and a severity (`rules.delivery.LANES`).
Lane = tuple[str, str]
#: The `last_error` of a delivery kept for a channel that is not in the config: `poller status`
#: shows it, and `Store.follow_channels` finds such deliveries by it when the channel is back.
MISSING_CHANNEL = "the channel is not in the config; kept until it is back or give_up_after"


def channel_renames(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str]:
    """Channels of `old` (name -> URL) that `new` has under another name with the same URL:
    old name -> new name. A renamed channel is the same destination, so what was queued for it
    follows it. Among several new names with that URL, a name that is new in `new` wins."""
    renamed: dict[str, str] = {}
    for name, url in old.items():
        if name in new:
            continue
        same = sorted(n for n, u in new.items() if u == url)
        fresh = [n for n in same if n not in old]
        if same:
            renamed[name] = (fresh or same)[0]
    return renamed


class DeliveryEngine(Engine):
    """Sends due outbox rows: one task per channel, each channel's messages in order."""

    def _setup(self) -> None:
        """The channels' state: tasks, storm holds, what was sent, when leases were known."""
        #: messages that went out (a digest counts once) and the deliveries they covered
        self.sent = 0
        self.delivered = 0
        self._stopping = asyncio.Event()
        self._busy: dict[str, asyncio.Task[None]] = {}
        #: lanes in a storm, and until when they wait for their next digest
        self._held: dict[Lane, float] = {}
        #: per lane: (when, how many deliveries) of what was sent within the digest window
        self._recent: dict[Lane, deque[tuple[float, int]]] = {}
        #: when each lane last sent a message
        self._last_sent: dict[Lane, float] = {}
        #: per channel: when this process last knew it held the leases of what it claimed
        self._lease_known: dict[str, float] = {}

    # -- the loop -------------------------------------------------------------------------

    def settings(self) -> DeliveryConfig:
        """The delivery settings in force (they follow reloads)."""
        return self.runtime().config.delivery

    def _wait(self) -> float:
        digest = self.settings().digest
        return digest.wait if digest.enabled else 0.0

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until `stopping` is set; then let sends in flight finish briefly."""
        self._stopping = stopping
        try:
            await self._run_steps("delivery", stopping)
        finally:
            await self._drain(max(0.5, self.tuning.stop_grace / 2 - 1.0))

    async def _step(self) -> float | None:
        await self.dispatch()
        return await self._next_wake()

    async def dispatch(self) -> int:
        """Start serving every channel that has a delivery ready; returns how many started."""
        now = self.clock()
        wait = self._wait()
        channels = await self.db.call(self.db.store.ready_channels, now, wait)
        if wait > 0:
            # A channel that has been quiet for `wait` may send at once; one that has just
            # sent something gives new events `wait` to gather (storm control).
            for channel in await self.db.call(self.db.store.ready_channels, now, 0.0):
                quiet = policy.may_send_at_once(self._channel_last_sent(channel), now, wait)
                if quiet and channel not in channels:
                    channels.append(channel)
        started = 0
        for channel in channels:
            # a channel with a lane held for its window is served all the same: what is due
            # for its other lanes must not wait (the held lane's rows are released to its end)
            if channel in self._busy:
                continue
            task = asyncio.create_task(self._serve(channel), name=f"deliver:{channel}")
            self._busy[channel] = task
            task.add_done_callback(functools.partial(self._served, channel))
            started += 1
        return started

    async def deliver_due(self) -> int:
        """Serve every channel with a delivery ready now and wait until they are done."""
        started = await self.dispatch()
        while self._busy:
            await asyncio.wait(set(self._busy.values()))
        return started

    def _served(self, channel: str, task: asyncio.Task[None]) -> None:
        self._busy.pop(channel, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # `_serve` handles its own errors; this is a bug, and must not end the engine
            self.log.error(
                "delivery crashed", channel=channel, error=f"{type(exc).__name__}: {exc}"
            )
        self.wakeup.set()

    async def _next_wake(self) -> float | None:
        now = self.clock()
        held = {c: until for c, until in self._held.items() if until > now}
        self._held = held
        due = await self.db.call(
            self.db.store.next_delivery_ready_at, self._wait(), list(self._busy), now
        )
        candidates = [t for t in (due, *held.values()) if t is not None]
        return min(candidates) if candidates else None

    async def _drain(self, grace: float) -> None:
        """Let the sends in flight finish within `grace` seconds; cancel the rest."""
        tasks = set(self._busy.values())
        if not tasks:
            return
        _done, slow = await asyncio.wait(tasks, timeout=grace)
        for task in slow:
            task.cancel()
        if slow:
            await asyncio.wait(slow)

    # -- one channel ----------------------------------------------------------------------

    async def _serve(self, channel: str) -> None:
        """Send what is due for `channel` until nothing is, it fails, or a storm holds it."""
        claimed: list[Delivery] = []
        try:
            while not self._stopping.is_set():
                claimed = []
                settings = self.settings()
                limit = (
                    DIGEST_CLAIM_LIMIT if settings.digest.enabled else self.tuning.delivery_batch
                )
                self._lease_known[channel] = self.clock()
                claimed = await self.db.call(
                    self.db.store.claim_deliveries,
                    self.owner,
                    self.clock(),
                    limit,
                    self.tuning.lease,
                    channel=channel,
                )
                if not claimed or not await self._round(channel, claimed, settings):
                    return
        except Exception as exc:
            # Most often the database went away. The leases this process holds are renewed
            # while it runs, so what this round claimed must be released explicitly.
            self.log.error(
                "delivery failed; retrying",
                channel=channel,
                error=f"{type(exc).__name__}: {one_line(str(exc), 300)}",
            )
            await self._release([d.id for d in claimed], until_answered=True)

    async def _round(
        self, channel: str, claimed: Sequence[Delivery], settings: DeliveryConfig
    ) -> bool:
        """Send one claim's worth; True if the channel may have more to send right now.

        Each lane is planned on its own (`policy.plan`); a lane held for its window gets its
        new rows back at the window's end. What is sent goes worst lane first: a lane's digest,
        or the events sent one by one, which keep the claim's order across lanes (a job's
        ``started`` before its end). When a send fails, what was not tried yet is released
        until a first retry's wait: the channel itself may be down.
        """
        runtime = self.runtime()
        if channel not in runtime.notifier.names:
            await self._keep_for_missing_channel(channel, claimed, settings)
            return False
        reports = [d for d in claimed if d.kind is Event.REPORT]
        if reports:
            # a report is a message of its own, never part of a digest: the rest is given back
            # for the next round
            await self._release([d.id for d in claimed if d.kind is not Event.REPORT])
            return await self._send_each(runtime, channel, reports, settings)
        digests: list[tuple[Lane, list[Delivery]]] = []
        each: list[Delivery] = []
        for severity, rows in policy.lanes(claimed):
            lane = (channel, severity)
            now = self.clock()
            held_until = self._held.get(lane, 0.0)
            if held_until > now:
                # the lane sends at most once per window: these join its next digest
                await self._release([d.id for d in rows], held_until)
                continue
            match await self._plan(lane, rows, settings, now):
                case Hold(until=until, storm=storm):
                    await self._hold(lane, rows, until, log=storm)
                case SendDigest():
                    digests.append((lane, rows))
                case _:
                    each.extend(rows)
        batches: list[tuple[Lane | None, list[Delivery]]] = [*digests]
        if each:
            each.sort(key=lambda d: d.id)
            # one by one, in the place of their worst lane (a digest of that lane first)
            worst = min(policy.LANES.index(policy.lane_of(d.kind)) for d in each)
            place = sum(1 for lane, _rows in digests if policy.LANES.index(lane[1]) <= worst)
            batches.insert(place, (None, each))
        for index, (digest_lane, rows) in enumerate(batches):
            if digest_lane is None:
                ok = await self._send_each(runtime, channel, rows, settings)
            else:
                ok = await self._send_digest(runtime, digest_lane, rows, settings)
            if not ok:
                rest = [d.id for _lane, later in batches[index + 1 :] for d in later]
                retry = policy.retry_wait(1, None, settings, self.rand)
                await self._release(rest, self.clock() + retry)
                return False
        return bool(batches)

    async def _plan(
        self, lane: Lane, rows: Sequence[Delivery], settings: DeliveryConfig, now: float
    ) -> policy.Plan:
        """The storm policy's decision for one lane's due `rows`."""
        digest = settings.digest
        recent = await self._recent_count(lane, now, digest.window) if digest.enabled else 0
        state = ChannelState(last_sent=self._last_sent.get(lane), recent=recent)
        return policy.plan(state, rows, settings, now)

    async def _hold(
        self, lane: Lane, claimed: Sequence[Delivery], until: float, *, log: bool = True
    ) -> None:
        """Carry out the policy's `Hold`: release `claimed` until `until`, when the lane may
        send again."""
        self._held[lane] = until
        await self._release([d.id for d in claimed], until)
        if log:
            self.log.info(
                "deliveries held for a digest",
                channel=lane[0],
                severity=lane[1],
                count=len(claimed),
                send_in=round(until - self.clock(), 1),
            )

    # -- lease moves (claiming is in `_serve`) ----------------------------------------------

    async def _release(
        self,
        ids: Sequence[int],
        until: float | None = None,
        note: str | None = None,
        *,
        until_answered: bool = False,
    ) -> None:
        """Give leased deliveries back untried, due again at `until` (None: at once), with
        `note` as their `last_error` if given (`Outbox.release_deliveries`).

        `until_answered` retries (with backoff) until the database answers or the engine
        stops: for a round that failed, whose rows nothing else would release.
        """
        failures = 0
        while ids:
            try:
                due = self.clock() if until is None else until
                await self.db.call(self.db.store.release_deliveries, self.owner, ids, due, note)
                return
            except Exception:
                if not until_answered:
                    raise
                failures += 1
                if self._stopping.is_set():
                    return  # the next start releases every lease of a crashed predecessor
                await asyncio.sleep(failure_wait(failures))

    async def _finish(
        self,
        channel: str,
        outcomes: Sequence[DeliveryOutcome],
        now: float | None = None,
        *,
        attempted: bool = True,
    ) -> None:
        """Record attempts (sent, retried, given up) and end their leases, at `now` (None: the
        clock) (`Outbox.finish_deliveries`), and count them for `channel`: those not sent as
        failed attempts unless they were given up untried (not `attempted`)."""
        now = self.clock() if now is None else now
        await self.db.call(self.db.store.finish_deliveries, self.owner, outcomes, now)
        stats = self.stats
        for outcome in outcomes:
            if outcome.sent:
                add(stats.sent, channel)
                continue
            if attempted:
                add(stats.failed, channel)
            if outcome.retry_at is None:
                add(stats.given_up, channel)

    async def _renew_if_in_doubt(self, channel: str, claimed: Sequence[Delivery]) -> list[Delivery]:
        """What of `claimed` this process still holds, renewing the leases (and asking the
        database) only when in doubt.

        Leases are renewed every third of their length while the process runs. If more time
        than that went by since the lease was last known (the process was frozen: SIGSTOP, a
        VM pause, a swap storm), another replica may have taken the rows over and sent them;
        sending them again would repeat its messages.
        """
        now = self.clock()
        if now - self._lease_known.get(channel, now) < self.tuning.lease / 3:
            return list(claimed)
        held = await self.db.call(
            self.db.store.renew_deliveries,
            self.owner,
            [d.id for d in claimed],
            now + self.tuning.lease,
        )
        self._lease_known[channel] = now
        if len(held) < len(claimed):
            self.log.warning(
                "deliveries taken over by another replica while this one was frozen",
                channel=channel,
                count=len(claimed) - len(held),
            )
        return [d for d in claimed if d.id in held]

    async def _message(
        self, runtime: Runtime, channel: str, delivery: Delivery
    ) -> tuple[str, str, Format]:
        """Title, body and format of one delivery: its template's, else poller's own, else a
        minimal text naming the job and the event. Never raises: nothing an API sends may stop
        a message.

        A template runs on a worker thread under its time and size limits
        (`notify.MessageTemplate.render`), so a slow one cannot stall polling or a stop.
        """
        payload = delivery.payload
        log = self._bind(channel, delivery)
        if delivery.kind is Event.REPORT:
            # a report is about many watches: no template (their variables are one job's)
            own = runtime.notifier.format_for(channel)
            (title, body), error = render_report_safely(payload, own)
            if error is not None:
                log.warning("report could not be written; sending a minimal one", error=error)
            return title, body, own
        tags = payload.get("tags")
        template = runtime.config.template_for(
            channel,
            delivery.kind,
            str(payload.get("source") or ""),
            # polling stores tags as text; anything else in a stored payload matches no rule
            [tag for tag in tags if isinstance(tag, str)] if isinstance(tags, list) else [],
        )
        if template is not None:
            try:
                title, body = await asyncio.to_thread(
                    lambda: template.compiled().render(delivery.kind, payload)
                )
                fmt: Format = template.format
                return title, body, fmt
            except Exception as exc:
                # a template that breaks on odd data must not cost the message
                log.warning(
                    "template failed; sending poller's own message",
                    error=f"{type(exc).__name__}: {one_line(str(exc), 200)}",
                )
        fmt = runtime.notifier.format_for(channel)
        (title, body), error = render_safely(delivery.kind, payload, fmt)
        if error is not None:
            log.warning("message could not be written; sending a minimal one", error=error)
        return title, body, fmt

    async def _send_each(
        self,
        runtime: Runtime,
        channel: str,
        claimed: Sequence[Delivery],
        settings: DeliveryConfig,
    ) -> bool:
        """Send deliveries one by one, in order, each recorded as soon as it is answered.

        Returns False when a send failed (if the channel is failing, the rest was released
        until its retry).
        """
        failures = 0
        pending = list(claimed)
        while pending:
            if self._stopping.is_set():
                await self._release([d.id for d in pending])
                return False
            pending = await self._renew_if_in_doubt(channel, pending)
            if not pending:
                break
            delivery = pending.pop(0)
            log = self._bind(channel, delivery)
            try:
                # inside the try: whatever goes wrong, the attempt is counted and backs off
                title, body, fmt = await self._message(runtime, channel, delivery)
                answer = await runtime.notifier.send(
                    channel,
                    title,
                    body,
                    delivery.kind,
                    body_format=fmt,
                    timeout=settings.timeout,
                )
            except NotifyError as exc:
                outcome = self._failed(delivery, exc.answer, exc.retry_after, settings)
                error = exc
            except Exception as exc:  # Apprise plugins can raise; the row must still be recorded
                log.exception("delivery crashed")
                outcome = self._failed(
                    delivery, f"{type(exc).__name__} while sending", None, settings
                )
                error = NotifyError(channel, outcome.error or "")
            else:
                now = self.clock()
                await self._finish(channel, [DeliveryOutcome(delivery.id, sent=True)], now)
                if delivery.kind is not Event.REPORT:
                    # a report is outside the lanes' storm counts (`policy.lane_kinds`)
                    self._note_sent((channel, policy.lane_of(delivery.kind)), now, 1)
                self.sent += 1
                self.delivered += 1
                failures = 0
                log.info("delivered", attempts=delivery.attempts + 1, answer=answer)
                continue
            # Recorded at once: a crash then repeats nothing and loses nothing.
            await self._finish(channel, [outcome])
            self._log_failure(log, delivery, outcome)
            failures += 1
            if policy.should_pause(failures, error.retry_after, len(pending)):
                await self._pause(channel, pending, outcome, settings)
                return False
        return failures == 0

    async def _send_digest(
        self,
        runtime: Runtime,
        lane: Lane,
        claimed: Sequence[Delivery],
        settings: DeliveryConfig,
    ) -> bool:
        """Send one lane's claimed deliveries as one message; True if it went out."""
        channel = lane[0]
        claimed = await self._renew_if_in_doubt(channel, claimed)
        if not claimed:
            return True
        fmt = runtime.notifier.format_for(channel)
        (title, body, severity), problem = render_digest_safely(
            [(d.kind, d.payload) for d in claimed], fmt, settings.digest.max_jobs
        )
        if problem is not None:
            self.log.warning(
                "digest could not be written; sending a minimal one",
                channel=channel,
                error=problem,
            )
        try:
            answer = await runtime.notifier.send(
                channel,
                title,
                body,
                severity=severity,
                body_format=fmt,
                timeout=settings.timeout,
            )
        except Exception as exc:
            if isinstance(exc, NotifyError):
                error, retry_after = exc.answer, exc.retry_after
            else:
                error, retry_after = f"{type(exc).__name__} while sending", None
            outcomes = policy.digest_failed(
                claimed, error, retry_after, settings, self.clock(), self.rand
            )
            # one attempt for all of them, recorded together
            await self._finish(channel, outcomes)
            log = self.log.bind(channel=channel)
            retrying = [o for o in outcomes if o.retry_at is not None]
            if retrying:
                log.warning(
                    "digest failed",
                    error=error,
                    count=len(retrying),
                    retry_in=round((retrying[0].retry_at or 0) - self.clock(), 1),
                )
            for delivery, outcome in zip(claimed, outcomes, strict=True):
                if outcome.retry_at is None:
                    self._log_failure(self._bind(channel, delivery), delivery, outcome)
            return False
        now = self.clock()
        # All of them in one transaction, only now that the digest went out.
        await self._finish(channel, [DeliveryOutcome(d.id, sent=True) for d in claimed], now)
        self._note_sent(lane, now, len(claimed))
        self.sent += 1
        self.delivered += len(claimed)
        self.log.info(
            "digest delivered",
            channel=channel,
            severity=lane[1],
            events=len(claimed),
            watches=sorted({str(d.payload.get("key")) for d in claimed})[:20],
            answer=answer,
        )
        return True

    async def _pause(
        self,
        channel: str,
        rest: Sequence[Delivery],
        failed: DeliveryOutcome,
        settings: DeliveryConfig,
    ) -> None:
        """The channel is failing: the rest is released until its retry; overdue ones are
        given up."""
        now = self.clock()
        paused = policy.pause(rest, failed, settings, now, self.rand)
        await self._give_up(channel, paused.given_up, now)
        await self._release([d.id for d in paused.waiting], paused.until)

    async def _keep_for_missing_channel(
        self, channel: str, claimed: Sequence[Delivery], settings: DeliveryConfig
    ) -> None:
        """`channel` is not in the config in force (removed, or renamed on another replica that
        reloaded first): its deliveries are kept, not given up. They are released, noted
        `MISSING_CHANNEL`, and look for it again every `rules.delivery.MISSING_CHANNEL_RECHECK`;
        only those older than `give_up_after` are given up."""
        now = self.clock()
        keep = policy.keep_for_missing_channel(channel, claimed, settings, now)
        await self._give_up(channel, keep.given_up, now)
        if keep.kept and keep.until is not None:
            until = keep.until
            await self._release([d.id for d in keep.kept], until, MISSING_CHANNEL)
            # A reload may have renamed them to a channel of the config in force while this
            # ran (after they were claimed, before they were released): due again at once.
            await self.db.call(
                self.db.store.follow_channels,
                {},
                list(self.runtime().notifier.names),
                MISSING_CHANNEL,
                self.clock(),
            )
            self.log.warning(
                "deliveries kept: their channel is not in the config",
                channel=channel,
                count=len(keep.kept),
                recheck_in=round(until - now, 1),
            )

    async def follow_channels(self, old: Mapping[str, str], new: Mapping[str, str]) -> None:
        """After a reload from channels `old` to `new` (name -> URL; at start, `old` is empty):
        pending deliveries of a renamed channel follow it, and those kept for a channel that is
        back are due at once."""
        renamed = channel_renames(old, new)
        moved, due = await self.db.call(
            self.db.store.follow_channels, renamed, list(new), MISSING_CHANNEL, self.clock()
        )
        if moved or due:
            self.log.info(
                "pending deliveries follow their channels",
                renamed=renamed,
                moved=moved,
                due_again=due,
            )
        self.wakeup.set()

    # -- bookkeeping ----------------------------------------------------------------------

    async def _give_up(
        self,
        channel: str,
        given_up: Sequence[tuple[Delivery, DeliveryOutcome]],
        now: float,
    ) -> None:
        """Finish the deliveries a policy gave up untried, and log each one."""
        if not given_up:
            return
        await self._finish(
            channel, [outcome for _delivery, outcome in given_up], now, attempted=False
        )
        for delivery, outcome in given_up:
            self._log_failure(self._bind(channel, delivery), delivery, outcome)

    def _failed(
        self,
        delivery: Delivery,
        error: str,
        retry_after: float | None,
        settings: DeliveryConfig,
    ) -> DeliveryOutcome:
        return policy.failed(delivery, error, retry_after, settings, self.clock(), self.rand)

    def _bind(self, channel: str, delivery: Delivery) -> Logger:
        return self.log.bind(
            channel=channel, watch=delivery.payload.get("key"), kind=delivery.kind.value
        )

    def _log_failure(self, log: Logger, delivery: Delivery, outcome: DeliveryOutcome) -> None:
        if outcome.retry_at is None:
            log.error(
                "delivery given up",
                error=outcome.error,
                attempts=delivery.attempts + 1,
                age=round(self.clock() - delivery.created_at, 1),
            )
        else:
            log.warning(
                "delivery failed",
                error=outcome.error,
                attempts=delivery.attempts + 1,
                retry_in=round(outcome.retry_at - self.clock(), 1),
            )

    def _note_sent(self, lane: Lane, when: float, count: int) -> None:
        self._recent.setdefault(lane, deque()).append((when, count))
        self._last_sent[lane] = when

    def _channel_last_sent(self, channel: str) -> float | None:
        """When `channel` last sent a message, on any lane."""
        times = [when for (name, _severity), when in self._last_sent.items() if name == channel]
        return max(times) if times else None

    async def _recent_count(self, lane: Lane, now: float, window: float) -> int:
        """Deliveries sent on `lane` within the last `window` (seeded from the database once,
        so that a restart in the middle of a storm does not forget it)."""
        recent = self._recent.get(lane)
        if recent is None:
            channel, severity = lane
            times = await self.db.call(
                self.db.store.sent_times, channel, now - window, policy.lane_kinds(severity)
            )
            recent = self._recent[lane] = deque()
            counts: dict[float, int] = {}
            for sent_at in times:
                counts[sent_at] = counts.get(sent_at, 0) + 1
            for sent_at, count in sorted(counts.items()):
                recent.append((sent_at, count))
            if times and lane not in self._last_sent:
                self._last_sent[lane] = max(times)
        while recent and recent[0][0] <= now - window:
            recent.popleft()
        return sum(count for _when, count in recent)
