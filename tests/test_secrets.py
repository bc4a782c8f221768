"""Canary secrets: planted everywhere a secret can be, found nowhere they must not be."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from world import SITE, AnyAnswer, LoopbackResolver, World, eventually

from poller.app import Daemon
from poller.config import load_config
from poller.engine.runtime import Tuning
from poller.logs import configure
from poller.sources.client import Requester


def canary(kind: str) -> str:
    return f"canary{kind}{secrets.token_hex(6)}"


def leaks(text: str | bytes, planted: list[str]) -> list[str]:
    """Which planted secrets appear in `text`, raw or URL-encoded."""
    data = text if isinstance(text, bytes) else text.encode()
    found = []
    for secret in planted:
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            if form.encode() in data:
                found.append(secret)
    return found


class TestCanaries:
    """0 hits for every planted secret in logs, database files and command output."""

    def test_no_secret_anywhere(self, world: World, tmp_path: Path) -> None:
        """Polls, poll errors, deliveries, a failing channel, a bad reload and every command."""
        token = world.ruler.token  # the real token comes from the environment
        file_token = canary("filetoken")
        mail_pass = canary("pass")
        slack_c = canary("slackpath")[:24]
        token_file = tmp_path / "other-token"
        token_file.write_text(file_token + "\n")
        planted = [token, file_token, mail_pass, slack_c]
        hook = world.sink.apprise_url.replace("json://", f"json://user:{mail_pass}@")
        world.ruler.add_job(SITE, "ok", status="processing")
        world.ruler.add_job(SITE, "wrong-token", status="processing")
        config = world.config.read_text()
        config = config.replace(
            "sources:\n",
            "sources:\n"
            f"  other:\n    type: ruler\n    base_url: {world.ruler.base_url}\n"
            f"    token_file: {token_file}\n",
        )
        config = config.replace(
            f"  hook: {world.sink.apprise_url}\n",
            f"  hook: '{hook}'\n  slack: 'slack://T1JJ3T3L2/A1BRTD4JD/{slack_c}'\n",
        )
        config = config.replace("notify: [hook]", "notify: [hook, slack]")
        config = config.replace(
            "jobs:\n  []",
            f"jobs:\n  - {{source: ruler-prod, site: '{SITE}', id: ok}}\n"
            f"  - {{source: other, site: '{SITE}', id: wrong-token}}\n",
        )
        world.config.write_text(config)
        outputs: list[str] = []
        check = world.cli("check")
        outputs += [check.stdout, check.stderr]
        daemon = world.start()
        eventually(lambda: world.messages("info"), what="started delivered")
        world.ruler.set_job(SITE, "ok", status="complete")
        eventually(lambda: world.messages("success"), what="success delivered")
        eventually(lambda: b"delivery failed" in world.log.read_bytes(), what="slack failure")
        eventually(
            lambda: world.status()["other/4f2a/wrong-token"]["last_error"], what="401 recorded"
        )
        # A bad reload whose broken value is a secret.
        world.config.write_text(config.replace("  interval: 200ms", "  interval: ${RULER_TOKEN}"))
        daemon.send_signal(signal.SIGHUP)
        eventually(lambda: b"reload refused" in world.log.read_bytes(), what="refusal")
        bad_check = world.cli("check", check=False)
        assert bad_check.returncode == 2 and "polling.interval" in bad_check.stderr
        outputs += [bad_check.stdout, bad_check.stderr]
        world.config.write_text(config)
        for args in (
            ("status",),
            ("status", "--json"),
            ("history", "ruler-prod/4f2a/ok"),
            ("history", "ruler-prod/4f2a/ok", "--json"),
            ("notify-test",),
            ("add", "other", "x1", "--site", SITE),
            ("remove", "other/4f2a/x1"),
            ("wait", "ruler-prod", "ok", "--site", SITE),
        ):
            result = world.cli(*args, check=False)
            outputs += [result.stdout, result.stderr]
        time.sleep(0.5)
        assert world.stop(daemon) == 0

        # The scanner finds what is there: the config file holds two of the canaries.
        assert sorted(leaks(config, planted)) == sorted([mail_pass, slack_c])
        assert leaks(world.log.read_bytes(), planted) == []
        for text in outputs:
            assert leaks(text, planted) == [], text
        db_files = list(world.tmp.glob("poller.db*"))
        assert db_files
        for path in db_files:
            assert leaks(path.read_bytes(), planted) == [], path

    def test_tracebacks_carry_no_secrets(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An adapter crash is logged with a traceback but without locals or secrets.

        The HTTP layer fails while aiohttp's request frame holds the Authorization header in
        a local variable.
        """
        token = canary("token")

        path = tmp_path / "config.yaml"
        path.write_text(
            json.dumps(
                {
                    "database": f"sqlite:///{tmp_path}/poller.db",
                    "sources": {
                        "r": {"type": "ruler", "token": token, "base_url": "http://api.test"}
                    },
                    "jobs": [{"source": "r", "site": "s", "id": "j"}],
                    "log": {"level": "debug", "format": "json"},
                }
            )
        )
        config = load_config(path)
        configure("debug", "json")

        async def go() -> None:
            daemon = Daemon(
                config,
                resolver=LoopbackResolver(fail_first=1_000, message="boom"),
                tuning=Tuning(idle_wait=0.1),
            )
            runner = asyncio.create_task(daemon.run())
            await asyncio.sleep(1.0)
            daemon.stop()
            await runner

        asyncio.run(go())
        out = capsys.readouterr().out
        assert "adapter crashed" in out and "RuntimeError" in out
        assert leaks(out, [token]) == []
        for path in tmp_path.glob("poller.db*"):
            assert leaks(path.read_bytes(), [token]) == []


def test_the_http_library_does_not_log_urls(
    any_answer: AnyAnswer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job URL may carry a key in its query (``?api_key=...``), which poller cannot know for
    a secret: httpx's own log line per request (at info) must not print it, even at debug."""
    key = canary("urlkey")
    any_answer.status, any_answer.body = 200, b'{"state": "DONE"}'
    configure("debug", "json")

    async def go() -> object:
        requester = Requester()
        try:
            return await requester.json("GET", f"{any_answer.base_url}/jobs/1?api_key={key}")
        finally:
            await requester.aclose()

    assert asyncio.run(go()) == {"state": "DONE"}
    out = capsys.readouterr().out
    assert key not in out and "HTTP Request" not in out
