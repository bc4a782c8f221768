"""Delivery: send due outbox rows with Apprise and record every attempt.

Each channel's messages go out in order, channels side by side; each attempt is recorded as
soon as Apprise answers, so a crash can repeat at most the message being sent.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from poller.errors import NotifyError
from poller.models import Delivery, DeliveryOutcome
from poller.notify import render
from poller.service import Clock, DbThread, Runtime, Tuning, nap
from poller.states import delivery_wait


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
