"""The work of the daemon: poll due watches, write results in group commits, deliver messages.

Data flow (DESIGN.md): due watches are claimed from the database with a lease, polled through
their source adapter, run through the pure `states.decide`, and written back together with
their transition, events and one outbox row per channel in one transaction. The delivery side
claims due outbox rows, sends them with Apprise and records each attempt.

All database calls go through one `DbThread`, so the store sees a single writer and the event
loop never blocks on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, ParamSpec, TypeVar

from poller.errors import NotifyError
from poller.models import (
    Delivery,
    DeliveryOutcome,
    Event,
    EventRecord,
    PollFailure,
    PollOutcome,
    Watch,
)
from poller.notify import Notifier, RuleLike, render, route
from poller.sources import Source
from poller.states import Decision, decide, delivery_wait
from poller.store.repo import Store, WriteBack

P = ParamSpec("P")
T = TypeVar("T")
Clock = Callable[[], float]


class DbThread:
    """Runs store calls one at a time in a dedicated thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poller-db")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` in the database thread and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Finish queued calls and stop the thread."""
        self._executor.shutdown(wait=True)


@dataclass
class Runtime:
    """What a reload replaces: the config, its source adapters, channels and rules."""

    config: Any  # config.Config; typed loosely so that this module does not import config
    sources: Mapping[str, Source]
    notifier: Notifier
    rules: Sequence[RuleLike]
    unsupported: frozenset[str] = frozenset()

    async def aclose(self) -> None:
        """Close every source's connections."""
        for source in self.sources.values():
            await source.aclose()


@dataclass
class Tuning:
    """Knobs of the engine; defaults suit one machine with up to ~100k watches."""

    max_in_flight: int = 512
    lease: float = 60.0
    flush_delay: float = 0.02
    max_batch: int = 500
    idle_wait: float = 1.0
    delivery_batch: int = 50
    delivery_lease: float = 120.0
    give_up_after: float = 86400.0
    stop_grace: float = 8.0


def event_payload(watch: Watch, decision: Decision, kind: Event, now: float) -> dict[str, Any]:
    """Everything a message about this event may show, as it was when it happened."""
    p = decision.progress
    previous = watch.progress.state
    return {
        "event": kind.value,
        "key": watch.key,
        "name": watch.name,
        "source": watch.source,
        "site": watch.site,
        "job_id": watch.job_id,
        "tags": list(watch.tags),
        "state": p.state.value if p.state else None,
        "previous_state": previous.value if previous and previous != p.state else None,
        "remote_status": p.remote_status,
        "progress": p.progress,
        "details": dict(p.details),
        "error": p.last_error if kind in (Event.UNREACHABLE, Event.TIMED_OUT) else None,
        "created_at": p.created_at,
        "started_at": p.started_at,
        "ended_at": p.ended_at,
        "at": now,
    }


async def nap(wakeup: asyncio.Event, due: float | None, now: float, longest: float) -> None:
    """Sleep until `due` (at most `longest` seconds), or until `wakeup` is set."""
    wait = longest if due is None else min(longest, max(0.0, due - now))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wakeup.wait(), timeout=max(wait, 0.005))


class PollEngine:
    """Claims due watches, polls them, and writes the results back in group commits."""

    def __init__(
        self,
        db: DbThread,
        runtime: Callable[[], Runtime],
        owner: str,
        *,
        tuning: Tuning | None = None,
        clock: Clock = time.time,
        rand: Callable[[], float] = random.random,
        on_deliveries: Callable[[], None] = lambda: None,
        log: Any = None,
    ) -> None:
        self.db = db
        self.runtime = runtime
        self.owner = owner
        self.tuning = tuning or Tuning()
        self.clock = clock
        self.rand = rand
        self.on_deliveries = on_deliveries
        self.log = log
        self.wakeup = asyncio.Event()
        self.in_flight = 0
        self.polls = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: list[WriteBack] = []
        self._flusher: asyncio.Task[None] | None = None

    # -- dispatching ----------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Dispatch until `stopping` is set."""
        while not stopping.is_set():
            self.wakeup.clear()
            claimed = await self.dispatch()
            if claimed and self.in_flight < self.tuning.max_in_flight:
                continue  # there may be more due right now
            due = None
            if self.in_flight < self.tuning.max_in_flight:
                due = await self.db.call(self.db.store.next_due_at, self.clock())
            await nap(self.wakeup, due, self.clock(), self.tuning.idle_wait)

    async def dispatch(self) -> int:
        """Claim due watches up to the free capacity and start polling them."""
        capacity = self.tuning.max_in_flight - self.in_flight
        if capacity <= 0:
            return 0
        watches = await self.db.call(
            self.db.store.claim_due, self.owner, self.clock(), capacity, self.tuning.lease
        )
        by_source: dict[str, list[Watch]] = defaultdict(list)
        for watch in watches:
            by_source[watch.source].append(watch)
        for source, group in by_source.items():
            self.in_flight += len(group)
            task = asyncio.create_task(self._poll_group(source, group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(watches)

    async def _poll_group(self, source_name: str, watches: list[Watch]) -> None:
        runtime = self.runtime()
        try:
            outcomes = await self._outcomes(runtime, source_name, watches)
            now = self.clock()
            for watch in watches:
                outcome = outcomes.get(watch.key) or PollFailure(
                    "bad_answer", "the answer did not mention this job"
                )
                self._queue(self._write_back(runtime, watch, outcome, now))
        except Exception:
            # A bug here must not kill the dispatcher; the leases expire and the watches are
            # polled again.
            if self.log:
                self.log.exception("poll crashed", source=source_name, watches=len(watches))
        finally:
            self.in_flight -= len(watches)
            self.wakeup.set()

    async def _outcomes(
        self, runtime: Runtime, source_name: str, watches: list[Watch]
    ) -> Mapping[str, PollOutcome]:
        source = runtime.sources.get(source_name)
        if source is None:
            why = (
                f"source type of {source_name} is not supported yet"
                if source_name in runtime.unsupported
                else f"source {source_name} is not in the config"
            )
            failure = PollFailure("config", why, transient=False)
            return {w.key: failure for w in watches}
        try:
            return await source.poll([w.ref for w in watches])
        except Exception as exc:  # an adapter bug costs these watches one poll, not the daemon
            if self.log:
                self.log.exception("adapter crashed", source=source_name)
            failure = PollFailure("internal", f"{type(exc).__name__} in the {source_name} adapter")
            return {w.key: failure for w in watches}

    def _write_back(
        self, runtime: Runtime, watch: Watch, outcome: PollOutcome, now: float
    ) -> WriteBack:
        policy = runtime.config.policy_for(watch.source, watch.overrides)
        decision = decide(watch.progress, outcome, policy, now, self.rand())
        self.polls += 1
        records = [
            EventRecord(
                kind=kind,
                at=now,
                payload=event_payload(watch, decision, kind, now),
                channels=route(runtime.rules, kind, watch.source, watch.tags),
            )
            for kind in decision.events
        ]
        if self.log:
            self._log_poll(watch, outcome, decision)
        return WriteBack(
            watch=watch,
            progress=decision.progress,
            next_poll_at=decision.next_poll_at,
            polled_at=now,
            transition=decision.transition,
            events=records,
        )

    def _log_poll(self, watch: Watch, outcome: PollOutcome, decision: Decision) -> None:
        log = self.log.bind(watch=watch.key, source=watch.source)
        if isinstance(outcome, PollFailure):
            # The first error of an outage is worth a warning; the rest of it is noise.
            level = log.warning if decision.progress.error_count == 1 else log.debug
            level(
                "poll error",
                kind=outcome.kind,
                error=outcome.message,
                errors=decision.progress.error_count,
            )
        if decision.transition is not None:
            t = decision.transition
            log.info(
                "transition",
                from_state=t.from_state.value if t.from_state else None,
                to_state=t.to_state.value,
                remote_status=t.remote_status,
                progress=t.progress,
            )
        for kind in decision.events:
            log.info("event", kind=kind.value)

    # -- group commits --------------------------------------------------------------

    def _queue(self, item: WriteBack) -> None:
        self._pending.append(item)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.tuning.flush_delay)
        await self.flush()

    async def flush(self) -> None:
        """Write every queued result now."""
        while self._pending:
            batch = self._pending[: self.tuning.max_batch]
            del self._pending[: self.tuning.max_batch]
            report = await self.db.call(self.db.store.write_back, self.owner, batch)
            if report.fenced and self.log:
                self.log.warning(
                    "stale results dropped", watches=report.fenced[:20], count=len(report.fenced)
                )
            if report.deliveries:
                self.on_deliveries()

    async def drain(self, grace: float) -> None:
        """Let in-flight polls finish for up to `grace` seconds, then write what they found."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._flusher is not None:
            await asyncio.wait({self._flusher})
        await self.flush()


class DeliveryEngine:
    """Sends due outbox rows, one channel at a time in order, channels side by side."""

    def __init__(
        self,
        db: DbThread,
        runtime: Callable[[], Runtime],
        owner: str,
        *,
        tuning: Tuning | None = None,
        clock: Clock = time.time,
        rand: Callable[[], float] = random.random,
        log: Any = None,
    ) -> None:
        self.db = db
        self.runtime = runtime
        self.owner = owner
        self.tuning = tuning or Tuning()
        self.clock = clock
        self.rand = rand
        self.log = log
        self.wakeup = asyncio.Event()
        self.sent = 0

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until `stopping` is set."""
        while not stopping.is_set():
            self.wakeup.clear()
            if await self.deliver_due() >= self.tuning.delivery_batch:
                continue
            due = await self.db.call(self.db.store.next_delivery_at)
            await nap(self.wakeup, due, self.clock(), self.tuning.idle_wait)

    async def deliver_due(self) -> int:
        """Claim due deliveries and send them; returns how many were claimed."""
        claimed = await self.db.call(
            self.db.store.claim_deliveries,
            self.owner,
            self.clock(),
            self.tuning.delivery_batch,
            self.tuning.delivery_lease,
        )
        by_channel: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in claimed:
            by_channel[delivery.channel].append(delivery)
        runtime = self.runtime()
        await asyncio.gather(
            *(self._send_all(runtime, channel, items) for channel, items in by_channel.items())
        )
        return len(claimed)

    async def _send_all(self, runtime: Runtime, channel: str, items: list[Delivery]) -> None:
        for delivery in items:
            title, body = render(delivery.kind, delivery.payload)
            log = (
                self.log.bind(
                    channel=channel, watch=delivery.payload.get("key"), kind=delivery.kind.value
                )
                if self.log
                else None
            )
            try:
                if channel not in runtime.notifier.names:
                    raise NotifyError(channel, "channel is no longer in the config")
                await runtime.notifier.send(channel, title, body, delivery.kind)
                outcome = DeliveryOutcome(delivery.id, sent=True)
                self.sent += 1
                if log:
                    log.info("delivered", attempts=delivery.attempts + 1)
            except NotifyError as exc:
                outcome = self._failed(
                    delivery, exc.answer, permanent=channel not in runtime.notifier.names
                )
                if log:
                    if outcome.retry_at is None:
                        log.error(
                            "delivery given up", error=exc.answer, attempts=delivery.attempts + 1
                        )
                    else:
                        log.warning(
                            "delivery failed",
                            error=exc.answer,
                            attempts=delivery.attempts + 1,
                            retry_in=round(outcome.retry_at - self.clock(), 1),
                        )
            except Exception as exc:  # Apprise plugins can raise; the row must still be recorded
                outcome = self._failed(delivery, f"{type(exc).__name__} while sending")
                if log:
                    log.exception("delivery crashed")
            # Recorded one by one: a crash can then repeat at most the message being sent.
            await self.db.call(self.db.store.finish_deliveries, self.owner, [outcome], self.clock())

    def _failed(
        self, delivery: Delivery, error: str, *, permanent: bool = False
    ) -> DeliveryOutcome:
        now = self.clock()
        if permanent or now - delivery.created_at >= self.tuning.give_up_after:
            return DeliveryOutcome(delivery.id, sent=False, error=error, retry_at=None)
        wait = delivery_wait(delivery.attempts + 1, self.rand())
        return DeliveryOutcome(delivery.id, sent=False, error=error, retry_at=now + wait)
