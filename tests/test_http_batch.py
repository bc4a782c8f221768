"""The http source's ``batch`` (many jobs per request) and ``discover`` (the jobs of a ``bulk``
entry listed) against a loopback JSON API speaking MLflow's ``runs/search`` and Prefect's
``flow_runs/filter``, hostile answers to both, their config checks, and `poller run` end to end."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_http_source import assert_nowhere, daemon
from world import eventually

from poller.config import JobConfig
from poller.errors import SourceError
from poller.models import JobRef, PollFailure, PollOutcome, PollResult, State
from poller.sources import Discoverer
from poller.sources.base import MAX_DISCOVERED, Discovered
from poller.sources.http import HttpSource
from poller.sources.http.adapter import HttpAdapter
from poller.store.repo import Store
from poller.testing import JsonJobSim, SimThread, WebhookSink

STATES = {"SCHEDULED": "pending", "RUNNING": "running", "FINISHED": "succeeded", "FAILED": "failed"}


def run_info(job: Mapping[str, Any]) -> Any:
    """One run as MLflow's ``runs/search`` lists it (``runs/get`` wraps it in ``run``)."""
    return {
        "info": {
            "run_id": job["id"],
            "run_name": job.get("run_name", f"run-{job['id']}"),
            "experiment_id": str(job.get("group", "0")),
            "status": job["status"],
            "lifecycle_stage": job.get("stage", "active"),
        },
        "data": {},
    }


def mlflow_get(job: Mapping[str, Any]) -> Any:
    return {"run": run_info(job)}


def flow_run(job: Mapping[str, Any]) -> Any:
    """One flow run as Prefect answers it, alone or in ``flow_runs/filter``'s list."""
    return {"id": job["id"], "deployment_id": job.get("group"), "state_type": job["status"]}


@pytest.fixture
def mlflow() -> Iterator[JsonJobSim]:
    server = JsonJobSim(shape=mlflow_get, item=run_info, page_size=5)
    with SimThread(server):
        yield server


@pytest.fixture
def prefect() -> Iterator[JsonJobSim]:
    server = JsonJobSim(shape=flow_run, page_size=5)
    with SimThread(server):
        yield server


def mlflow_source(api: JsonJobSim, **kw: Any) -> HttpSource:
    """MLflow: ``runs/get`` per run, ``runs/search`` by run ids per batch (each item wrapped
    as ``runs/get`` answers, so that the source's expressions read both)."""
    values: dict[str, Any] = {
        "url": f"{api.base_url}/jobs/{{id}}",
        "headers": {"Authorization": f"Bearer {api.token}"},
        "state": "run.info.status",
        "name": "run.info.run_name",
        "states": STATES,
        "max_concurrency": 1,
        "batch": {
            "url": f"{api.base_url}/runs/search",
            "body": {"filter": "attributes.run_id IN ({quoted_ids})", "max_results": 1000},
            "items": "runs[].{run: @}",
            "id": "run.info.run_id",
            "max_ids": 5,
        },
        "discover": {
            "url": f"{api.base_url}/runs/search",
            "method": "POST",
            "body": {"experiment_ids": ["{bulk}"], "page_token": "{next}"},
            "items": "runs[].{run: @}",
            "id": "run.info.run_id",
            "next": "next_page_token",
        },
    }
    values.update(kw)
    return HttpSource.model_validate(values)


def prefect_source(api: JsonJobSim, **kw: Any) -> HttpSource:
    """Prefect: ``flow_runs/{id}`` per run, ``flow_runs/filter`` by ids, deployments listed
    by offset."""
    values: dict[str, Any] = {
        "url": f"{api.base_url}/jobs/{{id}}",
        "headers": {"Authorization": f"Bearer {api.token}"},
        "state": "state_type",
        "states": STATES,
        "batch": {
            "url": f"{api.base_url}/flow_runs/filter",
            "body": {"flow_runs": {"id": {"any_": "{ids}"}}, "limit": 5},
            "items": "@",
            "id": "id",
            "max_ids": 5,
        },
        "discover": {
            "url": f"{api.base_url}/flow_runs/filter",
            "method": "POST",
            "body": {
                "flow_runs": {"deployment_id": {"any_": ["{bulk}"]}},
                "limit": 5,
                "offset": "{offset}",
            },
            "items": "@",
            "id": "id",
        },
    }
    values.update(kw)
    return HttpSource.model_validate(values)


def poll(config: HttpSource, job_ids: Sequence[str]) -> dict[str, PollOutcome]:
    async def go() -> Mapping[str, PollOutcome]:
        adapter = HttpAdapter(config)
        try:
            return await adapter.poll([JobRef(f"s/{j}", "s", j) for j in job_ids])
        finally:
            await adapter.aclose()

    return {key.removeprefix("s/"): outcome for key, outcome in asyncio.run(go()).items()}


def discover(config: HttpSource, bulk: str) -> Discovered:
    async def go() -> Discovered:
        adapter = HttpAdapter(config)
        assert isinstance(adapter, Discoverer)
        try:
            listed = await adapter.discover(JobConfig(source="s", bulk=bulk))
            assert isinstance(listed, Discovered)
            return listed
        finally:
            await adapter.aclose()

    return asyncio.run(go())


def states(outcomes: Mapping[str, PollOutcome]) -> dict[str, State | str]:
    return {
        k: o.state if isinstance(o, PollResult) and o.state else getattr(o, "kind", "?")
        for k, o in outcomes.items()
    }


class TestBatch:
    """Many jobs per request, each item read with the source's own expressions."""

    def test_mlflow_search_by_run_ids(self, mlflow: JsonJobSim) -> None:
        """12 runs cost 3 requests of at most 5 ids; names and states come from the items;
        a run the answer leaves out is not_found, like a 404 of its own."""
        for i in range(12):
            mlflow.add_job(f"r{i:02}", status="FINISHED" if i % 2 else "RUNNING")
        outcomes = poll(mlflow_source(mlflow), [f"r{i:02}" for i in range(12)] + ["gone"])
        assert mlflow.requests["search"] == 3 and mlflow.requests["job"] == 0
        assert states(outcomes) == {
            **{f"r{i:02}": State.SUCCEEDED if i % 2 else State.RUNNING for i in range(12)},
            "gone": "not_found",
        }
        first = outcomes["r00"]
        assert isinstance(first, PollResult) and first.details["job_name"] == "run-r00"
        gone = outcomes["gone"]
        assert isinstance(gone, PollFailure) and not gone.transient
        assert gone.message == "the batch answer did not mention this job"

    def test_prefect_filter_with_the_ids_as_a_list(self, prefect: JsonJobSim) -> None:
        """``"{ids}"`` alone in a body leaf is sent as the JSON list of ids."""
        prefect.add_job("a", status="RUNNING")
        prefect.add_job("b", status="FAILED")
        assert states(poll(prefect_source(prefect), ["a", "b"])) == {
            "a": State.RUNNING,
            "b": State.FAILED,
        }
        assert prefect.requests["filter"] == 1

    def test_a_quote_in_an_id_stays_in_its_string(self, mlflow: JsonJobSim) -> None:
        """Ids are quoted SQL's way in ``{quoted_ids}``: a quote cannot end the string."""
        mlflow.add_job("it's", status="RUNNING")
        mlflow.add_job("x') OR ('1'='1", status="FINISHED")
        assert states(poll(mlflow_source(mlflow), ["it's"])) == {"it's": State.RUNNING}

    def test_a_failed_batch_costs_its_own_jobs(self, mlflow: JsonJobSim) -> None:
        """A 500 answers one batch: its 5 jobs get the failure, the other batch is read."""
        for i in range(10):
            mlflow.add_job(f"r{i}", status="RUNNING")
        mlflow.fail("/runs/search", status=500, times=1)
        outcomes = poll(mlflow_source(mlflow), [f"r{i}" for i in range(10)])
        failed = [k for k, o in outcomes.items() if isinstance(o, PollFailure)]
        assert len(failed) == 5 and all(outcomes[k].transient for k in failed)  # type: ignore[union-attr]
        assert sum(isinstance(o, PollResult) for o in outcomes.values()) == 5

    @pytest.mark.parametrize(
        ("answer", "why"),
        [
            ({"runs": {"r0": 1}}, "the batch items expression found nothing"),
            ({"error_code": "X"}, "the batch items expression found nothing"),
            ("just text", "answer is not JSON"),
            (b"[1, 2", "answer is not JSON"),
            (
                {"runs": [run_info({"id": f"o{i}", "status": "RUNNING"}) for i in range(50)]},
                "the batch answer lists 50 items for 2 ids (does the API apply the batch's"
                " filter?)",
            ),
        ],
    )
    def test_hostile_answers_cost_the_batch_with_a_clear_error(
        self, mlflow: JsonJobSim, answer: Any, why: str
    ) -> None:
        """Wrong shapes and too many items: every job of the batch fails, saying why."""
        mlflow.batch_answer = answer
        outcomes = poll(mlflow_source(mlflow), ["r0", "r1"])
        for outcome in outcomes.values():
            assert isinstance(outcome, PollFailure) and outcome.kind == "bad_answer"
            assert outcome.message == why

    def test_too_big_an_answer_and_unreadable_items(self, mlflow: JsonJobSim) -> None:
        """An answer over the source's cap fails its batch; an item with a value that cannot
        be read costs its own job only."""
        mlflow.batch_answer = {"runs": [{"info": {"run_id": "r0", "pad": "x" * (2 << 20)}}]}
        outcome = poll(mlflow_source(mlflow), ["r0"])["r0"]
        assert isinstance(outcome, PollFailure) and outcome.kind == "bad_answer"
        assert outcome.message == "answer too big: more than 1048576 bytes"
        huge = b"9" * 5000  # valid JSON, but more digits than Python reads
        mlflow.batch_answer = (
            b'{"runs": [{"info": {"run_id": "r0", "status": "RUNNING", "n": ' + huge + b"}},"
            b' {"info": {"run_id": "r1", "status": "RUNNING"}}]}'
        )
        outcomes = poll(mlflow_source(mlflow), ["r0", "r1"])
        assert isinstance(outcomes["r1"], PollResult)
        lost = outcomes["r0"]
        assert isinstance(lost, PollFailure) and lost.kind == "bad_answer"
        assert lost.message.startswith("this job's entry cannot be read"), lost


class TestDiscover:
    """A bulk entry's jobs, every page of them, each with its state as listed."""

    def test_mlflow_pages_by_token(self, mlflow: JsonJobSim) -> None:
        """12 runs of experiment 7 in pages of 5 (3 requests); experiment 8's are not."""
        for i in range(12):
            mlflow.add_job(f"r{i:02}", group=7, status="FINISHED" if i < 4 else "RUNNING")
        mlflow.add_job("other", group=8, status="RUNNING")
        found = discover(mlflow_source(mlflow), "7")
        assert sorted(found) == [f"r{i:02}" for i in range(12)]
        assert mlflow.requests["search"] == 3
        assert found.complete  # the last page named no next: pruned jobs' tombstones may go
        assert found["r00"] is not None and found["r00"].state is State.SUCCEEDED
        assert found["r11"] is not None and found["r11"].state is State.RUNNING

    def test_prefect_pages_by_offset_and_a_filter(self, prefect: JsonJobSim) -> None:
        """Offsets until a page brings nothing new; the filter leaves items out."""
        for i in range(7):
            prefect.add_job(f"f{i}", group="dep", status="FAILED" if i == 3 else "RUNNING")
        config = prefect_source(prefect)
        listed = discover(config, "dep")
        assert len(listed) == 7 and listed.complete
        assert prefect.requests["filter"] == 3  # 5, 2 and an empty page
        spec = config.discover.model_dump() | {"filter": "state_type != 'FAILED'"}  # type: ignore[union-attr]
        found = discover(prefect_source(prefect, discover=spec), "dep")
        assert sorted(found) == ["f0", "f1", "f2", "f4", "f5", "f6"]
        zero = spec | {"filter": "`0`"}  # JMESPath takes 0 for true
        assert len(discover(prefect_source(prefect, discover=zero), "dep")) == 7

    def test_page_cap_and_a_token_that_loops(self, mlflow: JsonJobSim) -> None:
        """max_pages stops a long listing; a server giving the same token again stops too.
        Neither listing is complete (tombstones stay)."""
        for i in range(12):
            mlflow.add_job(f"r{i:02}", group=7, status="RUNNING")
        capped = mlflow_source(mlflow).discover.model_dump() | {"max_pages": 2}  # type: ignore[union-attr]
        cut = discover(mlflow_source(mlflow, discover=capped), "7")
        assert len(cut) == 10 and not cut.complete
        mlflow.reset_counters()
        mlflow.batch_answer = {
            "runs": [run_info({"id": "r0", "status": "RUNNING"})],
            "next_page_token": "again",
        }
        looped = discover(mlflow_source(mlflow), "7")
        assert list(looped) == ["r0"] and not looped.complete
        assert mlflow.requests["search"] == 2

    def test_hostile_pages(self, mlflow: JsonJobSim) -> None:
        """A page that is not a list of items is an error of this listing, said so; listings
        never keep more than MAX_DISCOVERED jobs."""
        mlflow.batch_answer = {"runs": "everything"}
        with pytest.raises(SourceError, match="the discover items expression found nothing"):
            discover(mlflow_source(mlflow), "7")
        plain = mlflow_source(mlflow).discover.model_dump() | {"items": "runs"}  # type: ignore[union-attr]
        with pytest.raises(SourceError, match="discover items expression found a str, not a"):
            discover(mlflow_source(mlflow, discover=plain), "7")
        assert MAX_DISCOVERED == 10_000


KEY_PROBLEMS = """\
sources:
  a:
    type: http
    url: https://x/{id}
    state: s
    states: {X: running}
    batch:
      url: https://x/search
      method: GET
      body: {filter: "{ids}"}
      items: "runs[["
      id: i
      max_ids: 5000
  b:
    type: http
    url: https://x/{id}
    state: s
    states: {X: running}
    batch: {url: "https://x/search/{id}", items: runs, id: i}
    discover:
      url: https://x/list?page={page}&token={next}
      items: runs
      id: i
      max_pages: 0
  c:
    type: http
    url: https://x/{id}
    state: s
    states: {X: running}
    discover: {url: https://x/list, items: runs, id: i, next: token}
  d:
    type: http
    url: https://x/{id}
    state: s
    states: {X: running}
jobs:
  - {source: d, bulk: "7"}
  - {source: c, bulk: "7"}
"""


class TestKeysChecked:
    """`poller check` names each mistake in ``batch`` and ``discover`` with its file:line."""

    def test_mistakes_at_their_lines(self, tmp_path: Path) -> None:
        config = tmp_path / "config.yaml"
        config.write_text(KEY_PROBLEMS)
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        r = subprocess.run(
            [sys.executable, "-m", "poller", "check", "-c", str(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert r.returncode == 2, r.stderr
        lines = [line.strip().removeprefix(str(config)) for line in r.stderr.splitlines()[1:]]
        assert lines == [
            ":10: sources.a.batch.body: a body needs method: POST",
            ":11: sources.a.batch.items: not a valid JMESPath expression (at character 6)",
            ":13: sources.a.batch.max_ids: must be at most 1000; got 5000",
            ":19: sources.b.batch.url: template names unknown field id; expected {ids},"
            " {quoted_ids}",
            ":24: sources.b.discover.max_pages: must be at least 1; got 0",
            ":30: sources.c.discover: next is given: the url or the body must name {next}",
            ":37: jobs[0].bulk: needs its source to have discover (an http source lists no"
            " jobs without it)",
        ]


MLFLOW_CONFIG = """
database: sqlite:///{tmp}/poller.db
sources:
  mlflow:
    type: http
    url: {base}/jobs/{{id}}
    headers: {{Authorization: "Bearer {token}"}}
    state: run.info.status
    name: run.info.run_name
    states: {{RUNNING: running, FINISHED: succeeded, FAILED: failed}}
    batch:
      url: {base}/runs/search
      body: {{filter: "attributes.run_id IN ({{quoted_ids}})", max_results: 100}}
      items: "runs[].{{run: @}}"
      id: run.info.run_id
      max_ids: 100
    discover:
      url: {base}/runs/search
      method: POST
      body: {{experiment_ids: ["{{bulk}}"], page_token: "{{next}}"}}
      items: "runs[].{{run: @}}"
      id: run.info.run_id
      next: next_page_token
      interval: 300ms
channels:
  hook: {hook}
rules:
  - on: [succeeded, failed, unreachable]
    notify: [hook]
polling: {{interval: 200ms, max_interval: 200ms, error_after: 0s}}
jobs:
{jobs}
"""


ENTRY = '  - {source: mlflow, bulk: "7", tags: [exp7]}'


def reload(tmp_path: Path, config: Path) -> None:
    """SIGHUP to the `poller run` of `config` (started by this test), and wait until it says
    it reloaded."""
    log = tmp_path / "daemon.log"
    before = log.read_text().count('"reloaded"')
    (pid,) = [
        int(proc.name)
        for proc in Path("/proc").iterdir()
        if proc.name.isdigit() and _cmdline(proc)[-3:] == ["run", "-c", str(config)]
    ]
    os.kill(pid, signal.SIGHUP)
    eventually(lambda: log.read_text().count('"reloaded"') > before, what="reload")


def _cmdline(proc: Path) -> list[str]:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


class TestDaemon:
    """`poller run` watches every run of an experiment through batches."""

    def test_experiment_runs_discovered_and_polled_in_batches(
        self, tmp_path: Path, mlflow: JsonJobSim
    ) -> None:
        """The first listing records finished runs quietly; a run that ends later, and one
        added later, are notified; no run is asked alone; a run that leaves the batch answers
        is unreachable (not found) after the usual retries; removing the entry stops them."""
        sink = WebhookSink()
        with SimThread(sink):
            mlflow.add_job("old", group=7, run_name="old-run", status="FINISHED")
            for i in range(8):
                mlflow.add_job(f"r{i}", group=7, run_name=f"train-{i}", status="RUNNING")
            text = MLFLOW_CONFIG.format(
                tmp=tmp_path,
                base=mlflow.base_url,
                token=mlflow.token,
                hook=sink.apprise_url,
                jobs=ENTRY,
            )
            with daemon(tmp_path, text) as path:
                store = Store(f"sqlite:///{tmp_path}/poller.db")
                try:
                    eventually(lambda: len(watches(store)) == 9, what="9 watches")
                    eventually(lambda: mlflow.requests["search"] >= 6, what="batch polls")
                    mlflow.set_job("r3", status="FAILED")
                    (failed,) = sink.wait_for(1, timeout=15)
                    assert failed["title"].startswith("❌ train-3 failed"), failed
                    mlflow.add_job("late", group=7, run_name="late-run", status="RUNNING")
                    eventually(lambda: store.get_watch("mlflow/late") is not None, what="late")
                    mlflow.set_job("late", status="FINISHED")
                    mlflow.remove_job("r5")
                    messages = sink.wait_for(3, timeout=20)
                    watch = store.get_watch("mlflow/r0")
                    five = store.get_watch("mlflow/r5")
                    # the entry leaves the config: at the reload, its watches stop
                    path.write_text(text.replace(ENTRY, "  []"))
                    reload(tmp_path, path)
                    stopped = store.get_watch("mlflow/r0")
                finally:
                    store.close()
        titles = sorted(m["title"] for m in messages)
        assert any("late-run succeeded" in t for t in titles), titles
        (lost,) = [m for m in messages if "train-5" in m["title"]]
        assert "did not mention this job (3 in a row)" in lost["message"], lost
        assert not any("old-run" in t for t in titles)
        assert mlflow.requests["job"] == 0
        assert watch is not None and watch.tags == ("exp7",) and watch.origin == "discovered"
        assert five is not None and five.progress.unreachable
        assert stopped is not None and not stopped.progress.active
        assert_nowhere(tmp_path, [mlflow.token])


def watches(store: Store) -> list[Any]:
    """The store's watches; none while the daemon has not made its tables yet."""
    try:
        return store.list_watches()
    except Exception:
        return []
