"""The recipes of docs/recipes, as users run them, against answers recorded from the real
servers (tests/recipes/, replayed on loopback by `recorded.RecordedApi`): `poller run` notifies
a loopback webhook, `poller wait` summarises, for a run that succeeded, one that failed, one
still running and one that does not exist.

tests/test_recipes_realserver.py (marked ``realserver``, left out by default) runs the same
recipes against the real servers, when they are installed (docs/recipes/README.md says how)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from recorded import RecordedApi, recording
from world import daemon, eventually

from poller.testing import HttpServer, Request, Response, SimThread, WebhookSink

RECIPES = Path(__file__).parent.parent / "docs" / "recipes"
#: appended to a recipe in tests: quick polls, and a missing job unreachable after 1 s
FAST = "polling: {interval: 200ms, max_interval: 200ms, error_after: 1s}\n"
FLOWER_PASSWORD = "flower-pass-5150"
AIRFLOW_PASSWORD = "airflow-pass-6060"


@dataclass(frozen=True)
class Recipe:
    """One recipe, and what its user sees for each recorded job (by recording name)."""

    system: str
    #: the environment variable the recipe's URL starts with, and what follows the origin
    url_env: str
    url_suffix: str = ""
    #: recording name -> the message title of its end
    titles: Mapping[str, str] = field(default_factory=dict)
    #: recording name -> lines its message must have
    lines: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    succeeded: str = "succeeded"
    failed: str = "failed"
    #: the name the running job shows in `poller status`
    running_name: str = ""
    #: the environment variable of the secret file the recipe reads, its content, and the
    #: Authorization header the server wants (others get the recording `refused`)
    secret_env: str | None = None
    secret: str = ""
    authorization: str | None = None
    refused: str = "refused"
    #: the JSON login its token endpoint (the recording ``token``) wants
    login: Mapping[str, str] | None = None
    #: what `poller wait` says when the secret is wrong
    refused_says: str = "auth: HTTP 401: credentials refused"
    #: the server's own words about the missing job, as poller quotes them
    missing_says: str = ""

    def config(self, extra: str = "") -> str:
        """The recipe as written, with the test's own top-level keys after it."""
        return (RECIPES / f"{self.system}.yaml").read_text() + FAST + extra

    def env(self, tmp_path: Path, origin: str, hook: str) -> dict[str, str]:
        """The environment the recipe reads: the server's URL, the database, the channel."""
        env = {
            self.url_env: origin + self.url_suffix,
            "POLLER_DATABASE": f"sqlite:///{tmp_path}/poller.db",
            "NOTIFY_URL": hook,
        }
        if self.secret_env is not None:
            secret = tmp_path / "secret"
            secret.write_text(self.secret + "\n")
            env[self.secret_env] = str(secret)
        return env

    def replay(self) -> RecordedApi:
        """The loopback server that answers as the recipe's real server did."""
        return RecordedApi(self.system, self.authorization, self.refused, self.login)


MLFLOW = Recipe(
    "mlflow",
    "MLFLOW_URL",
    titles={
        "succeeded": "✅ nightly-train succeeded",
        "failed": "❌ tune-lr failed",
        "killed": "🚫 manual-stop cancelled",
    },
    lines={
        "succeeded": (
            "State: succeeded (remote: FINISHED)",
            "Started: 2026-12-01 14:11:43 UTC, took 3s",
            "loss: 0.25",
            "experiment: 1",
        ),
        "failed": ("State: failed (remote: FAILED)", "Started: 2026-12-01 14:11:46 UTC, took 1s"),
    },
    running_name="backfill-2024",
    missing_says='the API says: "Run with id=0123456789abcdef0123456789abcdef not found"',
)
PREFECT = Recipe(
    "prefect",
    "PREFECT_API_URL",
    "/api",
    titles={
        "completed": "✅ quaint-pheasant succeeded",
        "failed": "❌ solid-tody failed: Flow run encountered an exception: ValueError: table"
        " sales_2024 is locked",
    },
    lines={
        "completed": ("State: succeeded (remote: Completed)", "took 2s"),
        "failed": (
            "State: failed (remote: Failed)",
            "Started: 2026-12-01 14:12:38 UTC, took 3s",
            "runs: 2",
        ),
    },
    succeeded="completed",
    running_name="nostalgic-bullfinch",
    missing_says='the API says: "Flow run not found"',
)
FLOWER = Recipe(
    "flower",
    "FLOWER_URL",
    titles={
        "succeeded": "✅ tasks.train succeeded",
        "failed": "❌ tasks.explode failed: ValueError('input file is empty: s3://bucket/day.csv')",
    },
    lines={
        "succeeded": (
            "State: succeeded (remote: SUCCESS)",
            "took 2s",
            "{'rows': 1200}",
            "worker: recworker@localhost",
        ),
        "failed": ("State: failed (remote: FAILURE)", "took 1s"),
    },
    running_name="tasks.train",
    secret_env="FLOWER_PASSWORD_FILE",
    secret=FLOWER_PASSWORD,
    authorization="Basic " + base64.b64encode(f"poller:{FLOWER_PASSWORD}".encode()).decode(),
    missing_says="the API says: \"Unknown task '6b9c2bd9-0c8a-4d0e-9d7e-1f2a3b4c5d6e'\"",
)
AIRFLOW = Recipe(
    "airflow",
    "AIRFLOW_URL",
    titles={"success": "✅ nightly_etl succeeded", "failed": "❌ load_warehouse failed"},
    lines={
        "success": (
            "State: succeeded (remote: success)",
            "Started: 2026-12-01 14:29:15 UTC, took 21s",
            "run_type: manual",
        ),
        "failed": ("State: failed (remote: failed)", "took 25s"),
    },
    succeeded="success",
    running_name="backfill",
    secret_env="AIRFLOW_PASSWORD_FILE",
    secret=AIRFLOW_PASSWORD,
    authorization="Bearer " + recording("airflow", "token")["body"]["access_token"],
    refused="bad_token",
    login={"username": "poller", "password": AIRFLOW_PASSWORD},
    refused_says='auth: the token endpoint refused: HTTP 401; the API says: "Invalid credentials"',
    missing_says='the API says: "The DagRun with dag_id: `nightly_etl` and run_id:'
    ' `manual__2020-01-01T00:00:00+00:00` was not found"',
)
RECIPES_TESTED = [MLFLOW, PREFECT, FLOWER, AIRFLOW]


def job(api: RecordedApi, name: str) -> tuple[str | None, str]:
    """The site and id of the job a recording is about: the last part of its path or query,
    and for Airflow the dag (``/dags/{site}/dagRuns/{id}``)."""
    parts = [unquote(p) for p in api.path(name).split("/")]
    site = parts[-3] if parts[-2] == "dagRuns" else None
    return site, parts[-1].rsplit("=", 1)[-1]


def job_yaml(recipe: Recipe, api: RecordedApi, name: str) -> str:
    """The recording's job as a `jobs` entry of the config."""
    site, job_id = job(api, name)
    where = "" if site is None else f"site: {site}, "
    return f"  - {{source: {recipe.system}, {where}id: '{job_id}'}}\n"


def job_key(recipe: Recipe, api: RecordedApi, name: str) -> str:
    """The watch key of the recording's job."""
    site, job_id = job(api, name)
    return "/".join(p for p in (recipe.system, site, job_id) if p)


@pytest.fixture(params=RECIPES_TESTED, ids=lambda r: r.system)
def recipe(request: pytest.FixtureRequest) -> Recipe:
    value: Recipe = request.param
    return value


def cli(
    *args: str, env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`poller ARGS` with the recipe's environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "poller", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
    )


class TestRecorded:
    """Each recipe against its server's recorded answers."""

    def test_run_notifies_what_the_server_said(self, recipe: Recipe, tmp_path: Path) -> None:
        """`poller run` on the recipe: the end of each recorded job reaches the webhook with its
        name, state, start, duration and failure reason; a missing job becomes unreachable
        with "not found"; the running one is running, named, in `poller status`."""
        api, sink = recipe.replay(), WebhookSink()
        with SimThread(api, sink):
            names = [recipe.succeeded, recipe.failed, "missing", "running"]
            jobs = "".join(job_yaml(recipe, api, n) for n in names)
            env = recipe.env(tmp_path, api.origin, sink.apprise_url)
            with daemon(tmp_path, recipe.config("jobs:\n" + jobs), env) as path:
                messages = sink.wait_for(3, timeout=30)

                def running() -> list[dict[str, Any]]:
                    r = cli("status", "--json", "-c", str(path), env=env)
                    watches = json.loads(r.stdout)["watches"] if r.returncode == 0 else []
                    return [w for w in watches if w["state"] == "running"]

                (watch,) = eventually(running, what="the running job in poller status")
                table = cli("status", "-c", str(path), env=env).stdout
        by_title = {m["title"]: m for m in messages}
        for name in (recipe.succeeded, recipe.failed):
            message = by_title[recipe.titles[name]]
            for line in recipe.lines.get(name, ()):
                assert line in message["message"], (line, message["message"])
        missing = job_key(recipe, api, "missing")
        (gone,) = [m for m in messages if missing in m["title"]]
        assert gone["title"].endswith("cannot be reached") and "not found" in gone["message"], gone
        assert recipe.missing_says in gone["message"], gone
        # the job entry has no name: the API's is shown, in the table as in messages
        assert watch["details"]["job_name"] == recipe.running_name, watch
        (row,) = [line for line in table.splitlines() if watch["key"] in line]
        assert recipe.running_name in row, table
        token = (recipe.authorization or "").partition(" ")[2]
        for secret in filter(None, (recipe.secret, token)):
            for stored in [tmp_path / "daemon.log", *tmp_path.glob("poller.db*")]:
                assert secret.encode() not in stored.read_bytes(), stored

    def test_wait_summarises_each_job(self, recipe: Recipe, tmp_path: Path) -> None:
        """`poller wait` on the recipe: exit 0 for the success, 1 with the failure's reason, 3
        for the running job at --timeout, 4 "not found" for the missing one."""
        api = recipe.replay()
        with SimThread(api):
            env = recipe.env(tmp_path, api.origin, "json://127.0.0.1:9/unused")
            config = tmp_path / "recipe.yaml"
            config.write_text(recipe.config())

            def wait(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
                site, job_id = job(api, name)
                where = () if site is None else ("--site", site)
                return cli(
                    "wait", recipe.system, job_id, *where, "-c", str(config), *extra, env=env
                )

            ok, failed = wait(recipe.succeeded), wait(recipe.failed)
            running = wait("running", "--timeout", "1s")
            missing = wait("missing")
        assert ok.returncode == 0, ok.stderr
        assert "succeeded" in ok.stdout
        assert failed.returncode == 1, failed.stderr
        reason = recipe.titles[recipe.failed].partition(" failed")[2].removeprefix(": ")
        assert reason in failed.stdout, failed.stdout
        assert running.returncode == 3, running.stderr
        assert missing.returncode == 4, missing.stdout
        assert "not found" in missing.stderr, missing.stderr
        assert recipe.missing_says in missing.stderr, missing.stderr

    @pytest.mark.parametrize("recipe", [FLOWER, AIRFLOW], ids=lambda r: r.system)
    def test_refused_credentials(self, recipe: Recipe, tmp_path: Path) -> None:
        """A wrong password: what the real server answered (Flower's empty 401 to the job
        request, Airflow's 401 to the login) is an auth error, at once, the secret unshown."""
        api = recipe.replay()
        with SimThread(api):
            env = recipe.env(tmp_path, api.origin, "json://127.0.0.1:9/unused")
            wrong = recipe.secret[:-4] + "0000"
            (tmp_path / "secret").write_text(wrong)
            config = tmp_path / "recipe.yaml"
            config.write_text(recipe.config())
            site, job_id = job(api, recipe.succeeded)
            where = () if site is None else ("--site", site)
            r = cli("wait", recipe.system, job_id, *where, "-c", str(config), env=env)
        assert r.returncode == 4, r.stdout
        assert recipe.refused_says in r.stderr, r.stderr
        assert wrong not in r.stderr + r.stdout


def test_flower_without_api_auth_says_why(tmp_path: Path) -> None:
    """A Flower started without --basic-auth nor FLOWER_UNAUTHENTICATED_API refuses every API
    request with 401 and a text that names the fix: `poller wait` shows it after the status.
    A wrong password (Flower's empty HTML 401) has nothing to add."""
    for refused, says in [
        (
            "no_auth",
            'auth: HTTP 401: credentials refused; the API says: "FLOWER_UNAUTHENTICATED_API'
            ' environment variable is required to enable API without authentication"\n',
        ),
        ("refused", "auth: HTTP 401: credentials refused\n"),
    ]:
        api = RecordedApi("flower", authorization="Basic not-this-one", refused=refused)
        with SimThread(api):
            env = FLOWER.env(tmp_path, api.origin, "json://127.0.0.1:9/unused")
            config = tmp_path / "recipe.yaml"
            config.write_text(FLOWER.config())
            _, job_id = job(api, FLOWER.succeeded)
            r = cli("wait", "flower", job_id, "-c", str(config), env=env)
        assert r.returncode == 4, r.stdout
        assert r.stderr.endswith(says), r.stderr


#: What a hostile API answers to a refused request: terminal escapes that would clear the
#: screen and retitle the terminal, lines, a bidi override, the credentials it was sent (as
#: they came, decoded, and split by a control character), and 100,000 characters more.
def _hostile(request: Request) -> Response:
    header = request.headers.get("authorization", "")
    said = (
        f"\x1b[2J\x1b]0;pwned\x07denied: {header}\r\nuser poller:{FLOWER_PASSWORD}"
        f" \u202e{FLOWER_PASSWORD[:5]}\x00{FLOWER_PASSWORD[5:]} {'A' * 100_000}"
    )
    return Response(401, {"message": said})


def test_hostile_error_text(tmp_path: Path) -> None:
    """The words of a 401 that reflects the credentials, with escapes, lines and 100,000
    characters: `poller wait`'s stderr, the webhook's unreachable message and `poller status`
    show them on one line, cut to 200 characters, with no escape or control character and no
    credential."""

    async def handle(request: Request) -> Response:
        return _hostile(request)

    api, sink = HttpServer(handle), WebhookSink()
    basic = FLOWER.authorization or ""
    forbidden = [FLOWER_PASSWORD, basic.partition(" ")[2], "\x1b", "\u202e", "\r", "A" * 200]
    words = "denied: *** user *** *** "
    quoted = f'; the API says: "{words}{"A" * (199 - len(words))}…"'
    with SimThread(api, sink):
        env = FLOWER.env(tmp_path, api.origin, sink.apprise_url)
        config = tmp_path / "recipe.yaml"
        config.write_text(FLOWER.config())
        waited = cli("wait", "flower", "t1", "-c", str(config), env=env)
        jobs = "jobs:\n  - {source: flower, id: t1}\n"
        with daemon(tmp_path, FLOWER.config(jobs), env) as path:
            (message,) = sink.wait_for(1, timeout=30)
            status = cli("status", "--json", "-c", str(path), env=env).stdout
    (watch,) = json.loads(status)["watches"]
    assert watch["last_error"] == "auth: HTTP 401: credentials refused" + quoted, watch
    assert waited.returncode == 4, waited.stdout
    (line,) = waited.stderr.splitlines()
    assert line.endswith("auth: HTTP 401: credentials refused" + quoted), line
    assert message["title"].endswith("cannot be reached"), message
    assert "auth: HTTP 401: credentials refused" + quoted in message["message"], message
    for shown in (waited.stderr, waited.stdout, status, json.dumps(message, ensure_ascii=False)):
        for secret in forbidden:
            assert secret not in shown, (secret, shown)


def test_a_dag_run_needs_its_dag(tmp_path: Path) -> None:
    """The Airflow recipe's url names {site}: a dag run given without its dag is refused with
    the reason, never asked for at /dags//dagRuns/."""
    api = AIRFLOW.replay()
    with SimThread(api):
        env = AIRFLOW.env(tmp_path, api.origin, "json://127.0.0.1:9/unused")
        config = tmp_path / "recipe.yaml"
        config.write_text(AIRFLOW.config())
        _, job_id = job(api, "success")
        r = cli("wait", "airflow", job_id, "-c", str(config), env=env)
    assert r.returncode == 4, r.stdout
    assert "give the job a site" in r.stderr, r.stderr
    assert api.requests["other"] == 0 and not api.request_log


def test_a_broken_login_is_named_at_its_line(tmp_path: Path) -> None:
    """`poller check` names each mistake of an ``auth: {login: ...}`` with its file:line."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "sources:\n"
        "  airflow:\n"
        "    type: http\n"
        "    url: https://x/dags/{site}/dagRuns/{id}\n"
        "    state: state\n"
        "    auth:\n"
        "      login: {url: 'ftp://x/auth/token', username: poller, token: t}\n"
        "    states: {success: succeeded}\n"
    )
    r = cli("check", "-c", str(config), env={})
    assert r.returncode == 2, r.stdout
    lines = [line.strip().removeprefix(str(config)) for line in r.stderr.splitlines()[1:]]
    assert lines == [
        ":7: sources.airflow.auth.login.url: expected an http:// or https:// URL",
        ":7: sources.airflow.auth.login.password: required",
        ":7: sources.airflow.auth.login.token: unknown key; expected one of: url, username,"
        " password",
    ], r.stderr
