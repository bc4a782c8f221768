"""The source adapters over `httpx.MockTransport`: what each sends and how it reads answers.

These check one request and one answer at a time, where a loopback server would add nothing;
what crosses a real socket (limits, deadlines, compression, dropped connections) is tested
against the loopback simulators in the other files.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence

import httpx
from pydantic import SecretStr

from poller.models import JobRef, PollFailure, PollOutcome, PollResult
from poller.sources.http.adapter import HttpAdapter
from poller.sources.http.config import HttpSource
from poller.sources.immuta.adapter import ImmutaAdapter
from poller.sources.immuta.config import ImmutaSource
from poller.sources.ruler.adapter import RulerAdapter
from poller.sources.ruler.config import RulerSource

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A mock transport's handler that answers from `answer` and keeps every request."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)


def poll(
    adapter: RulerAdapter | ImmutaAdapter | HttpAdapter, refs: Sequence[JobRef]
) -> Mapping[str, PollOutcome]:
    async def go() -> Mapping[str, PollOutcome]:
        try:
            return await adapter.poll(refs)
        finally:
            await adapter.aclose()

    return asyncio.run(go())


def ruler(handler: Recorder) -> RulerAdapter:
    config = RulerSource(base_url="https://ruler.test/v1", token=SecretStr("tok-1"))
    return RulerAdapter(config, transport=httpx.MockTransport(handler))


def immuta(handler: Recorder) -> ImmutaAdapter:
    config = ImmutaSource(base_url="https://immuta.test", token=SecretStr("key-2"))
    return ImmutaAdapter(config, transport=httpx.MockTransport(handler))


def generic(handler: Recorder, **values: object) -> HttpAdapter:
    config = HttpSource(
        url="https://jobs.test/api/runs/{id}",
        headers={"X-Api-Key": SecretStr("key-3")},
        state="run.state",
        progress="run.pct",
        states={"RUNNING": "running", "DONE": "succeeded", "FAILED": "failed"},
        **values,  # type: ignore[arg-type]
    )
    return HttpAdapter(config, transport=httpx.MockTransport(handler))


def ref(job_id: str, site: str | None = None) -> JobRef:
    return JobRef(key=f"k/{job_id}", source="k", job_id=job_id, site=site)


def test_ruler_sends_its_token_and_reads_a_status() -> None:
    doc = {
        "jobId": "j 1",
        "status": "processing",
        "totalRows": 10,
        "processedRows": 4,
        "percentageProgress": 40,
    }
    handler = Recorder(lambda request: httpx.Response(200, json=doc))
    outcomes = poll(ruler(handler), [ref("j 1", site="s/1")])
    (request,) = handler.requests
    assert request.method == "GET"
    # the site and the job id are each one path segment, quoted
    assert request.url.raw_path == b"/v1/s%2F1/batch/j%201/status"
    assert request.headers["authorization"] == "Bearer tok-1"
    result = outcomes["k/j 1"]
    assert isinstance(result, PollResult)
    assert (result.remote_status, result.state, result.progress) == ("processing", "running", 40)


def test_ruler_404_is_a_missing_job() -> None:
    handler = Recorder(lambda request: httpx.Response(404, json={"message": "no such job"}))
    failure = poll(ruler(handler), [ref("gone", site="s1")])["k/gone"]
    assert isinstance(failure, PollFailure)
    assert (failure.kind, failure.transient) == ("not_found", False)


def test_a_rate_limit_carries_its_retry_after() -> None:
    handler = Recorder(lambda request: httpx.Response(429, headers={"Retry-After": "17"}))
    failure = poll(ruler(handler), [ref("j", site="s1")])["k/j"]
    assert isinstance(failure, PollFailure)
    assert (failure.kind, failure.transient, failure.retry_after) == ("rate_limited", True, 17.0)


def test_immuta_posts_its_job_ids_with_its_key_as_it_is() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        ids = json.loads(request.content)["jobIds"]
        return httpx.Response(200, json={i: {"state": "completed"} for i in ids if i != "b"})

    handler = Recorder(answer)
    outcomes = poll(immuta(handler), [ref("a"), ref("b")])
    (request,) = handler.requests  # one statuses request for both
    assert (request.method, request.url.path) == ("POST", "/jobs/statuses")
    assert request.headers["authorization"] == "key-2"  # no scheme: Immuta's API key
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"jobIds": ["a", "b"], "wait": 0}
    a, b = outcomes["k/a"], outcomes["k/b"]
    assert isinstance(a, PollResult) and a.state == "succeeded"
    assert isinstance(b, PollFailure) and b.kind == "not_found"


def test_generic_source_sends_its_headers_and_maps_states() -> None:
    handler = Recorder(
        lambda request: httpx.Response(200, json={"run": {"state": "RUNNING", "pct": 0.5}})
    )
    result = poll(generic(handler), [ref("r-9")])["k/r-9"]
    (request,) = handler.requests
    assert str(request.url) == "https://jobs.test/api/runs/r-9"
    assert request.headers["x-api-key"] == "key-3"
    assert isinstance(result, PollResult)
    assert (result.state, result.progress) == ("running", 0.5)


def test_generic_source_posts_a_json_body() -> None:
    handler = Recorder(lambda request: httpx.Response(200, json={"run": {"state": "DONE"}}))
    adapter = generic(handler, method="POST", body={"ids": ["{id}"]})
    result = poll(adapter, [ref("r-1")])["k/r-1"]
    (request,) = handler.requests
    assert json.loads(request.content) == {"ids": ["r-1"]}
    assert isinstance(result, PollResult) and result.state == "succeeded"


def test_an_answer_that_is_not_json_is_a_bad_answer() -> None:
    handler = Recorder(lambda request: httpx.Response(200, text="<html>maintenance</html>"))
    failure = poll(generic(handler), [ref("x")])["k/x"]
    assert isinstance(failure, PollFailure)
    assert (failure.kind, failure.message) == ("bad_answer", "answer is not JSON")


def test_refused_credentials_are_permanent() -> None:
    handler = Recorder(lambda request: httpx.Response(401))
    failure = poll(generic(handler), [ref("x")])["k/x"]
    assert isinstance(failure, PollFailure)
    assert (failure.kind, failure.transient) == ("auth", False)


def test_a_redirect_is_not_followed() -> None:
    handler = Recorder(
        lambda request: httpx.Response(302, headers={"Location": "https://evil.test/"})
    )
    failure = poll(generic(handler), [ref("x")])["k/x"]
    assert len(handler.requests) == 1
    assert isinstance(failure, PollFailure)
    assert (failure.kind, failure.message) == ("http", "HTTP 302 redirect")


def test_cookies_are_neither_kept_nor_sent() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"Set-Cookie": "session=abc; Path=/"}
        return httpx.Response(200, headers=headers, json={"run": {"state": "RUNNING"}})

    handler = Recorder(answer)
    adapter = generic(handler)

    async def go() -> None:
        try:
            await adapter.poll([ref("x")])
            await adapter.poll([ref("x")])
        finally:
            await adapter.aclose()

    asyncio.run(go())
    assert [r.headers.get("cookie") for r in handler.requests] == [None, None]


def test_a_failed_connection_is_a_transient_network_failure() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection failed: connection refused", request=request)

    failure = poll(generic(Recorder(answer)), [ref("x")])["k/x"]
    assert isinstance(failure, PollFailure)
    assert (failure.kind, failure.transient) == ("network", True)
    assert failure.message == "connection failed: connection refused"
