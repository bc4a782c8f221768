"""`poller wait` as a pipeline runs it (issue 14): a line per change as it happens when piped,
a bar on a terminal, one summary at the end, `--timeout`, `--json`, and exit 4 with the reason
on stderr when the job cannot be watched. Every test runs `poller` as a subprocess (or in a
pseudo-terminal) against the loopback Ruler and Immuta simulators."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from poller.testing import ImmutaSim, RulerSim, SimThread
from poller.waiting import estimate_left

SITE = "s1"
KEY = f"ruler-prod/{SITE}/w1"
TRACEBACK = "Traceback"

#: What `status --json` promises of each watch (README "Commands").
WATCH_KEYS = {
    "key", "name", "source", "site", "job_id", "tags", "state", "remote_status", "progress",
    "terminal", "active", "removed", "details", "created_at", "started_at", "ended_at",
    "last_poll_at", "next_poll_at", "error_count", "last_error", "unreachable", "stalled",
    "deliveries_pending", "deliveries_given_up",
}  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.pop("NOTIFY_SOCKET", None)
    return env


def poller(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """One `poller` command with `config`, its stdout a pipe."""
    return subprocess.run(
        [sys.executable, "-m", "poller", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )


@contextmanager
def piped(config: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`poller` running with its stdout and stderr pipes, to be read while it runs."""
    with subprocess.Popen(
        [sys.executable, "-m", "poller", *args, "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.fixture
def ruler() -> Iterator[RulerSim]:
    sim = RulerSim(token="wait-token")
    with SimThread(sim):
        yield sim


def add_job(ruler: RulerSim, job_id: str, **fields: object) -> None:
    """A job on the simulated Ruler site, as the fields say."""
    ruler.add_job(SITE, job_id)
    ruler.set_job(SITE, job_id, **fields)


@pytest.fixture
def immuta() -> Iterator[ImmutaSim]:
    """A simulated Immuta API with one running job, ``j1``; its API gives no progress."""
    sim = ImmutaSim("im-key")
    with SimThread(sim):
        sim.add_job("j1", state="active")
        yield sim


def write_config(
    tmp: Path, ruler: RulerSim, polling: str = "", immuta: ImmutaSim | None = None
) -> Path:
    extra = (
        f'  lake: {{type: immuta, base_url: "{immuta.base_url}", token: im-key}}' if immuta else ""
    )
    path = tmp / "config.yaml"
    path.write_text(f"""
database: sqlite:///{tmp}/poller.db
sources:
  ruler-prod: {{type: ruler, base_url: "{ruler.base_url}", token: wait-token}}
  wrong-token: {{type: ruler, base_url: "{ruler.base_url}", token: not-the-token}}
  nowhere: {{type: ruler, base_url: "http://127.0.0.1:9/v1", token: x}}
{extra}
polling: {{interval: 100ms, max_interval: 200ms{polling}}}
""")
    return path


class TestPiped:
    """Off a terminal: one plain line per change, printed when it happens."""

    def test_each_change_is_a_line_as_it_happens(self, tmp_path: Path, ruler: RulerSim) -> None:
        """Each line is read while the job still runs (the next change is only made once the
        line is read), with no escape codes; the summary follows the end."""
        add_job(ruler, "w1", status="processing", total_rows=100, processed_rows=20)
        config = write_config(tmp_path, ruler)
        with piped(config, "wait", "ruler-prod", "w1", "--site", SITE) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            first = proc.stdout.readline()
            assert first.endswith(f"] {KEY} running 20%\n"), first
            ruler.set_job(SITE, "w1", processed_rows=60)
            second = proc.stdout.readline()
            assert second.endswith(f"] {KEY} running 60%\n"), second
            ruler.set_job(SITE, "w1", status="complete", processed_rows=100, success_count=100)
            rest = proc.stdout.read()
            assert proc.wait(timeout=30) == 0, proc.stderr.read()
        assert f"] {KEY} succeeded 100%\n" in rest
        assert f"{KEY}: succeeded (remote status complete)\n" in rest
        assert "  rows: 100 succeeded, 0 failed of 100\n" in rest
        assert "\x1b" not in first + second + rest

    def test_failure_summary_has_reason_rows_failing_rows_and_durations(
        self, tmp_path: Path, ruler: RulerSim
    ) -> None:
        """A failed job: exit 1 and a summary with what the API said went wrong."""
        add_job(
            ruler,
            "w1",
            status="failed",
            total_rows=50,
            processed_rows=50,
            success_count=42,
            failure_count=8,
            failure_reason="Column 'amount' is missing",
        )
        result = poller(write_config(tmp_path, ruler), "wait", "ruler-prod", "w1", "--site", SITE)
        assert result.returncode == 1, result.stdout + result.stderr
        summary = result.stdout[result.stdout.index(f"{KEY}: failed") :]
        assert summary.splitlines()[:5] == [
            f"{KEY}: failed",
            "  reason: Column 'amount' is missing",
            "  rows: 42 succeeded, 8 failed of 50",
            "  first 5 of 8 failing rows:",
            "    row 1: Row 1: simulated validation error",
        ]
        assert "    row 5: Row 5: simulated validation error\n" in summary
        assert "row 6" not in summary
        assert "  waited " in summary and "the job took " in summary
        assert result.stderr == ""

    def test_unknown_status_and_no_progress(
        self, tmp_path: Path, ruler: RulerSim, immuta: ImmutaSim
    ) -> None:
        """A status poller does not know shows as `unknown (STATUS)`; a job whose API gives
        no percentage shows none (not 0%)."""
        add_job(ruler, "w1", status="Reticulating", total_rows=100, processed_rows=40)
        config = write_config(tmp_path, ruler, polling=", timeout: 1s", immuta=immuta)
        odd = poller(config, "wait", "ruler-prod", "w1", "--site", SITE)
        assert odd.returncode == 3, odd.stdout + odd.stderr
        assert f"] {KEY} unknown (Reticulating) 40%\n" in odd.stdout
        assert "last seen: unknown (Reticulating) 40%" in odd.stdout

        with piped(config, "wait", "lake", "j1") as proc:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            immuta.set_job("j1", state="completed")
            rest = proc.stdout.read()
            assert proc.wait(timeout=30) == 0
        assert first.endswith("] lake/j1 running\n"), first
        assert "] lake/j1 succeeded\n" in rest
        assert "%" not in first + rest

    def test_interrupt_says_so_without_a_traceback(self, tmp_path: Path, ruler: RulerSim) -> None:
        """Ctrl-C (SIGINT) while waiting: exit 130, one line on stderr."""
        add_job(ruler, "w1", status="processing", total_rows=100, processed_rows=5)
        config = write_config(tmp_path, ruler)
        with piped(config, "wait", "ruler-prod", "w1", "--site", SITE) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.readline().endswith(f"] {KEY} running 5%\n")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 130
            err = proc.stderr.read()
        assert err == f"poller: interrupted; {KEY} was not waited for to its end\n"


class TestCannotBeWatched:
    """Exit 4, with the reason on stderr, when no retry will show the job."""

    def test_credentials_refused(self, tmp_path: Path, ruler: RulerSim) -> None:
        """A 401 ends the wait at once (not after `polling.timeout`, 24 h here)."""
        ruler.add_job(SITE, "w1", status="processing")
        config = write_config(tmp_path, ruler, polling=", timeout: 24h")
        result = poller(config, "wait", "wrong-token", "w1", "--site", SITE)
        assert result.returncode == 4, result.stdout + result.stderr
        assert result.stderr == (
            f"poller: could not watch wrong-token/{SITE}/w1: auth: HTTP 401: credentials refused\n"
        )
        assert "could not be watched: auth: HTTP 401" in result.stdout
        assert "not-the-token" not in result.stdout + result.stderr
        assert result.stdout.count("poll error: auth") == 1

    def test_job_not_found_after_the_usual_retries(self, tmp_path: Path, ruler: RulerSim) -> None:
        """Three 404s in a row, as the daemon counts them, then exit 4 (not after
        `error_after`, 15 minutes here)."""
        config = write_config(tmp_path, ruler, polling=", error_after: 15m")
        result = poller(config, "wait", "ruler-prod", "gone", "--site", SITE)
        assert result.returncode == 4, result.stdout + result.stderr
        said = 'not_found: HTTP 404: job not found; the API says: "Batch job not found"'
        assert f"{said} (3 in a row)" in result.stderr
        statuses = [t for _, t in ruler.request_log if t.endswith("/gone/status")]
        assert len(statuses) == 3

    def test_source_unreachable_past_error_after(self, tmp_path: Path, ruler: RulerSim) -> None:
        """A refused connection until `error_after`, then exit 4."""
        config = write_config(tmp_path, ruler, polling=", error_after: 300ms, timeout: 24h")
        result = poller(config, "wait", "nowhere", "w1", "--site", SITE)
        assert result.returncode == 4, result.stdout + result.stderr
        assert result.stderr.startswith(f"poller: could not watch nowhere/{SITE}/w1: network")
        assert TRACEBACK not in result.stderr


class TestOptions:
    """`--timeout` and `--json`."""

    def test_timeout_option_overrides_the_config(self, tmp_path: Path, ruler: RulerSim) -> None:
        """`--timeout 1s` against a config timeout of 24h: exit 3 with the last state seen."""
        add_job(ruler, "w1", status="processing", total_rows=10, processed_rows=3)
        config = write_config(tmp_path, ruler, polling=", timeout: 24h")
        result = poller(config, "wait", "ruler-prod", "w1", "--site", SITE, "--timeout", "1s")
        assert result.returncode == 3, result.stdout + result.stderr
        assert f"{KEY}: timed out after 1s; the job has not ended (last seen: running 30%)" in (
            result.stdout
        )

    @pytest.mark.parametrize(
        ("value", "said"),
        [
            ("soon", "expected a duration like 30s"),
            ("0", "must be more than 0s"),
            ("-5s", "expected a duration like 30s"),
            ("400d", "at most 365d"),
            ("1e400", "expected a finite duration"),
            ("", "expected a duration like 30s"),
            ("1s" * 100, "not 200 characters"),
        ],
    )
    def test_bad_timeout_is_a_usage_error(
        self, tmp_path: Path, ruler: RulerSim, value: str, said: str
    ) -> None:
        """Exit 2 with the reason, before anything is polled."""
        config = write_config(tmp_path, ruler)
        result = poller(config, "wait", "ruler-prod", "w1", "--site", SITE, "--timeout", value)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith("poller: --timeout: ") and said in result.stderr
        assert TRACEBACK not in result.stderr and result.stdout == ""
        assert ruler.request_log == []

    def test_json_is_the_watch_shape_alone_on_stdout(self, tmp_path: Path, ruler: RulerSim) -> None:
        """stdout is one JSON document (a watch as `status --json` has it, plus the exit code
        and the time waited); the progress lines go to stderr."""
        add_job(ruler, "w1", status="partialcomplete", total_rows=4, failure_count=1)
        config = write_config(tmp_path, ruler)
        result = poller(config, "wait", "ruler-prod", "w1", "--site", SITE, "--json")
        assert result.returncode == 1, result.stderr
        doc = json.loads(result.stdout)
        assert set(doc) == WATCH_KEYS | {"exit_code", "waited"}
        assert (doc["key"], doc["state"], doc["terminal"], doc["exit_code"]) == (
            KEY,
            "partial",
            True,
            1,
        )
        assert doc["details"]["failure_count"] == 1
        assert doc["ended_at"].endswith("Z")
        assert f"] {KEY} partial" in result.stderr

    def test_json_when_the_job_cannot_be_watched(self, tmp_path: Path, ruler: RulerSim) -> None:
        """Exit 4: the JSON says why (`last_error`), the reason is on stderr as well."""
        config = write_config(tmp_path, ruler)
        result = poller(config, "wait", "wrong-token", "w1", "--site", SITE, "--json")
        assert result.returncode == 4
        doc = json.loads(result.stdout)
        assert doc["last_error"].startswith("auth: HTTP 401")
        assert (doc["exit_code"], doc["active"], doc["state"]) == (4, False, None)
        assert "poller: could not watch" in result.stderr


def in_terminal(
    config: Path, *args: str, when: tuple[str, Callable[[], object]] | None = None
) -> tuple[int, str]:
    """`poller` run in a pseudo-terminal: its exit code and everything it drew. `when` is
    (text, action): the action runs once, as soon as the text has been drawn."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: poller, its stdout the terminal
        os.execve(
            sys.executable,
            [sys.executable, "-m", "poller", *args],
            _env() | {"POLLER_CONFIG": str(config), "TERM": "xterm", "COLUMNS": "100"},
        )
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        if when is not None and when[0].encode() in seen:
            when[1]()
            when = None
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), seen.decode()


class TestTerminal:
    """On a terminal: a live bar, then the summary."""

    def test_bar_then_summary_in_a_pseudo_terminal(self, tmp_path: Path, ruler: RulerSim) -> None:
        """A drawn bar with the API's percentage, then the summary."""
        add_job(ruler, "w1", status="processing", total_rows=100, processed_rows=40)
        config = write_config(tmp_path, ruler)
        code, text = in_terminal(
            config,
            "wait",
            "ruler-prod",
            "w1",
            "--site",
            SITE,
            when=(" 40%", lambda: ruler.set_job(SITE, "w1", status="complete", processed_rows=100)),
        )
        assert code == 0, text
        assert "━" in text and "\x1b[" in text  # a drawn bar
        assert f"{KEY} running" in text and " 40%" in text
        assert f"{KEY}: succeeded (remote status complete)" in text

    def test_no_percentage_where_the_api_gives_none(
        self, tmp_path: Path, ruler: RulerSim, immuta: ImmutaSim
    ) -> None:
        """An Immuta job has no progress: the bar pulses, and no percentage is drawn."""
        config = write_config(tmp_path, ruler, immuta=immuta)
        done = ("lake/j1 running", lambda: immuta.set_job("j1", state="completed"))
        code, text = in_terminal(config, "wait", "lake", "j1", when=done)
        assert code == 0, text
        assert "lake/j1 running" in text and "━" in text
        assert "%" not in text and "lake/j1: succeeded" in text


class TestEstimate:
    """The time left is estimated only when progress moves steadily."""

    def test_steady_progress_gives_an_estimate(self) -> None:
        """10 % every 10 s, last seen at 40 %: 60 s left, less the time since."""
        samples = [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0), (30.0, 40.0)]
        assert estimate_left(samples, 30.0) == pytest.approx(60.0)
        assert estimate_left(samples, 35.0) == pytest.approx(55.0)

    def test_no_estimate_without_a_steady_pace(self) -> None:
        """Too few samples, a jump, a step back, or a pause longer than the pace: none."""
        assert estimate_left([(0.0, 10.0), (10.0, 20.0)], 10.0) is None
        assert estimate_left([(0.0, 10.0), (10.0, 12.0), (20.0, 60.0)], 20.0) is None
        assert estimate_left([(0.0, 10.0), (10.0, 30.0), (20.0, 20.0)], 20.0) is None
        assert estimate_left([(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)], 60.0) is None
        assert estimate_left([(0.0, 97.0), (10.0, 98.0), (20.0, 99.9)], 20.0) is None
