"""Bad answers, broken hosts and buggy adapters: the daemon runs on, the watch records why."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from structlog.testing import capture_logs
from world import SITE, LoopbackResolver, World, eventually

from poller.app import Daemon
from poller.config import load_config
from poller.engine.runtime import Tuning
from poller.errors import TransientSourceError
from poller.models import JobRef
from poller.sources.auth import bearer
from poller.sources.client import Requester, SourceHealth, path_segment
from poller.sources.ruler import RulerSource
from poller.sources.ruler.adapter import RulerAdapter
from poller.store.repo import Store
from poller.testing import RulerSim, SimThread


@pytest.fixture
def tls_server() -> Iterator[int]:
    """A TLS server on loopback whose certificate no public CA signed."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            # The client refuses our certificate: that is the point.
            with conn, contextlib.suppress(ssl.SSLError, OSError):
                context.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    listener.close()


#: job id -> (fault to inject, the error category `poller status` must show)
FAULTS: dict[str, tuple[dict[str, Any] | None, str]] = {
    "html": ({"mode": "html"}, "bad_answer"),
    "empty": ({"status": 200, "body": b""}, "bad_answer"),
    "truncated": ({"mode": "truncated"}, "bad_answer"),
    "shape": ({"status": 200, "body": [1, 2, 3]}, "bad_answer"),
    "huge": ({"status": 200, "body": b"[" + b"1," * 700_000 + b"1]"}, "bad_answer"),
    "reset": ({"mode": "refuse"}, "network"),
    "e401": ({"status": 401}, "auth"),
    "e403": ({"status": 403}, "auth"),
    "e404": (None, "not_found"),
    "e500": ({"status": 500}, "server_error"),
    "e503": ({"status": 503, "retry_after": 1}, "unavailable"),
    "e429": ({"status": 429, "retry_after": 1}, "rate_limited"),
    "drip": ({"mode": "drip", "delay": 0.5}, "timeout"),
}


class TestBadAnswers:
    """One watch per kind of trouble, all in one running daemon."""

    def test_every_kind_is_a_categorised_poll_error(self, world: World, tls_server: int) -> None:
        """The daemon keeps running; each watch shows its error; none ends."""
        sources, jobs = [], []
        for job_id, (fault, _kind) in FAULTS.items():
            if fault is not None:
                world.ruler.add_job(SITE, job_id, status="processing")
                world.ruler.fail(f"/{job_id}/", times=None, **fault)
            # One source each, so that one host's breaker does not colour the others.
            sources.append(
                f"  r-{job_id}: {{type: ruler, base_url: '{world.ruler.base_url}', "
                f"token: '{world.ruler.token}', request_timeout: 1s}}"
            )
            jobs.append(f"  - {{source: r-{job_id}, site: '{SITE}', id: '{job_id}'}}")
        world.ruler.add_job(SITE, "unknown", status="archiving")
        sources += [
            f"  r-unknown: {{type: ruler, base_url: '{world.ruler.base_url}', "
            f"token: '{world.ruler.token}'}}",
            "  r-dns: {type: ruler, base_url: 'http://nonexistent.invalid/v1', token: x}",
            f"  r-tls: {{type: ruler, base_url: 'https://127.0.0.1:{tls_server}/v1', token: x}}",
        ]
        jobs += [
            f"  - {{source: r-{name}, site: '{SITE}', id: '{name}'}}"
            for name in ("unknown", "dns", "tls")
        ]
        expected = {name: kind for name, (_f, kind) in FAULTS.items()} | {
            "dns": "dns",
            "tls": "tls",
        }
        text = world.config.read_text().replace(
            "sources:\n", "sources:\n" + "\n".join(sources) + "\n", 1
        )
        world.config.write_text(text.replace("jobs:\n  []", "jobs:\n" + "\n".join(jobs)))
        daemon = world.start()

        def all_seen() -> dict[str, Any] | None:
            status = world.status()
            watches = {k.split("/")[-1]: w for k, w in status.items() if "/" in k}
            seen = all(watches[n]["last_error"] for n in expected) and watches["unknown"]["state"]
            return watches if seen else None

        watches = eventually(all_seen, timeout=20, what="every watch polled")
        for name, kind in expected.items():
            assert watches[name]["last_error"].startswith(kind + ":"), (name, watches[name])
            assert watches[name]["terminal"] is False and watches[name]["active"] is True
        assert watches["unknown"]["state"] == "unknown"
        assert watches["unknown"]["remote_status"] == "archiving"
        assert watches["tls"]["last_error"].startswith("tls: TLS error")
        # Credentials refused: one warning per outage, not one per poll.
        eventually(
            lambda: world.status()["r-e401/4f2a/e401"]["error_count"] >= 3, what="several 401s"
        )
        log = world.log.read_text()
        warnings = [
            line
            for line in log.splitlines()
            if '"poll error"' in line and "e401" in line and '"warning"' in line
        ]
        assert len(warnings) == 1
        assert daemon.poll() is None
        assert world.messages() == [] or all(m["type"] == "info" for m in world.messages())


class TestSourceBackoff:
    """A whole source that fails is asked less, not once per watch."""

    def test_breaker_opens_after_repeated_failures_and_closes_on_success(self) -> None:
        """Three transient failures open it; Retry-After extends it; a success closes it."""
        now = [100.0]
        health = SourceHealth(threshold=3, base=2, cap=60, clock=lambda: now[0], rand=lambda: 1.0)
        refused = TransientSourceError("network", "connection failed: connection refused")
        health.failed(refused)
        health.failed(refused)
        assert health.wait_left() == 0
        health.failed(refused)
        assert health.wait_left() == 2
        health.failed(TransientSourceError("rate_limited", "HTTP 429", retry_after=30))
        assert health.wait_left() == 30
        now[0] += 31
        health.succeeded()
        assert health.wait_left() == 0 and health.failures == 0

    def test_dead_host_with_many_watches_gets_few_requests(self) -> None:
        """200 polls of a dead host send only a handful of requests."""
        sim = RulerSim(token="t")
        with SimThread(sim):
            sim.fail("", status=502, times=None)

            async def go() -> int:
                req = Requester(auth=bearer("t"), max_concurrency=4)
                errors = 0
                try:
                    for _ in range(200):
                        try:
                            await req.json("GET", f"{sim.base_url}/{SITE}/batch/x/status")
                        except Exception:
                            errors += 1
                finally:
                    await req.aclose()
                return errors

            assert asyncio.run(go()) == 200
            assert sim.requests["status"] <= 5

    def test_retry_after_holds_the_whole_source(self) -> None:
        """After a 429 with Retry-After, no request goes out until it has passed."""
        sim = RulerSim(token="t")
        sim.add_job(SITE, "j", status="processing")
        with SimThread(sim):
            sim.fail("", status=429, retry_after=1)

            async def go() -> list[str]:
                req = Requester(auth=bearer("t"))
                kinds = []
                try:
                    for _ in range(3):
                        try:
                            await req.json("GET", f"{sim.base_url}/{SITE}/batch/j/status")
                            kinds.append("ok")
                        except Exception as exc:
                            kinds.append(getattr(exc, "kind", "?"))
                    await asyncio.sleep(1.1)
                    await req.json("GET", f"{sim.base_url}/{SITE}/batch/j/status")
                    kinds.append("ok")
                finally:
                    await req.aclose()
                return kinds

            assert asyncio.run(go()) == ["rate_limited", "backing_off", "backing_off", "ok"]
            assert sim.requests["status"] == 2


class TestAdapterBugs:
    """An exception the adapter did not expect costs one poll, never the daemon."""

    def test_unexpected_exception_is_recorded_then_polling_goes_on(self, tmp_path: Path) -> None:
        """The HTTP layer raises RuntimeError once: one internal error, then success."""
        resolver = LoopbackResolver(fail_first=1)
        sim = RulerSim("t")
        with SimThread(sim):
            sim.add_job("s", "j", status="complete")
            path = tmp_path / "config.yaml"
            path.write_text(
                json.dumps(
                    {
                        "database": f"sqlite:///{tmp_path}/poller.db",
                        "sources": {
                            "r": {
                                "type": "ruler",
                                "token": "t",
                                "base_url": f"http://api.test:{sim.port}/v1",
                            }
                        },
                        "polling": {"interval": "100ms", "max_interval": "200ms"},
                        "jobs": [{"source": "r", "site": "s", "id": "j"}],
                    }
                )
            )
            config = load_config(path)

            async def go() -> int:
                daemon = Daemon(config, resolver=resolver, tuning=Tuning(idle_wait=0.1))
                runner = asyncio.create_task(daemon.run())
                # the daemon creates the tables: read them only once it says it is ready
                await asyncio.wait_for(daemon.ready.wait(), timeout=10)
                store = Store(config.database)
                try:
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
                        watch = store.get_watch("r/s/j")
                        if watch is not None and not watch.progress.active:
                            break
                finally:
                    store.close()
                    daemon.stop()
                return await runner

            with capture_logs() as logs:
                assert asyncio.run(go()) == 0
            assert sim.requests["status"] == 1
        crashed = [e for e in logs if e["event"] == "adapter crashed"]
        assert len(crashed) == 1 and crashed[0]["source"] == "r"
        errors = [e for e in logs if e["event"] == "poll error"]
        assert [e["kind"] for e in errors] == ["internal"]
        store = Store(config.database)
        try:
            watch = store.get_watch("r/s/j")
            history = store.history("r/s/j")
        finally:
            store.close()
        assert watch is not None and watch.progress.state is not None
        assert watch.progress.state.value == "succeeded"
        assert resolver.calls == 2
        assert history is not None and history[0].what == "new -> succeeded"


class TestLimits:
    """max_concurrency and rate_limit hold across every watch of a source."""

    def _poll_many(self, sim: RulerSim, count: int, **limits: Any) -> float:
        config = RulerSource(
            type="ruler", base_url=sim.base_url, token=SecretStr(sim.token), **limits
        )

        async def go() -> float:
            adapter = RulerAdapter(config)
            refs = [JobRef(f"r/{SITE}/j{i}", "r", f"j{i}", SITE) for i in range(count)]
            started = time.monotonic()
            try:
                outcomes = await adapter.poll(refs)
            finally:
                await adapter.aclose()
            assert len(outcomes) == count
            return time.monotonic() - started

        return asyncio.run(go())

    def test_max_concurrency_bounds_requests_in_flight(self) -> None:
        """10 requests that each take 0.2 s, 2 at a time, take at least 1 s."""
        sim = RulerSim(token="t")
        for i in range(10):
            sim.add_job(SITE, f"j{i}", status="processing")
        with SimThread(sim):
            sim.fail("", mode="delay", delay=0.2, times=None)
            assert self._poll_many(sim, 10, max_concurrency=2) >= 0.95
            assert sim.requests["status"] == 10

    def test_rate_limit_spreads_requests(self) -> None:
        """30 requests at 10/s take at least 1.9 s (10 may go at once)."""
        sim = RulerSim(token="t")
        for i in range(30):
            sim.add_job(SITE, f"j{i}", status="processing")
        with SimThread(sim):
            assert self._poll_many(sim, 30, rate_limit="10/s") >= 1.9


@given(st.text(max_size=30))
def test_an_id_is_quoted_as_one_path_segment(text: str) -> None:
    """Whatever a job or site id holds, it stays one segment of the URL (a "/" or "?" in it
    cannot reach another path or a query); plain ids skip the slow quoting, same result."""
    assert path_segment(text) == quote(text, safe="")
