"""A source that goes down and comes back: one probe decides, the pause stays bounded, the
watches it holds come back spread out, and everything shown names the real failure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from world import AnyAnswer, eventually

from poller.errors import TransientSourceError
from poller.models import JobRef, Policy, PollFailure, WatchProgress
from poller.rules.polling import decide
from poller.sources import SOURCES, build_source
from poller.sources.client import Requester, SourceHealth
from poller.sources.http import HttpSource
from poller.sources.immuta import ImmutaSource
from poller.sources.ruler import RulerSource
from poller.testing import JsonJobSim, SimThread, WebhookSink

TOKEN = "breaker-token"
REFUSED = "network: connection failed: connection refused"


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def health(clock: Clock, cap: float = 60.0) -> SourceHealth:
    """A breaker on `clock`, without jitter (the longest pause of each step)."""
    return SourceHealth(threshold=3, base=2, cap=cap, clock=clock, rand=lambda: 1.0)


def refused() -> TransientSourceError:
    return TransientSourceError("network", "connection failed: connection refused")


def trip(h: SourceHealth) -> None:
    """Three refused connections in a row: the breaker opens."""
    for _ in range(3):
        h.failed(refused())


def fast_failure(h: SourceHealth) -> TransientSourceError:
    """The error `admit` raises (fails the test if it lets the request through)."""
    with pytest.raises(TransientSourceError) as caught:
        h.admit()
    return caught.value


class TestProbes:
    """While a source is paused, one probe at a time decides (clock injected)."""

    def test_pause_grows_per_failed_probe_not_per_failed_request(self) -> None:
        """Requests already sent when the breaker opened do not lengthen the pause."""
        clock = Clock()
        h = health(clock)
        for _ in range(3):
            assert h.admit() == 0
        trip(h)
        assert h.wait_left() == 2
        for _ in range(20):  # the rest of a poll group, sent before it opened
            h.failed(refused())
        assert h.wait_left() == 2
        pauses = []
        for _ in range(7):
            clock.now += h.wait_left()
            probe = h.admit()
            assert probe  # the probe
            h.failed(refused(), probe=probe)
            pauses.append(h.wait_left())
        assert pauses == [4, 8, 16, 32, 60, 60, 60]

    def test_only_one_probe_at_a_time_and_the_others_do_not_count(self) -> None:
        """While the probe is under way every other request fails fast, and is no failure."""
        clock = Clock()
        h = health(clock)
        trip(h)
        clock.now += 2
        assert h.admit()
        for _ in range(5):
            error = fast_failure(h)
            assert error.kind == "backing_off" and error.retry_after == 0
        assert h.failures == 3 and h.probes_failed == 0
        h.succeeded()  # the probe got an answer
        assert h.admit() == 0 and h.wait_left() == 0

    def test_a_probe_that_outlived_its_outage_is_not_taken_for_the_next_one(self) -> None:
        """A slow probe failing after another request closed (and then reopened) the breaker
        neither lengthens the new pause nor frees the new probe's place."""
        clock = Clock()
        h = health(clock)
        trip(h)
        clock.now += 2
        slow = h.admit()
        h.succeeded()  # a request sent earlier got an answer
        trip(h)
        clock.now += 2
        probe = h.admit()
        assert probe and probe != slow
        h.failed(refused(), probe=slow)
        h.probe_ended(slow)
        assert h.wait_left() == 0 and h.probe == probe
        assert fast_failure(h).retry_after == 0  # the new probe still decides alone

    def test_a_probe_that_ends_without_an_outcome_lets_the_next_one_through(self) -> None:
        """A cancelled probe (or a TLS error, which says nothing of the source) frees the way."""
        clock = Clock()
        h = health(clock)
        trip(h)
        clock.now += 2
        probe = h.admit()
        assert probe
        h.probe_ended(probe)
        assert h.admit()

    def test_the_pause_is_bounded_by_the_cap(self) -> None:
        """However many probes fail, the pause never passes `cap` (the source's max_interval)."""
        clock = Clock()
        h = health(clock, cap=5)
        trip(h)
        for _ in range(50):
            clock.now += h.wait_left()
            probe = h.admit()
            assert probe
            h.failed(refused(), probe=probe)
            assert 0 < h.wait_left() <= 5

    def test_a_fast_failure_names_the_failure_that_paused_the_source(self) -> None:
        """`backing_off` carries the underlying error, not only that poller held back."""
        clock = Clock()
        h = health(clock)
        trip(h)
        error = fast_failure(h)
        assert error.kind == "backing_off" and error.retry_after == 2
        assert error.message.startswith(REFUSED), error.message
        h.failed(TransientSourceError("rate_limited", "HTTP 429", retry_after=30))
        assert h.wait_left() == 30
        assert fast_failure(h).message.startswith("rate_limited: HTTP 429")


class TestRequester:
    """The breaker inside `Requester`, against loopback servers."""

    def test_a_poll_group_on_a_dead_host_opens_the_breaker_for_one_step(self) -> None:
        """Eight concurrent requests that all fail pause the source for the first step only."""
        clock = Clock()
        h = health(clock)
        url = f"http://127.0.0.1:{refused_port()}/jobs/x"

        async def go() -> list[str]:
            req = Requester(max_concurrency=8, health=h)

            async def one(_: int) -> str:
                try:
                    await req.json("GET", url)
                except TransientSourceError as exc:
                    return f"{exc.kind}: {exc.message}"
                return "ok"

            try:
                return await req.each(one, list(range(8)))
            finally:
                await req.aclose()

        errors = asyncio.run(go())
        assert all(REFUSED in e for e in errors), errors
        assert h.wait_left() == 2

    def test_after_the_pause_one_request_is_sent_and_decides(self, any_answer: AnyAnswer) -> None:
        """Of a group asked after the pause only the probe goes out; its success reopens."""
        clock = Clock()
        h = health(clock)
        any_answer.status, any_answer.body = 200, b'{"state": "ok"}'
        trip(h)
        clock.now += h.wait_left()
        before = sum(any_answer.requests.values())

        async def go() -> list[str]:
            req = Requester(max_concurrency=8, health=h)

            async def one(_: int) -> str:
                try:
                    await req.json("GET", any_answer.base_url + "/jobs/x")
                except TransientSourceError as exc:
                    return exc.kind
                return "ok"

            try:
                return await asyncio.gather(*(one(i) for i in range(8)))
            finally:
                await req.aclose()

        kinds = asyncio.run(go())
        assert sorted(kinds) == ["backing_off"] * 7 + ["ok"]
        assert sum(any_answer.requests.values()) - before == 1
        assert h.open_until == 0  # closed: the next poll of every watch is sent

    def test_a_cancelled_probe_does_not_hold_the_source_forever(
        self, any_answer: AnyAnswer
    ) -> None:
        """A probe cancelled while it is under way (a poll cut short by a shutdown or a
        reload) lets the next request be the probe."""
        clock = Clock()
        h = health(clock)
        any_answer.status, any_answer.body = 200, b'{"state": "ok"}'
        trip(h)
        clock.now += h.wait_left()

        async def go() -> Any:
            req = Requester(health=h)
            try:
                cut = asyncio.create_task(req.json("GET", any_answer.base_url + "/jobs/x"))
                await asyncio.sleep(0)  # the task runs until it waits for its connection
                assert h.probe
                cut.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cut
                assert h.probe == 0
                return await req.json("GET", any_answer.base_url + "/jobs/x")
            finally:
                await req.aclose()

        assert asyncio.run(go()) == {"state": "ok"}
        assert h.open_until == 0


def sample_config(kind: str, base_url: str) -> Any:
    """A minimal config of each source type, pointed at `base_url`."""
    if kind == "ruler":
        return RulerSource(base_url=base_url, token=SecretStr("t"))
    if kind == "immuta":
        return ImmutaSource(base_url=base_url, token=SecretStr("t"))
    return HttpSource(url=base_url + "/{id}", state="s", states={"done": "succeeded"})


class TestEverySource:
    """Every source type gets a breaker bounded by its source's max_interval."""

    @pytest.mark.parametrize("kind", sorted(SOURCES))
    def test_a_dead_source_is_paused_no_longer_than_max_pause_and_says_why(self, kind: str) -> None:
        """Polls of a refused host open the breaker; what fails fast names the refusal and
        is held no longer than `max_pause`."""
        config = sample_config(kind, f"http://127.0.0.1:{refused_port()}")
        adapter = build_source(config, max_pause=0.5)
        assert adapter is not None
        ref = JobRef(key=f"{kind}/j", source=kind, job_id="j", site="s1")

        async def go() -> list[PollFailure]:
            try:
                outcomes = [(await adapter.poll([ref]))[ref.key] for _ in range(5)]
            finally:
                await adapter.aclose()
            assert all(isinstance(o, PollFailure) for o in outcomes), outcomes
            return outcomes  # type: ignore[return-value]

        outcomes = asyncio.run(go())
        assert [o.kind for o in outcomes] == ["network"] * 3 + ["backing_off"] * 2
        for held in outcomes[3:]:
            assert held.message.startswith(REFUSED), held.message
            assert held.retry_after is not None and held.retry_after <= 0.5


POLICY = Policy(interval=5.0, backoff=1.5, max_interval=5.0, error_after=900.0)


class TestPostponedWatches:
    """The watches one pause holds are spread over the next interval (`rules.polling.decide`)."""

    @pytest.mark.parametrize(
        "failure",
        [
            PollFailure("backing_off", REFUSED, retry_after=4.0),
            PollFailure("rate_limited", "HTTP 429", retry_after=4.0),
        ],
    )
    def test_held_watches_come_back_spread_over_one_interval(self, failure: PollFailure) -> None:
        """Ten watches held by the same pause do not all come back at the same instant."""
        now = 2000.0
        due = []
        for i in range(10):
            watch = WatchProgress(created_at=now - 60, error_count=6, error_since=now - 60)
            decision = decide(watch, failure, POLICY, now, rand=i / 9)
            assert decision.next_poll_at is not None
            due.append(decision.next_poll_at - now)
        assert len(set(due)) == 10
        assert min(due) >= 4.0 and max(due) <= 4.0 + POLICY.interval

    def test_a_poll_that_was_not_sent_waits_for_the_pause_not_for_its_own_backoff(
        self,
    ) -> None:
        """Nothing was sent: the watch is back right after the pause to see the source recover."""
        now = 2000.0
        watch = WatchProgress(created_at=now - 600, error_count=20, error_since=now - 600)
        policy = Policy(interval=1.0, max_interval=600.0, error_after=900.0)
        failure = PollFailure("backing_off", REFUSED, retry_after=2.0)
        decision = decide(watch, failure, policy, now, rand=1.0)
        assert decision.next_poll_at == now + 2.0 + policy.interval
        assert decision.progress.last_error is not None
        assert decision.progress.last_error.startswith(f"backing_off: {REFUSED}")


# -- the daemon, as a user runs it --------------------------------------------------------------

WATCHES = ("p1", "p2", "p3")
#: the config's polling: `max_interval` bounds the source's pause
INTERVAL, MAX_INTERVAL = 0.5, 2.0


class Prefect:
    """A job API on a fixed loopback port that can go down (refusing connections) and come
    back with its jobs as they were, a webhook sink, and `poller run` against both."""

    def __init__(self, tmp: Path) -> None:
        self.api = JsonJobSim(TOKEN, port=refused_port())
        self.sink = WebhookSink()
        self.sims = SimThread(self.api, self.sink)
        self.tmp = tmp
        self.config = tmp / "config.yaml"
        self.log = tmp / "daemon.log"
        self.daemon: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        env["PREFECT_TOKEN"] = TOKEN
        env.pop("NOTIFY_SOCKET", None)
        return env

    def start(self) -> None:
        self.sims.start()
        for job in WATCHES:
            self.api.add_job(job, status="RUNNING")
        jobs = "".join(f"  - {{source: prefect, id: {job}}}\n" for job in WATCHES)
        self.config.write_text(f"""
database: sqlite:///{self.tmp}/poller.db
log: {{level: debug}}
sources:
  prefect:
    type: http
    url: {self.api.base_url}/jobs/{{id}}
    headers: {{Authorization: "Bearer ${{PREFECT_TOKEN}}"}}
    state: data.status
    states: {{RUNNING: running, COMPLETED: succeeded}}
channels:
  hook: {self.sink.apprise_url}
rules:
  - on: [unreachable]
    notify: [hook]
polling: {{interval: {INTERVAL}s, max_interval: {MAX_INTERVAL}s, error_after: 1s}}
jobs:
{jobs}""")
        with self.log.open("wb") as out:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "poller", "run", "-c", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
            )
        # the other commands find the database once `poller run` has created it
        eventually(lambda: self._status().returncode == 0, what="the daemon's database")

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
        self.sims.stop()

    def said(self) -> str:
        """Everything the channel received (events due together may share one message)."""
        return "\n".join(f"{m['title']}\n{m['message']}" for m in self.sink.messages)

    def each(self, what: str) -> Callable[[], bool]:
        """Whether the channel was told `what` (e.g. "cannot be reached") of every job."""
        return lambda: all(f"prefect/{job} {what}" in self.said() for job in WATCHES)

    def _status(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "poller", "status", "--json", "-c", str(self.config)],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=60,
        )

    def status(self) -> dict[str, Any]:
        result = self._status()
        assert result.returncode == 0, result.stderr
        return {w["job_id"]: w for w in json.loads(result.stdout)["watches"]}

    def ended(self) -> list[float]:
        """When the daemon saw each job end (epoch seconds); empty until all have ended."""
        watches = self.status().values()
        if not all(w["state"] == "succeeded" for w in watches):
            return []
        return [datetime.fromisoformat(w["ended_at"]).timestamp() for w in watches]


class TestDaemonOutage:
    """Three watches on one source that is down for a while, then back (`poller run`)."""

    def test_recovery_is_seen_within_the_pause_plus_an_interval_and_the_cause_is_shown(
        self, tmp_path: Path
    ) -> None:
        """The end of a job is seen within max_interval + interval of the API coming back;
        every `unreachable` message and `poller status` name the refused connection."""
        world = Prefect(tmp_path)
        try:
            world.start()
            eventually(
                lambda: all(w["state"] == "running" for w in world.status().values()),
                timeout=20,
                what="every job polled",
            )
            world.sims.run(world.api.stop())
            down_at = time.monotonic()
            eventually(world.each("cannot be reached"), what="unreachable")
            errors = [line for line in world.said().splitlines() if line.startswith("Error:")]
            assert len(errors) == len(WATCHES), world.said()
            for line in errors:
                assert "connection refused" in line, line
            # long enough for many failed probes: a pause that grew per failed request (or
            # doubled without a bound) would now be far longer than max_interval
            time.sleep(max(0.0, down_at + 6 - time.monotonic()))
            watches = world.status()
            asked = time.time()
            for job in WATCHES:
                error = watches[job]["last_error"]
                assert "connection refused" in error, error
                # no watch is held past the bounded pause and one interval of spread
                next_poll = datetime.fromisoformat(watches[job]["next_poll_at"]).timestamp()
                assert next_poll <= asked + MAX_INTERVAL + INTERVAL, (error, next_poll - asked)

            for job in WATCHES:
                world.api.set_job(job, status="COMPLETED")
            world.sims.run(world.api.start())
            back_at = time.time()
            ended = eventually(world.ended, timeout=30, what="every job's end")
            seen_after = max(ended) - back_at
            # the pause (at most max_interval), one interval of spread, and slack for a
            # loaded machine (the daemon's claim loop and write-back)
            assert seen_after <= MAX_INTERVAL + INTERVAL + 1.5, seen_after
            assert world.daemon is not None
            world.daemon.send_signal(signal.SIGTERM)
            assert world.daemon.wait(timeout=15) == 0
        finally:
            world.close()
