"""Messages under hostile input, end to end: numbers that cannot be formatted, templates that
never end, and mentions, each driven through `poller run` against loopback APIs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_secrets
from delivery_world import SITE, DeliveryWorld, dworld, job_yaml
from world import eventually

from poller.testing import JsonJobSim, RulerSim, SimThread, WebhookSink

WH_TOKEN = "wh-token-" + "5a17c0de"

__all__ = ["dworld"]  # the fixture, imported for pytest


@pytest.fixture
def hworld(tmp_path: Path) -> Iterator[tuple[DeliveryWorld, JsonJobSim]]:
    """A delivery world with a generic JSON job API beside the Ruler one."""
    ruler, sink = RulerSim(token="tok-" + os.urandom(4).hex()), WebhookSink()
    api = JsonJobSim(WH_TOKEN)
    with SimThread(ruler, sink, api):
        w = DeliveryWorld(tmp_path, ruler, sink)
        try:
            yield w, api
        finally:
            w.close()


def http_source(api: JsonJobSim, details: dict[str, str]) -> str:
    """The YAML of an ``http`` source `wh` reading `details` (name: JMESPath) from `api`."""
    detail = "".join(f"      {name}: {expr}\n" for name, expr in details.items())
    return (
        f"  wh:\n    type: http\n    url: {api.base_url}/jobs/{{id}}\n"
        f"    headers: {{Authorization: 'Bearer {WH_TOKEN}'}}\n"
        "    state: data.status\n"
        f"    detail:\n{detail}"
        "    states: {RUNNING: running, DONE: succeeded, ERROR: failed}\n"
    )


def wh_job(job_id: str, name: str = "") -> str:
    text = f"  - {{source: wh, id: '{job_id}'"
    return text + (f", name: {json.dumps(name)}}}\n" if name else "}\n")


class TestNumbersThatCannotBeFormatted:
    """Item 3: nothing an API sends can stop a message."""

    @pytest.mark.parametrize("database", ["sqlite", "postgresql"])
    def test_a_400_digit_row_count_still_reaches_the_channel(
        self,
        hworld: tuple[DeliveryWorld, JsonJobSim],
        database: str,
        request: pytest.FixtureRequest,
    ) -> None:
        """Counts beyond any float, and times at the ends of the float range, in one job: the
        message goes out once, on its first attempt, and the other job's too; `status` and
        `history` show the job. On both databases."""
        w, api = hworld
        huge = int("9" * 400)
        api.add_job(
            "big",
            status="ERROR",
            total=huge,
            failed=huge,
            rows=[{"row": huge, "message": "bad"}],
            started=-1.7e308,
            ended=1.7e308,
            reason="disk full",
        )
        api.add_job("small", status="ERROR", total=10, failed=1, reason="bad row")
        w.write_config(
            wh_job("big", "Huge import") + wh_job("small", "Small import"),
            sources=http_source(
                api,
                {
                    "total_rows": "data.total",
                    "failure_count": "data.failed",
                    "processed_rows": "data.total",
                    "failed_rows": "data.rows",
                    "remote_created_at": "data.started",
                    "remote_completed_at": "data.ended",
                    "failure_reason": "data.reason",
                },
            ),
            rules="  - on: [failed]\n    notify: [hook]\n",
            delivery="  digest: {enabled: false}\n",
        )
        if database == "postgresql":
            url = request.getfixturevalue("pg_url")
            w.config.write_text(w.config.read_text().replace(f"sqlite:///{w.db}", url))
        w.start()
        said = eventually(
            lambda: len(w.messages()) >= 2 and "\n".join(m["title"] for m in w.messages()),
            what="both messages",
        )
        assert "Huge import failed" in said and "Small import failed" in said
        for args in (("status",), ("history", "wh/big"), ("history", "wh/big", "--json")):
            w.cli(*args)  # exit 0
        doc = w.status()
        assert doc["deliveries"].get("sent") == 2 and not doc["undelivered"]
        big = next(x for x in doc["watches"] if x["key"] == "wh/big")
        assert big["state"] == "failed" and big["details"]["total_rows"] == huge
        assert not [e for e in w.logs() if e.get("event") == "delivery failed"]


#: Passes the load-time check (the sample event has 1,000 rows: 10 x 10 turns) but never ends
#: on a job of ten million rows (100,000 x 100,000 turns).
SLOW_BODY = (
    "{% if counts.total %}{% for i in range(counts.total // 100) %}"
    "{% for j in range(counts.total // 100) %}{% endfor %}{% endfor %}{% endif %}{{ name }}"
)


class TestTemplateLimits:
    """Item 4: templates are bounded in time and size, at load time and at send time."""

    def test_check_reports_runaway_templates_with_their_line(self, tmp_path: Path) -> None:
        """A gigantic padding and a loop that never ends are config errors with file:line,
        found within the time limit, without a traceback."""
        config = tmp_path / "config.yaml"
        config.write_text(
            "database: sqlite:///" + str(tmp_path / "p.db") + "\n"
            "channels:\n  hook: json://127.0.0.1:9/hook\n"
            "rules:\n"
            "  - on: [failed]\n    notify: [hook]\n"
            "    template:\n      body: |\n        {{ name }}\n"
            '        {{ "x"|center(2000000000) }}\n'
            "  - on: [succeeded]\n    notify: [hook]\n"
            "    template:\n      body: |\n        {{ name }}\n\n"
            "        {% for i in range(100000) %}{% for j in range(100000) %}"
            "{% endfor %}{% endfor %}\n"
        )
        result = subprocess.run(
            [sys.executable, "-m", "poller", "check", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
        assert "config.yaml:10: rules[0].template.body:" in result.stderr
        assert "argument too large" in result.stderr
        assert "config.yaml:17: rules[1].template.body:" in result.stderr
        assert "took longer than" in result.stderr

    def test_a_template_that_never_ends_costs_only_its_own_text(
        self, dworld: DeliveryWorld
    ) -> None:
        """At send time the runaway template falls back to poller's own text while polling
        goes on; a reload to a runaway template is refused; SIGTERM still stops the daemon."""
        w = dworld
        w.ruler.add_job(SITE, "huge", status="processing", total_rows=10_000_000)
        w.ruler.add_job(SITE, "other", status="processing", total_rows=10)
        rules = (
            "  - on: [failed]\n    notify: [hook]\n"
            f"    template: {{body: {json.dumps(SLOW_BODY)}}}\n"
            "  - on: [succeeded]\n    notify: [hook]\n"
        )
        jobs = job_yaml("huge", "Huge import") + job_yaml("other", "Other import")
        w.write_config(jobs, rules=rules, delivery="  digest: {enabled: false}\n")
        daemon = w.start()
        w.ruler.set_job(SITE, "huge", status="failed", failure_reason="disk full")
        (message,) = eventually(lambda: w.messages(), what="the failed message")
        assert message["title"] == "❌ Huge import failed: disk full"
        assert "Reason: disk full" in message["message"]
        # polling went on meanwhile
        w.ruler.set_job(SITE, "other", status="complete")
        eventually(lambda: len(w.messages()) == 2, what="the other job's message")
        assert [e for e in w.logs() if e.get("event", "").startswith("template failed")]
        # a reload to a template that fails its limits on the sample events is refused
        w.write_config(
            jobs,
            rules="  - on: [failed]\n    notify: [hook]\n    template:\n      body: |\n"
            "        {% for i in range(100000) %}{% for j in range(100000) %}"
            "{% endfor %}{% endfor %}\n",
        )
        daemon.send_signal(signal.SIGHUP)
        eventually(
            lambda: [e for e in w.logs() if e.get("event", "").startswith("reload refused")],
            what="the refusal",
        )
        assert w.stop(daemon) == 0


#: Mentions that page people on Discord (role, user, nickname) and Matrix (the whole room).
MENTIONS = ("<@&123456>", "<@987654>", "<@!55555>", "@room")


def raw_mentions(text: str) -> list[str]:
    """The mentions of `MENTIONS` that `text` holds live (not defused)."""
    return [m for m in MENTIONS if m in text]


class TestMentions:
    """Item 19: Discord role and user mentions and Matrix @room are defused like @here."""

    def test_mentions_from_names_and_reasons_are_defused_everywhere(
        self, dworld: DeliveryWorld
    ) -> None:
        """Names (from the config) and reasons and rows (from the API) in titles, bodies and
        digests: each mention arrives with a zero-width space in it."""
        w = dworld
        jobs = ""
        for n in range(5):
            rows = [{"rowNumber": 1, "errorMessage": f"row says {MENTIONS[n % 4]}"}]
            w.ruler.add_job(SITE, f"m{n}", status="processing", total_rows=10, failures=rows)
            jobs += job_yaml(f"m{n}", f"Deploy {MENTIONS[n % 4]} {n}")
        w.write_config(
            jobs,
            rules="  - on: [failed, partial]\n    notify: [hook]\n",
            delivery="  digest: {threshold: 2, wait: 200ms, window: 1s}\n",
        )
        w.start()
        eventually(
            lambda: all(s["state"] == "running" for s in w.status()["watches"]), what="running"
        )
        w.ruler.set_job(SITE, "m0", status="failed", failure_reason="broke: <@&123456> @room")
        eventually(lambda: w.messages(), what="the first message")
        for n in range(1, 5):
            w.ruler.set_job(
                SITE, f"m{n}", status="partialcomplete", failure_count=1, failure_reason="x"
            )
        eventually(
            lambda: all(f"m{n}" in "".join(str(m) for m in w.messages()) for n in range(5)),
            what="every job named",
        )
        said = "\n".join(f"{m['title']}\n{m['message']}" for m in w.messages())
        assert raw_mentions(said) == []
        assert "<@\u200b&123456>" in said and "@\u200broom" in said
        assert "<@\u200b987654>" in said and "<@\u200b!55555>" in said

    def test_digests_and_template_values_defuse_them(self) -> None:
        """A digest's one-line-per-job list and a template's variables."""
        from poller.models import Event
        from poller.notify import compile_template, render_digest

        items = [
            (Event.FAILED, {"key": f"r/s/{n}", "name": f"Job {m}", "details": {}})
            for n, m in enumerate(MENTIONS * 2)
        ]
        for fmt in ("text", "markdown"):
            title, body, _ = render_digest(items, fmt)  # type: ignore[arg-type]
            assert raw_mentions(title + body) == [] and body.count("\u200b") >= 8
        template = compile_template("{{ name }}", "{{ reason }} {{ job_name }}")
        payload = {"key": "r/s/j", "name": "<@&1> @room", "details": {"failure_reason": "<@2>"}}
        title, body = template.render(Event.FAILED, payload)
        assert "<@&1>" not in title and "@room" not in title and "<@2>" not in body
        # Slack's user mentions with a label, and its user groups
        slack = {"key": "r/s/j", "name": "<@U024BE7LH|bob> <!subteam^SAZ94GDB8>", "details": {}}
        title, _ = template.render(Event.FAILED, slack)
        assert "<@U024BE7LH|" not in title and "<!subteam" not in title


class TestChannelSecrets:
    """Item 11: no secret part of a channel URL, and no source token an API echoes, appears
    in any log line (at debug level), any command's output or the database."""

    def test_path_query_header_and_password_secrets_never_show(self, dworld: DeliveryWorld) -> None:
        """A json:// channel with a token in its path, a header and a query parameter, a
        Mattermost channel (its token in the path it posts to) and a refused channel with a
        password, all on loopback; the Ruler API echoes its token in a failure reason."""
        w = dworld
        host = f"127.0.0.1:{w.sink.port}"
        path_tok, header_tok, query_tok = (
            "pathtok" + os.urandom(6).hex(),
            "hdr" + os.urandom(6).hex(),
            "qry" + os.urandom(6).hex(),
        )
        mm_tok, password = "mm" + os.urandom(12).hex(), "pw" + os.urandom(6).hex()
        planted = [path_tok, header_tok, query_tok, mm_tok, password, w.ruler.token]
        channels = (
            f"  hook: 'json://{host}/hook/{path_tok}?+Authorization=Bearer%20{header_tok}"
            f"&-token={query_tok}'\n"
            f"  mm: 'mmost://{host}/{mm_tok}?format=text'\n"
            f"  dead: 'json://ops:{password}@127.0.0.1:9/nothing'\n"
        )
        w.ruler.add_job(SITE, "echo", status="processing")
        w.write_config(
            job_yaml("echo", "Echoing job"),
            channels=channels,
            rules="  - on: [started, failed]\n    notify: [hook, mm, dead]\n",
            delivery="  digest: {enabled: false}\n  retry_initial: 200ms\n",
        )
        outputs = [w.cli("check").stdout]
        daemon = w.start()
        eventually(lambda: w.messages(), what="the started message")
        w.ruler.set_job(
            SITE, "echo", status="failed", failure_reason=f"token {w.ruler.token} is not allowed"
        )
        eventually(
            lambda: any("Echoing job failed" in str(m["title"]) for m in w.messages()),
            what="the failed message",
        )
        eventually(
            lambda: [e for e in w.logs() if e.get("event") == "delivery failed"],
            what="the dead channel's failures",
        )
        for args in (
            ("notify-test",),
            ("status",),
            ("status", "--json"),
            ("history", "ruler-prod/s1/echo"),
            ("history", "ruler-prod/s1/echo", "--json"),
        ):
            result = w.cli(*args, check=False)
            outputs += [result.stdout, result.stderr]
        assert w.stop(daemon) == 0
        # the channels were reached (the tokens were used), and the scanner finds them
        assert any(path_tok in m["path"] for m in w.messages())
        assert any(mm_tok in m["path"] for m in w.messages())
        assert sorted(test_secrets.leaks(w.config.read_text(), planted)) == sorted(planted[:5])
        log = w.log.read_bytes()
        assert b'"urllib3' in log or b"POST /" in log or b"delivered" in log
        assert test_secrets.leaks(log, planted) == []
        for text in outputs:
            assert test_secrets.leaks(text, planted) == [], text
        for path in w.tmp.glob("poller.db*"):
            assert test_secrets.leaks(path.read_bytes(), planted) == [], path
        assert "token *** is not allowed" in json.dumps(w.status())
