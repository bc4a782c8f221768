"""The Ruler adapter against a loopback Ruler API, and its parser on any input."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from poller.config import RulerSource
from poller.errors import PermanentSourceError
from poller.http import parse_retry_after
from poller.models import JobRef, PollFailure, PollResult, State
from poller.sim import RulerSim, SimThread
from poller.sources import SOURCES, Source
from poller.sources.ruler import RulerAdapter, parse_status, parse_time

SITE = "4f2a"


@pytest.fixture(scope="module")
def sim() -> Iterator[RulerSim]:
    ruler = RulerSim(token="s3cret-token")
    with SimThread(ruler):
        yield ruler


@pytest.fixture(autouse=True)
def _clean_faults(sim: RulerSim) -> None:
    sim.clear_faults()


def source_config(base_url: str, token: str = "s3cret-token", **kw: Any) -> RulerSource:
    return RulerSource(type="ruler", base_url=base_url, token=SecretStr(token), **kw)


def poll(
    sim: RulerSim, job_id: str, *, base_url: str | None = None, **kw: Any
) -> PollResult | PollFailure:
    async def go() -> PollResult | PollFailure:
        adapter = RulerAdapter(source_config(base_url or sim.base_url, **kw))
        try:
            ref = JobRef(key=f"r/{SITE}/{job_id}", source="r", job_id=job_id, site=SITE)
            return (await adapter.poll([ref]))[ref.key]
        finally:
            await adapter.aclose()

    return asyncio.run(go())


class TestRegistry:
    """Every registered source is complete."""

    @pytest.mark.parametrize("name", sorted(SOURCES))
    def test_registered_source_implements_protocol(self, name: str) -> None:
        """Each factory builds an object with poll and aclose coroutines."""
        config = source_config("http://127.0.0.1:9")
        adapter = SOURCES[name](config, None)
        assert isinstance(adapter, Source)
        assert asyncio.iscoroutinefunction(adapter.poll)
        assert asyncio.iscoroutinefunction(adapter.aclose)
        asyncio.run(adapter.aclose())


class TestAgainstTheApi:
    """Real requests to the simulated Ruler API."""

    @pytest.mark.parametrize(
        ("remote", "state"),
        [
            ("pending", State.PENDING),
            ("processing", State.RUNNING),
            ("complete", State.SUCCEEDED),
            ("partialcomplete", State.PARTIAL),
            ("failed", State.FAILED),
        ],
    )
    def test_status_mapping(self, sim: RulerSim, remote: str, state: State) -> None:
        """Each Ruler status maps to poller's state as SPEC.md says."""
        sim.add_job(SITE, f"map-{remote}", status=remote)
        outcome = poll(sim, f"map-{remote}")
        assert isinstance(outcome, PollResult)
        assert outcome.state == state and outcome.remote_status == remote

    def test_counts_reason_and_dates_are_kept(self, sim: RulerSim) -> None:
        """successCount, failureCount, failureReason and dates reach the details."""
        sim.add_job(SITE, "counts", status="processing", total_rows=200)
        sim.set_job(
            SITE,
            "counts",
            status="failed",
            processed_rows=150,
            success_count=140,
            failure_count=10,
            failure_reason="bad column",
        )
        outcome = poll(sim, "counts")
        assert isinstance(outcome, PollResult)
        assert outcome.progress == 75
        d = outcome.details
        assert (d["success_count"], d["failure_count"], d["failure_reason"]) == (
            140,
            10,
            "bad column",
        )
        assert d["total_rows"] == 200
        assert abs(d["remote_created_at"] - time.time()) < 60
        assert d["remote_completed_at"] >= d["remote_created_at"]

    def test_unknown_status_is_not_terminal(self, sim: RulerSim) -> None:
        """A status Ruler never documented is kept raw and has no state."""
        sim.add_job(SITE, "odd", status="archiving")
        outcome = poll(sim, "odd")
        assert isinstance(outcome, PollResult)
        assert outcome.state is None and outcome.remote_status == "archiving"

    @pytest.mark.parametrize(
        ("fault", "kind", "transient"),
        [
            ({"status": 500}, "server_error", True),
            ({"status": 502}, "server_error", True),
            ({"status": 503, "retry_after": 7}, "unavailable", True),
            ({"status": 429, "retry_after": 12}, "rate_limited", True),
            ({"mode": "html"}, "bad_answer", False),
            ({"mode": "truncated"}, "bad_answer", False),
            ({"mode": "refuse"}, "network", True),
            ({"status": 400}, "http", False),
        ],
    )
    def test_bad_answers_become_poll_errors(
        self, sim: RulerSim, fault: dict[str, Any], kind: str, transient: bool
    ) -> None:
        """Every kind of trouble becomes a categorised PollFailure."""
        sim.add_job(SITE, "flaky", status="processing")
        sim.fail("flaky", **fault)
        outcome = poll(sim, "flaky")
        assert isinstance(outcome, PollFailure), outcome
        assert (outcome.kind, outcome.transient) == (kind, transient)
        if "retry_after" in fault:
            assert outcome.retry_after == pytest.approx(fault["retry_after"], abs=1)

    def test_wrong_token_is_an_auth_error(self, sim: RulerSim) -> None:
        """401 is an auth poll error, and the token is not in its message."""
        sim.add_job(SITE, "auth", status="processing")
        outcome = poll(sim, "auth", token="wrong-token-value")
        assert isinstance(outcome, PollFailure) and outcome.kind == "auth"
        assert "wrong-token-value" not in outcome.message

    def test_missing_job_is_not_found(self, sim: RulerSim) -> None:
        """404 is a not_found poll error, never a terminal state."""
        outcome = poll(sim, "does-not-exist")
        assert isinstance(outcome, PollFailure) and outcome.kind == "not_found"

    @pytest.mark.parametrize("mode", ["hang", "drip"])
    def test_slow_servers_hit_the_overall_deadline(self, sim: RulerSim, mode: str) -> None:
        """A hanging or dripping server costs one deadline, not forever."""
        sim.add_job(SITE, "slow", status="processing")
        sim.fail("slow", mode=mode, delay=0.3)
        started = time.monotonic()
        outcome = poll(sim, "slow", request_timeout=1.0)
        assert time.monotonic() - started < 5
        assert isinstance(outcome, PollFailure) and outcome.kind == "timeout"

    def test_refused_connection(self) -> None:
        """Nothing listening is a network poll error."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        outcome = poll(RulerSim(), "x", base_url=f"http://127.0.0.1:{port}/v1")
        assert isinstance(outcome, PollFailure) and outcome.kind == "network"

    def test_many_jobs_polled_concurrently_within_the_limit(self, sim: RulerSim) -> None:
        """A batch answers every job, one outcome each."""
        for i in range(20):
            sim.add_job(SITE, f"many-{i}", status="processing")

        async def go() -> dict[str, Any]:
            adapter = RulerAdapter(source_config(sim.base_url, max_concurrency=3))
            refs = [JobRef(f"r/{SITE}/many-{i}", "r", f"many-{i}", SITE) for i in range(20)]
            try:
                return dict(await adapter.poll(refs))
            finally:
                await adapter.aclose()

        outcomes = asyncio.run(go())
        assert len(outcomes) == 20
        assert all(isinstance(o, PollResult) for o in outcomes.values())


class TestParser:
    """parse_status is lenient and total."""

    def test_lenient_shapes(self) -> None:
        """Key case, string numbers, wrapped bodies and naive dates are accepted."""
        r = parse_status(
            {
                "data": {
                    "STATUS": "Complete",
                    "PercentageProgress": "100",
                    "createdDateTime": "2026-01-01T00:00:00",
                }
            }
        )
        assert r.state == State.SUCCEEDED and r.progress == 100
        assert r.details["remote_created_at"] == parse_time("2026-01-01T00:00:00+00:00")

    def test_progress_is_clamped_and_derived(self) -> None:
        """Out-of-range progress is clamped; missing progress comes from the rows."""
        assert parse_status({"status": "processing", "percentageProgress": 250}).progress == 100
        r = parse_status({"status": "processing", "totalRows": 8, "processedRows": 2})
        assert r.progress == 25

    @pytest.mark.parametrize(
        "body", [None, [], "complete", {"status": ""}, {"status": 3}, {"percentageProgress": 10}]
    )
    def test_unreadable_answers_raise(self, body: Any) -> None:
        """Anything without a status is a bad answer."""
        with pytest.raises(PermanentSourceError):
            parse_status(body)

    @given(
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "status",
                            "Status",
                            "data",
                            "totalRows",
                            "processedRows",
                            "percentageProgress",
                            "failureReason",
                            "createdDateTime",
                            "x",
                        ]
                    ),
                    children,
                    max_size=6,
                )
            ),
            max_leaves=20,
        )
    )
    def test_any_json_is_a_result_or_bad_answer(self, body: Any) -> None:
        """No input raises anything else; terminal only for Ruler's terminal statuses."""
        try:
            r = parse_status(body)
        except PermanentSourceError:
            return
        if r.state in (State.SUCCEEDED, State.PARTIAL, State.FAILED):
            assert r.remote_status.lower() in ("complete", "partialcomplete", "failed")
        assert r.progress is None or 0 <= r.progress <= 100


class TestRetryAfter:
    """Retry-After in both forms."""

    def test_seconds_and_http_date(self) -> None:
        """Delta-seconds and HTTP-dates both become a wait; junk is ignored."""
        assert parse_retry_after("120", 0) == 120
        now = 1_700_000_000.0
        assert parse_retry_after("Tue, 14 Nov 2023 22:15:00 GMT", now) == pytest.approx(100)
        assert parse_retry_after("soon", now) is None
        assert parse_retry_after(None, now) is None
        assert parse_retry_after("-5", now) == 0
