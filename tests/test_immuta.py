"""The Immuta adapter against a loopback Immuta API, and its parsers on any input."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from world import AnyAnswer

from poller.config import JobConfig
from poller.errors import PermanentSourceError, SourceError
from poller.models import TERMINAL_STATES, JobRef, PollFailure, PollOutcome, PollResult, State
from poller.sources import JobCount
from poller.sources.base import Discovered
from poller.sources.immuta import ImmutaSource, SearchSpec
from poller.sources.immuta.adapter import (
    IMMUTA_STATES,
    MAX_OUTPUT,
    MAX_SUMMARY_ROWS,
    ImmutaAdapter,
    parse_job,
    parse_page,
    parse_statuses,
    parse_summary,
)
from poller.testing import ImmutaSim, NextStyle, SimThread

KEY = "immuta-api-key-0123"


@pytest.fixture
def sim() -> Iterator[ImmutaSim]:
    server = ImmutaSim(KEY)
    with SimThread(server):
        yield server


def config(base_url: str, token: str = KEY, **kw: Any) -> ImmutaSource:
    return ImmutaSource(base_url=base_url, token=SecretStr(token), **kw)


def poll(
    source: ImmutaSource, job_ids: Sequence[str], last_polled: float | None = 1.0
) -> dict[str, PollOutcome]:
    """Poll these jobs (polled before, unless `last_polled` is None) through a fresh adapter;
    outcomes by job id."""

    async def go() -> dict[str, PollOutcome]:
        adapter = ImmutaAdapter(source)
        try:
            refs = [JobRef(f"im/{j}", "im", j, last_polled=last_polled) for j in job_ids]
            outcomes = await adapter.poll(refs)
            assert set(outcomes) == {r.key for r in refs}
            return {r.job_id: outcomes[r.key] for r in refs}
        finally:
            await adapter.aclose()

    return asyncio.run(go())


def discover(source: ImmutaSource, job: JobConfig) -> list[str]:
    return list(listing(source, job))


def listing(source: ImmutaSource, job: JobConfig) -> Discovered:
    async def go() -> Discovered:
        adapter = ImmutaAdapter(source)
        try:
            return await adapter.discover(job)
        finally:
            await adapter.aclose()

    return asyncio.run(go())


def assert_stated(outcome: PollOutcome) -> None:
    """A terminal state only where Immuta's own state says so."""
    if isinstance(outcome, PollResult) and outcome.state in TERMINAL_STATES:
        assert IMMUTA_STATES[outcome.remote_status.lower()] == outcome.state


class TestStatuses:
    """POST /jobs/statuses: many jobs per request, keyed answers."""

    @pytest.mark.parametrize(
        ("remote", "state"),
        [
            ("created", State.PENDING),
            ("active", State.RUNNING),
            ("retry", State.RUNNING),
            ("completed", State.SUCCEEDED),
            ("failed", State.FAILED),
            ("cancelled", State.CANCELLED),
            ("expired", State.EXPIRED),
        ],
    )
    def test_state_mapping(self, sim: ImmutaSim, remote: str, state: State) -> None:
        """Each Immuta state maps to poller's state as the README's state table says."""
        sim.add_job("j", state=remote)
        (outcome,) = poll(config(sim.base_url), ["j"]).values()
        assert isinstance(outcome, PollResult)
        assert (outcome.state, outcome.remote_status) == (state, remote)

    def test_unknown_state_is_kept_raw_and_never_terminal(self, sim: ImmutaSim) -> None:
        """A state Immuta never documented is recorded as it came, with no state."""
        sim.add_job("odd", state="archived")
        outcome = poll(config(sim.base_url), ["odd"])["odd"]
        assert isinstance(outcome, PollResult)
        assert (outcome.state, outcome.remote_status) == (None, "archived")

    def test_one_request_per_chunk(self, sim: ImmutaSim) -> None:
        """250 jobs with batch_size 100 take 3 requests of at most 100 ids each, wait 0."""
        ids = [f"job-{i}" for i in range(250)]
        for job_id in ids:
            sim.add_job(job_id, state="active")
        outcomes = poll(config(sim.base_url, batch_size=100), ids)
        assert all(isinstance(o, PollResult) for o in outcomes.values())
        assert sim.requests["statuses"] == 3
        bodies = sim.statuses_bodies
        assert sorted(len(b["jobIds"]) for b in bodies) == [50, 100, 100]
        assert sorted(i for b in bodies for i in b["jobIds"]) == sorted(ids)
        assert all(b["wait"] == 0 for b in bodies)

    def test_default_chunk_is_100(self, sim: ImmutaSim) -> None:
        """Without batch_size no request carries more than 100 ids."""
        ids = [f"d-{i}" for i in range(101)]
        poll(config(sim.base_url), ids)
        assert sorted(len(b["jobIds"]) for b in sim.statuses_bodies) == [1, 100]

    def test_job_missing_from_the_answer_is_an_error_for_it_alone(self, sim: ImmutaSim) -> None:
        """The answer leaves out an unknown job: that job alone gets a poll error."""
        sim.add_job("here", state="completed")
        outcomes = poll(config(sim.base_url), ["here", "gone"])
        assert isinstance(outcomes["here"], PollResult)
        gone = outcomes["gone"]
        assert isinstance(gone, PollFailure) and gone.kind == "not_found"

    def test_output_is_kept_truncated_and_failures_say_why(self, sim: ImmutaSim) -> None:
        """A failed job's output is in the details (truncated); its message is the reason."""
        sim.add_job("f", state="failed", output={"message": "policy X is invalid", "stack": "s"})
        sim.add_job("big", state="completed", output="x" * 50_000)
        outcomes = poll(config(sim.base_url), ["f", "big"])
        failed, big = outcomes["f"], outcomes["big"]
        assert isinstance(failed, PollResult) and isinstance(big, PollResult)
        assert failed.details["failure_reason"] == "policy X is invalid"
        assert json.loads(failed.details["output"])["message"] == "policy X is invalid"
        assert len(big.details["output"]) == MAX_OUTPUT
        assert big.details["output"].endswith("…")

    def test_dates_and_type_reach_the_details(self, sim: ImmutaSim) -> None:
        """createdOn, startedOn, completedOn and jobType are read."""
        created = datetime.now(UTC) - timedelta(minutes=5)
        sim.add_job("d", state="active", job_type="sdd", created=created)
        sim.set_job("d", state="completed")
        outcome = poll(config(sim.base_url), ["d"])["d"]
        assert isinstance(outcome, PollResult)
        d = outcome.details
        assert d["job_type"] == "sdd"
        assert d["remote_created_at"] == pytest.approx(created.timestamp(), abs=0.01)
        assert d["remote_completed_at"] >= d["remote_started_at"] >= d["remote_created_at"]

    def test_api_key_goes_as_it_is(self, sim: ImmutaSim) -> None:
        """The key without a scheme is accepted; another key is an auth error that hides it."""
        sim.add_job("a", state="active")
        assert isinstance(poll(config(sim.base_url), ["a"])["a"], PollResult)
        wrong = poll(config(sim.base_url, token="not-the-key-4567"), ["a"])["a"]
        assert isinstance(wrong, PollFailure) and wrong.kind == "auth"
        assert "not-the-key-4567" not in wrong.message

    @pytest.mark.parametrize(
        ("fault", "kind"),
        [
            ({"status": 500}, "server_error"),
            ({"status": 429, "retry_after": 9}, "rate_limited"),
            ({"mode": "html"}, "bad_answer"),
            ({"mode": "truncated"}, "bad_answer"),
            ({"mode": "refuse"}, "network"),
            ({"status": 200, "body": ["not", "keyed"]}, "not_found"),
            ({"status": 200, "body": "completed"}, "bad_answer"),
        ],
    )
    def test_bad_answers_fail_every_job_of_the_chunk(
        self, sim: ImmutaSim, fault: dict[str, Any], kind: str
    ) -> None:
        """Trouble with a request is a poll error for the jobs it carried, never terminal."""
        sim.add_job("a", state="completed")
        sim.add_job("b", state="active")
        sim.fail("/jobs/statuses", **fault)
        outcomes = poll(config(sim.base_url), ["a", "b"])
        for outcome in outcomes.values():
            assert isinstance(outcome, PollFailure), outcome
            assert outcome.kind == kind
        if "retry_after" in fault:
            failure = outcomes["a"]
            assert isinstance(failure, PollFailure) and failure.retry_after == pytest.approx(9)

    @pytest.mark.parametrize(
        "body",
        [
            {"statuses": {"a": {"id": "a", "State": "Completed"}}},
            [{"jobId": "a", "state": "completed"}],
            {"A": "completed"},
            {"data": [{"ID": "a", "status": "completed"}]},
        ],
    )
    def test_lenient_answer_shapes(self, sim: ImmutaSim, body: Any) -> None:
        """Wrapped, listed, differently cased or bare-string answers are read."""
        sim.add_job("a", state="completed")
        sim.fail("/jobs/statuses", status=200, body=body)
        outcome = poll(config(sim.base_url), ["a"])["a"]
        assert isinstance(outcome, PollResult), outcome
        assert outcome.state == State.SUCCEEDED

    def test_huge_answer_is_a_poll_error(self, sim: ImmutaSim) -> None:
        """An answer larger than the cap is not read to the end."""
        sim.add_job("a", state="active")
        sim.fail("/jobs/statuses", status=200, body={"a": {"state": "active", "x": "y" * 2**21}})
        outcome = poll(config(sim.base_url), ["a"])["a"]
        assert isinstance(outcome, PollFailure) and outcome.kind == "bad_answer"


class TestLongPoll:
    """long_poll: a lone job waits long; several jobs wait a second (the API answers a wait
    only when every job in it has ended)."""

    def test_several_jobs_wait_a_second(self, sim: ImmutaSim) -> None:
        """Two jobs, one ending 0.5 s in: one request that waits 1 s answers both."""
        sim.add_job("lp", state="active")
        sim.add_job("other", state="active")
        sim.script_job("lp", [(0.5, {"state": "completed"})])
        started = time.monotonic()
        outcomes = poll(config(sim.base_url, long_poll=5), ["lp", "other"])
        elapsed = time.monotonic() - started
        lp = outcomes["lp"]
        assert isinstance(lp, PollResult) and lp.state == State.SUCCEEDED
        assert 0.4 < elapsed < 2.0
        assert sim.requests["statuses"] == 1
        (body,) = sim.statuses_bodies
        assert (body["wait"], body["pollInterval"]) == (1, 1)

    def test_a_lone_job_waits_long_and_answers_at_its_end(self, sim: ImmutaSim) -> None:
        """One job ending 1.2 s in: its own request waits up to long_poll, answers at the end."""
        sim.add_job("lp", state="active")
        sim.script_job("lp", [(1.2, {"state": "failed"})])
        started = time.monotonic()
        outcome = poll(config(sim.base_url, long_poll=5), ["lp"])["lp"]
        assert 1.0 < time.monotonic() - started < 3.0
        assert isinstance(outcome, PollResult) and outcome.state == State.FAILED
        (body,) = sim.statuses_bodies
        assert (body["wait"], body["pollInterval"]) == (5, 1)

    def test_the_simulator_waits_for_every_job(self, sim: ImmutaSim) -> None:
        """As the vendor documents it: one job's end does not answer a wait on two."""
        sim.add_job("a", state="active")
        sim.add_job("b", state="active")
        sim.script_job("a", [(0.2, {"state": "completed"})])
        started = time.monotonic()
        with httpx.Client() as client:
            answer = client.post(
                f"{sim.base_url}/jobs/statuses",
                json={"jobIds": ["a", "b"], "wait": 1.5, "pollInterval": 0.1},
                headers={"Authorization": KEY},
            ).json()
        assert time.monotonic() - started > 1.4
        assert (answer["a"]["state"], answer["b"]["state"]) == ("completed", "active")

    def test_split_keeps_requests_small(self) -> None:
        """A job per request while long-wait slots last (all but two), then batch_size chunks;
        without long_poll a group stays whole."""
        refs = [JobRef(f"im/{i}", "im", str(i), last_polled=1.0) for i in range(12)]
        fresh = [JobRef(f"im/n{i}", "im", f"n{i}") for i in range(2)]

        async def go() -> tuple[list[list[JobRef]], list[list[JobRef]]]:
            adapter = ImmutaAdapter(config("http://127.0.0.1:9", long_poll=5, batch_size=4))
            plain = ImmutaAdapter(config("http://127.0.0.1:9"))
            try:
                return adapter.split([*refs, *fresh]), plain.split(refs)
            finally:
                await adapter.aclose()
                await plain.aclose()

        parts, whole = asyncio.run(go())
        assert [len(p) for p in parts] == [1] * 6 + [4, 2, 2]
        assert [r for p in parts for r in p] == [*refs, *fresh]
        assert whole == [refs]

    def test_a_first_poll_does_not_wait(self, sim: ImmutaSim) -> None:
        """A job never polled is asked with wait 0: a new watch learns its state at once."""
        sim.add_job("new", state="active")
        outcome = poll(config(sim.base_url, long_poll=5), ["new"], last_polled=None)["new"]
        assert isinstance(outcome, PollResult) and outcome.state == State.RUNNING
        assert [b["wait"] for b in sim.statuses_bodies] == [0]

    def test_no_end_answers_after_the_wait(self, sim: ImmutaSim) -> None:
        """Nothing ends: the answer comes after the wait, with the jobs' states."""
        sim.add_job("q", state="active")
        started = time.monotonic()
        outcome = poll(config(sim.base_url, long_poll=0.5), ["q"])["q"]
        assert 0.4 < time.monotonic() - started < 3
        assert isinstance(outcome, PollResult) and outcome.state == State.RUNNING
        (body,) = sim.statuses_bodies
        assert (body["wait"], body["pollInterval"]) == (0.5, 0.5)

    def test_deadline_outlasts_the_wait(self, sim: ImmutaSim) -> None:
        """A request_timeout barely above long_poll still lets the long poll answer."""
        sim.add_job("q", state="active")
        sim.fail("/jobs/statuses", mode="delay", delay=0.3)
        outcome = poll(config(sim.base_url, long_poll=1, request_timeout=1.1), ["q"])["q"]
        assert isinstance(outcome, PollResult), outcome

    def test_never_waits_for_ever(self, sim: ImmutaSim) -> None:
        """wait is never negative, with or without long_poll."""
        sim.add_job("q", state="completed")
        poll(config(sim.base_url), ["q"])
        poll(config(sim.base_url, long_poll=2), ["q"])
        assert [b["wait"] for b in sim.statuses_bodies] == [0, 2]

    def test_repeated_long_polls_stay_few(self, sim: ImmutaSim) -> None:
        """Polling back to back for ~2.5 s costs a few requests and sees the end promptly."""
        sim.add_job("r", state="active")
        sim.script_job("r", [(2.0, {"state": "failed", "output": {"message": "nope"}})])

        async def go() -> float:
            adapter = ImmutaAdapter(config(sim.base_url, long_poll=1.5))
            ref = JobRef("im/r", "im", "r", last_polled=1.0)
            try:
                while True:
                    outcome = (await adapter.poll([ref]))[ref.key]
                    if isinstance(outcome, PollResult) and outcome.state == State.FAILED:
                        return time.monotonic()
            finally:
                await adapter.aclose()

        started = time.monotonic()
        seen = asyncio.run(go()) - started
        assert 1.9 < seen < 3.2
        assert sim.requests["statuses"] <= 3


class TestDiscover:
    """Bulks and searches, every page of them."""

    def test_bulk_lists_every_job_of_the_bulk(self, sim: ImmutaSim) -> None:
        """GET /jobs?bulkId= across pages gives the bulk's jobs and no others."""
        for i in range(230):
            sim.add_job(f"b-{i}", bulk_id="bulk-1" if i % 2 == 0 else "bulk-2")
        listed = listing(config(sim.base_url), JobConfig(source="im", bulk="bulk-1"))
        assert sorted(listed) == sorted(f"b-{i}" for i in range(0, 230, 2))
        assert sim.requests["jobs"] == 2
        assert listed.complete  # read to its end: pruned jobs' tombstones may go

    def test_a_listing_missing_an_entry_is_not_complete(self, sim: ImmutaSim) -> None:
        """A job whose entry has no readable id is left out, and the listing says it is not
        complete (a tombstone of that job must stay)."""
        sim.fail("/jobs/search", status=200, body={"jobs": [{"id": "x"}, {"id": []}]})
        listed = listing(config(sim.base_url), JobConfig(source="im", search=SearchSpec()))
        assert list(listed) == ["x"] and not listed.complete

    @pytest.mark.parametrize("style", ["offset", "url", "absent"])
    def test_search_follows_paging_to_the_end(self, style: NextStyle) -> None:
        """next as an offset, a URL, or left out: every page is read once."""
        server = ImmutaSim(KEY, max_page_size=7, next_style=style)
        with SimThread(server):
            for i in range(30):
                server.add_job(f"s-{i:02}", state="failed")
            ids = discover(config(server.base_url), JobConfig(source="im", search=SearchSpec()))
            assert sorted(ids) == [f"s-{i:02}" for i in range(30)]
            assert server.requests["search"] == 5

    def test_search_filters(self, sim: ImmutaSim) -> None:
        """jobType (several), state and the creation dates reach the API."""
        now = datetime.now(UTC)
        sim.add_job("old", state="failed", job_type="policyUpdate", created=now - timedelta(days=3))
        sim.add_job("new", state="failed", job_type="policyUpdate", created=now)
        sim.add_job("sdd", state="failed", job_type="sdd", created=now)
        sim.add_job("other", state="failed", job_type="other", created=now)
        sim.add_job("fine", state="completed", job_type="policyUpdate", created=now)
        search = SearchSpec(
            jobType=("policyUpdate", "sdd"),
            state=("failed",),
            startDate=(now - timedelta(days=1)).isoformat(),
        )
        ids = discover(config(sim.base_url), JobConfig(source="im", search=search))
        assert sorted(ids) == ["new", "sdd"]

    def test_a_server_that_loops_is_left(self, sim: ImmutaSim) -> None:
        """A next that points back to the same page ends the listing."""
        sim.fail("/jobs/search", status=200, body={"jobs": [{"id": "x"}], "next": 0}, times=None)
        assert discover(config(sim.base_url), JobConfig(source="im", search=SearchSpec())) == ["x"]
        assert sim.requests["search"] == 1

    def test_next_on_another_host_is_refused(self, sim: ImmutaSim) -> None:
        """The API key is never sent to a host a next link names."""
        body = {"jobs": [{"id": "x"}], "next": "https://elsewhere.example/jobs/search?offset=1"}
        sim.fail("/jobs/search", status=200, body=body)
        with pytest.raises(PermanentSourceError, match="another host"):
            discover(config(sim.base_url), JobConfig(source="im", search=SearchSpec()))

    @pytest.mark.parametrize("fault", [{"status": 503}, {"mode": "html"}, {"status": 401}])
    def test_errors_raise_source_errors(self, sim: ImmutaSim, fault: dict[str, Any]) -> None:
        """A page that cannot be had is a SourceError for the caller to log."""
        sim.fail("/jobs", **fault)
        with pytest.raises(SourceError):
            discover(config(sim.base_url), JobConfig(source="im", bulk="b"))


# -- any input -------------------------------------------------------------------------------

_IDS = ["a", "b", "C"]
_STATES = [*IMMUTA_STATES, "Completed", "FAILED", "done", "", "succeeded"]
_scalars = st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=12)
_json = st.recursive(
    _scalars | st.sampled_from(_STATES),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [*_IDS, "id", "jobId", "state", "State", "status", "output", "data", "statuses"]
            )
            | st.text(max_size=6),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)
_entries = st.fixed_dictionaries(
    {"state": st.sampled_from(_STATES) | _scalars},
    optional={"output": _json, "createdOn": _scalars, "id": _scalars},
)
_answers = _json | st.dictionaries(st.sampled_from([*_IDS, "c", "x"]), _entries | _json)


class TestAnyInput:
    """Parsers and the adapter are total: a result or a poll error, never an exception."""

    @given(_answers)
    def test_parse_statuses_answers_every_job(self, body: Any) -> None:
        """Every requested id gets an outcome; terminal only for Immuta's terminal states."""
        outcomes = parse_statuses(body, _IDS)
        assert list(outcomes) == _IDS
        for outcome in outcomes.values():
            assert isinstance(outcome, PollResult | PollFailure)
            assert_stated(outcome)

    @given(_entries | _json)
    def test_parse_job_is_a_result_or_a_bad_answer(self, entry: Any) -> None:
        """One entry: a result, or PermanentSourceError; never another exception."""
        try:
            result = parse_job(entry)
        except PermanentSourceError:
            return
        assert_stated(result)
        assert len(result.details.get("output", "")) <= MAX_OUTPUT

    @given(_json)
    def test_parse_page_is_a_page_or_a_bad_answer(self, body: Any) -> None:
        """A listing page: ids and a marker, or PermanentSourceError."""
        try:
            ids, _marker = parse_page(body)
        except PermanentSourceError:
            return
        assert all(isinstance(i, str) and i for i in ids)

    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        status=st.sampled_from([200, 200, 200, 201, 204, 302, 400, 401, 404, 429, 500, 503]),
        body=st.binary(max_size=64)
        | _answers.map(lambda v: json.dumps(v).encode())
        | _answers.map(lambda v: json.dumps(v).encode()[:7])
        | st.just(b"<!DOCTYPE html><html></html>"),
    )
    def test_adapter_on_any_http_answer(
        self, any_answer: AnyAnswer, status: int, body: bytes
    ) -> None:
        """Any status and any bytes: one outcome per job, never an unstated terminal state."""
        any_answer.status, any_answer.body = status, body
        outcomes = poll(config(any_answer.base_url), _IDS)
        for outcome in outcomes.values():
            assert_stated(outcome)


class TestSummary:
    """`poller summary`: the API's counts by job type and state, bounded, with clear errors."""

    @staticmethod
    def summary(tmp_path: Path, base_url: str, *args: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "config.yaml"
        path.write_text(
            f"sources:\n  im: {{type: immuta, base_url: '{base_url}', token: {KEY}}}\n"
            "  ru: {type: ruler, token: t}\n"
        )
        return subprocess.run(
            [sys.executable, "-m", "poller", "summary", "-c", str(path), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_counts_by_type_and_state(self, tmp_path: Path, sim: ImmutaSim) -> None:
        """The table and the JSON give the simulator's counts; filters reach the API."""
        now = datetime.now(UTC)
        for i in range(3):
            sim.add_job(f"p{i}", state="completed", created=now)
        sim.add_job("p-failed", state="failed", created=now)
        sim.add_job("s", state="active", job_type="sdd", created=now)
        sim.add_job("old", state="failed", job_type="sdd", created=now - timedelta(days=3))
        shown = self.summary(tmp_path, sim.base_url, "im")
        assert shown.returncode == 0, shown.stderr
        lines = [line.split() for line in shown.stdout.splitlines()]
        assert lines[0] == ["im:", "6", "jobs"]
        assert ["policyUpdate", "completed", "3"] in lines
        assert ["sdd", "failed", "1"] in lines and ["sdd", "active", "1"] in lines
        done = self.summary(tmp_path, sim.base_url, "im", "--job-type", "sdd", "--since", "1d")
        assert done.returncode == 0, done.stderr
        shown = self.summary(
            tmp_path, sim.base_url, "im", "--job-type", "sdd", "--since", "1d", "--json"
        )
        document = json.loads(shown.stdout)
        assert document["counts"] == [{"job_type": "sdd", "state": "active", "count": 1}]
        assert (document["total"], document["job_types"], document["truncated"]) == (
            1,
            ["sdd"],
            False,
        )
        assert sim.requests["summary"] == 3

    @pytest.mark.parametrize(
        ("fault", "said"),
        [
            ({"status": 401}, "auth: HTTP 401"),
            ({"status": 503}, "unavailable"),
            ({"mode": "html"}, "bad_answer"),
            ({"status": 200, "body": {"jobTypes": "many"}}, "not a summary of jobs"),
        ],
    )
    def test_api_errors_are_exit_1_and_say_why(
        self, tmp_path: Path, sim: ImmutaSim, fault: dict[str, Any], said: str
    ) -> None:
        """An answer that is not a summary is exit 1 with the reason on stderr, no traceback."""
        sim.fail("/jobs/summary", times=None, **fault)
        shown = self.summary(tmp_path, sim.base_url, "im")
        assert shown.returncode == 1
        assert said in shown.stderr and "Traceback" not in shown.stderr
        assert shown.stdout == ""

    @pytest.mark.parametrize(
        ("args", "said"),
        [
            (["nope"], "no source nope in the config (sources: im, ru)"),
            (["ru"], "source ru (ruler) cannot count its jobs"),
            (["im", "--since", "soon"], "--since: expected a duration"),
            (["im", "--since", "0s"], "--since: must be more than 0s"),
            (["im", "--job-type", " "], "--job-type: must not be empty"),
        ],
    )
    def test_usage_errors_are_exit_2(
        self, tmp_path: Path, sim: ImmutaSim, args: list[str], said: str
    ) -> None:
        """A source that is not there or cannot count, or a bad option: exit 2, no request."""
        shown = self.summary(tmp_path, sim.base_url, *args)
        assert (shown.returncode, shown.stdout) == (2, "")
        assert said in shown.stderr
        assert sim.requests["summary"] == 0

    def test_other_shapes_are_read(self) -> None:
        """Rows of type, state and count; an object keyed by type; counts summed per pair."""
        rows = [
            {"jobType": "a", "state": "failed", "count": 2},
            {"jobType": "a", "state": "failed", "count": "3"},
            {"type": "b", "status": "active", "total": 1},
        ]
        assert parse_summary({"data": rows}).counts == (
            JobCount("a", "failed", 2),
            JobCount("b", "active", 1),
        )
        assert parse_summary({"a": {"completed": 4}, "b": {}}).counts == (
            JobCount("a", "completed", 4),
        )

    def test_bounded(self) -> None:
        """Only MAX_SUMMARY_ROWS counts are read; more are said to be left out; odd counts
        (negative, fractions of absurd size, booleans, text) are left out."""
        states = {f"s{i}": 1 for i in range(MAX_SUMMARY_ROWS + 50)}
        answer = parse_summary({"jobTypes": [{"jobType": "t", "states": states}]})
        assert len(answer.counts) == MAX_SUMMARY_ROWS and answer.truncated
        odd = {"t": {"neg": -1, "big": 1e300, "yes": True, "text": "7", "ok": 2}}
        assert parse_summary(odd).counts == (JobCount("t", "ok", 2),)

    @given(_json)
    def test_any_answer_is_a_summary_or_a_bad_answer(self, body: Any) -> None:
        """Whatever the API answers: a bounded summary, or PermanentSourceError."""
        try:
            answer = parse_summary(body)
        except PermanentSourceError:
            return
        assert len(answer.counts) <= MAX_SUMMARY_ROWS
        assert all(c.count >= 0 and c.job_type and c.state for c in answer.counts)
