"""Polling: claim due watches, poll them through their adapters, write results back.

Data flow (docs/design.md): due watches are claimed from the database with a lease, polled through
their source adapter, run through the pure `rules.polling.decide`, and written back together with
their transition, events and one outbox row per channel in one transaction (a group commit of
many polls).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Mapping

from poller.config import Config
from poller.engine.runtime import Engine, Runtime, error_line
from poller.engine.stats import OK, add
from poller.errors import BACKING_OFF
from poller.events import EventPayload
from poller.models import Event, EventRecord, JsonValue, Policy, PollFailure, PollOutcome, Watch
from poller.notify import route
from poller.redact import scrub_outcome, secrets_of
from poller.rules.polling import Decision, decide
from poller.sources import Splitter
from poller.store.repo import WriteBack, WriteReport

#: failed group commits in a row after which results are written one at a time (`flush`)
PROBE_AFTER = 2


def event_payload(
    watch: Watch, decision: Decision, kind: Event, now: float
) -> dict[str, JsonValue]:
    """Everything a message about this event may show, as it was when it happened, as stored."""
    p = decision.progress
    previous = watch.progress.state
    outage = p if kind is Event.UNREACHABLE else watch.progress if kind is Event.RECOVERED else None
    return EventPayload(
        event=kind.value,
        key=watch.key,
        name=watch.name,
        source=watch.source,
        site=watch.site,
        job_id=watch.job_id,
        tags=watch.tags,
        state=p.state.value if p.state else None,
        previous_state=previous.value if previous and previous != p.state else None,
        remote_status=p.remote_status,
        progress=p.progress,
        details=p.details,
        error=p.last_error if kind in (Event.UNREACHABLE, Event.TIMED_OUT) else None,
        # failed polls and when they began: so far for unreachable, the whole outage's (from
        # before) for recovered
        error_count=outage.error_count if outage is not None else None,
        outage_since=outage.error_since if outage is not None else None,
        # the last change of state or progress: a stalled job has not moved since
        last_change_at=p.last_change_at,
        created_at=p.created_at,
        started_at=p.started_at,
        ended_at=p.ended_at,
        at=now,
    ).to_json()


class PollEngine(Engine):
    """Claims due watches, polls them, and writes the results back in group commits.

    Claims are batched in time as well as in rows: each claim takes every watch due within
    `Tuning.claim_ahead` from now (each group is then started at its due time), and while the
    engine is busy it claims again only once half of its capacity is free. With 100,000 watches
    spread over a minute that is a few claims a second of hundreds of rows each, instead of a
    claim for every watch or two that comes due.
    """

    def _setup(self) -> None:
        """The dispatcher's state: what is in flight, what waits for a group commit."""
        #: called after a group commit queued deliveries (the app wakes the delivery engine)
        self.on_deliveries: Callable[[], None] = lambda: None
        #: watches claimed and not yet written back
        self.in_flight = 0
        self.polls = 0
        self._starved = False
        #: a result written since the last group commit is due again at once
        self._due_soon = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: list[WriteBack] = []
        self._flusher: asyncio.Task[None] | None = None
        #: set when the daemon stops: a failing flusher stops waiting to retry
        self._draining = asyncio.Event()
        self._policies: dict[tuple[str, tuple[tuple[str, float], ...]], Policy] = {}
        self._policies_of: Config | None = None
        self._source_secrets: dict[str, tuple[str, ...]] = {}
        self._secrets_of: Config | None = None

    # -- dispatching ----------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Dispatch until `stopping` is set."""
        await self._run_steps("dispatch", stopping)

    async def _step(self) -> float | None:
        tuning = self.tuning
        capacity = tuning.max_in_flight - self.in_flight
        if capacity < tuning.max_in_flight // 2:
            self._starved = True  # a finishing group wakes the dispatcher at half capacity
            return None
        now = self.clock()
        claimed = await self.dispatch(now, capacity)
        if claimed >= capacity:
            return now  # more may be due; the capacity check above paces the next claim
        due = await self.db.call(self.db.store.next_due_at, now)
        if due is None:
            return None
        # Everything due before now + claim_ahead was claimed: the next claim is when the
        # earliest other watch comes within reach, and not sooner than claim_spacing.
        return max(due - tuning.claim_ahead, now + tuning.claim_spacing)

    async def dispatch(self, now: float, capacity: int) -> int:
        """Claim up to `capacity` watches due by now + claim_ahead; start each group on time."""
        watches = await self.db.call(
            self.db.store.claim_due,
            self.owner,
            now,
            capacity,
            self.tuning.lease,
            self.tuning.claim_ahead,
        )
        by_source: dict[str, list[Watch]] = defaultdict(list)
        for watch in watches:
            by_source[watch.source].append(watch)
        sources = self.runtime().sources if watches else {}
        for source, claimed in by_source.items():
            groups = _groups(claimed, self.tuning.group_size, self.tuning.group_spread)
            adapter = sources.get(source)
            if isinstance(adapter, Splitter):
                # a long-polling source: each request is answered, and written back, alone
                groups = [part for group in groups for part in _split(adapter, group)]
            for group in groups:
                self.in_flight += len(group)
                start_in = (group[0].next_poll_at or now) - now
                task = asyncio.create_task(self._poll_group(source, group, start_in))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return len(watches)

    async def _poll_group(self, source_name: str, watches: list[Watch], start_in: float) -> None:
        try:
            if start_in > 0:
                await asyncio.sleep(start_in)
            runtime = self.runtime()
            started = time.perf_counter()
            asked_at = self.clock()
            outcomes = await self._outcomes(runtime, source_name, watches)
            # each poll took as long as the adapter call that answered it
            self.stats.poll_timings(source_name).observe(
                time.perf_counter() - started, len(watches)
            )
            now = self.clock()
            polls = self.stats.polls  # counted in a plain dict: this is the hot path
            held_back = False
            for watch in watches:
                outcome = outcomes.get(watch.key) or PollFailure(
                    "bad_answer", "the answer did not mention this job"
                )
                kind = outcome.kind if isinstance(outcome, PollFailure) else OK
                polls[source_name, kind] = polls.get((source_name, kind), 0) + 1
                held_back = held_back or kind == BACKING_OFF
                item = self._record(runtime, watch, outcome, now, asked_at)
                if item is not None:
                    self._queue(item)
            self.stats.held_back[source_name] = held_back
        except Exception:
            # A bug here must not kill the dispatcher; the leases expire and the watches are
            # polled again.
            self.log.exception("poll crashed", source=source_name, watches=len(watches))
        finally:
            self.in_flight -= len(watches)
            if self._starved and self.in_flight <= self.tuning.max_in_flight // 2:
                self._starved = False
                self.wakeup.set()

    async def _outcomes(
        self, runtime: Runtime, source_name: str, watches: list[Watch]
    ) -> Mapping[str, PollOutcome]:
        source = runtime.sources.get(source_name)
        if source is None:
            why = f"source {source_name} is not in the config"
            failure = PollFailure("config", why, transient=False)
            return {w.key: failure for w in watches}
        try:
            outcomes = await source.poll([w.ref for w in watches])
            # an API may echo the token it was sent (in an error, a reason): never store it
            secrets = self._secrets(runtime, source_name)
            if not secrets:
                return outcomes
            return {key: scrub_outcome(outcome, secrets) for key, outcome in outcomes.items()}
        except Exception as exc:  # an adapter bug costs these watches one poll, not the daemon
            self.log.exception("adapter crashed", source=source_name)
            failure = PollFailure("internal", f"{type(exc).__name__} in the {source_name} adapter")
            return {w.key: failure for w in watches}

    def _secrets(self, runtime: Runtime, source_name: str) -> tuple[str, ...]:
        """The source's tokens and header values (`redact.secrets_of`), until the next reload."""
        if self._secrets_of is not runtime.config:
            self._source_secrets, self._secrets_of = {}, runtime.config
        found = self._source_secrets.get(source_name)
        if found is None:
            found = secrets_of(runtime.config.sources.get(source_name))
            self._source_secrets[source_name] = found
        return found

    def _policy(self, runtime: Runtime, watch: Watch) -> Policy:
        """`Config.policy_for`, remembered per source and overrides until the next reload."""
        if self._policies_of is not runtime.config:
            self._policies, self._policies_of = {}, runtime.config
        overrides = watch.overrides
        key = (watch.source, tuple(sorted(overrides.items())) if overrides else ())
        policy = self._policies.get(key)
        if policy is None:
            policy = self._policies[key] = runtime.config.policy_for(watch.source, watch.overrides)
        return policy

    def _record(
        self, runtime: Runtime, watch: Watch, outcome: PollOutcome, now: float, asked_at: float
    ) -> WriteBack | None:
        """`_write_back`, but what one watch's data breaks costs that watch alone: its poll
        is recorded as `internal` instead, with the default timings if its own cannot be had
        (or, failing that too, left to its lease)."""
        try:
            return self._write_back(runtime, watch, outcome, now, asked_at=asked_at)
        except Exception as exc:
            self.log.exception("poll result not recorded", watch=watch.key)
            failure = PollFailure("internal", f"{type(exc).__name__} while recording this poll")
        try:
            return self._write_back(runtime, watch, failure, now, Policy())
        except Exception:
            return None  # the lease expires and the watch is polled again

    def _write_back(
        self,
        runtime: Runtime,
        watch: Watch,
        outcome: PollOutcome,
        now: float,
        policy: Policy | None = None,
        *,
        asked_at: float | None = None,
    ) -> WriteBack:
        policy = policy or self._policy(runtime, watch)
        decision = decide(watch.progress, outcome, policy, now, self.rand(), asked_at)
        self.polls += 1
        due = decision.next_poll_at
        if due is not None and due <= now + self.tuning.claim_ahead:
            # due again at once (a long poll that answered): claim it right after its commit
            self._due_soon = True
        records = [
            EventRecord(
                kind=kind,
                at=now,
                payload=event_payload(watch, decision, kind, now),
                channels=route(runtime.rules, kind, watch.source, watch.tags),
            )
            for kind in decision.events
        ]
        if decision.events or decision.transition or isinstance(outcome, PollFailure):
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
        """Write what is queued; if the database refuses, say so at once and try again with
        backoff (0.5 s doubling to 30 s) until it is written. Results wait in memory, their
        leases renewed meanwhile, so none is dropped; polls that finish meanwhile join them."""
        await asyncio.sleep(self.tuning.flush_delay)
        failures = 0
        while True:
            try:
                await self.flush(probe=failures >= PROBE_AFTER)
                return
            except Exception as exc:
                failures += 1
                retry_in = min(30.0, 0.5 * 2.0 ** min(failures - 1, 6))
                self.log.error(
                    "write-back failed; results kept and retried",
                    error=error_line(exc),
                    results=len(self._pending),
                    failures=failures,
                    retry_in=retry_in,
                )
                if self._draining.is_set():
                    return  # `drain` makes the last attempt
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._draining.wait(), timeout=retry_in)

    async def flush(self, *, probe: bool = False) -> None:
        """Write every queued result now. If a write fails, its results stay queued (first)
        and the error is raised.

        `probe` (after repeated failures) writes one result at a time: if one fails alone while
        the database still takes other writes, that result itself cannot be stored (hostile
        content, say). It alone is dropped, logged, and its watch released to be polled again,
        so that it does not hold every other result back.
        """
        while self._pending:
            size = 1 if probe else self.tuning.max_batch
            batch = self._pending[:size]
            del self._pending[:size]
            try:
                report, took = await self.db.call(self._write_back_timed, batch)
            except Exception as exc:
                if probe and await self._release_unwritable(batch[0], exc):
                    continue
                self._pending[:0] = batch
                raise
            self.stats.group_commits.observe(took)
            self._count_events(batch, report.fenced)
            probe = False
            if report.fenced:
                self.log.warning(
                    "stale results dropped", watches=report.fenced[:20], count=len(report.fenced)
                )
            if report.deliveries:
                self.on_deliveries()
            if self._due_soon:
                self._due_soon = False
                self.wakeup.set()

    def _write_back_timed(self, batch: list[WriteBack]) -> tuple[WriteReport, float]:
        """`Store.write_back` of `batch` and how long it took, in the database thread (the
        time it waited for the thread is not the commit's)."""
        started = time.perf_counter()
        report = self.db.store.write_back(self.owner, batch)
        return report, time.perf_counter() - started

    def _count_events(self, written: list[WriteBack], fenced: list[str]) -> None:
        """Count the events a group commit recorded (a fenced result recorded none)."""
        events, stale = self.stats.events, set(fenced)
        for item in written:
            if item.events and item.watch.key not in stale:
                for record in item.events:
                    add(events, record.kind.value)

    async def _release_unwritable(self, item: WriteBack, error: Exception) -> bool:
        """Give back the lease of a watch whose result failed to write on its own; True if the
        database took that (so it is the result, not the database, that cannot be written)."""
        try:
            await self.db.call(self.db.store.release_watches, self.owner, [item.watch.id])
        except Exception:
            return False
        self.log.error(
            "poll result could not be stored; the watch will be polled again",
            watch=item.watch.key,
            error=error_line(error),
        )
        return True

    async def drain(self, grace: float) -> None:
        """Let in-flight polls finish for up to `grace` seconds, then write what they found.

        Results that still cannot be written are logged; their watches are polled again once
        their leases expire (or at the next start, on SQLite)."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        self._draining.set()
        if self._flusher is not None:
            await asyncio.wait({self._flusher})
        try:
            await self.flush()
        except Exception as exc:
            self.log.error(
                "results not written before stopping; their watches will be polled again",
                error=error_line(exc),
                results=len(self._pending),
            )


def _split(adapter: Splitter, group: list[Watch]) -> list[list[Watch]]:
    """`group` cut as the adapter asks (`Splitter.split`); a job it leaves out is polled in a
    group of its own, and an adapter that fails keeps the group whole."""
    try:
        parts = adapter.split([w.ref for w in group])
    except Exception:  # an adapter bug costs the split, not the poll
        return [group]
    by_key = {w.key: w for w in group}
    cut: list[list[Watch]] = []
    for part in parts:
        watches = [by_key.pop(ref.key) for ref in part if ref.key in by_key]
        if watches:
            cut.append(watches)
    cut.extend([w] for w in by_key.values())
    return cut


def _groups(watches: list[Watch], size: int, spread: float) -> list[list[Watch]]:
    """Cut one source's claimed watches (earliest due first) into groups to poll together:
    at most `size` each, and none whose due times span more than `spread` seconds."""
    groups: list[list[Watch]] = []
    group: list[Watch] = []
    first = 0.0
    for watch in watches:
        due = watch.next_poll_at or 0.0
        if group and (len(group) >= size or due - first > spread):
            groups.append(group)
            group = []
        if not group:
            first = due
        group.append(watch)
    if group:
        groups.append(group)
    return groups
