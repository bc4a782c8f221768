"""The generic http source against a loopback JSON job API, its parser on any input, and the
daemon polling it end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from world import AnyAnswer, daemon, eventually

from poller.errors import PermanentSourceError
from poller.models import TERMINAL_STATES, JobRef, PollFailure, PollOutcome, PollResult, State
from poller.sources.auth import STALE_403
from poller.sources.http import HttpSource
from poller.sources.http.adapter import (
    HttpAdapter,
    parse_answer,
    read_time,
    render_body,
    render_url,
)
from poller.testing import JsonJobSim, LoginUser, OAuthClient, SimThread, WebhookSink

TOKEN = "warehouse-token-8899"
STATES = {"QUEUED": "pending", "RUNNING": "running", "DONE": "succeeded", "ERROR": "failed"}


@pytest.fixture
def sim() -> Iterator[JsonJobSim]:
    server = JsonJobSim(TOKEN)
    with SimThread(server):
        yield server


def source(url: str, **kw: Any) -> HttpSource:
    values: dict[str, Any] = {
        "url": url,
        "headers": {"Authorization": SecretStr(f"Bearer {TOKEN}")},
        "state": "data.status",
        "progress": "data.percent",
        "states": STATES,
    }
    values.update(kw)
    return HttpSource(**values)


def ref(job_id: str) -> JobRef:
    return JobRef(key=f"wh/{job_id}", source="wh", job_id=job_id)


def poll(config: HttpSource, job_ids: Sequence[str]) -> dict[str, PollOutcome]:
    return poll_rounds(config, [job_ids])[-1]


def poll_rounds(
    config: HttpSource,
    rounds: Sequence[Sequence[str]],
    between: Callable[[int], None] = lambda i: None,
) -> list[dict[str, PollOutcome]]:
    """Poll with one adapter (one client, one token cache) in rounds; `between(i)` runs after
    round i."""

    async def go() -> list[dict[str, PollOutcome]]:
        adapter = HttpAdapter(config)
        answers = []
        try:
            for i, job_ids in enumerate(rounds):
                refs = [ref(j) for j in job_ids]
                outcomes = await adapter.poll(refs)
                answers.append({r.job_id: outcomes[r.key] for r in refs})
                await asyncio.to_thread(between, i)
            return answers
        finally:
            await adapter.aclose()

    return asyncio.run(go())


def assert_stated(outcome: PollOutcome, states: Mapping[str, Any] = STATES) -> None:
    """Terminal only where the configured map says the remote value is."""
    if isinstance(outcome, PollResult) and outcome.state in TERMINAL_STATES:
        mapped = {k.lower(): State(v) for k, v in states.items()}
        assert mapped[outcome.remote_status.lower()] == outcome.state


class TestAgainstAnApi:
    """Real requests to a simulated JSON job API."""

    def test_get_with_state_progress_and_details(self, sim: JsonJobSim) -> None:
        """The url template, the JMESPath expressions and detail fields are applied."""
        sim.add_job("j1", status="RUNNING", percent="40", message="loading", rows={"ok": 4})
        config = source(
            sim.base_url + "/jobs/{id}",
            detail={"failure_reason": "data.message", "rows": "data.rows"},
        )
        outcome = poll(config, ["j1"])["j1"]
        assert isinstance(outcome, PollResult)
        assert (outcome.state, outcome.remote_status, outcome.progress) == (
            State.RUNNING,
            "RUNNING",
            40,
        )
        assert outcome.details == {"failure_reason": "loading", "rows": '{"ok":4}'}

    def test_states_map_ignores_case_and_unmapped_stay_raw(self, sim: JsonJobSim) -> None:
        """done maps like DONE; a value not in the map is raw and never terminal."""
        sim.add_job("a", status="done")
        sim.add_job("b", status="Archiving")
        outcomes = poll(source(sim.base_url + "/jobs/{id}"), ["a", "b"])
        a, b = outcomes["a"], outcomes["b"]
        assert isinstance(a, PollResult) and a.state == State.SUCCEEDED
        assert isinstance(b, PollResult) and (b.state, b.remote_status) == (None, "Archiving")

    def test_post_with_a_body_template(self, sim: JsonJobSim) -> None:
        """method POST sends the body template filled with the job's fields."""
        sim.add_job("p/1", status="ERROR")
        config = source(sim.base_url + "/jobs/query", method="POST", body={"id": "{id}"})
        outcome = poll(config, ["p/1"])["p/1"]
        assert isinstance(outcome, PollResult) and outcome.state == State.FAILED
        assert sim.requests["query"] == 1

    def test_ids_are_quoted_in_the_url(self, sim: JsonJobSim) -> None:
        """An id with a slash or a space stays one path segment."""
        sim.add_job("a b/c", status="QUEUED")
        outcome = poll(source(sim.base_url + "/jobs/{id}"), ["a b/c"])["a b/c"]
        assert isinstance(outcome, PollResult) and outcome.state == State.PENDING
        assert sim.request_log[-1][1].endswith("/jobs/a%20b%2Fc")

    def test_custom_answer_shapes(self) -> None:
        """Numbers as states, nested lists and functions in the expressions."""
        server = JsonJobSim(
            TOKEN,
            shape=lambda job: {"result": [{"code": job["code"], "steps": job["steps"]}]},
        )
        with SimThread(server):
            server.add_job("n", code=2, steps=[20, 30])
            config = source(
                server.base_url + "/jobs/{id}",
                state="result[0].code",
                progress="sum(result[0].steps)",
                states={"1": "running", "2": "succeeded"},
            )
            outcome = poll(config, ["n"])["n"]
        assert isinstance(outcome, PollResult)
        assert (outcome.state, outcome.remote_status, outcome.progress) == (
            State.SUCCEEDED,
            "2",
            50,
        )

    @pytest.mark.parametrize(
        ("fault", "kind"),
        [
            ({"status": 500}, "server_error"),
            ({"status": 404}, "not_found"),
            ({"mode": "html"}, "bad_answer"),
            ({"mode": "truncated"}, "bad_answer"),
            ({"status": 200, "body": {"data": {"status": {"nested": 1}}}}, "bad_answer"),
            ({"status": 200, "body": {"other": 1}}, "bad_answer"),
        ],
    )
    def test_bad_answers_become_poll_errors(
        self, sim: JsonJobSim, fault: dict[str, Any], kind: str
    ) -> None:
        """Trouble and answers without a plain state are poll errors."""
        sim.add_job("f", status="DONE")
        sim.fail(**fault)
        outcome = poll(source(sim.base_url + "/jobs/{id}"), ["f"])["f"]
        assert isinstance(outcome, PollFailure) and outcome.kind == kind, outcome

    def test_headers_carry_the_credentials_and_never_leak(self, sim: JsonJobSim) -> None:
        """Without the right header it is an auth error, whose message hides the token."""
        sim.add_job("h", status="DONE")
        config = source(
            sim.base_url + "/jobs/{id}", headers={"Authorization": SecretStr("Bearer wrong-4455")}
        )
        outcome = poll(config, ["h"])["h"]
        assert isinstance(outcome, PollFailure) and outcome.kind == "auth"
        assert "wrong-4455" not in outcome.message


CLIENT = OAuthClient("poller", "s3cret-client-7788", expires_in=3600, scope="jobs:read")


def oauth_source(api: JsonJobSim, secret: str = CLIENT.client_secret, **kw: Any) -> HttpSource:
    oauth = {
        "token_url": api.base_url + "/token",
        "client_id": CLIENT.client_id,
        "client_secret": SecretStr(secret),
        "scope": "jobs:read",
        **kw,
    }
    return source(api.base_url + "/jobs/{id}", headers={}, auth={"oauth2": oauth})


def succeeded(outcomes: Mapping[str, PollOutcome]) -> bool:
    return all(isinstance(o, PollResult) and o.state == State.SUCCEEDED for o in outcomes.values())


class TestAuth:
    """Basic and OAuth 2 client credentials against a loopback token endpoint and job API."""

    @pytest.fixture
    def api(self) -> Iterator[JsonJobSim]:
        server = JsonJobSim(oauth=CLIENT)
        with SimThread(server):
            for i in range(20):
                server.add_job(f"j{i}", status="DONE")
            yield server

    def test_one_token_serves_many_polls(self, api: JsonJobSim) -> None:
        """20 jobs polled concurrently, three times over: one token request in all."""
        jobs = [f"j{i}" for i in range(20)]
        rounds = poll_rounds(oauth_source(api), [jobs, jobs, jobs])
        assert all(succeeded(r) for r in rounds)
        assert (api.requests["token"], api.requests["job"]) == (1, 60)

    def test_an_echoed_token_is_not_kept(self, api: JsonJobSim) -> None:
        """An API that echoes the token it was sent: the detail keeps it masked."""
        api.echo_authorization = True
        config = oauth_source(api).model_copy(update={"detail": {"echo": "echo"}})
        outcome = poll(config, ["j1"])["j1"]
        assert isinstance(outcome, PollResult) and outcome.details["echo"] == "Bearer ***"
        assert api.issued_tokens[0] not in str(outcome)

    def test_client_secret_in_the_form(self, api: JsonJobSim) -> None:
        """client_auth: post sends the client's id and secret in the form instead of Basic."""
        assert succeeded(poll(oauth_source(api, client_auth="post"), ["j1"]))
        assert api.requests["token"] == 1

    def test_refreshed_when_it_expires(self) -> None:
        """A token valid 1 s is fetched again for a poll after it expired, before a 401."""
        api = JsonJobSim(oauth=OAuthClient("poller", CLIENT.client_secret, expires_in=1))
        with SimThread(api):
            api.add_job("j", status="DONE")
            config = oauth_source(api, scope=None)
            rounds = poll_rounds(config, [["j"], ["j"]], between=lambda i: time.sleep(1.2))
        assert all(succeeded(r) for r in rounds)
        assert (api.requests["token"], api.requests["job"]) == (2, 2)

    def test_fetched_again_once_on_401(self, api: JsonJobSim) -> None:
        """A token the API stops accepting: one new token, the request sent once more."""
        rounds = poll_rounds(
            oauth_source(api), [["j1"], ["j1"]], between=lambda i: api.revoke_tokens()
        )
        assert all(succeeded(r) for r in rounds)
        assert (api.requests["token"], api.requests["job"]) == (2, 3)

    def test_a_token_refused_twice_is_an_auth_error(self, api: JsonJobSim) -> None:
        """The API refuses even a new token: an auth error, and no loop of token requests."""
        api.fail("/jobs/", status=401, times=None)
        outcome = poll(oauth_source(api), ["j1"])["j1"]
        assert isinstance(outcome, PollFailure) and outcome.kind == "auth"
        assert api.requests["token"] == 2

    def test_wrong_client_secret(self, api: JsonJobSim) -> None:
        """A refused token request is each watch's auth error, in words, without the secret;
        the 20 jobs polled together cost one token request."""
        jobs = [f"j{i}" for i in range(20)]
        outcomes = poll(oauth_source(api, secret="wrong-secret-4455"), jobs)
        for outcome in outcomes.values():
            assert isinstance(outcome, PollFailure) and outcome.kind == "auth"
            assert outcome.message == (
                'the token endpoint refused: HTTP 401 (invalid_client); the API says: "bad secret"'
            )
        assert (api.requests["token"], api.requests["job"]) == (1, 0)

    @pytest.mark.parametrize(
        ("answer", "why"),
        [
            ({"token_type": "Bearer"}, "no usable access_token"),
            ({"access_token": "x" * 9000}, "no usable access_token"),
            ({"access_token": "a\nb"}, "not printable ASCII"),
            ({"access_token": "abc", "token_type": "mac"}, "not a bearer token"),
            ({"access_token": "abc", "expires_in": -5}, "expires_in"),
            ({"access_token": "abc", "expires_in": "soon"}, "expires_in"),
            ([1, 2], "not a JSON object"),
            ("x" * 70_000, "too large"),
        ],
    )
    def test_hostile_token_answers(self, api: JsonJobSim, answer: Any, why: str) -> None:
        """A token answer of the wrong shape or size is an auth error that says what is wrong."""
        api.fail("/token", status=200, body=answer)
        outcome = poll(oauth_source(api), ["j1"])["j1"]
        assert isinstance(outcome, PollFailure) and outcome.kind == "auth", outcome
        assert why in outcome.message
        assert api.requests["job"] == 0

    def test_login_token_expired_with_403(self) -> None:
        """Airflow 3 answers an expired token with 403, not 401: a token older than
        `STALE_403` is then fetched again and the request sent once more. A 403 to a token
        just fetched is a permission refused: an auth error at once, with the API's words,
        and no token request."""
        user = LoginUser("poller", "airflow-pass-3141", lifetime=STALE_403 - 2)
        api = JsonJobSim(login=user)
        with SimThread(api):
            api.add_job("j1", status="DONE")
            api.add_job("j2", status="DONE")
            api.fail(
                "/jobs/j2", status=403, body={"detail": "Forbidden: no read on j2"}, times=None
            )
            login = {
                "url": api.base_url + "/auth/token",
                "username": "poller",
                "password": SecretStr(user.password),
            }
            config = source(api.base_url + "/jobs/{id}", headers={}, auth={"login": login})

            def between(i: int) -> None:
                if i == 0:  # the token expires (server side) and grows older than STALE_403
                    time.sleep(STALE_403 + 0.5)

            first, expired, fresh = poll_rounds(config, [["j1", "j2"], ["j1"], ["j2"]], between)
        assert isinstance(first["j1"], PollResult) and isinstance(expired["j1"], PollResult)
        for refused in (first["j2"], fresh["j2"]):
            assert isinstance(refused, PollFailure) and refused.kind == "auth", refused
            assert refused.message == (
                'HTTP 403: credentials refused; the API says: "Forbidden: no read on j2"'
            )
        # one login, the 403 of the expired token, one login again and its request once more
        assert api.requests["login"] == 2
        assert api.requests["job"] == 2 + 2 + 1

    def test_a_refused_login_quotes_the_endpoint_not_the_password(self) -> None:
        """A login endpoint that echoes the password it refused: its words are quoted, the
        password masked; a bare ``{"error": code}`` is not said twice."""
        api = JsonJobSim(login=LoginUser("poller", "the-right-one"))
        wrong = "wrong-pass-2424"
        with SimThread(api):
            login = {"url": api.base_url + "/auth/token", "username": "poller", "password": wrong}
            config = source(api.base_url + "/jobs/{id}", headers={}, auth={"login": login})
            api.add_job("j", status="DONE")
            echoed = poll(config, ["j"])["j"]
            api.fail("/auth/token", status=400, body={"error": "invalid_request"})
            coded = poll(config, ["j"])["j"]
            api.fail("/auth/token", status=401, body={"detail": f"no user with {wrong}"})
            reflected = poll(config, ["j"])["j"]
        said = [o.message if isinstance(o, PollFailure) else o for o in (echoed, coded, reflected)]
        assert said == [
            'the token endpoint refused: HTTP 401; the API says: "Invalid credentials"',
            "the token endpoint refused: HTTP 400 (invalid_request)",
            'the token endpoint refused: HTTP 401; the API says: "no user with ***"',
        ]

    def test_a_403_to_an_old_token_is_retried_once(self, api: JsonJobSim) -> None:
        """A permission refused to a token older than `STALE_403`: one new token and one
        more request, then the auth error; never a loop."""
        api.fail("/jobs/j1", status=403, times=None)
        config = oauth_source(api)
        first, second = poll_rounds(
            config, [["j2"], ["j1"]], between=lambda i: time.sleep(STALE_403 + 0.5)
        )
        assert succeeded(first)
        assert isinstance(second["j1"], PollFailure) and second["j1"].kind == "auth"
        assert (api.requests["token"], api.requests["job"]) == (2, 3)

    def test_basic(self) -> None:
        """auth.basic sends the username and password; a wrong password is an auth error."""
        api = JsonJobSim(basic=("flower", "p4ss:word"))
        with SimThread(api):
            api.add_job("j", status="DONE")
            url = api.base_url + "/jobs/{id}"
            good = {"basic": {"username": "flower", "password": SecretStr("p4ss:word")}}
            bad = {"basic": {"username": "flower", "password": SecretStr("nope-nope")}}
            assert succeeded(poll(source(url, headers={}, auth=good), ["j"]))
            outcome = poll(source(url, headers={}, auth=bad), ["j"])["j"]
        assert isinstance(outcome, PollFailure) and outcome.kind == "auth"


class TestTemplates:
    """render_url and render_body."""

    def test_every_field(self) -> None:
        """id, site, source and key fill templates; literal braces survive."""
        job = JobRef(key="wh/x y", source="wh", job_id="x y")
        url = render_url("https://h/{source}/{id}?k={key}&s={site}&q={{1}}", job)
        assert url == "https://h/wh/x%20y?k=wh%2Fx%20y&s=&q={1}"
        body = render_body({"a": ["{id}", 3, None, {"k": "{key}!"}], "b": True}, job)
        assert body == {"a": ["x y", 3, None, {"k": "wh/x y!"}], "b": True}


_scalars = st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10)
_json = st.recursive(
    _scalars | st.sampled_from([*STATES, "done", "Error"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["data", "status", "percent", "message", "x"]), children, max_size=4
        )
    ),
    max_leaves=20,
)
_EXPRESSIONS = [
    source("https://h/{id}").compiled(),
    source(
        "https://h/{id}",
        state="data[0].status || status",
        progress="sum(data[*].percent)",
        detail={"why": "data.message", "len": "length(data)"},
    ).compiled(),
    source(
        "https://h/{id}",
        status_text="data.message",
        name="data",
        started_at="data.percent",
        ended_at="data[0]",
    ).compiled(),
]


class TestAnyInput:
    """parse_answer and the adapter are total."""

    @given(_json, st.sampled_from(_EXPRESSIONS))
    def test_parse_answer_is_a_result_or_a_bad_answer(self, body: Any, expressions: Any) -> None:
        """Any JSON: a result (terminal only where mapped) or PermanentSourceError."""
        states = {k.lower(): State(v) for k, v in STATES.items()}
        try:
            result = parse_answer(body, expressions, states)
        except PermanentSourceError:
            return
        if expressions.status_text is None:
            assert_stated(result)
        assert result.progress is None or 0 <= result.progress <= 100
        for name in ("remote_created_at", "remote_completed_at"):
            assert result.details.get(name) is None or 0 < result.details[name] <= 1e10
        assert len(result.details.get("job_name") or "") <= 200

    @settings(
        max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        status=st.sampled_from([200, 200, 200, 204, 301, 401, 404, 429, 500]),
        body=st.binary(max_size=64)
        | _json.map(lambda v: json.dumps(v).encode())
        | _json.map(lambda v: json.dumps(v).encode()[:5]),
    )
    def test_adapter_on_any_http_answer(
        self, any_answer: AnyAnswer, status: int, body: bytes
    ) -> None:
        """Any status and bytes: a result or a poll error for the job, nothing raised."""
        any_answer.status, any_answer.body = status, body
        outcomes = poll(source(any_answer.origin + "/{id}"), ["a"])
        assert_stated(outcomes["a"])


# -- end to end ------------------------------------------------------------------------------


class TestDaemon:
    """`poller run` polls an http source and notifies."""

    def test_job_end_reaches_the_webhook(self, tmp_path: Path) -> None:
        """RUNNING then DONE: a started and a succeeded message; the token stays out of logs."""
        api, sink = JsonJobSim(TOKEN), WebhookSink()
        with SimThread(api, sink):
            api.add_job("w1", status="RUNNING", percent=10)
            config = f"""
database: sqlite:///{tmp_path}/poller.db
log: {{level: debug}}
sources:
  warehouse:
    type: http
    url: {api.base_url}/jobs/{{id}}
    headers: {{Authorization: "Bearer ${{WAREHOUSE_TOKEN}}"}}
    state: data.status
    progress: data.percent
    detail: {{failure_reason: data.message}}
    states: {{QUEUED: pending, RUNNING: running, DONE: succeeded, ERROR: failed}}
channels:
  hook: {sink.apprise_url}
rules:
  - on: [succeeded, failed, started]
    notify: [hook]
polling: {{interval: 200ms, max_interval: 500ms}}
jobs:
  - {{source: warehouse, id: w1, name: Warehouse load}}
"""
            with daemon(tmp_path, config, {"WAREHOUSE_TOKEN": TOKEN}):
                eventually(lambda: any(m["type"] == "info" for m in sink.messages), what="start")
                api.set_job("w1", status="DONE", percent=100, message="all rows loaded")
                done = eventually(
                    lambda: [m for m in sink.messages if m["type"] == "success"], what="success"
                )
                assert "Warehouse load" in done[0]["title"]
                assert "warehouse/w1" in done[0]["message"]
        assert_nowhere(tmp_path, [TOKEN])


def oauth_config_head(tmp_path: Path, api: JsonJobSim, name: str) -> str:
    """The start of a config whose source `name` is `api`'s jobs with OAuth 2 credentials
    (the client secret in tmp_path/client-secret); its ``oauth2`` block may go on."""
    return f"""
database: sqlite:///{tmp_path}/poller.db
log: {{level: debug}}
sources:
  {name}:
    type: http
    url: {api.base_url}/jobs/{{id}}
    auth:
      oauth2:
        token_url: {api.base_url}/token
        client_id: poller
        client_secret_file: {tmp_path}/client-secret"""


def assert_nowhere(tmp_path: Path, secrets: Sequence[str]) -> None:
    """None of `secrets` is in a log or a database file (WAL included)."""
    files = [tmp_path / "daemon.log", *tmp_path.glob("poller.db*")]
    assert len(files) > 1
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, (path, secret)


def mlflow_run(job: Mapping[str, Any]) -> Any:
    """The shape of MLflow's ``GET /api/2.0/mlflow/runs/get`` (times in epoch milliseconds)."""
    info = {
        "run_id": job["id"],
        "run_name": job["run_name"],
        "experiment_id": "7",
        "status": job["status"],
        "start_time": job["start_time"],
        "end_time": job.get("end_time"),
        "lifecycle_stage": "active",
    }
    return {"run": {"info": info, "data": {"metrics": [{"key": "loss", "value": 0.25}]}}}


def prefect_flow_run(job: Mapping[str, Any]) -> Any:
    """The shape of Prefect 3's ``GET /api/flow_runs/{id}`` (ISO 8601 times; the state's type
    says where the run is, its name what the UI shows)."""
    return {
        "id": job["id"],
        "name": "crimson-fox",
        "state_type": job["type"],
        "state_name": job["name"],
        "state": {"type": job["type"], "name": job["name"], "message": job.get("message")},
        "start_time": job.get("start"),
        "end_time": job.get("end"),
    }


class TestDaemonRealShapes:
    """`poller run` against loopback servers speaking MLflow's and Prefect's shapes."""

    def test_mlflow_run_with_oauth2_times_in_ms_name_and_details(self, tmp_path: Path) -> None:
        """A 60 s run given in milliseconds took "1m"; its API name titles the message; every
        detail reaches templates and the default body; one token serves every poll."""
        client = OAuthClient("poller", "mlflow-client-secret-6611", scope="runs:read")
        api = JsonJobSim(oauth=client, shape=mlflow_run)
        plain, templated = WebhookSink(), WebhookSink()
        start_ms = 1_700_000_000_000
        (tmp_path / "client-secret").write_text(client.client_secret + "\n")
        with SimThread(api, plain, templated):
            api.add_job("r1", run_name="nightly-train", status="RUNNING", start_time=start_ms)
            config = f"""{oauth_config_head(tmp_path, api, "mlflow")}
        scope: runs:read
    state: run.info.status
    name: run.info.run_name
    started_at: run.info.start_time
    ended_at: run.info.end_time
    time_unit: ms
    detail:
      experiment: run.info.experiment_id
      run_name: run.info.run_name
      loss: "run.data.metrics[?key=='loss'].value | [0]"
    states: {{SCHEDULED: pending, RUNNING: running, FINISHED: succeeded, FAILED: failed,
              KILLED: cancelled}}
channels:
  plain: {plain.apprise_url}
  templated:
    url: {templated.apprise_url}
    template:
      body: "{{{{ details.experiment }}}}/{{{{ details.run_name }}}}/{{{{ details.loss }}}}
        took {{{{ duration }}}}{{{{ details.missing }}}}"
rules:
  - on: [succeeded]
    notify: [plain, templated]
polling: {{interval: 200ms, max_interval: 200ms}}
jobs:
  - {{source: mlflow, id: r1}}
"""
            with daemon(tmp_path, config):
                eventually(lambda: api.requests["job"] >= 5, what="five polls")
                api.set_job("r1", status="FINISHED", end_time=start_ms + 60_000)
                (done,) = plain.wait_for(1, timeout=15)
                (mine,) = templated.wait_for(1, timeout=15)
        assert done["title"] == "✅ nightly-train succeeded"
        assert "took 1m\n" in done["message"] + "\n", done["message"]
        assert "Started: 2023-11-14 22:13:20 UTC" in done["message"]
        assert "experiment: 7" in done["message"] and "loss: 0.25" in done["message"]
        # a detail the answer did not have (details.missing) prints as nothing
        assert mine["message"] == "7/nightly-train/0.25 took 1m"
        assert api.requests["token"] == 1
        assert_nowhere(tmp_path, [client.client_secret, *api.issued_tokens])
        # the job entry has no name: `poller status` shows the API's
        shown = subprocess.run(
            [sys.executable, "-m", "poller", "status", "-c", str(tmp_path / "config.yaml")],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert shown.returncode == 0, shown.stderr
        (row,) = [line for line in shown.stdout.splitlines() if line.startswith("mlflow/r1")]
        assert row.split()[1] == "nightly-train", shown.stdout

    def test_prefect_late_and_retries_in_history_with_iso_times(self, tmp_path: Path) -> None:
        """Prefect's state names within one state type are recorded in the history; ISO 8601
        times give the duration; Basic credentials from a file."""
        api = JsonJobSim(basic=("poller", "prefect-pass-3141"), shape=prefect_flow_run)
        sink = WebhookSink()
        (tmp_path / "password").write_text("prefect-pass-3141\n")
        with SimThread(api, sink):
            api.add_job("f1", type="SCHEDULED", name="Scheduled")
            config = f"""
database: sqlite:///{tmp_path}/poller.db
sources:
  prefect:
    type: http
    url: {api.base_url}/jobs/{{id}}
    auth: {{basic: {{username: poller, password_file: {tmp_path}/password}}}}
    state: state_type
    status_text: state_name
    name: name
    started_at: start_time
    ended_at: end_time
    detail: {{failure_reason: state.message}}
    states: {{SCHEDULED: pending, PENDING: pending, RUNNING: running, COMPLETED: succeeded,
              FAILED: failed, CANCELLED: cancelled, CRASHED: failed}}
channels:
  hook: {sink.apprise_url}
rules:
  - on: [failed, succeeded]
    notify: [hook]
polling: {{interval: 200ms, max_interval: 200ms}}
jobs:
  - {{source: prefect, id: f1}}
"""
            steps = [
                {"type": "SCHEDULED", "name": "Late"},
                {"type": "RUNNING", "name": "Running", "start": "2024-05-01T10:00:00.000000Z"},
                {"type": "SCHEDULED", "name": "AwaitingRetry"},
                {"type": "RUNNING", "name": "Retrying"},
            ]
            with daemon(tmp_path, config) as path:
                eventually(lambda: api.requests["job"] >= 2, what="the first polls")
                for step in steps:
                    seen = api.requests["job"]
                    api.set_job("f1", **step)
                    eventually(lambda s=seen: api.requests["job"] >= s + 2, what="two polls")
                api.set_job(
                    "f1",
                    type="FAILED",
                    name="Failed",
                    end="2024-05-01T10:02:00+00:00",
                    message="Flow run encountered an exception: ValueError",
                )
                (failed,) = sink.wait_for(1, timeout=15)
                history = subprocess.run(
                    [sys.executable, "-m", "poller", "history", "prefect/f1", "-c", str(path)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env={k: v for k, v in os.environ.items() if not k.startswith("POLLER_")},
                )
        assert failed["title"] == (
            "❌ crimson-fox failed: Flow run encountered an exception: ValueError"
        )
        assert "State: failed (remote: Failed), was running" in failed["message"]
        assert "Started: 2024-05-01 10:00:00 UTC, took 2m" in failed["message"]
        shown = [
            line.split("(remote ")[-1].split(")")[0]
            for line in history.stdout.splitlines()
            if "transition" in line
        ]
        assert shown == ["Scheduled", "Late", "Running", "AwaitingRetry", "Retrying", "Failed"]
        assert "pending -> pending (remote Late)" in history.stdout
        assert_nowhere(tmp_path, ["prefect-pass-3141"])


class TestNewKeysChecked:
    """`poller check` names each mistake in the http source's new keys with its file:line."""

    def test_mistakes_at_their_lines(self, tmp_path: Path) -> None:
        """Expressions, time_unit, auth and the details the new keys fill."""
        config = tmp_path / "config.yaml"
        config.write_text("""\
sources:
  a:
    type: http
    url: https://x/{id}
    state: s
    started_at: "a[["
    time_unit: minutes
    auth:
      basic: {username: "u:x", password: p}
      oauth2: {token_url: "ftp://x", client_id: c, client_secret_file: /nonexistent/secret}
    states: {X: running}
  b:
    type: http
    url: https://x/{id}
    state: s
    ended_at: e
    detail: {remote_completed_at: f}
    states: {X: running}
  c:
    type: http
    url: https://x/{id}
    state: s
    headers: {authorization: x}
    auth: {oauth2: {token_url: "https://x/token", client_id: c, client_secret: s}}
    states: {X: running}
  d:
    type: http
    url: https://x/{id}
    state: s
    auth: {}
    states: {X: running}
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        r = subprocess.run(
            [sys.executable, "-m", "poller", "check", "-c", str(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert r.returncode == 2
        lines = [line.strip().removeprefix(str(config)) for line in r.stderr.splitlines()[1:]]
        assert lines == [
            ":6: sources.a.started_at: not a valid JMESPath expression (at character 3)",
            ":7: sources.a.time_unit: expected one of: auto, s, ms, iso; got 'minutes'",
            ":9: sources.a.auth.basic.username: must not contain ':' "
            "(Basic authentication cannot carry it)",
            ":10: sources.a.auth.oauth2.client_secret_file: cannot read /nonexistent/secret: "
            "No such file or directory",
            ":10: sources.a.auth.oauth2.token_url: expected an http:// or https:// URL",
            ":12: sources.b: ended_at fills the detail remote_completed_at: give one of them, "
            "not both",
            ":19: sources.c: auth and an Authorization header cannot both be given",
            ":30: sources.d.auth: give exactly one of basic, oauth2 and login",
        ]


class TestTimes:
    """read_time: epoch seconds, milliseconds and ISO 8601, detected or declared."""

    @pytest.mark.parametrize(
        ("value", "unit", "seconds"),
        [
            (1_700_000_000, "auto", 1_700_000_000),
            (1_700_000_000_500, "auto", 1_700_000_000.5),
            ("1700000000", "auto", 1_700_000_000),
            ("2023-11-14T22:13:20Z", "auto", 1_700_000_000),
            ("2023-11-14T22:13:20.000000+00:00", "iso", 1_700_000_000),
            ("2023-11-14T22:13:20", "auto", 1_700_000_000),
            (1_700_000_000, "s", 1_700_000_000),
            (1_700_000_000_000, "ms", 1_700_000_000),
            ("1700000000000", "ms", 1_700_000_000),
            # declared: a small number is taken in the unit given
            (60_000, "ms", 60),
            # not times
            (1_700_000_000, "iso", None),
            ("2023-11-14T22:13:20Z", "s", None),
            (1e300, "s", None),
            (-5, "auto", None),
            (0, "ms", None),
            (True, "s", None),
            (float("nan"), "auto", None),
            ({"t": 1}, "auto", None),
            ("soon", "auto", None),
            (None, "auto", None),
        ],
    )
    def test_read_time(self, value: object, unit: str, seconds: float | None) -> None:
        """Each unit reads its own kind of value; anything else is no time."""
        assert read_time(value, unit) == seconds


class TestDaemonAuth:
    """`poller run` with OAuth 2 credentials the token endpoint refuses."""

    def test_a_wrong_client_secret_is_the_watchs_auth_error(self, tmp_path: Path) -> None:
        """The token endpoint refuses the client: `poller status` says so in words, tokens
        are asked for once per round at most, and the secret is nowhere."""
        api = JsonJobSim(oauth=OAuthClient("poller", "the-right-secret-2718"))
        (tmp_path / "client-secret").write_text("a-wrong-secret-1414\n")
        with SimThread(api):
            for i in range(5):
                api.add_job(f"j{i}", status="RUNNING")
            jobs = "\n".join(f"  - {{source: api, id: j{i}}}" for i in range(5))
            config = f"""{oauth_config_head(tmp_path, api, "api")}
    state: data.status
    states: {{RUNNING: running, DONE: succeeded}}
polling: {{interval: 200ms, max_interval: 200ms}}
jobs:
{jobs}
"""
            env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}

            def errors() -> list[Any]:
                r = subprocess.run(
                    [sys.executable, "-m", "poller", "status", "--json", "-c", str(path)],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=60,
                )
                if r.returncode != 0:  # the daemon has not made its database yet
                    return []
                found = [w["last_error"] for w in json.loads(r.stdout)["watches"]]
                return found if all(found) else []

            with daemon(tmp_path, config) as path:
                found = eventually(errors, what="an error on every watch")
        assert set(found) == {
            "auth: the token endpoint refused: HTTP 401 (invalid_client);"
            ' the API says: "bad secret"'
        }
        assert api.requests["job"] == 0 and api.requests["token"] >= 1
        assert_nowhere(tmp_path, ["a-wrong-secret-1414"])


def test_daemon_renews_a_login_token_airflow_expired_with_403(tmp_path: Path) -> None:
    """`poller run` with ``auth: {login}`` against a loopback Airflow-style login whose tokens
    expire after 6 s and are then answered 403 (no ``expires_in`` said, so poller would keep
    the token an hour): polls go on without one error across the expiry, with a new login,
    and the job's end reaches the webhook."""
    password = "airflow-pass-8080"
    api, sink = JsonJobSim(login=LoginUser("poller", password, lifetime=6.0)), WebhookSink()
    (tmp_path / "password").write_text(password)
    with SimThread(api, sink):
        api.add_job("run1", status="RUNNING")
        config = f"""
database: sqlite:///{tmp_path}/poller.db
sources:
  airflow:
    type: http
    url: {api.base_url}/jobs/{{id}}
    auth: {{login: {{url: {api.base_url}/auth/token, username: poller,
                    password_file: {tmp_path}/password}}}}
    state: data.status
    states: {{RUNNING: running, DONE: succeeded}}
channels:
  hook: {sink.apprise_url}
rules:
  - on: [succeeded, unreachable]
    notify: [hook]
polling: {{interval: 200ms, max_interval: 500ms, error_after: 1s}}
jobs:
  - {{source: airflow, id: run1}}
"""
        with daemon(tmp_path, config) as path:
            eventually(lambda: api.requests["login"] >= 2, timeout=30, what="a second login")
            api.set_job("run1", status="DONE")
            (message,) = sink.wait_for(1, timeout=30)
            status = subprocess.run(
                [sys.executable, "-m", "poller", "status", "--json", "-c", str(path)],
                capture_output=True,
                text=True,
                timeout=60,
            )
    assert message["type"] == "success", message
    (watch,) = json.loads(status.stdout)["watches"]
    assert (watch["error_count"], watch["last_error"]) == (0, None), watch
    assert_nowhere(tmp_path, [password, *api.issued_tokens])
