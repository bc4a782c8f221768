"""The recipes of docs/recipes against the real servers, started here on loopback: marked
``realserver`` and left out by default (``pytest -m realserver`` runs them). Each server's
commands are looked for in $POLLER_REALSERVER_PATH (directories, like $PATH), else $PATH; a
server that is not installed skips its test with the reason (docs/recipes/README.md says how to
install them, never into poller's own environment)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_recipes import AIRFLOW, FLOWER, MLFLOW, PREFECT, Recipe, cli
from world import eventually

pytestmark = [pytest.mark.realserver, pytest.mark.timeout(600)]

SEARCH = os.environ.get("POLLER_REALSERVER_PATH") or os.environ.get("PATH", "")
PASSWORD = "recipe-pass-2207"


def command(name: str) -> str:
    """The server's command, or skip: it is not installed."""
    found = shutil.which(name, path=SEARCH)
    if found is None:
        pytest.skip(f"{name} is not installed (see docs/recipes/README.md)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def started(
    tmp_path: Path, name: str, argv: Sequence[str], env: Mapping[str, str] = {}
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process in its own session (stopped with its children), its output in
    tmp_path/NAME.log."""
    with (tmp_path / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def client(base_url: str, **kw: Any) -> httpx.Client:
    """An HTTP client for the server's own API, closed when the test ends."""
    made = httpx.Client(base_url=base_url, timeout=30, **kw)
    CLIENTS.append(made)
    return made


CLIENTS: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while CLIENTS:
        CLIENTS.pop().close()


def ready(url: str, timeout: float = 180, **kw: Any) -> None:
    """Wait until `url` answers 200."""

    def up() -> bool:
        try:
            return httpx.get(url, timeout=5, **kw).status_code == 200
        except httpx.HTTPError:
            return False

    eventually(up, timeout=timeout, what=url)


class Waits:
    """`poller wait` on the recipe against the real server."""

    def __init__(self, recipe: Recipe, tmp_path: Path, origin: str) -> None:
        self.recipe = recipe
        self.env = recipe.env(tmp_path, origin, "json://127.0.0.1:9/unused")
        self.config = tmp_path / "recipe.yaml"
        self.config.write_text(recipe.config())

    def argv(self, job_id: str, site: str | None, *extra: str) -> list[str]:
        where = () if site is None else ("--site", site)
        return ["wait", self.recipe.system, job_id, *where, "-c", str(self.config), *extra]

    def run(self, job_id: str, site: str | None = None) -> subprocess.CompletedProcess[str]:
        return cli(*self.argv(job_id, site, "--timeout", "5m"), env=self.env, timeout=400)

    def background(self, job_id: str, site: str | None = None) -> subprocess.Popen[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        return subprocess.Popen(
            [sys.executable, "-m", "poller", *self.argv(job_id, site, "--timeout", "5m")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**environ, **self.env},
        )


def finished(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=400)
    return proc.returncode, out, err


def test_mlflow(tmp_path: Path) -> None:
    """A run poller waits on while it runs ends FINISHED: exit 0 with its duration; a FAILED
    one exit 1; an unknown run id exit 4, not found."""
    mlflow = command("mlflow")
    port = free_port()
    argv = [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    argv += ["--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    argv += ["--default-artifact-root", str(tmp_path / "artifacts")]
    with started(tmp_path, "mlflow", argv):
        base = f"http://127.0.0.1:{port}"
        ready(base + "/health")
        api = client(base + "/api/2.0/mlflow")
        exp = api.post("/experiments/create", json={"name": "recipe"}).json()["experiment_id"]

        def run(name: str) -> str:
            body = {"experiment_id": exp, "run_name": name, "start_time": int(time.time() * 1000)}
            run_id: str = api.post("/runs/create", json=body).json()["run"]["info"]["run_id"]
            return run_id

        def end(run_id: str, status: str) -> None:
            body = {"run_id": run_id, "status": status, "end_time": int(time.time() * 1000)}
            api.post("/runs/update", json=body).raise_for_status()

        waits = Waits(MLFLOW, tmp_path, base)
        ok, bad = run("nightly-train"), run("tune-lr")
        waiting = waits.background(ok)
        time.sleep(3)
        api.post(
            "/runs/log-metric",
            json={"run_id": ok, "key": "loss", "value": 0.25, "timestamp": 0, "step": 0},
        ).raise_for_status()
        end(ok, "FINISHED")
        end(bad, "FAILED")
        code, out, err = finished(waiting)
        failed, missing = waits.run(bad), waits.run("0123456789abcdef0123456789abcdef")
    assert code == 0, (out, err)
    assert "succeeded" in out and "took" in out, out
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert missing.returncode == 4 and "not found" in missing.stderr, missing.stderr


def test_prefect(tmp_path: Path) -> None:
    """A flow run set RUNNING then COMPLETED through Prefect's own API: exit 0; one set FAILED
    with a message: exit 1 with that message; an unknown id: exit 4, not found."""
    prefect = command("prefect")
    port = free_port()
    env = {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    argv = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with started(tmp_path, "prefect", argv, env):
        base = f"http://127.0.0.1:{port}/api"
        ready(base + "/health")
        api = client(base)
        # the first answers after /health may still be the server starting
        made = eventually(
            lambda: api.post("/flows/", json={"name": "nightly-etl"}).json().get("id"),
            timeout=60,
            what="a flow",
        )
        flow = str(made)

        def flow_run(name: str) -> str:
            body = {"flow_id": flow, "name": name, "state": {"type": "PENDING"}}
            created = api.post("/flow_runs/", json=body)
            assert created.status_code == 201, created.text
            run_id: str = created.json()["id"]
            return run_id

        def state(run_id: str, kind: str, message: str | None = None) -> None:
            body = {"state": {"type": kind, "message": message}, "force": True}
            api.post(f"/flow_runs/{run_id}/set_state", json=body).raise_for_status()

        waits = Waits(PREFECT, tmp_path, f"http://127.0.0.1:{port}")
        ok, bad = flow_run("recipe-ok"), flow_run("recipe-bad")
        state(ok, "RUNNING")
        waiting = waits.background(ok)
        time.sleep(3)
        state(ok, "COMPLETED")
        state(bad, "RUNNING")
        state(bad, "FAILED", "Flow run encountered an exception: ValueError: locked")
        code, out, err = finished(waiting)
        failed = waits.run(bad)
        missing = waits.run("3fa85f64-5717-4562-b3fc-2c963f66afa6")
    assert code == 0, (out, err)
    assert "succeeded" in out and "took" in out, out
    assert failed.returncode == 1 and "ValueError: locked" in failed.stdout, failed.stdout
    assert missing.returncode == 4 and "not found" in missing.stderr, missing.stderr


TASKS = """
import time
from celery import Celery
app = Celery("recipe_tasks", broker="amqp://guest:guest@127.0.0.1:5672//",
             backend="redis://127.0.0.1:6379/7")
@app.task
def train(n):
    time.sleep(n)
    return {"rows": 1200}
@app.task
def explode():
    raise ValueError("input file is empty")
"""


def test_flower(tmp_path: Path) -> None:
    """Celery tasks through Flower (basic auth): a task poller waits on while it runs
    succeeds: exit 0; one that raises: exit 1 with the exception; an unknown id: exit 4."""
    celery = command("celery")
    if not (listening(5672) and listening(6379)):
        pytest.skip("Celery needs RabbitMQ at 127.0.0.1:5672 and Redis at 127.0.0.1:6379")
    (tmp_path / "recipe_tasks.py").write_text(TASKS)
    port = free_port()
    env = {"PYTHONPATH": str(tmp_path)}
    worker = [celery, "-A", "recipe_tasks", "worker", "-E", "-c", "2", "-n", f"recipe{port}@%h"]
    flower = [celery, "-A", "recipe_tasks", "flower", "--address=127.0.0.1", f"--port={port}"]
    flower.append(f"--basic-auth=poller:{PASSWORD}")
    with started(tmp_path, "worker", worker, env), started(tmp_path, "flower", flower, env):
        base = f"http://127.0.0.1:{port}"
        ready(base + "/api/workers", auth=("poller", PASSWORD))
        time.sleep(5)  # Flower learns of tasks from the worker's events once it sees it

        def call(*args: str) -> str:
            argv = [celery, "-A", "recipe_tasks", "call", *args]
            r = subprocess.run(
                argv,
                cwd=tmp_path,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            return r.stdout.strip()

        recipe = Recipe(**{**FLOWER.__dict__, "secret": PASSWORD})
        waits = Waits(recipe, tmp_path, base)
        ok = call("recipe_tasks.train", "--args", "[4]")
        time.sleep(2)
        waiting = waits.background(ok)
        bad = call("recipe_tasks.explode")
        code, out, err = finished(waiting)
        failed = waits.run(bad)
        missing = waits.run("6b9c2bd9-0c8a-4d0e-9d7e-1f2a3b4c5d6e")
    assert code == 0, (out, err)
    assert "succeeded" in out and "took" in out, out
    assert failed.returncode == 1 and "input file is empty" in failed.stdout, failed.stdout
    assert missing.returncode == 4 and "not found" in missing.stderr, missing.stderr


DAGS = """
import time
from datetime import datetime
from airflow.sdk import dag, task

@dag(dag_id="nightly_etl", schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def nightly_etl():
    @task
    def extract():
        time.sleep(5)
    extract()
nightly_etl()

@dag(dag_id="load_warehouse", schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def load_warehouse():
    @task
    def explode():
        raise ValueError("table sales_2024 is locked")
    explode()
load_warehouse()
"""


def test_airflow(tmp_path: Path) -> None:
    """Dag runs of `airflow standalone` (Airflow 3, poller logs in at /auth/token): a run poller
    waits on while it runs succeeds: exit 0; one whose task raises: exit 1; an unknown run of
    a known dag: exit 4, not found."""
    airflow = command("airflow")
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "recipe_dags.py").write_text(DAGS)
    port = free_port()
    env = {
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "poller:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        # standalone runs its parts as `airflow ...` found on the PATH
        "PATH": f"{Path(airflow).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with started(tmp_path, "airflow", [airflow, "standalone"], env):
        base = f"http://127.0.0.1:{port}"
        ready(base + "/api/v2/monitor/health", timeout=300)
        passwords = tmp_path / "simple_auth_manager_passwords.json.generated"
        eventually(passwords.exists, timeout=60, what="the admin password")
        password = httpx.Response(200, content=passwords.read_bytes()).json()["poller"]
        login = {"username": "poller", "password": password}
        token = httpx.post(base + "/auth/token", json=login, timeout=30).json()["access_token"]
        api = client(base + "/api/v2", headers={"Authorization": f"Bearer {token}"})

        def parsed() -> bool:
            dags = {d["dag_id"] for d in api.get("/dags").json().get("dags", [])}
            return {"nightly_etl", "load_warehouse"} <= dags

        eventually(parsed, timeout=180, what="the dags parsed")

        def trigger(dag: str) -> str:
            api.patch(f"/dags/{dag}", json={"is_paused": False}).raise_for_status()
            run = api.post(f"/dags/{dag}/dagRuns", json={"logical_date": None}).json()
            run_id: str = run["dag_run_id"]
            return run_id

        # the recipe logs in itself, with the user's password
        recipe = Recipe(**{**AIRFLOW.__dict__, "secret": password})
        waits = Waits(recipe, tmp_path, base)
        ok, bad = trigger("nightly_etl"), trigger("load_warehouse")
        waiting = waits.background(ok, "nightly_etl")
        code, out, err = finished(waiting)
        failed = waits.run(bad, "load_warehouse")
        missing = waits.run("manual__2020-01-01T00:00:00+00:00", "nightly_etl")
    assert code == 0, (out, err)
    assert "succeeded" in out and "took" in out, out
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert missing.returncode == 4 and "not found" in missing.stderr, missing.stderr
