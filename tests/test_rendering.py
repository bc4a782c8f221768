"""Messages as each service's receiver gets them, from `poller run` through the real Apprise
plugins: email on a loopback SMTP server (aiosmtpd), Matrix on a loopback homeserver
(`MatrixSim`), and a webhook (``json://``) that must stay plain text."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_email import PASSWORD, Mailbox, mailbox, text_of
from world import eventually

from poller.models import Event
from poller.notify import render
from poller.notify.text import markdown_to_html
from poller.testing import JsonJobSim, MatrixSim, SimThread, WebhookSink

__all__ = ["mailbox"]  # the fixture, imported for pytest

pytestmark = [
    pytest.mark.filterwarnings("ignore:Session.login_data is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
]

TOKEN = "render-token-5521"
LINK = "https://ci.example.com/jobs/w1?tab=logs&run=7"
#: a link an API may send that must never become one
EVIL_LINK = "javascript:alert(1)"


def config(tmp: Path, api: JsonJobSim, mail: Mailbox, matrix: MatrixSim, hook: str) -> str:
    """Three channels, each told about failures of two jobs of an ``http`` source."""
    return f"""
database: sqlite:///{tmp}/poller.db
log: {{level: debug, format: json}}
sources:
  warehouse:
    type: http
    url: {api.base_url}/jobs/{{id}}
    headers: {{Authorization: "Bearer ${{WAREHOUSE_TOKEN}}"}}
    state: data.status
    detail: {{failure_reason: data.message, url: data.link, owner: data.owner}}
    states: {{RUNNING: running, DONE: succeeded, ERROR: failed}}
channels:
  mail: {mail.url()}
  matrix: {matrix.apprise_url("#ops")}
  hook: {hook}
rules:
  - on: [failed]
    notify: [mail, matrix, hook]
polling: {{interval: 200ms, max_interval: 500ms}}
delivery: {{digest: {{enabled: false}}}}
jobs:
  - {{source: warehouse, id: w1, name: Warehouse load}}
  - {{source: warehouse, id: w2, name: Evil load}}
"""


def run_until_failed(tmp_path: Path, mail: Mailbox) -> tuple[MatrixSim, WebhookSink]:
    """`poller run` until both jobs' failures reached every channel; returns the receivers."""
    api, matrix, sink = JsonJobSim(TOKEN), MatrixSim(), WebhookSink()
    with SimThread(api, matrix, sink):
        api.add_job("w1", status="RUNNING", link=LINK, owner="data team")
        api.add_job("w2", status="RUNNING", link=EVIL_LINK)
        (tmp_path / "config.yaml").write_text(config(tmp_path, api, mail, matrix, sink.apprise_url))
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        env.pop("NOTIFY_SOCKET", None)
        env["WAREHOUSE_TOKEN"] = TOKEN
        with (tmp_path / "daemon.log").open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "poller", "run", "-c", str(tmp_path / "config.yaml")],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            eventually(lambda: api.requests["job"] >= 4, what="both jobs polled")
            api.set_job("w1", status="ERROR", message="Column <b>amount</b> is missing")
            api.set_job("w2", status="ERROR", message="[click](javascript:alert(2))")
            eventually(lambda: len(mail.messages) >= 2, timeout=20, what="two mails")
            eventually(lambda: len(matrix.messages) >= 2, timeout=20, what="two Matrix messages")
            eventually(lambda: len(sink.messages) >= 2, timeout=20, what="two webhooks")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return matrix, sink


def by_job(items: list[dict[str, object]], job: str) -> dict[str, object]:
    """The one received item that names watch `job`."""
    (found,) = [m for m in items if f"warehouse/{job}" in str(m)]
    return found


class TestEachServiceGetsWhatItShowsBest:
    """One failure, three services; each gets the form it renders."""

    def test_email_matrix_and_webhook(self, tmp_path: Path, mailbox: Mailbox) -> None:
        """Email: a text part with one field per line and no stray indentation, an HTML part
        with real links. Matrix: an HTML body a client shows with a field per line and the
        title in bold (no ``# ``, no <h1>), and a plain body that reads the same. Webhook:
        plain text as before. A ``javascript:`` link from the API is a link nowhere."""
        matrix, sink = run_until_failed(tmp_path, mailbox)

        mails = {m["Subject"]: m for m in mailbox.messages}
        mail = next(m for s, m in mails.items() if "Warehouse load" in str(s))
        plain, html = text_of(mail)
        lines = plain.strip().splitlines()
        assert lines[0] == "Job: warehouse/w1", plain
        assert "State: failed (remote: ERROR), was running" in lines
        assert "Reason: Column <b>amount</b> is missing" in lines
        assert f"Link: {LINK}" in lines and "owner: data team" in lines
        assert not [line for line in lines if line.startswith(" ")], plain
        href = LINK.replace("&", "&amp;")
        assert f'<a href="{href}">{href}</a>' in html, html
        assert "&lt;b&gt;amount&lt;/b&gt;" in html and "<b>amount" not in html
        assert "<br><strong>State:</strong>" in html  # a field per line

        w1 = by_job(matrix.messages, "w1")
        assert w1["msgtype"] == "m.text" and w1["format"] == "org.matrix.custom.html"
        formatted = str(w1["formatted_body"])
        assert formatted.startswith("<p><strong>❌ Warehouse load failed: Column &lt;b&gt;")
        assert "<h1>" not in formatted and "# " not in formatted
        assert "<br><strong>State:</strong> failed (remote: ERROR), was running<br>" in formatted
        assert f'<a href="{href}">' in formatted
        body_lines = str(w1["body"]).splitlines()
        assert not str(w1["body"]).startswith("#")
        assert body_lines[0].startswith("❌ Warehouse load failed")
        assert "Job: warehouse/w1" in body_lines and f"Link: {LINK}" in body_lines
        assert matrix.requests["login"] >= 1 and matrix.requests["join"] >= 1

        evil_mail = next(m for s, m in mails.items() if "Evil load" in str(s))
        evil_formatted = str(by_job(matrix.messages, "w2")["formatted_body"])
        for shown in (text_of(evil_mail)[1], evil_formatted):
            assert "javascript:" in shown  # shown as text...
            assert not re.search(r"href=[\"']?javascript", shown)  # ...never as a link

        hook = by_job(sink.messages, "w1")
        message = str(hook["message"])
        assert message.startswith("Job: warehouse/w1\nState: failed")
        assert f"Link: {LINK}\n" in message  # plain text, as it was: no Markdown, no HTML
        assert "**" not in message and "<a " not in message and "](" not in message
        assert PASSWORD not in (tmp_path / "daemon.log").read_text()


class TestHtmlFromMarkdown:
    """`markdown_to_html` on poller's own Markdown with hostile values from an API."""

    def test_hostile_values_stay_text_and_only_the_link_is_a_link(self) -> None:
        """Tags, autolinks, images and ``javascript:`` in values are text; the job's http link
        is the one link, its parentheses kept; each field is on its own line."""
        hostile = "<img src=x onerror=alert(1)> <https://evil.example> ![i](https://t/x.png)"
        payload = {
            "key": "warehouse/w1",
            "state": "failed",
            "details": {
                "failure_reason": hostile,
                "url": "https://ci.example.com/jobs/(w1)",
                "note": "[click](javascript:alert(1)) <script>x</script>",
            },
        }
        _title, body = render(Event.FAILED, payload, "markdown")
        html = markdown_to_html(body)
        assert re.findall(r"<a [^>]*>", html) == ['<a href="https://ci.example.com/jobs/%28w1%29">']
        assert "<img" not in html and "<script" not in html and "&lt;script&gt;" in html
        assert "&lt;https://evil.example&gt;" in html
        assert "<br>\n" not in html and html.count("<br>") >= 3

    def test_a_template_cannot_make_a_script_link_or_an_image(self) -> None:
        """A Markdown template's own links stay links only for http(s) and mailto."""
        html = markdown_to_html(
            "[ok](https://ok.example) [mail](mailto:a@b.example) [bad](javascript:x) ![t](https://t)"
        )
        assert re.findall(r'href="([^"]*)"', html) == ["https://ok.example", "mailto:a@b.example"]
        assert "<img" not in html and "<span>bad</span>" in html
