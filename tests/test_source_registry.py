"""A source type is registered once: a throwaway one, declared here and nowhere else, is
accepted by ``poller check`` and polled by the daemon, which records its state.

The type ``toy`` reads a loopback JSON job API (`poller.testing.JsonJobSim`) with one GET per
job. Nothing in poller names it: the config's union, its list of type names, the job-key
checks and the daemon's factory all come from `poller.sources.base`'s registry.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest
import sqlalchemy.exc
from aiohttp.abc import AbstractResolver
from typer.testing import CliRunner

from poller.app import Daemon
from poller.cli import app
from poller.config import SOURCE_TYPES, load_config
from poller.engine.runtime import Tuning
from poller.errors import ConfigError
from poller.models import JobRef, PollOutcome, PollResult, State
from poller.settings.fields import HttpUrl
from poller.sources import SOURCES, Source, SourceConfig, read_outcome
from poller.sources.auth import bearer
from poller.sources.base import SourceType, register, source_types, unregister
from poller.sources.client import Requester, SourceHealth
from poller.store.repo import Store
from poller.testing import JsonJobSim, SimThread

TOKEN = "toy-token"
TOY_STATES = {"queued": State.PENDING, "busy": State.RUNNING, "done": State.SUCCEEDED}


class ToySource(SourceConfig):
    """The throwaway type's config: where its API is."""

    type: Literal["toy"] = "toy"
    base_url: HttpUrl


class ToyAdapter:
    """One ``GET {base_url}/jobs/{id}`` per job; ``data.status`` is the job's state."""

    def __init__(
        self,
        config: ToySource,
        *,
        resolver: AbstractResolver | None = None,
        health: SourceHealth | None = None,
    ) -> None:
        self.base_url = config.base_url.rstrip("/")
        self.requester = Requester(
            auth=bearer(TOKEN),
            max_concurrency=config.max_concurrency,
            resolver=resolver,
            health=health,
        )

    async def poll(self, jobs: Sequence[JobRef]) -> Mapping[str, PollOutcome]:
        """Each job's state, one request each."""
        outcomes: dict[str, PollOutcome] = {}
        for job in jobs:
            answer = await self.requester.json("GET", f"{self.base_url}/jobs/{job.job_id}")
            outcomes[job.key] = read_outcome(_read, answer)
        return outcomes

    async def aclose(self) -> None:
        """Release connections."""
        await self.requester.aclose()


def _read(answer: Any) -> PollResult:
    status = str(answer["data"]["status"])
    return PollResult(remote_status=status, state=TOY_STATES.get(status))


def _build(
    config: Any, resolver: AbstractResolver | None, health: SourceHealth | None = None
) -> Source:
    return ToyAdapter(config, resolver=resolver, health=health)


@pytest.fixture
def toy() -> Iterator[SourceType]:
    """The ``toy`` type, registered for one test (the other tests see only the built-ins)."""
    kind = register(SourceType("toy", ToySource, _build))
    try:
        yield kind
    finally:
        unregister("toy")


@pytest.fixture
def api() -> Iterator[JsonJobSim]:
    server = JsonJobSim(TOKEN)
    with SimThread(server):
        yield server


def write_config(tmp_path: Path, base_url: str, job: Mapping[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    config = {
        "database": f"sqlite:///{tmp_path}/poller.db",
        "sources": {"lab": {"type": "toy", "base_url": base_url}},
        "polling": {"interval": "100ms", "max_interval": "200ms"},
        "jobs": [{"source": "lab", **job}],
    }
    path.write_text(json.dumps(config))
    return path


def test_the_registry_holds_the_built_in_types() -> None:
    """Without a test's type, the registry is the config's list of type names."""
    assert source_types() == SOURCE_TYPES == ("ruler", "immuta", "http")
    assert set(SOURCES) == set(SOURCE_TYPES)


def test_a_type_is_registered_once(toy: SourceType) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(SourceType("toy", ToySource, _build))


def test_an_unregistered_type_is_refused(tmp_path: Path, api: JsonJobSim) -> None:
    path = write_config(tmp_path, api.base_url, {"id": "j1"})
    with pytest.raises(
        ConfigError, match="unknown source type 'toy'; expected one of: ruler, immuta, http"
    ):
        load_config(path)


def test_check_accepts_a_registered_type(tmp_path: Path, api: JsonJobSim, toy: SourceType) -> None:
    path = write_config(tmp_path, api.base_url, {"id": "j1"})
    result = CliRunner().invoke(app, ["check", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "source lab: toy" in result.output


def test_the_site_rule_comes_from_the_registry(
    tmp_path: Path, api: JsonJobSim, toy: SourceType
) -> None:
    """The type does not take a ``site`` (it does not set `needs_site`): check says so."""
    path = write_config(tmp_path, api.base_url, {"id": "j1", "site": "s"})
    result = CliRunner().invoke(app, ["check", "-c", str(path)])
    assert result.exit_code == 2
    assert "jobs[0].site: only for a ruler or http source; this one is toy" in result.output


def test_the_daemon_polls_it_and_records_its_state(
    tmp_path: Path, api: JsonJobSim, toy: SourceType
) -> None:
    """What ``poller run`` runs (`app.Daemon`) polls the job until it ends, and records it."""
    api.add_job("j1", status="busy")
    config = load_config(write_config(tmp_path, api.base_url, {"id": "j1"}))
    assert SOURCES["toy"] is toy.build

    async def go() -> list[str]:
        """The watch's transitions, once it has ended (the job ends when it was seen running)."""
        daemon = Daemon(config, tuning=Tuning(idle_wait=0.1))
        runner = asyncio.create_task(daemon.run())
        store = Store(config.database)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                try:
                    watch = store.get_watch("lab/j1")
                except sqlalchemy.exc.OperationalError:
                    continue  # the daemon has not made its tables yet (a busy machine)
                state = watch.progress.state if watch is not None else None
                if state is State.RUNNING:
                    api.set_job("j1", status="done")
                elif state is State.SUCCEEDED:
                    break
            history = store.history("lab/j1") or []
        finally:
            store.close()
            daemon.stop()
        assert await runner == 0
        return [entry.what for entry in history if " -> " in entry.what]

    assert asyncio.run(go()) == ["new -> running", "running -> succeeded"]
