"""A loopback world for end-to-end tests: Ruler API, webhook sink, config file, `poller`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from aiohttp.abc import AbstractResolver, ResolveResult

from poller.testing import HttpServer, Request, Response, RulerSim, WebhookSink

SITE = "4f2a"
T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 15.0, what: str = "") -> T:
    """Retry `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


class LoopbackResolver(AbstractResolver):
    """Resolves every host name to 127.0.0.1, after raising `RuntimeError` `fail_first` times.

    Passed to an adapter or the daemon as their HTTP resolver: a source configured with a made-
    up host name then reaches a loopback server, and the failures stand for a bug in the HTTP
    layer that nobody expected.
    """

    def __init__(self, fail_first: int = 0, message: str = "a bug nobody expected") -> None:
        self.fail_first, self.message = fail_first, message
        self.calls = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise RuntimeError(self.message)
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


class AnyAnswer(HttpServer):
    """A loopback server that answers every request with `status` and `body`, as they are."""

    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.body = b""

    async def handle(self, request: Request) -> Response:
        return Response(self.status, self.body)


class DaemonWorld:
    """A config file, the `poller` command run against it and the `poller run` daemons started;
    what each kind of test writes into the config is up to its subclass."""

    def __init__(self, tmp: Path, ruler: RulerSim, sink: WebhookSink) -> None:
        self.tmp, self.ruler, self.sink = tmp, ruler, sink
        self.config = tmp / "config.yaml"
        self.log = tmp / "daemon.log"
        self.daemons: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        """The daemon's environment: the token, no POLLER_* or systemd leftovers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        env["RULER_TOKEN"] = self.ruler.token
        env.pop("NOTIFY_SOCKET", None)
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one `poller` command with this world's config."""
        result = subprocess.run(
            [sys.executable, "-m", "poller", *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"poller {args} -> {result.returncode}: {result.stderr}")
        return result

    def start(
        self, env: dict[str, str] | None = None, log: Path | None = None, wait: bool = True
    ) -> subprocess.Popen[bytes]:
        """Start `poller run` (logging to `log`); by default wait until it logged that it
        started (a restart counts only its own "started" line)."""
        log = log or self.log
        before = log.read_bytes().count(b'"started"') if log.exists() else 0
        out = log.open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "poller", "run", "-c", str(self.config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env or self.env(),
        )
        out.close()
        self.daemons.append(proc)
        if wait:
            eventually(
                lambda: log.read_bytes().count(b'"started"') > before or proc.poll() is not None,
                timeout=20,
                what="daemon start",
            )
            assert proc.poll() is None, log.read_text()[-3000:]
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> int:
        """SIGTERM and wait for the exit code."""
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=15)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL: no chance to finish anything."""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=15)

    def close(self) -> None:
        """Kill any daemon still running."""
        for proc in self.daemons:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class World(DaemonWorld):
    """The daemon tests' world: one Ruler source, one webhook channel, fast polling."""

    def __init__(self, tmp: Path, ruler: RulerSim, sink: WebhookSink) -> None:
        super().__init__(tmp, ruler, sink)
        self.database = f"sqlite:///{tmp}/poller.db"
        self.write_config(jobs="")

    def write_config(self, jobs: str, extra: str = "") -> None:
        """The config with these ``jobs`` entries and `extra` top-level YAML."""
        self.config.write_text(f"""
database: {self.database}
log: {{level: debug}}
sources:
  ruler-prod:
    type: ruler
    base_url: {self.ruler.base_url}
    token: ${{RULER_TOKEN}}
channels:
  hook: {self.sink.apprise_url}
rules:
  - on: [succeeded, partial, failed, timed_out, started]
    notify: [hook]
polling:
  interval: 200ms
  backoff: 1.5
  max_interval: 1s
{extra}
jobs:
{jobs or "  []"}
""")

    def status(self) -> dict[str, Any]:
        """`poller status --json`: the watches by key, and ``_deliveries``."""
        doc: dict[str, Any] = json.loads(self.cli("status", "--json", "--all").stdout)
        return {w["key"]: w for w in doc["watches"]} | {"_deliveries": doc["deliveries"]}

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Messages the sink received (of Apprise type `kind`, if given)."""
        return [m for m in self.sink.messages if kind is None or m["type"] == kind]


def job_yaml(job_id: str, name: str = "") -> str:
    text = f"  - {{source: ruler-prod, site: '{SITE}', id: '{job_id}'"
    return text + (f", name: '{name}'}}\n" if name else "}\n")


@contextlib.contextmanager
def daemon(tmp_path: Path, config: str, env: Mapping[str, str] = {}) -> Iterator[Path]:
    """`poller run` on `config` (written to tmp_path/config.yaml) until the block ends; it
    must then stop cleanly on SIGTERM. Yields the config's path."""
    path = tmp_path / "config.yaml"
    path.write_text(config)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    environ.pop("NOTIFY_SOCKET", None)
    environ.update(env)
    with (tmp_path / "daemon.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "poller", "run", "-c", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ,
        )
    try:
        yield path
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
