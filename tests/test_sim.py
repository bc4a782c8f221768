"""Tests of the loopback simulators in `poller.testing`, driven over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import apprise
import httpx
import pytest

from poller.testing import (
    HttpServer,
    ImmutaSim,
    JsonJobSim,
    Request,
    Response,
    RulerSim,
    SimThread,
    SinkTimeout,
    WebhookSink,
)

TOKEN = "test-token"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
STATUS_KEYS = {
    "jobId",
    "jobType",
    "status",
    "totalRows",
    "processedRows",
    "percentageProgress",
    "successCount",
    "failureCount",
    "createdDateTime",
    "completedDateTime",
}


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ruler() -> Iterator[RulerSim]:
    sim = RulerSim(TOKEN)
    with SimThread(sim):
        yield sim


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    sim = WebhookSink()
    with SimThread(sim):
        yield sim


@pytest.fixture
def client(ruler: RulerSim) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=ruler.base_url, headers=headers, timeout=5) as c:
        yield c


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to the server and read until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def echo(request: Request) -> Response:
    """A handler that answers with what it was given."""
    return Response(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "body": request.body.decode(),
            "target": request.target,
        },
    )


@pytest.fixture
def echo_server() -> Iterator[HttpServer]:
    server = HttpServer(echo)
    with SimThread(server):
        yield server


class TestHttpServer:
    def test_request_is_parsed(self, echo_server: HttpServer) -> None:
        """Method, decoded path, query, lower-cased headers and body reach the handler."""
        with httpx.Client() as c:
            r = c.post(
                f"{echo_server.base_url}/a%20b/c?x=1&y=two&x=3",
                content=b'{"k": 1}',
                headers={"X-Thing": "Yes"},
            )
        assert r.status_code == 200
        got = r.json()
        assert got["method"] == "POST"
        assert got["path"] == "/a b/c"
        assert got["query"] == {"x": "3", "y": "two"}
        assert got["headers"]["x-thing"] == "Yes"
        assert got["body"] == '{"k": 1}'
        assert got["target"] == "/a%20b/c?x=1&y=two&x=3"
        assert r.headers["content-type"] == "application/json"

    def test_keep_alive_serves_several_requests_on_one_connection(
        self, echo_server: HttpServer
    ) -> None:
        """Two requests on one connection both get answers; Connection: close ends it."""
        req = (
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        out = raw_exchange(echo_server.port, req)
        assert out.count(b"HTTP/1.1 200 OK") == 2
        assert b'"path":"/one"' in out and b'"path":"/two"' in out
        assert b"Connection: keep-alive" in out and b"Connection: close" in out

    def test_http10_closes_by_default(self, echo_server: HttpServer) -> None:
        """An HTTP/1.0 request without keep-alive gets one answer and a close."""
        out = raw_exchange(echo_server.port, b"GET /x HTTP/1.0\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 OK")
        assert b"Connection: close" in out

    @pytest.mark.parametrize(
        "data",
        [
            b"NONSENSE\r\n\r\n",
            b"GET /x\r\n\r\n",
            b"GET /x FTP/1.0\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"\xff\xfe /x HTTP/1.1\r\n\r\n",
        ],
    )
    def test_malformed_request_gets_400_and_close(
        self, echo_server: HttpServer, data: bytes
    ) -> None:
        """Malformed requests are answered 400 and the connection is closed."""
        with socket.create_connection(("127.0.0.1", echo_server.port), timeout=5) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            out = b"".join(iter(lambda: sock.recv(65536), b""))
        assert out.startswith(b"HTTP/1.1 400 Bad Request")
        assert b"Connection: close" in out

    def test_incomplete_head_then_eof_is_closed(self, echo_server: HttpServer) -> None:
        """A head cut short by the client's EOF gets no answer (aiohttp cannot parse a half
        head; the hand-written server answered 400), and the connection is closed."""
        with socket.create_connection(("127.0.0.1", echo_server.port), timeout=5) as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n")
            sock.shutdown(socket.SHUT_WR)
            out = b"".join(iter(lambda: sock.recv(65536), b""))
        assert out == b""

    def test_oversized_head_gets_400(self, echo_server: HttpServer) -> None:
        """A request head over the limit is refused with 400."""
        out = raw_exchange(
            echo_server.port, b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        )
        assert out.startswith(b"HTTP/1.1 400")

    def test_chunked_request_body_is_not_implemented(self, echo_server: HttpServer) -> None:
        """Chunked request bodies are answered 501 rather than misread."""
        out = raw_exchange(
            echo_server.port,
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
        )
        assert out.startswith(b"HTTP/1.1 501")

    def test_expect_continue(self, echo_server: HttpServer) -> None:
        """A client that expects 100-continue gets it before sending its body."""
        with socket.create_connection(("127.0.0.1", echo_server.port), timeout=5) as sock:
            sock.sendall(
                b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n"
                b"Connection: close\r\n\r\n"
            )
            assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(b"hi")
            out = b"".join(iter(lambda: sock.recv(65536), b""))
        assert b'"body":"hi"' in out

    def test_head_gets_no_body(self, echo_server: HttpServer) -> None:
        """HEAD is answered with headers (and the length) but no body."""
        with httpx.Client() as c:
            r = c.head(f"{echo_server.base_url}/x")
        assert r.status_code == 200
        assert r.content == b""
        assert int(r.headers["content-length"]) > 0

    def test_body_kinds(self) -> None:
        """bytes go out raw, str as text, objects as JSON; 204 carries no body."""
        answers = {
            "/bytes": Response(200, b"\x00\x01", {"Content-Type": "application/x-thing"}),
            "/text": Response(200, "héllo"),
            "/json": Response(201, [1, {"a": None}]),
            "/empty": Response(204, {"ignored": True}),
        }

        async def handler(request: Request) -> Response:
            return answers[request.path]

        server = HttpServer(handler)
        with SimThread(server), httpx.Client(base_url=server.base_url) as c:
            r = c.get("/bytes")
            assert (r.content, r.headers["content-type"]) == (b"\x00\x01", "application/x-thing")
            r = c.get("/text")
            assert (r.text, r.headers["content-type"]) == ("héllo", "text/plain; charset=utf-8")
            r = c.get("/json")
            assert (r.status_code, r.json()) == (201, [1, {"a": None}])
            r = c.get("/empty")
            assert (r.status_code, r.content) == (204, b"")
            assert "content-length" not in r.headers
            assert c.get("/text").status_code == 200

    def test_handler_error_is_500_and_recorded(self, caplog: pytest.LogCaptureFixture) -> None:
        """A handler that raises answers 500 and lands in `errors`, the server keeps going."""

        async def handler(request: Request) -> Response:
            if request.path == "/boom":
                raise ValueError("boom")
            return Response(200, {"ok": True})

        server = HttpServer(handler)
        with SimThread(server), httpx.Client(base_url=server.base_url) as c:
            r = c.get("/boom")
            assert r.status_code == 500
            assert "boom" in r.json()["message"]
            assert c.get("/fine").json() == {"ok": True}
        assert [type(e) for e in server.errors] == [ValueError]
        assert "simulator handler failed" in caplog.text

    def test_no_handler_is_404(self) -> None:
        """A bare HttpServer answers 404 to everything."""
        server = HttpServer()
        with SimThread(server), httpx.Client() as c:
            assert c.get(server.base_url + "/x").status_code == 404

    def test_runs_on_the_callers_loop(self) -> None:
        """`async with` runs a server on the current loop, for async tests and benchmarks."""

        async def main() -> list[int]:
            async with HttpServer(echo) as server, httpx.AsyncClient() as c:
                rs = await asyncio.gather(*(c.get(f"{server.base_url}/{i}") for i in range(20)))
                return [r.status_code for r in rs]

        assert asyncio.run(main()) == [200] * 20

    def test_base_url_before_start_raises(self) -> None:
        """The port is unknown until the server has started."""
        with pytest.raises(RuntimeError, match="not started"):
            _ = HttpServer().base_url


class TestRulerSim:
    def test_status_shape(self, ruler: RulerSim, client: httpx.Client) -> None:
        """A new job answers the documented camelCase status document."""
        ruler.add_job("site1", "job1", total_rows=200)
        r = client.get("/site1/batch/job1/status")
        assert r.status_code == 200
        doc = r.json()
        assert set(doc) == STATUS_KEYS
        assert doc["jobId"] == "job1"
        assert doc["jobType"] == "revenueUpload"
        assert doc["status"] == "pending"
        assert (doc["totalRows"], doc["processedRows"], doc["percentageProgress"]) == (200, 0, 0)
        assert ISO.match(doc["createdDateTime"])
        assert doc["completedDateTime"] is None
        assert ruler.base_url.endswith("/v1")
        assert doc == ruler.job("site1", "job1")

    def test_progress_and_completion_are_derived(
        self, ruler: RulerSim, client: httpx.Client
    ) -> None:
        """Progress follows the rows; a terminal status sets completedDateTime."""
        ruler.add_job("s", "j", total_rows=200)
        ruler.set_job("s", "j", status="processing", processed_rows=99, failure_count=9)
        doc = client.get("/s/batch/j/status").json()
        assert (doc["status"], doc["percentageProgress"]) == ("processing", 49)
        assert (doc["successCount"], doc["failureCount"]) == (90, 9)
        assert doc["completedDateTime"] is None
        ruler.set_job("s", "j", status="complete", failure_count=0)
        doc = client.get("/s/batch/j/status").json()
        assert (doc["processedRows"], doc["percentageProgress"], doc["successCount"]) == (
            200,
            100,
            200,
        )
        assert ISO.match(doc["completedDateTime"])
        assert "failureReason" not in doc
        ruler.set_job("s", "j", status="processing")
        assert ruler.job("s", "j")["completedDateTime"] is None

    def test_failed_job_has_failure_reason(self, ruler: RulerSim, client: httpx.Client) -> None:
        """failureReason appears only on failed jobs, with a default if none was given."""
        ruler.add_job("s", "a", status="failed", failure_reason="Invalid file header")
        ruler.add_job("s", "b")
        ruler.set_job("s", "b", status="failed")
        a = client.get("/s/batch/a/status").json()
        assert a["failureReason"] == "Invalid file header"
        assert set(a) == STATUS_KEYS | {"failureReason"}
        assert ISO.match(a["completedDateTime"])
        assert client.get("/s/batch/b/status").json()["failureReason"] == "Batch job failed"

    def test_partialcomplete_counts(self, ruler: RulerSim) -> None:
        """partialcomplete counts its failures and processes every row."""
        rows = [{"rowNumber": 3, "errorMessage": "bad date"}, {"rowNumber": 7, "errorMessage": "x"}]
        doc = ruler.add_job("s", "j", status="partialcomplete", total_rows=10, failures=rows)
        assert (doc["processedRows"], doc["failureCount"], doc["successCount"]) == (10, 2, 8)

    def test_unknown_status_and_extra_fields(self, ruler: RulerSim, client: httpx.Client) -> None:
        """Any status string is served, and `extra` overrides the document for odd answers."""
        ruler.add_job("s", "j")
        ruler.set_job("s", "j", status="queuedForReview", extra={"percentageProgress": "12.5"})
        doc = client.get("/s/batch/j/status").json()
        assert doc["status"] == "queuedForReview"
        assert doc["percentageProgress"] == "12.5"
        assert doc["completedDateTime"] is None

    def test_auth(self, ruler: RulerSim) -> None:
        """A missing or wrong bearer token is answered 401 Unauthorized."""
        ruler.add_job("s", "j")
        url = f"{ruler.base_url}/s/batch/j/status"
        with httpx.Client() as c:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
                r = c.get(url, headers=headers)
                assert (r.status_code, r.json()) == (401, {"message": "Unauthorized"})
            assert c.get(url, headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200

    def test_not_found(self, ruler: RulerSim, client: httpx.Client) -> None:
        """Unknown jobs are 404 Batch job not found; unknown paths and sites too."""
        r = client.get("/s/batch/nope/status")
        assert (r.status_code, r.json()) == (404, {"message": "Batch job not found"})
        assert client.get("/s/batch/nope/failures?format=json").status_code == 404
        assert client.get("/s/elsewhere").status_code == 404
        assert client.get(ruler.origin + "/s/batch/jobs").status_code == 404
        ruler.add_job("s", "j")
        ruler.remove_job("s", "j")
        assert client.get("/s/batch/j/status").status_code == 404

    def test_only_get(self, ruler: RulerSim, client: httpx.Client) -> None:
        """Other methods than GET are answered 405."""
        ruler.add_job("s", "j")
        assert client.post("/s/batch/j/status").status_code == 405

    def test_job_list(self, ruler: RulerSim, client: httpx.Client) -> None:
        """The jobs endpoint lists the site's jobs only, in the documented shape."""
        ruler.add_job("s", "a", job_type="costUpload")
        ruler.add_job("s", "b", status="failed", failure_reason="Empty file")
        ruler.add_job("other", "c")
        ruler.set_job("s", "a", status="processing", processed_rows=25)
        jobs = client.get("/s/batch/jobs").json()["jobs"]
        assert jobs == [
            {
                "jobId": "a",
                "jobType": "costUpload",
                "status": "processing",
                "percentageProgress": 25,
            },
            {
                "jobId": "b",
                "jobType": "revenueUpload",
                "status": "failed",
                "percentageProgress": 0,
                "failureReason": "Empty file",
            },
        ]
        assert client.get("/empty-site/batch/jobs").json() == {"jobs": []}

    def test_failures_endpoint(self, ruler: RulerSim, client: httpx.Client) -> None:
        """Failures are 409 until terminal, then the rows as JSON (or CSV by default)."""
        rows = [{"rowNumber": 4, "errorMessage": 'Bad "date"'}]
        ruler.add_job("s", "j", total_rows=10)
        r = client.get("/s/batch/j/failures", params={"format": "json"})
        assert (r.status_code, r.json()) == (409, {"message": "job not finished"})
        ruler.set_job("s", "j", status="partialcomplete", failures=rows)
        r = client.get("/s/batch/j/failures", params={"format": "json"})
        assert (r.status_code, r.json()) == (200, {"failures": rows})
        r = client.get("/s/batch/j/failures")
        assert r.headers["content-type"] == "text/csv"
        assert r.text == 'rowNumber,errorMessage\r\n4,"Bad ""date"""\r\n'
        assert client.get("/s/batch/j/failures?format=xml").status_code == 400

    def test_failures_are_made_up_from_the_count(
        self, ruler: RulerSim, client: httpx.Client
    ) -> None:
        """Without explicit rows, a terminal job serves as many made-up rows as it failed."""
        ruler.add_job("s", "j", total_rows=10)
        ruler.set_job("s", "j", status="partialcomplete", failure_count=3)
        failures = client.get("/s/batch/j/failures?format=json").json()["failures"]
        assert [f["rowNumber"] for f in failures] == [1, 2, 3]
        assert all(f["errorMessage"] for f in failures)

    def test_scripted_progression_on_the_real_clock(
        self, ruler: RulerSim, client: httpx.Client
    ) -> None:
        """A script moves the job along with time, applied when it is read."""
        ruler.add_job("s", "j", total_rows=10)
        ruler.script_job(
            "s",
            "j",
            [
                (0.0, {"status": "processing"}),
                (0.3, {"processed_rows": 5}),
                (0.6, {"status": "complete"}),
            ],
        )
        seen = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            doc = client.get("/s/batch/j/status").json()
            step = (doc["status"], doc["percentageProgress"])
            if not seen or seen[-1] != step:
                seen.append(step)
            if doc["status"] == "complete":
                break
            time.sleep(0.01)
        assert seen == [("processing", 0), ("processing", 50), ("complete", 100)]
        assert ISO.match(doc["completedDateTime"])

    def test_script_with_a_fake_clock(self) -> None:
        """Steps apply exactly when the clock passes them, whoever reads the job."""
        clock = FakeClock()
        sim = RulerSim(clock=clock)
        sim.script_job(
            "s",
            "j",
            [
                (10, {"status": "failed", "failure_reason": "Timed out"}),
                (5, {"status": "processing", "processed_rows": 40}),
            ],
        )
        assert sim.job("s", "j")["status"] == "pending"
        clock.now += 5
        assert sim.job("s", "j")["percentageProgress"] == 40
        clock.now += 4.9
        assert sim.job("s", "j")["status"] == "processing"
        clock.now += 0.1
        doc = sim.job("s", "j")
        assert (doc["status"], doc["failureReason"]) == ("failed", "Timed out")

    def test_bad_fields_and_jobs(self, ruler: RulerSim) -> None:
        """Unknown fields raise TypeError and unknown jobs KeyError, before anything changes."""
        ruler.add_job("s", "j")
        with pytest.raises(TypeError, match="bogus"):
            ruler.set_job("s", "j", bogus=1)
        with pytest.raises(TypeError, match="percentageProgress"):
            ruler.script_job("s", "j", [(1, {"percentageProgress": 5})])
        with pytest.raises(KeyError):
            ruler.set_job("s", "missing", status="complete")
        with pytest.raises(KeyError):
            ruler.job("s", "missing")

    def test_counters(self, ruler: RulerSim, client: httpx.Client) -> None:
        """Requests are counted by kind and logged as (method, target)."""
        ruler.add_job("s", "j", status="complete")
        client.get("/s/batch/j/status")
        client.get("/s/batch/j/status")
        client.get("/s/batch/jobs")
        client.get("/s/batch/j/failures?format=json")
        client.get("/nowhere")
        assert ruler.requests == {"status": 2, "jobs": 1, "failures": 1, "other": 1}
        assert ruler.request_log[-2:] == [
            ("GET", "/v1/s/batch/j/failures?format=json"),
            ("GET", "/v1/nowhere"),
        ]
        ruler.reset_counters()
        assert ruler.requests == {}
        assert ruler.request_log == []

    def test_request_log_is_bounded(self) -> None:
        """The request log keeps only the newest entries."""

        async def main() -> list[tuple[str, str]]:
            async with HttpServer(log_size=3) as server, httpx.AsyncClient() as c:
                for i in range(5):
                    await c.get(f"{server.base_url}/{i}")
                return server.request_log

        assert asyncio.run(main()) == [("GET", "/2"), ("GET", "/3"), ("GET", "/4")]

    def test_changes_from_other_threads(self, ruler: RulerSim, client: httpx.Client) -> None:
        """Jobs can be changed from several threads while the API serves them."""
        for n in range(4):
            ruler.add_job("s", f"j{n}", total_rows=500)

        def bump(n: int) -> None:
            for rows in range(1, 501):
                ruler.set_job("s", f"j{n}", status="processing", processed_rows=rows)

        threads = [threading.Thread(target=bump, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            assert client.get("/s/batch/jobs").status_code == 200
        for t in threads:
            t.join()
        docs = client.get("/s/batch/jobs").json()["jobs"]
        assert [d["percentageProgress"] for d in docs] == [100] * 4
        assert ruler.errors == []


class TestFaults:
    def test_status_fault_applies_once(self, ruler: RulerSim, client: httpx.Client) -> None:
        """A fault answers the next matching request, then the API is normal again."""
        ruler.add_job("s", "j")
        fault = ruler.fail(status=500)
        r = client.get("/s/batch/j/status")
        assert (r.status_code, r.json()) == (500, {"message": "Internal Server Error"})
        assert client.get("/s/batch/j/status").status_code == 200
        assert fault.hits == 1
        assert ruler.requests["status"] == 2

    def test_retry_after(self, ruler: RulerSim, client: httpx.Client) -> None:
        """429 and 503 carry Retry-After, via headers or the retry_after shortcut."""
        ruler.add_job("s", "j")
        ruler.fail(status=503, headers={"Retry-After": "7"}, body=b"down")
        ruler.fail(status=429, retry_after=0.5)
        r = client.get("/s/batch/j/status")
        assert (r.status_code, r.headers["retry-after"], r.content) == (503, "7", b"down")
        r = client.get("/s/batch/j/status")
        assert (r.status_code, r.headers["retry-after"]) == (429, "0.5")
        assert r.json() == {"message": "Too Many Requests"}

    def test_times_none_lasts_until_cleared(self, ruler: RulerSim, client: httpx.Client) -> None:
        """times=None keeps the fault until clear_faults()."""
        ruler.add_job("s", "j")
        ruler.fail(status=502, times=None)
        assert [client.get("/s/batch/j/status").status_code for _ in range(3)] == [502] * 3
        ruler.clear_faults()
        assert client.get("/s/batch/j/status").status_code == 200

    def test_times_counts_down(self, ruler: RulerSim, client: httpx.Client) -> None:
        """times=2 answers two requests, then the next registered fault takes over."""
        ruler.add_job("s", "j")
        ruler.fail(status=500, times=2)
        ruler.fail(status=504)
        codes = [client.get("/s/batch/j/status").status_code for _ in range(4)]
        assert codes == [500, 500, 504, 200]

    def test_path_filter(self, ruler: RulerSim, client: httpx.Client) -> None:
        """A fault only applies to requests whose target contains its text."""
        ruler.add_job("s", "j", status="complete")
        ruler.fail("/failures", status=500)
        assert client.get("/s/batch/j/status").status_code == 200
        assert client.get("/s/batch/jobs").status_code == 200
        assert client.get("/s/batch/j/failures?format=json").status_code == 500

    def test_fault_comes_before_auth(self, ruler: RulerSim) -> None:
        """Faults act like a proxy in front of the API: no token needed to see them."""
        ruler.fail(status=503)
        with httpx.Client() as c:
            assert c.get(f"{ruler.base_url}/s/batch/j/status").status_code == 503

    def test_2xx_status_replaces_the_body(self, ruler: RulerSim, client: httpx.Client) -> None:
        """A 2xx fault lets the request through and replaces the answer's body."""
        ruler.add_job("s", "j")
        ruler.fail(status=200, body={"status": "weird"})
        r = client.get("/s/batch/j/status")
        assert (r.status_code, r.json()) == (200, {"status": "weird"})

    def test_hang(self, ruler: RulerSim, client: httpx.Client) -> None:
        """hang never answers; the client times out and the server serves others."""
        ruler.add_job("s", "j")
        ruler.fail(mode="hang")
        start = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            client.get("/s/batch/j/status", timeout=0.3)
        assert time.monotonic() - start >= 0.25
        assert client.get("/s/batch/j/status").status_code == 200

    def test_drip(self, ruler: RulerSim, client: httpx.Client) -> None:
        """drip sends the real body one byte at a time, each after the delay."""
        ruler.add_job("s", "j")
        expected = ruler.job("s", "j")
        ruler.fail(mode="drip", delay=0.002)
        start = time.monotonic()
        chunks = []
        with client.stream("GET", "/s/batch/j/status") as r:
            assert r.status_code == 200
            chunks.extend(r.iter_raw())
        elapsed = time.monotonic() - start
        body = b"".join(chunks)
        assert json.loads(body) == expected
        assert len(chunks) > 10
        assert elapsed >= len(body) * 0.002

    def test_drip_defeats_a_read_timeout(self, ruler: RulerSim, client: httpx.Client) -> None:
        """Each dripped byte resets a read timeout; only an overall deadline stops it."""
        ruler.add_job("s", "j")
        ruler.fail(mode="drip", delay=0.05)
        with client.stream("GET", "/s/batch/j/status", timeout=0.2) as r:
            got = b""
            for chunk in r.iter_raw():
                got += chunk
                if len(got) >= 5:
                    break
        assert got.startswith(b'{"job')

    def test_refuse(self, ruler: RulerSim) -> None:
        """refuse closes the connection without an answer."""
        ruler.add_job("s", "j")
        ruler.fail(mode="refuse")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(headers=headers) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                c.get(f"{ruler.base_url}/s/batch/j/status")
            assert c.get(f"{ruler.base_url}/s/batch/j/status").status_code == 200

    def test_html(self, ruler: RulerSim, client: httpx.Client) -> None:
        """html answers 200 with an HTML page that is not JSON."""
        ruler.add_job("s", "j")
        ruler.fail(mode="html")
        r = client.get("/s/batch/j/status")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert r.text.startswith("<!DOCTYPE html>")
        with pytest.raises(json.JSONDecodeError):
            r.json()

    def test_truncated(self, ruler: RulerSim, client: httpx.Client) -> None:
        """truncated answers 200 with the first half of the real JSON."""
        ruler.add_job("s", "j")
        full = json.dumps(ruler.job("s", "j"), separators=(",", ":"))
        ruler.fail(mode="truncated")
        r = client.get("/s/batch/j/status")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert 0 < len(r.text) < len(full)
        assert full.startswith(r.text)
        with pytest.raises(json.JSONDecodeError):
            r.json()
        assert client.get("/s/batch/j/status").json() == ruler.job("s", "j")

    def test_delay(self, ruler: RulerSim, client: httpx.Client) -> None:
        """delay answers normally after the delay."""
        ruler.add_job("s", "j")
        ruler.fail(mode="delay", delay=0.2)
        start = time.monotonic()
        r = client.get("/s/batch/j/status")
        assert time.monotonic() - start >= 0.2
        assert r.json()["jobId"] == "j"
        with pytest.raises(httpx.ReadTimeout):
            ruler.fail(mode="delay", delay=1)
            client.get("/s/batch/j/status", timeout=0.1)

    def test_bad_arguments(self, ruler: RulerSim) -> None:
        """Unknown modes and non-positive counts are refused at once."""
        with pytest.raises(ValueError, match="mode"):
            ruler.fail(mode="explode")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="times"):
            ruler.fail(times=0)


IMMUTA_KEY = "immuta-key"


@pytest.fixture
def immuta() -> Iterator[ImmutaSim]:
    sim = ImmutaSim(IMMUTA_KEY, max_page_size=3)
    with SimThread(sim):
        yield sim


@pytest.fixture
def iclient(immuta: ImmutaSim) -> Iterator[httpx.Client]:
    headers = {"Authorization": IMMUTA_KEY}
    with httpx.Client(base_url=immuta.base_url, headers=headers, timeout=5) as c:
        yield c


class TestImmutaSim:
    def test_statuses_are_keyed_and_leave_out_unknown_jobs(
        self, immuta: ImmutaSim, iclient: httpx.Client
    ) -> None:
        """POST /jobs/statuses answers an object keyed by the known job ids."""
        immuta.add_job("a", state="active", output={"n": 1})
        immuta.add_job("b", state="completed")
        r = iclient.post("/jobs/statuses", json={"jobIds": ["a", "b", "zz"], "wait": 0})
        assert r.status_code == 200
        doc = r.json()
        assert sorted(doc) == ["a", "b"]
        assert doc["a"]["state"] == "active" and doc["a"]["output"] == {"n": 1}
        assert set(doc["b"]) >= {"id", "jobType", "state", "bulkId", "createdOn", "completedOn"}
        assert ISO.match(doc["b"]["completedOn"]) and ISO.match(doc["a"]["startedOn"])
        assert doc["a"]["completedOn"] is None
        assert immuta.requests == {"statuses": 1}
        assert immuta.statuses_bodies == [{"jobIds": ["a", "b", "zz"], "wait": 0}]

    def test_api_key_as_it_is(self, immuta: ImmutaSim) -> None:
        """Only the bare key is accepted; a Bearer scheme is refused."""
        with httpx.Client(base_url=immuta.base_url) as c:
            body = {"jobIds": []}
            bearer = {"Authorization": f"Bearer {IMMUTA_KEY}"}
            assert c.post("/jobs/statuses", json=body, headers=bearer).status_code == 401
            assert c.post("/jobs/statuses", json=body).status_code == 401
            ok = {"Authorization": IMMUTA_KEY}
            assert c.post("/jobs/statuses", json=body, headers=ok).status_code == 200

    def test_bad_requests(self, immuta: ImmutaSim, iclient: httpx.Client) -> None:
        """Wrong methods, bodies and too many ids are refused."""
        assert iclient.get("/jobs/statuses").status_code == 405
        assert iclient.post("/jobs/statuses", content=b"nope").status_code == 400
        assert iclient.post("/jobs/statuses", json={"jobIds": "a"}).status_code == 400
        assert iclient.post("/jobs/statuses", json={"jobIds": [], "wait": "1"}).status_code == 400
        immuta.max_ids = 2
        r = iclient.post("/jobs/statuses", json={"jobIds": ["a", "b", "c"]})
        assert r.status_code == 400 and "at most 2" in r.json()["message"]
        assert iclient.get("/nothing").status_code == 404

    def test_long_poll_answers_when_a_job_ends(
        self, immuta: ImmutaSim, iclient: httpx.Client
    ) -> None:
        """wait: the answer comes at the first check after a job ends."""
        immuta.add_job("a", state="active")
        immuta.script_job("a", [(0.3, {"state": "failed", "output": "x"})])
        started = time.monotonic()
        body = {"jobIds": ["a"], "wait": 5, "pollInterval": 0.1}
        doc = iclient.post("/jobs/statuses", json=body).json()
        assert 0.25 < time.monotonic() - started < 1.5
        assert doc["a"]["state"] == "failed"

    def test_long_poll_without_an_end_waits_it_out(
        self, immuta: ImmutaSim, iclient: httpx.Client
    ) -> None:
        """Nothing ends: the answer comes after wait; wait 0 answers at once."""
        immuta.add_job("a", state="retry")
        started = time.monotonic()
        body = {"jobIds": ["a"], "wait": 0.4, "pollInterval": 1}
        assert iclient.post("/jobs/statuses", json=body).json()["a"]["state"] == "retry"
        assert 0.35 < time.monotonic() - started < 1.5

    def test_wait_minus_one_waits_for_an_end(
        self, immuta: ImmutaSim, iclient: httpx.Client
    ) -> None:
        """wait: -1 only answers once a job has ended (what poller never asks for)."""
        immuta.add_job("a", state="active")
        forever = {"jobIds": ["a"], "wait": -1, "pollInterval": 0.05}
        with pytest.raises(httpx.ReadTimeout):
            iclient.post("/jobs/statuses", json=forever, timeout=0.3)
        immuta.set_job("a", state="cancelled")
        assert iclient.post("/jobs/statuses", json=forever).json()["a"]["state"] == "cancelled"

    def test_state_dates_follow_changes(self, immuta: ImmutaSim) -> None:
        """completedOn comes with a terminal state and goes with a non-terminal one."""
        immuta.add_job("a")
        assert immuta.job("a")["startedOn"] is None
        done = immuta.set_job("a", state="expired")
        assert ISO.match(done["completedOn"]) and ISO.match(done["startedOn"])
        assert immuta.set_job("a", state="retry", retry_count=1)["completedOn"] is None
        assert immuta.set_job("a", extra={"odd": True})["odd"] is True
        with pytest.raises(TypeError, match="unknown job field"):
            immuta.set_job("a", colour="red")
        with pytest.raises(KeyError):
            immuta.job("missing")
        immuta.remove_job("a")
        with pytest.raises(KeyError):
            immuta.job("a")

    def test_bulk_listing_pages_by_offset(self, immuta: ImmutaSim, iclient: httpx.Client) -> None:
        """GET /jobs?bulkId= pages with offset/size (capped) and next offsets."""
        for i in range(5):
            immuta.add_job(f"b{i}", bulk_id="B")
        immuta.add_job("x", bulk_id="other")
        first = iclient.get("/jobs", params={"bulkId": "B", "size": 50}).json()
        assert [j["id"] for j in first["jobs"]] == ["b0", "b1", "b2"] and first["next"] == 3
        second = iclient.get("/jobs", params={"bulkId": "B", "offset": 3, "size": 3}).json()
        assert [j["id"] for j in second["jobs"]] == ["b3", "b4"] and second["next"] is None
        assert set(first["jobs"][0]) == {"id", "jobType", "state", "bulkId", "createdOn"}
        assert iclient.get("/jobs", params={"offset": "x"}).status_code == 400
        assert immuta.requests["jobs"] == 3

    def test_search_filters_and_paging_styles(
        self, immuta: ImmutaSim, iclient: httpx.Client
    ) -> None:
        """jobType/state repeated or comma-separated, dates, and next as a URL or absent."""
        now = datetime.now(UTC)
        immuta.add_job("old", state="failed", job_type="a", created=now - timedelta(days=2))
        immuta.add_job("f", state="failed", job_type="a", created=now)
        immuta.add_job("g", state="Failed", job_type="b", created=now)
        immuta.add_job("h", state="completed", job_type="a", created=now)
        since = (now - timedelta(days=1)).isoformat()
        query = [("jobType", "a"), ("jobType", "b"), ("state", "failed"), ("startDate", since)]
        doc = iclient.get("/jobs/search", params=query).json()
        assert [j["id"] for j in doc["jobs"]] == ["f", "g"]
        doc = iclient.get("/jobs/search", params={"jobType": "a,b", "endDate": since}).json()
        assert [j["id"] for j in doc["jobs"]] == ["old"]
        assert iclient.get("/jobs/search", params={"startDate": "soon"}).status_code == 400
        immuta.next_style = "url"
        doc = iclient.get("/jobs/search", params={"size": 2, "state": "failed"}).json()
        assert doc["next"] == "/api/jobs/search?size=2&state=failed&offset=2"
        assert [j["id"] for j in iclient.get(immuta.origin + doc["next"]).json()["jobs"]] == ["g"]
        immuta.next_style = "absent"
        assert "next" not in iclient.get("/jobs/search").json()

    def test_one_job(self, immuta: ImmutaSim, iclient: httpx.Client) -> None:
        """GET /jobs/{id} answers one job or 404."""
        immuta.add_job("a b", state="created")
        assert iclient.get("/jobs/a%20b").json()["state"] == "created"
        assert iclient.get("/jobs/nope").status_code == 404
        assert immuta.requests == {"job": 2}


class TestJsonJobSim:
    def test_get_and_post_answer_the_shape(self) -> None:
        """GET /jobs/{id} and POST /jobs/query answer the shaped job; bearer token needed."""
        sim = JsonJobSim("tok", shape=lambda job: {"job": job, "v": 2})
        with SimThread(sim), httpx.Client(base_url=sim.base_url) as c:
            sim.add_job("a/1", status="RUNNING")
            assert sim.set_job("a/1", percent=5) == {
                "job": {"id": "a/1", "status": "RUNNING", "percent": 5},
                "v": 2,
            }
            auth = {"Authorization": "Bearer tok"}
            assert c.get("/jobs/a%2F1", headers=auth).json()["job"]["percent"] == 5
            r = c.post("/jobs/query", json={"id": "a/1"}, headers=auth)
            assert r.json()["job"]["status"] == "RUNNING"
            assert c.get("/jobs/a%2F1").status_code == 401
            assert c.get("/jobs/zz", headers=auth).status_code == 404
            assert c.post("/jobs/a", headers=auth).status_code == 405
            assert c.post("/jobs/query", content=b"x", headers=auth).status_code == 400
            sim.remove_job("a/1")
            assert c.get("/jobs/a%2F1", headers=auth).status_code == 404
            assert sim.requests == {"job": 5, "query": 2}

    def test_default_shape(self) -> None:
        """Without a shape, a job answers as {"data": {"id": ..., **fields}}."""
        sim = JsonJobSim()
        assert sim.add_job("x", status="DONE") == {"data": {"id": "x", "status": "DONE"}}
        assert sim.job("x") == {"data": {"id": "x", "status": "DONE"}}
        with pytest.raises(KeyError):
            sim.set_job("nope", status="x")


class TestWebhookSink:
    def test_receives_an_apprise_notification(self, sink: WebhookSink) -> None:
        """A real Apprise json:// notification is recorded with its title, body and type."""
        a = apprise.Apprise()
        assert a.add(sink.apprise_url)
        assert a.notify(title="t", body="b")
        (message,) = sink.wait_for(1, 5)
        assert (message["title"], message["message"], message["type"]) == ("t", "b", "info")
        assert message["path"] == "/hook"
        assert abs(message["received_at"] - time.time()) < 10
        assert message["payload"]["version"] == "1.0"
        assert sink.apprise_url == f"json://127.0.0.1:{sink.port}/hook"
        assert sink.requests == {"hook": 1}

    def test_message_types_and_paths(self, sink: WebhookSink) -> None:
        """The Apprise type is kept, and each path tells its channel apart."""
        a = apprise.Apprise()
        a.add(sink.apprise_url_for("/ops"))
        assert a.notify(title="bad", body="it failed", notify_type=apprise.NotifyType.FAILURE)
        (message,) = sink.wait_for(1, 5)
        assert (message["type"], message["path"]) == ("failure", "/ops")

    def test_outage_loses_messages_until_answer_restores(self, sink: WebhookSink) -> None:
        """answer(500) makes Apprise fail and records nothing; answer() restores service."""
        a = apprise.Apprise()
        a.add(sink.apprise_url)
        sink.answer(500)
        assert not a.notify(title="lost", body="x")
        assert not a.notify(title="lost", body="y")
        assert sink.messages == []
        assert sink.requests["hook"] == 2
        assert sink.answer() is None
        assert a.notify(title="kept", body="z")
        assert [m["title"] for m in sink.wait_for(1, 5)] == ["kept"]

    def test_retry_after_and_times(self, sink: WebhookSink) -> None:
        """answer(429, times=1, retry_after=...) answers once with Retry-After."""
        sink.answer(429, times=1, retry_after=2)
        payload = {"version": "1.0", "title": "t", "message": "m", "type": "info"}
        with httpx.Client() as c:
            r = c.post(sink.base_url + "/hook", json=payload)
            assert (r.status_code, r.headers["retry-after"]) == (429, "2")
            assert c.post(sink.base_url + "/hook", json=payload).status_code == 200
        assert len(sink.wait_for(1, 5)) == 1

    def test_refuse_and_hang(self, sink: WebhookSink) -> None:
        """refuse and hang lose the message; the next one gets through."""
        sink.answer(mode="refuse", times=1)
        sink.answer(mode="hang", times=1)
        with httpx.Client() as c:
            with pytest.raises(httpx.RemoteProtocolError):
                c.post(sink.base_url + "/hook", json={"title": "a"})
            with pytest.raises(httpx.ReadTimeout):
                c.post(sink.base_url + "/hook", json={"title": "b"}, timeout=0.2)
            assert c.post(sink.base_url + "/hook", json={"title": "c"}).status_code == 200
        assert [m["title"] for m in sink.wait_for(1, 5)] == ["c"]

    def test_delay_still_records(self, sink: WebhookSink) -> None:
        """A slow sink still records the message it answers late."""
        sink.answer(mode="delay", delay=0.2, times=1)
        with httpx.Client() as c, pytest.raises(httpx.ReadTimeout):
            c.post(sink.base_url + "/x", json={"title": "late"}, timeout=0.05)
        assert [m["title"] for m in sink.wait_for(1, 5)] == ["late"]

    def test_wait_for_times_out_with_what_arrived(self, sink: WebhookSink) -> None:
        """wait_for raises a TimeoutError that carries the messages received."""
        with httpx.Client() as c:
            c.post(sink.base_url + "/hook", json={"title": "only"})
        with pytest.raises(TimeoutError, match="wanted 2 message") as info:
            sink.wait_for(2, 0.2)
        assert isinstance(info.value, SinkTimeout)
        assert [m["title"] for m in info.value.messages] == ["only"]

    def test_wait_for_wakes_up_when_messages_arrive(self, sink: WebhookSink) -> None:
        """wait_for returns as soon as a message posted from another thread arrives."""

        def post() -> None:
            time.sleep(0.1)
            with httpx.Client() as c:
                c.post(sink.base_url + "/hook", json={"title": "later"})

        poster = threading.Thread(target=post)
        poster.start()
        try:
            start = time.monotonic()
            assert [m["title"] for m in sink.wait_for(1, 5)] == ["later"]
            assert time.monotonic() - start < 4
        finally:
            poster.join()
        sink.clear()
        assert sink.messages == []

    def test_wait_for_async_on_the_sinks_own_loop(self) -> None:
        """wait_for_async works on the sink's loop; wait_for refuses to block it."""

        async def main() -> list[dict[str, Any]]:
            async with WebhookSink() as sink, httpx.AsyncClient() as c:
                with pytest.raises(RuntimeError, match="wait_for_async"):
                    sink.wait_for(1, 0.1)
                waiter = asyncio.create_task(sink.wait_for_async(2, 5))
                await c.post(sink.base_url + "/hook", json={"title": "one"})
                await c.post(sink.base_url + "/hook", json={"title": "two"})
                got = await waiter
                with pytest.raises(SinkTimeout):
                    await sink.wait_for_async(3, 0.1)
                return got

        assert [m["title"] for m in asyncio.run(main())] == ["one", "two"]

    def test_on_message_callback(self, caplog: pytest.LogCaptureFixture) -> None:
        """on_message sees each message; its errors are logged, the message is kept."""
        seen: list[str] = []

        def on_message(message: dict[str, Any]) -> None:
            seen.append(message["title"])
            if message["title"] == "bad":
                raise RuntimeError("printer broke")

        sink = WebhookSink(on_message=on_message)
        with SimThread(sink), httpx.Client() as c:
            assert c.post(sink.base_url + "/hook", json={"title": "good"}).status_code == 200
            assert c.post(sink.base_url + "/hook", json={"title": "bad"}).status_code == 200
            assert len(sink.wait_for(2, 5)) == 2
        assert seen == ["good", "bad"]
        assert [str(e) for e in sink.errors] == ["printer broke"]
        assert "on_message failed" in caplog.text

    def test_bad_requests(self, sink: WebhookSink) -> None:
        """Non-JSON bodies are 400 and other methods 405; nothing is recorded."""
        with httpx.Client() as c:
            assert c.post(sink.base_url + "/hook", content=b"not json").status_code == 400
            assert c.post(sink.base_url + "/hook", json=[1, 2]).status_code == 400
            assert c.get(sink.base_url + "/hook").status_code == 405
        assert sink.messages == []


class TestSimThread:
    def test_runs_several_servers(self) -> None:
        """One thread serves several simulators; after stop their ports are closed."""
        ruler, sink = RulerSim(), WebhookSink()
        with SimThread(ruler, sink) as sims:
            assert sims.servers == (ruler, sink)
            assert ruler.base_url == f"http://127.0.0.1:{ruler.port}/v1"
            assert sink.base_url == f"http://127.0.0.1:{sink.port}"
            with httpx.Client() as c:
                assert c.get(ruler.base_url + "/s/batch/jobs").status_code == 401
                assert c.post(sink.base_url + "/hook", json={}).status_code == 200
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", ruler.port), timeout=1),
        ):
            pass

    def test_start_stop_rules(self) -> None:
        """stop is idempotent and a started SimThread cannot be started again."""
        sims = SimThread(HttpServer())
        sims.stop()
        sims.start()
        try:
            with pytest.raises(RuntimeError, match="already started"):
                sims.start()
        finally:
            sims.stop()
        sims.stop()
        with pytest.raises(RuntimeError, match="not started"):
            _ = sims.loop

    def test_run_coroutine_on_the_loop(self) -> None:
        """run() executes a coroutine on the simulators' loop and returns its result."""
        with SimThread(HttpServer()) as sims:

            async def where() -> int:
                await asyncio.sleep(0)
                return threading.get_ident()

            assert sims.run(where(), timeout=5) != threading.get_ident()

    def test_port_in_use_fails_start(self) -> None:
        """A server that cannot bind makes start() raise, and the thread ends cleanly."""
        with SimThread(HttpServer()) as first:
            port = first.servers[0].port
            sims = SimThread(WebhookSink(), HttpServer(port=port))
            with pytest.raises(OSError):
                sims.start()
            with pytest.raises(RuntimeError):
                _ = sims.loop

    def test_stop_ends_hung_requests(self) -> None:
        """Stopping closes connections that hang, promptly."""
        server = HttpServer()
        server.fail(mode="hang", times=None)
        sims = SimThread(server).start()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.1)
            start = time.monotonic()
            sims.stop()
            assert time.monotonic() - start < 2
            assert sock.recv(100) == b""
