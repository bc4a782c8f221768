"""Shared fixtures: real databases (SQLite files and the local PostgreSQL)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
from world import AnyAnswer, World

from poller.testing import RulerSim, SimThread, WebhookSink

PG_ADMIN_URL = os.environ.get(
    "POLLER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _pg_available() -> str | None:
    """None if PostgreSQL answers, else why not."""
    engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def any_answer() -> Iterator[AnyAnswer]:
    """A loopback server answering whatever status and body a test sets on it."""
    server = AnyAnswer()
    with SimThread(server):
        yield server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """An admin URL of the PostgreSQL at 127.0.0.1:5432; skips without it (fails in CI)."""
    why = _pg_available()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true but unreachable: {why}")
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable ({why})")
    yield PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"poller_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    """Each store contract test runs on a SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/poller.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A loopback Ruler API and webhook sink, a config file, and daemons started from it."""
    ruler, sink = RulerSim(token="tok-" + secrets.token_hex(4)), WebhookSink()
    with SimThread(ruler, sink):
        w = World(tmp_path, ruler, sink)
        try:
            yield w
        finally:
            w.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_world(request: pytest.FixtureRequest, world: World) -> World:
    """The daemon world on a SQLite file, or on a fresh PostgreSQL database."""
    if request.param == "postgresql":
        world.database = str(request.getfixturevalue("pg_url"))
    return world


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Tests that configure logging in-process leave the next test a clean slate."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
