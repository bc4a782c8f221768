"""Email through a real SMTP server on loopback (aiosmtpd): subject, body, no header injection,
no password anywhere."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from delivery_world import SITE, DeliveryWorld, dworld, job_yaml
from world import eventually

__all__ = ["dworld"]  # the fixture, imported for pytest

USER, PASSWORD = "poller", "mail-s3cret-7781"

pytestmark = [
    # aiosmtpd reads its own deprecated attribute while authenticating
    pytest.mark.filterwarnings("ignore:Session.login_data is deprecated:DeprecationWarning"),
    # a login without TLS is what this loopback test wants
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
]


class Mailbox:
    """An SMTP server on 127.0.0.1 that requires a login and keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[Envelope] = []
        self._lock = threading.Lock()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self._authenticate,
            auth_require_tls=False,
            auth_required=True,
        )

    @staticmethod
    def _authenticate(
        server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=ok)

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        """Keep the message."""
        content = envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self._lock:
            self.messages.append(parsed)
            self.envelopes.append(envelope)
        return "250 OK"

    def url(self) -> str:
        """The Apprise URL of this mailbox."""
        return (
            f"mailto://{USER}:{PASSWORD}@127.0.0.1:{self.port}"
            "?to=oncall@example.com&from=poller@example.com"
        )


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    """A running loopback SMTP server."""
    box = Mailbox()
    box.controller.start()
    try:
        yield box
    finally:
        box.controller.stop()


def text_of(message: EmailMessage) -> tuple[str, str]:
    """The plain-text and the HTML part of a message."""
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    return (
        plain.get_content() if plain is not None else "",  # type: ignore[attr-defined]
        html.get_content() if html is not None else "",  # type: ignore[attr-defined]
    )


class TestEmail:
    """A failed job, mailed by the daemon."""

    def test_failure_arrives_with_subject_and_body(
        self, dworld: DeliveryWorld, mailbox: Mailbox
    ) -> None:
        """Subject is the title, the body says what failed and why; HTML is escaped. A line
        break in the API's reason cannot add a mail header (names are one line by the config's
        rule)."""
        w = dworld
        w.ruler.add_job(SITE, "m1", status="processing", total_rows=1000)
        w.write_config(
            job_yaml("m1", "Ledger sync"),
            channels=f"  mail: {mailbox.url()}\n",
            rules="  - on: [failed]\n    notify: [mail]\n",
        )
        w.start()
        eventually(lambda: w.status()["watches"][0]["state"] == "running", what="polled")
        w.ruler.set_job(
            SITE,
            "m1",
            status="failed",
            processed_rows=400,
            failure_count=3,
            failure_reason="Column <b>amount</b> is missing\r\nBcc: victim@example.com",
        )
        (message,) = eventually(lambda: mailbox.messages, timeout=15, what="the mail")
        subject = str(message["Subject"])
        assert subject.startswith("❌ Ledger sync failed")
        assert "Column <b>amount</b> is missing Bcc: victim@example.com" in subject
        assert message["Bcc"] is None  # the reason's line break did not become a header
        assert mailbox.envelopes[0].rcpt_tos == ["oncall@example.com"]
        plain, html = text_of(message)
        assert f"ruler-prod/{SITE}/m1" in plain + html
        assert "Column" in html and "<b>amount</b>" not in html  # Markdown → HTML, escaped
        assert "&lt;b&gt;amount&lt;/b&gt;" in html
        assert "Rows:" in html and "397 succeeded, 3 failed of 1000" in html
        everything = w.log.read_text() + w.cli("status", "--json").stdout
        assert PASSWORD not in everything

    def test_notify_test_reaches_the_mailbox_and_masks_the_password(
        self, dworld: DeliveryWorld, mailbox: Mailbox
    ) -> None:
        """`poller notify-test mail` sends one mail and prints the masked answer."""
        w = dworld
        w.write_config(channels=f"  mail: {mailbox.url()}\n", rules="  []\n")
        r = w.cli("notify-test", "mail")
        assert r.stdout.startswith("mail: ok\n")
        assert f"mailto://{USER}:****@127.0.0.1:{mailbox.port}" in r.stdout
        assert PASSWORD not in r.stdout + r.stderr
        (message,) = eventually(lambda: mailbox.messages, what="the test mail")
        assert message["Subject"] == "poller test message"
        assert "poller can reach the channel" in "".join(text_of(message))

    def test_a_wrong_password_is_a_failure_without_the_password(
        self, dworld: DeliveryWorld, mailbox: Mailbox
    ) -> None:
        """Refused credentials: FAILED, exit 1, and the answer does not quote them."""
        w = dworld
        url = mailbox.url().replace(PASSWORD, "wrong-pass-5150")
        w.write_config(channels=f"  mail: {url}\n", rules="  []\n", delivery="  timeout: 3s\n")
        r = w.cli("notify-test", check=False)
        assert r.returncode == 1 and "mail: FAILED" in r.stdout
        assert "wrong-pass-5150" not in r.stdout + r.stderr
        assert not mailbox.messages
