"""The Ruler adapter against a loopback Ruler API, and its parser on any input."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from world import AnyAnswer

from poller.config import SOURCE_TYPES
from poller.errors import PermanentSourceError
from poller.models import JobRef, PollFailure, PollResult, State
from poller.sources import SOURCES, Discoverer, Source
from poller.sources.http import HttpSource
from poller.sources.immuta import ImmutaSource
from poller.sources.ruler import RulerSource
from poller.sources.ruler.adapter import (
    LIST_REUSE,
    RULER_STATES,
    ListEntry,
    RulerAdapter,
    parse_failures,
    parse_job_list,
    parse_status,
    parse_time,
)
from poller.testing import RulerSim, SimThread
from poller.units import parse_retry_after

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


#: A minimal valid config of each source type, for the registry test.
SAMPLE_CONFIGS: dict[str, Any] = {
    "ruler": source_config("http://127.0.0.1:9"),
    "immuta": ImmutaSource(base_url="http://127.0.0.1:9", token=SecretStr("k")),
    "http": HttpSource(url="http://127.0.0.1:9/{id}", state="s", states={"done": "succeeded"}),
}


class TestRegistry:
    """Every registered source is complete."""

    def test_every_source_type_is_registered(self) -> None:
        """Each type the config accepts can be polled (nothing is "not yet supported")."""
        assert set(SOURCES) == set(SOURCE_TYPES) == set(SAMPLE_CONFIGS)

    @pytest.mark.parametrize("name", sorted(SOURCES))
    def test_registered_source_implements_protocol(self, name: str) -> None:
        """Each factory builds an object with poll and aclose (and discover) coroutines."""
        adapter = SOURCES[name](SAMPLE_CONFIGS[name], None)
        assert isinstance(adapter, Source)
        assert asyncio.iscoroutinefunction(adapter.poll)
        assert asyncio.iscoroutinefunction(adapter.aclose)
        if isinstance(adapter, Discoverer):
            assert asyncio.iscoroutinefunction(adapter.discover)
        asyncio.run(adapter.aclose())

    def test_immuta_and_http_discover(self) -> None:
        """The immuta adapter lists bulks and searches, the http one bulks (with its
        ``discover``); ruler does not claim to."""
        built = {name: SOURCES[name](config, None) for name, config in SAMPLE_CONFIGS.items()}
        assert {n for n, a in built.items() if isinstance(a, Discoverer)} == {"immuta", "http"}
        for adapter in built.values():
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
        """Each Ruler status maps to poller's state as the README's state table says."""
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
            # aiohttp resends an idempotent request once when the server hung up on it
            ({"mode": "refuse", "times": 2}, "network", True),
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

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("2026-01-01T00:00:00Z", 1767225600.0),
            ("2026-01-01T01:00:00+01:00", 1767225600.0),
            (" 2026-01-01 00:00:00 ", 1767225600.0),
            ("Thu, 01 Jan 2026 00:00:00 GMT", 1767225600.0),
            (1767225600, 1767225600.0),
            ("1767225600.5", 1767225600.5),
            (" 1767225600000 ", 1767225600.0),  # milliseconds
            (1.7672256e12, 1767225600.0),
            ("-5", None),
            (0, None),
            (True, None),
            ("soon", None),
            ("", None),
            ("1e999", None),
            ([2026], None),
        ],
    )
    def test_times_in_every_form_apis_send(self, value: Any, expected: float | None) -> None:
        """ISO-8601 (naive is UTC), HTTP dates and epoch seconds or milliseconds, as numbers
        or text; anything else is no time."""
        assert parse_time(value) == expected

    @given(st.text(max_size=30) | st.floats() | st.integers())
    def test_parse_time_is_total(self, value: Any) -> None:
        """Whatever an API sends, a time or None, never an exception; a number written as
        text reads as that number."""
        found = parse_time(value)
        assert found is None or (isinstance(found, float) and found > 0)
        if isinstance(value, float | int) and not isinstance(value, bool):
            assert parse_time(repr(value)) == found

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


# -- at scale: site lists, changed jobs only, failing rows ------------------------------------


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fresh() -> Iterator[RulerSim]:
    """A Ruler API of its own, so that request counts belong to one test."""
    ruler = RulerSim(token="s3cret-token")
    with SimThread(ruler):
        yield ruler


def refs(*job_ids: str, site: str = SITE) -> list[JobRef]:
    return [JobRef(f"r/{site}/{j}", "r", j, site) for j in job_ids]


class Polls:
    """One adapter polled several times on a fake clock, in one event loop."""

    def __init__(self, sim: RulerSim, **kw: Any) -> None:
        self.sim, self.kw, self.clock = sim, kw, FakeClock()

    def run(
        self, *steps: Sequence[JobRef] | Callable[[], object], advance: float = LIST_REUSE + 1
    ) -> list[Any]:
        """Poll each group in turn (the clock moves `advance` before each), calling the
        callables in between; the outcomes of each poll, by job id."""

        async def go() -> list[Any]:
            adapter = RulerAdapter(source_config(self.sim.base_url, **self.kw), clock=self.clock)
            try:
                found = []
                for step in steps:
                    if callable(step):
                        step()
                        continue
                    self.clock.now += advance
                    outcomes = await adapter.poll(step)
                    found.append({ref.job_id: outcomes[ref.key] for ref in step})
                return found
            finally:
                await adapter.aclose()

        return asyncio.run(go())


class TestAtScale:
    """Many jobs of one site: one list request, status only for jobs that changed."""

    def test_list_once_then_status_only_for_changes(self, fresh: RulerSim) -> None:
        """First poll: list + each status; then list only; a change costs one status."""
        ids = [f"j{i}" for i in range(6)]
        for job_id in ids:
            fresh.add_job(SITE, job_id, status="processing")
        group = refs(*ids)
        counts: list[dict[str, int]] = []

        def snapshot() -> None:
            counts.append(dict(fresh.requests))

        first, second, third = Polls(fresh).run(
            group,
            snapshot,
            group,
            snapshot,
            lambda: fresh.set_job(SITE, "j3", status="complete"),
            group,
        )
        assert counts == [{"jobs": 1, "status": 6}, {"jobs": 2, "status": 6}]
        assert fresh.requests == {"jobs": 3, "status": 7}
        assert all(o.state == State.RUNNING for o in second.values())
        assert second["j0"].details == first["j0"].details
        done = third["j3"]
        assert done.state == State.SUCCEEDED and done.details["success_count"] == 100
        assert third["j0"].state == State.RUNNING

    def test_progress_alone_costs_no_status_request(self, fresh: RulerSim) -> None:
        """Moving progress is read from the list; the stale counts are left out."""
        for job_id in ("a", "b"):
            fresh.add_job(SITE, job_id, status="processing", total_rows=200)
        group = refs("a", "b")
        first, moved = Polls(fresh).run(
            group, lambda: fresh.set_job(SITE, "a", processed_rows=150), group
        )
        assert fresh.requests == {"jobs": 2, "status": 2}
        assert first["a"].details["processed_rows"] == 0
        assert moved["a"].progress == 75
        assert "processed_rows" not in moved["a"].details
        assert moved["a"].details["total_rows"] == 200
        assert moved["b"].details == first["b"].details

    def test_list_is_not_reused_past_another_replicas_poll(self, fresh: RulerSim) -> None:
        """Replica A's list predates a poll replica B committed: A asks again, so that it
        cannot answer older news than the database already holds (no running -> pending)."""
        for job_id in ("x", "y"):
            fresh.add_job(SITE, job_id, status="new")
        clock = FakeClock()

        async def go() -> tuple[Any, Any]:
            a = RulerAdapter(source_config(fresh.base_url), clock=clock)
            b = RulerAdapter(source_config(fresh.base_url), clock=clock)
            try:
                await a.poll(refs("x", "y"))
                clock.now += 1
                await a.poll(refs("y"))  # A fetches the list again: x is still pending
                fresh.set_job(SITE, "x", status="processing")
                clock.now += 1
                seen_by_b = (await b.poll(refs("x")))["r/4f2a/x"]
                clock.now += 1  # well within LIST_REUSE of A's second list
                (x,) = refs("x")
                x = replace(x, last_polled=clock.now - 1)  # B's poll, as the database has it
                return seen_by_b, (await a.poll([x]))["r/4f2a/x"]
            finally:
                await a.aclose()
                await b.aclose()

        seen_by_b, seen_by_a = asyncio.run(go())
        assert seen_by_b.state == State.RUNNING
        assert seen_by_a.state == State.RUNNING

    def test_one_job_per_site_uses_status(self, fresh: RulerSim) -> None:
        """A lone job of its site is polled with /status only."""
        fresh.add_job(SITE, "solo", status="processing")
        fresh.add_job("other-site", "x", status="processing")
        group = [*refs("solo"), *refs("x", site="other-site")]
        Polls(fresh).run(group, group)
        assert fresh.requests == {"status": 4}

    def test_threshold_is_configurable(self, fresh: RulerSim) -> None:
        """Below list_threshold, every job keeps its own status request."""
        ids = [f"t{i}" for i in range(5)]
        for job_id in ids:
            fresh.add_job(SITE, job_id, status="pending")
        Polls(fresh, list_threshold=10).run(refs(*ids))
        assert fresh.requests == {"status": 5}

    def test_job_missing_from_the_list_is_asked_for(self, fresh: RulerSim) -> None:
        """A watched job the list does not show gets its own status request (here: 404)."""
        fresh.add_job(SITE, "here", status="processing")
        (outcomes,) = Polls(fresh).run(refs("here", "gone"))
        assert isinstance(outcomes["here"], PollResult)
        assert isinstance(outcomes["gone"], PollFailure) and outcomes["gone"].kind == "not_found"

    def test_list_trouble_fails_the_group_without_a_status_flood(self, fresh: RulerSim) -> None:
        """A 500 on the list is a poll error for every job of the site, at one request."""
        for job_id in ("a", "b", "c"):
            fresh.add_job(SITE, job_id, status="processing")
        fresh.fail("/batch/jobs", status=500)
        (outcomes,) = Polls(fresh).run(refs("a", "b", "c"))
        assert {o.kind for o in outcomes.values()} == {"server_error"}
        assert fresh.requests == {"jobs": 1}

    def test_missing_list_endpoint_falls_back_to_status(self, fresh: RulerSim) -> None:
        """A 404 on the list: the site is polled job by job for a while."""
        for job_id in ("a", "b"):
            fresh.add_job(SITE, job_id, status="processing")
        fresh.fail("/batch/jobs", status=404)
        first, second = Polls(fresh).run(refs("a", "b"), refs("a", "b"))
        assert all(isinstance(o, PollResult) for o in [*first.values(), *second.values()])
        assert fresh.requests == {"jobs": 1, "status": 4}

    def test_groups_due_apart_share_a_recent_list(self, fresh: RulerSim) -> None:
        """Watches of one site due at different moments reuse a list fetched moments ago."""
        for job_id in ("a", "b", "c"):
            fresh.add_job(SITE, job_id, status="processing")
        a, b, c = (refs(j) for j in ("a", "b", "c"))
        Polls(fresh).run(a, b, c, a, b, c, advance=0.1)
        # a alone: its status. b: the site has several watched jobs: a list, b's first status.
        # c: that list, c's first status. a: that list again (newer than a's last poll).
        # b: a new list (the old one is what b saw last time). c: the new list.
        assert fresh.requests == {"status": 3, "jobs": 2}

    def test_concurrent_groups_share_one_list_request(self, fresh: RulerSim) -> None:
        """Two groups of one site polled at once send one list request."""
        for i in range(4):
            fresh.add_job(SITE, f"c{i}", status="processing")

        async def go() -> None:
            adapter = RulerAdapter(source_config(fresh.base_url))
            try:
                await asyncio.gather(adapter.poll(refs("c0", "c1")), adapter.poll(refs("c2", "c3")))
            finally:
                await adapter.aclose()

        asyncio.run(go())
        assert fresh.requests["jobs"] == 1


class TestFailedRows:
    """partialcomplete and failed jobs carry their first failing rows."""

    def test_first_rows_truncated_once(self, fresh: RulerSim) -> None:
        """At most 5 rows, messages cut to 200 characters, fetched once."""
        rows = [{"rowNumber": n, "errorMessage": f"Row {n}: bad amount"} for n in range(1, 8)]
        rows[1]["errorMessage"] = "x" * 500
        fresh.add_job(SITE, "p", status="partialcomplete", failures=rows)
        fresh.add_job(SITE, "q", status="processing")
        first, second = Polls(fresh).run(refs("p", "q"), refs("p", "q"))
        for outcome in (first["p"], second["p"]):
            assert outcome.state == State.PARTIAL
            shown = outcome.details["failed_rows"]
            assert [r["row"] for r in shown] == [1, 2, 3, 4, 5]
            assert shown[0]["message"] == "Row 1: bad amount"
            assert len(shown[1]["message"]) == 200
        assert fresh.requests["failures"] == 1
        assert "failed_rows" not in first["q"].details

    def test_failed_job_single_status(self, fresh: RulerSim) -> None:
        """A lone failed job gets its rows too, with the failure reason."""
        fresh.add_job(SITE, "f", status="failed", failure_reason="Column 'amount' is missing")
        fresh.set_job(SITE, "f", failure_count=2)
        (outcomes,) = Polls(fresh).run(refs("f"))
        details = outcomes["f"].details
        assert details["failure_reason"] == "Column 'amount' is missing"
        assert [r["row"] for r in details["failed_rows"]] == [1, 2]

    @pytest.mark.parametrize(
        ("fault", "why"),
        [({"status": 500}, "server_error"), ({"mode": "html"}, "bad_answer")],
    )
    def test_failures_trouble_never_loses_the_result(
        self, fresh: RulerSim, fault: dict[str, Any], why: str
    ) -> None:
        """The terminal result goes out, saying why the rows are missing."""
        fresh.add_job(SITE, "f", status="failed")
        fresh.fail("/failures", **fault)
        (outcomes,) = Polls(fresh).run(refs("f"))
        outcome = outcomes["f"]
        assert outcome.state == State.FAILED
        assert outcome.details["failed_rows_error"].startswith(why)
        assert "failed_rows" not in outcome.details

    def test_hanging_failures_call_is_cut_short(self, fresh: RulerSim) -> None:
        """A failures call that never answers delays the result by its deadline only."""
        fresh.add_job(SITE, "h", status="partialcomplete")
        fresh.fail("/failures", mode="hang")
        started = time.monotonic()
        (outcomes,) = Polls(fresh, request_timeout=1.0).run(refs("h"))
        assert time.monotonic() - started < 3
        assert outcomes["h"].state == State.PARTIAL
        assert outcomes["h"].details["failed_rows_error"].startswith("timeout")


_list_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "jobs",
                    "failures",
                    "data",
                    "jobId",
                    "status",
                    "percentageProgress",
                    "rowNumber",
                    "errorMessage",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


class TestScaleParsers:
    """parse_job_list and parse_failures are lenient and total."""

    def test_lenient_list(self) -> None:
        """Key case, numeric ids and string progress are read; entries without status skipped."""
        entries = parse_job_list(
            {"Jobs": [{"JOBID": 7, "Status": "Processing", "percentageProgress": "40"}, {"a": 1}]}
        )
        assert entries == {"7": ListEntry("7", "Processing", 40.0)}

    @given(_list_json)
    def test_any_json_list(self, body: Any) -> None:
        """A mapping of entries, or a bad answer; never another exception."""
        try:
            entries = parse_job_list(body)
        except PermanentSourceError:
            return
        for job_id, entry in entries.items():
            assert job_id == entry.job_id and entry.status
            assert entry.progress is None or 0 <= entry.progress <= 100

    @given(_list_json)
    def test_any_json_failures(self, body: Any) -> None:
        """At most 5 rows of at most 200 characters, or a bad answer."""
        try:
            rows = parse_failures(body)
        except PermanentSourceError:
            return
        assert len(rows) <= 5
        for row in rows:
            assert set(row) == {"row", "message"} and 0 < len(row["message"]) <= 200

    @settings(
        max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        status=st.sampled_from([200, 200, 200, 204, 404, 429, 500]),
        body=st.binary(max_size=48)
        | _list_json.map(lambda v: json.dumps(v).encode())
        | st.sampled_from(
            [
                b'{"jobs": [{"jobId": "a", "status": "complete"}]}',
                b'{"status": "failed", "failureReason": "x"}',
                b'{"status": "mystery"}',
            ]
        ),
    )
    def test_adapter_on_any_http_answer(
        self, any_answer: AnyAnswer, status: int, body: bytes
    ) -> None:
        """Any answer to any of the calls: one outcome per job, terminal only as stated."""
        any_answer.status, any_answer.body = status, body

        async def go() -> Mapping[str, Any]:
            adapter = RulerAdapter(source_config(any_answer.base_url))
            try:
                return await adapter.poll(refs("a", "b", "c"))
            finally:
                await adapter.aclose()

        outcomes = asyncio.run(go())
        assert len(outcomes) == 3
        for outcome in outcomes.values():
            if isinstance(outcome, PollResult) and outcome.state is not None:
                assert outcome.state == RULER_STATES[outcome.remote_status.lower()]
