"""The command line as users run it: check, wait, notify-test, demo, usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from poller.testing import RulerSim, SimThread, WebhookSink

SITE = "s1"


def poller(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    return subprocess.run(
        [sys.executable, "-m", "poller", *args],
        capture_output=True,
        text=True,
        env=base | (env or {}),
        timeout=timeout,
    )


@pytest.fixture
def sims() -> Iterator[tuple[RulerSim, WebhookSink]]:
    ruler, sink = RulerSim(token="cli-token"), WebhookSink()
    with SimThread(ruler, sink):
        yield ruler, sink


def write_config(tmp: Path, ruler: RulerSim, sink: WebhookSink, polling: str = "") -> Path:
    path = tmp / "config.yaml"
    path.write_text(f"""
database: sqlite:///{tmp}/poller.db
sources:
  ruler-prod: {{type: ruler, base_url: "{ruler.base_url}", token: cli-token}}
  lake: {{type: immuta, base_url: "http://127.0.0.1:9", token: x}}
channels:
  hook: {sink.apprise_url}
  dead: json://127.0.0.1:9/nothing
rules:
  - on: [failed]
    notify: [hook]
polling:
  interval: 100ms
  max_interval: 200ms
{polling}
jobs:
  - {{source: ruler-prod, site: {SITE}, id: j1, name: First}}
""")
    return path


class TestCheck:
    """`poller check`."""

    def test_valid_config_says_what_it_would_watch(
        self, tmp_path: Path, sims: tuple[RulerSim, WebhookSink]
    ) -> None:
        """It lists sources, masked channels, rules and the watches."""
        path = write_config(tmp_path, *sims)
        r = poller("check", "-c", str(path))
        assert r.returncode == 0, r.stderr
        assert "ruler-prod/s1/j1" in r.stdout
        assert "lake: immuta" in r.stdout
        assert "rule 0: failed -> hook" in r.stdout
        assert "cli-token" not in r.stdout

    def test_says_notify_existing_and_long_poll(self, tmp_path: Path) -> None:
        """A bulk that notifies its first listing's ended jobs, and a long-polling source, are
        said; notify_existing on a job with an id is refused with its file:line."""
        path = tmp_path / "config.yaml"
        path.write_text(
            "sources:\n  im: {type: immuta, base_url: 'http://127.0.0.1:9', token: k,"
            " long_poll: 20s}\n"
            "jobs:\n  - {source: im, bulk: b-1, notify_existing: true}\n"
        )
        r = poller("check", "-c", str(path))
        assert r.returncode == 0, r.stderr
        assert "source im: immuta, a statuses request always outstanding (long_poll)\n" in (
            r.stdout
        )
        assert "  every job of bulk b-1 on im; its first listing notifies jobs already ended\n" in (
            r.stdout
        )
        path.write_text(path.read_text() + "  - {source: im, id: x,\n     notify_existing: true}\n")
        r = poller("check", "-c", str(path))
        assert r.returncode == 2
        assert f"{path}:5: jobs[1]: notify_existing is for a bulk or a search" in r.stderr

    def test_counts_bulks_and_searches_and_warns_without_failing(
        self, tmp_path: Path, sims: tuple[RulerSim, WebhookSink]
    ) -> None:
        """Bulks and searches are in the count and listed with their filters; an unused
        channel and a timeout shorter than the interval are warnings on stderr, exit 0; a
        channel URL shows the parameters its user wrote, not Apprise's defaults."""
        ruler, sink = sims
        path = write_config(tmp_path, ruler, sink, polling="  timeout: 50ms")
        text = path.read_text().replace(
            "dead: json://127.0.0.1:9/nothing", "dead: json://127.0.0.1:9/nothing?method=PUT"
        )
        path.write_text(
            text + "  - {source: ruler-prod, site: s1, id: j2, polling: {timeout: 20ms}}\n"
            "  - {source: lake, bulk: b-7}\n"
            "  - {source: lake, search: {jobType: [policyUpdate, dataSync], state: failed}}\n"
        )
        r = poller("check", "-c", str(path))
        assert r.returncode == 0, r.stderr
        assert (
            "would watch 2 jobs, 1 bulk and 1 search:\n"
            "  ruler-prod/s1/j1  First\n"
            "  ruler-prod/s1/j2\n"
            "  every job of bulk b-7 on lake\n"
            "  jobs found by a search on lake (jobType policyUpdate, dataSync; state failed)\n"
        ) in r.stdout
        assert f"channel hook: json://127.0.0.1:{sink.port}/hook\n" in r.stdout
        assert "channel dead: json://127.0.0.1:9/nothing?method=PUT\n" in r.stdout
        assert "overflow=" not in r.stdout and "retry=" not in r.stdout
        assert r.stderr == (
            "poller: warning: channel dead is not used by any rule or report: nothing will be "
            "sent to it\n"
            "poller: warning: polling: timeout 0.05s is shorter than interval 0.1s: a watch "
            "times out before its second poll\n"
            "poller: warning: jobs[1].polling: timeout 0.02s is shorter than interval 0.1s: a "
            "watch times out before its second poll\n"
        )

    def test_bad_config_exits_2_with_every_problem_and_place(self, tmp_path: Path) -> None:
        """Each problem has file:line and key path; no traceback; exit 2."""
        path = tmp_path / "bad.yaml"
        path.write_text(
            "sources:\n"
            "  r: {type: ruler, token: t0ps3cret}\n"
            "jobs:\n"
            "  - {source: r, id: x}\n"
            "  - {source: nope, id: y}\n"
            "polling: {interval: soon}\n"
        )
        r = poller("check", "-c", str(path))
        assert r.returncode == 2
        assert f"{path}:4: jobs[0].site" in r.stderr
        assert f"{path}:5: jobs[1].source" in r.stderr
        assert f"{path}:6: polling.interval" in r.stderr
        assert "Traceback" not in r.stderr and "t0ps3cret" not in r.stderr + r.stdout

    def test_missing_config_file(self, tmp_path: Path) -> None:
        """A config that does not exist is exit 2 with its path."""
        r = poller("status", "-c", str(tmp_path / "none.yaml"))
        assert r.returncode == 2 and "none.yaml" in r.stderr

    def test_config_from_environment(
        self, tmp_path: Path, sims: tuple[RulerSim, WebhookSink]
    ) -> None:
        """$POLLER_CONFIG is the default config path."""
        path = write_config(tmp_path, *sims)
        r = poller("check", env={"POLLER_CONFIG": str(path)})
        assert r.returncode == 0 and str(path) in r.stdout

    def test_usage_error_is_exit_2(self) -> None:
        """An unknown command or option is a usage error."""
        assert poller("frobnicate").returncode == 2
        assert poller("status", "--bogus").returncode == 2


class TestEveryCommand:
    """What every command has: a version, short and long help, completion."""

    def test_version(self) -> None:
        """`--version` and `-V` print the version and exit 0."""
        from poller import __version__

        for flag in ("--version", "-V"):
            r = poller(flag)
            assert (r.returncode, r.stdout, r.stderr) == (0, f"poller {__version__}\n", "")

    def test_h_is_help_and_the_config_default_shows(self) -> None:
        """`-h` is `--help`, on the top level and on each command; the `-c` help shows its
        default in full (rich markup once ate ``[default: ...]``)."""
        top = poller("-h")
        assert top.returncode == 0 and top.stdout == poller("--help").stdout
        assert "-V, --version" in top.stdout and "--install-completion" in top.stdout
        for command in ("run", "check", "status", "history", "add", "remove", "wait", "demo"):
            r = poller(command, "-h")
            assert r.returncode == 0, (command, r.stderr)
            assert r.stdout == poller(command, "--help").stdout
            if command != "demo":
                text = " ".join(r.stdout.split())
                assert (
                    "-c, --config PATH Config file [default: $POLLER_CONFIG, else "
                    "/etc/poller/config.yaml]." in text
                ), r.stdout
        wait_help = " ".join(poller("wait", "-h").stdout.split())
        assert "--timeout DURATION" in wait_help and "4 could not be watched" in wait_help

    def test_shell_completion(self) -> None:
        """The completion script is printed, and completing with it offers commands and
        options."""
        script = poller("--show-completion", "bash")
        assert script.returncode == 0 and "_POLLER_COMPLETE=complete_bash" in script.stdout
        words = {"_POLLER_COMPLETE": "complete_bash", "COMP_WORDS": "poller wa", "COMP_CWORD": "1"}
        assert poller(env=words).stdout.split() == ["wait"]
        options = words | {"COMP_WORDS": "poller wait --ti", "COMP_CWORD": "2"}
        assert poller(env=options).stdout.split() == ["--timeout"]


class TestWait:
    """`poller wait`: exit codes follow the job's end."""

    @pytest.mark.parametrize(
        ("status", "code"), [("complete", 0), ("failed", 1), ("partialcomplete", 1)]
    )
    def test_exit_code_follows_the_end(
        self, tmp_path: Path, sims: tuple[RulerSim, WebhookSink], status: str, code: int
    ) -> None:
        """0 for succeeded, 1 for any other end."""
        ruler, sink = sims
        ruler.script_job(
            SITE,
            "w1",
            [(0.0, {"status": "processing", "processed_rows": 50}), (0.5, {"status": status})],
        )
        path = write_config(tmp_path, ruler, sink)
        r = poller("wait", "ruler-prod", "w1", "--site", SITE, "-c", str(path))
        assert r.returncode == code, r.stdout + r.stderr
        assert "ruler-prod/s1/w1" in r.stdout

    def test_timeout_is_exit_3(self, tmp_path: Path, sims: tuple[RulerSim, WebhookSink]) -> None:
        """A job that does not end within `timeout` exits 3."""
        ruler, sink = sims
        ruler.add_job(SITE, "forever", status="processing")
        path = write_config(tmp_path, ruler, sink, polling="  timeout: 1s")
        r = poller("wait", "ruler-prod", "forever", "--site", SITE, "-c", str(path))
        assert r.returncode == 3 and "timed out" in r.stdout


class TestNotifyTest:
    """`poller notify-test`."""

    def test_reports_each_channel(self, tmp_path: Path, sims: tuple[RulerSim, WebhookSink]) -> None:
        """A working channel answers ok, a dead one FAILED; exit 1 if any failed."""
        ruler, sink = sims
        path = write_config(tmp_path, ruler, sink)
        r = poller("notify-test", "-c", str(path))
        assert r.returncode == 1
        assert "hook: ok" in r.stdout and "dead: FAILED" in r.stdout
        # what each service answered, one line each, under its channel
        assert f"hook: ok\n  json://127.0.0.1:{sink.port}/hook success\n" in r.stdout
        assert "dead: FAILED\n  json://127.0.0.1:9/nothing failure: A Connection error" in r.stdout
        assert sink.wait_for(1, 5)[0]["title"] == "poller test message"
        r = poller("notify-test", "hook", "-c", str(path))
        assert r.returncode == 0

    def test_unknown_channel_lists_the_channels(
        self, tmp_path: Path, sims: tuple[RulerSim, WebhookSink]
    ) -> None:
        """A channel the config does not have: exit 2, and the ones it has."""
        path = write_config(tmp_path, *sims)
        r = poller("notify-test", "nope", "-c", str(path))
        assert (r.returncode, r.stdout) == (2, "")
        assert r.stderr == "poller: no channel nope in the config (channels: hook, dead)\n"

    def test_secrets_are_masked_in_every_answer(
        self, tmp_path: Path, sims: tuple[RulerSim, WebhookSink]
    ) -> None:
        """A channel with a password: the answer shows the URL with the password masked."""
        ruler, sink = sims
        path = write_config(tmp_path, ruler, sink)
        secret = "hunter2-" + os.urandom(4).hex()
        text = path.read_text().replace(
            f"hook: {sink.apprise_url}", f"hook: json://ops:{secret}@127.0.0.1:{sink.port}/hook"
        )
        path.write_text(text)
        sink.answer(503, times=1)
        r = poller("notify-test", "hook", "-c", str(path))
        assert r.returncode == 1
        assert f"json://ops:****@127.0.0.1:{sink.port}/hook failure" in r.stdout
        assert "HTTP 503" in r.stdout
        assert secret not in r.stdout + r.stderr


class TestStatusDeliveries:
    """`poller status` shows what has not been delivered."""

    def test_pending_and_given_up_are_listed(
        self, tmp_path: Path, sims: tuple[RulerSim, WebhookSink]
    ) -> None:
        """Counts, a list of each kind, per-watch counts in --json."""
        from poller.models import DeliveryOutcome, Event, EventRecord, WatchSpec
        from poller.store.repo import Store, WriteBack

        path = write_config(tmp_path, *sims)
        store = Store(f"sqlite:///{tmp_path}/poller.db")
        store.migrate()
        now = time.time()
        store.add_watch(WatchSpec(source="ruler-prod", job_id="j9", site=SITE), now)
        (watch,) = store.claim_due("me", now, 10, 30)
        store.write_back(
            "me",
            [
                WriteBack(
                    watch=watch,
                    progress=watch.progress,
                    next_poll_at=now + 30,
                    polled_at=now,
                    events=[EventRecord(Event.FAILED, now, {"key": watch.key}, ("hook", "dead"))],
                )
            ],
        )
        (dead,) = store.claim_deliveries("me", now, 10, 30, channel="dead")
        error = "json://127.0.0.1:9/nothing failure: [Errno 111] refused"
        store.finish_deliveries("me", [DeliveryOutcome(dead.id, False, error)], now)
        store.close()

        text = poller("status", "-c", str(path)).stdout
        assert "deliveries: 1 pending, 1 given up" in text
        assert "undelivered, by channel:" in text
        channels = {line.split()[0]: line.split()[1:3] for line in text.splitlines()[-2:]}
        assert channels == {"hook": ["1", "0"], "dead": ["0", "1"]}, text
        assert "[Errno 111] refused" in text  # brackets printed as they are
        doc = json.loads(poller("status", "--json", "-c", str(path)).stdout)
        assert doc["deliveries"] == {"pending": 1, "given_up": 1}
        (given_up,) = doc["given_up"]
        assert given_up["channel"] == "dead" and given_up["last_error"] == error
        assert [u["channel"] for u in doc["undelivered"]] == ["hook"]
        assert [(c["channel"], c["pending"], c["given_up"]) for c in doc["channels"]] == [
            ("hook", 1, 0),
            ("dead", 0, 1),
        ]
        (w,) = [w for w in doc["watches"] if w["key"] == f"ruler-prod/{SITE}/j9"]
        assert (w["deliveries_pending"], w["deliveries_given_up"]) == (1, 1)


class TestDemo:
    """`poller demo` shows the whole loop."""

    def test_demo_runs_to_the_end(self) -> None:
        """Every scripted outcome is notified and the demo exits 0. Piped, the output is the
        notifications and the result: no log lines, no escape codes."""
        r = poller("demo", "--speed", "4", timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        for title in (
            "Nightly revenue upload succeeded",
            "CRM contacts partly succeeded",
            "Ledger sync failed",
            "2019 backfill succeeded",
        ):
            assert title in r.stdout
        assert "notifications delivered, 0 pending." in r.stdout
        # a notification a line of its own: what is printed is the messages and the result
        assert r.stdout.count("📣") == int(
            r.stdout.split(" notifications delivered")[0].split()[-1]
        )
        assert "\x1b" not in r.stdout + r.stderr
        assert "[info" not in r.stdout and "polled" not in r.stdout and r.stderr == ""

    def test_verbose_shows_the_log_without_colour_in_a_pipe(self) -> None:
        """`--verbose`: the daemon's console log as well, still as plain text."""
        r = poller("demo", "--speed", "10", "--verbose", timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "[info" in r.stdout and "Ledger sync failed" in r.stdout
        assert "\x1b" not in r.stdout + r.stderr

    def test_a_notify_url_that_refuses_is_named_at_the_end(self) -> None:
        """A `--notify` service that refuses the messages: the demo still ends (it does not
        wait through the retries), names the URL by its place with the answer, exit 1."""
        r = poller("demo", "--speed", "10", "--notify", "json://127.0.0.1:9/x", timeout=120)
        assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
        assert (
            "Your --notify URL #1 did not take the messages: json://127.0.0.1:9/x failure: "
            "A Connection error"
        ) in r.stdout
        assert "notifications delivered, 0 pending." in r.stdout
        assert "Traceback" not in r.stdout + r.stderr

    @pytest.mark.parametrize(
        ("args", "said"),
        [
            (["--notify", "nonsense-s3cret"], "poller: --notify URL #1: not an Apprise URL"),
            (["--notify", "json://h/x", "--notify", ""], "poller: --notify URL #2: must not be"),
            (["--notify", "json://h/x"] * 11, "poller: --notify: at most 10 URLs, not 11"),
            (["--notify", "json://h/" + "x" * 5000], "#1: longer than 4096 characters"),
            (["--speed", "0"], "poller: --speed: must be from 0.1 to 10, not 0"),
            (["--speed", "-2"], "poller: --speed: must be from 0.1 to 10, not -2"),
            (["--speed", "nan"], "poller: --speed: must be from 0.1 to 10, not nan"),
            (["--speed", "inf"], "poller: --speed: must be from 0.1 to 10, not inf"),
            (["--speed", "11"], "poller: --speed: must be from 0.1 to 10, not 11"),
            (["--speed", "fast"], "Invalid value for '--speed'"),
        ],
    )
    def test_the_users_mistakes_are_said_before_it_starts(self, args: list[str], said: str) -> None:
        """A `--notify` URL Apprise cannot read (never quoted: it may hold secrets) or a
        `--speed` out of bounds: exit 2 with the reason, no traceback, nothing started."""
        r = poller("demo", *args)
        assert r.returncode == 2, r.stdout[-2000:]
        assert said in r.stderr and "Traceback" not in r.stderr
        assert "s3cret" not in r.stderr and r.stdout == ""
