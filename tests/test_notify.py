"""Messages: what they say, hostile input, templates, digests, Apprise answers, and the events
stalled / unreachable / recovered end to end through the daemon."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from delivery_world import SITE, DeliveryWorld, dworld, job_yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from world import eventually

from poller.errors import NotifyError
from poller.models import Event
from poller.notify import (
    MAX_BODY,
    MAX_TITLE,
    SAMPLE_EVENTS,
    TEMPLATE_VARIABLES,
    Notifier,
    TemplateProblem,
    compile_template,
    render,
    render_digest,
)
from poller.testing import SimThread, WebhookSink

__all__ = ["dworld"]  # the fixture, imported for pytest

FAILED: dict[str, Any] = dict(SAMPLE_EVENTS[0][1])


def payload(**changes: Any) -> dict[str, Any]:
    """The sample failed event's payload with some fields changed (``details`` merged)."""
    out = dict(FAILED)
    details = dict(out["details"])
    details.update(changes.pop("details", {}))
    out.update(changes)
    out["details"] = details
    return out


class TestOtherDetails:
    """Details without a place of their own: listed in the body, and details.NAME in templates,
    bounded (their names and values came from a source)."""

    def test_listed_after_the_known_ones(self) -> None:
        """name: value lines at the end of the body; known names stay in their own place."""
        _, body = render(
            Event.FAILED, payload(details={"run_name": "nightly", "attempt": 3, "ok": True})
        )
        assert body.endswith("\nrun_name: nightly\nattempt: 3\nok: true")
        assert "total_rows" not in body and "failure_reason" not in body

    def test_the_api_name_when_the_watch_has_none(self) -> None:
        """details.job_name titles the message when the watch has no name, never over it."""
        title, _ = render(Event.SUCCEEDED, payload(name=None, details={"job_name": "Train"}))
        assert title == "✅ Train succeeded"
        title, _ = render(Event.SUCCEEDED, payload(details={"job_name": "Train"}))
        assert title == "✅ Nightly revenue upload succeeded"

    def test_hostile_details_are_bounded(self) -> None:
        """Many, long, multi-line details with mentions: ten lines of bounded length, then a
        count; a template sees at most 50, each cut and on one line."""
        hostile = {
            f"name{i} <!channel>\n" + "n" * 500: "@everyone\nline " + "v" * 5000 for i in range(80)
        }
        hostile["huge"] = 10**400  # type: ignore[assignment]
        _, body = render(Event.FAILED, payload(details=hostile))
        others = [line for line in body.splitlines() if line.startswith("name")]
        assert len(others) == 10 and all(len(line) < 400 for line in others)
        assert body.endswith(" more details)")
        assert "<!channel>" not in body and "@everyone" not in body
        template = compile_template(None, "{{ details | length }} {{ details.huge }}")
        _, text = template.render(Event.FAILED, payload(details=hostile))
        assert text == "50"
        template = compile_template(None, "{% for k, v in details.items() %}{{ v }}|{% endfor %}")
        _, text = template.render(Event.FAILED, payload(details=hostile))
        assert all(len(v) <= 300 and "\n" not in v for v in text.split("|"))

    def test_details_in_a_template(self) -> None:
        """details.NAME is known to the config check; a missing one prints as nothing."""
        template = compile_template("{{ details.run_name }}{{ details.nothing }}", None)
        title, _ = template.render(Event.FAILED, payload(details={"run_name": "nightly"}))
        assert title == "nightly"


class TestDefaultMessages:
    """poller's own messages say what ended, how, and why."""

    def test_failed_says_what_how_why_and_when(self) -> None:
        """Name, outcome and reason in the title; key, counts, rows, times in the body."""
        title, body = render(Event.FAILED, FAILED)
        assert title == "❌ Nightly revenue upload failed: Column 'amount' is missing"
        assert "Job: ruler-prod/4f2a/9c1e-77" in body
        assert "State: failed (remote: failed), was running" in body
        assert "Rows: 380 succeeded, 20 failed of 1000" in body
        assert "Reason: Column 'amount' is missing" in body
        # 20 rows failed; the API listed one
        assert "First failing rows (1 of 20):\n  row 3: Invalid email" in body
        assert "Started: 2023-11-14 22:13:20 UTC, took 10m" in body
        assert 'Output: {"written": 380}' in body

    def test_partial_counts_failures_in_the_title(self) -> None:
        """A partial end says how many rows failed at a glance."""
        title, _ = render(Event.PARTIAL, payload(state="partial"))
        assert title == "⚠️ Nightly revenue upload partly succeeded (20 of 1000 rows failed)"

    def test_only_the_first_failing_rows_are_listed(self) -> None:
        """Five rows at most, with how many there were."""
        rows = [{"row": n, "message": f"bad value {n}"} for n in range(1, 31)]
        _, body = render(Event.PARTIAL, payload(details={"failed_rows": rows}))
        assert "First failing rows (5 of 30):" in body
        assert "row 5: bad value 5" in body and "row 6:" not in body

    def test_failed_rows_error_and_output_are_shown(self) -> None:
        """When the rows could not be read, the message says so; an output is shown."""
        _, body = render(
            Event.FAILED,
            payload(details={"failed_rows": None, "failed_rows_error": "HTTP 500", "output": "x"}),
        )
        assert "Failing rows could not be read: HTTP 500" in body
        assert "Output: x" in body

    def test_running_events_show_progress_and_since_when(self) -> None:
        """stalled: progress and the last change; started: progress."""
        stalled = payload(state="running", last_change_at=1_700_000_000.0, at=1_700_007_200.0)
        title, body = render(Event.STALLED, stalled)
        assert title.endswith("is stalled at 40%")
        assert "Progress: 40%" in body
        assert "No progress since: 2023-11-14 22:13:20 UTC" in body
        assert "running for" in body

    def test_unreachable_shows_the_error_and_recovered_the_outage(self) -> None:
        """The poll error and since when; then how long it lasted."""
        kind, down = SAMPLE_EVENTS[2]
        title, body = render(kind, down)
        assert title == "📡 immuta/2b9f0c cannot be reached"
        assert "Error: server_error: HTTP 500" in body
        assert "Failing since: 2023-11-14 22:13:20 UTC (3 failed polls)" in body
        _, body = render(Event.RECOVERED, {**down, "error": None})
        assert "Unreachable for: 15m" in body

    def test_markdown_uses_bold_labels_and_code_blocks(self) -> None:
        """Markdown for services that render it: labels in bold, rows and output fenced."""
        _, body = render(Event.FAILED, FAILED, "markdown")
        assert "**Job:** ruler-prod/4f2a/9c1e-77" in body
        assert "**First failing rows (1 of 20):**\n```\nrow 3: Invalid email\n```" in body


class TestHostileInput:
    """Names, reasons and outputs from APIs and users cannot ping, inject or flood."""

    def test_mass_mentions_are_defused_everywhere(self) -> None:
        """<!channel>, <!here>, @here, @everyone become inert in title and body."""
        hostile = payload(
            name="<!channel> Nightly @here",
            details={
                "failure_reason": "@everyone look <!here|here>",
                "failed_rows": [{"row": 1, "message": "<!channel> x"}],
                "output": "@channel",
            },
        )
        for fmt in ("text", "markdown"):
            title, body = render(Event.FAILED, hostile, fmt)  # type: ignore[arg-type]
            for text in (title, body):
                assert "<!channel>" not in text and "<!here" not in text
                for word in ("@here", "@everyone", "@channel"):
                    assert word not in text

    def test_titles_stay_on_one_line(self) -> None:
        """A line break in a name cannot add a mail header."""
        title, _ = render(Event.FAILED, payload(name="Job\r\nBcc: victim@example.com\n"))
        assert "\r" not in title and "\n" not in title
        assert "Job Bcc: victim@example.com" in title

    def test_long_fields_are_cut(self) -> None:
        """A megabyte of reason costs a few hundred characters."""
        title, body = render(
            Event.FAILED,
            payload(name="n" * 10_000, details={"failure_reason": "r" * 1_000_000}),
        )
        assert len(title) <= MAX_TITLE and title.endswith("…")
        assert len(body) <= MAX_BODY
        assert "r" * 501 not in body

    def test_markdown_cannot_link_embed_or_inject_html(self) -> None:
        """Links, images and HTML tags from the API are escaped in Markdown bodies."""
        hostile = payload(
            details={"failure_reason": "[click](http://evil) ![x](http://t/p.png) <img src=x>"}
        )
        _, body = render(Event.FAILED, hostile, "markdown")
        for active in (r"\[click\]\(", r"!\[x\]\(", "<img"):
            assert not re.search(r"(?<!\\)" + active, body), active
        assert r"\[click\](http://evil)" in body and r"\<img src=x>" in body
        # text bodies keep the text as it was (Apprise escapes it for HTML and Slack)
        _, text = render(Event.FAILED, hostile, "text")
        assert "[click](http://evil)" in text

    def test_code_blocks_cannot_be_closed_from_inside(self) -> None:
        """Backticks in failing rows do not end the fence early."""
        rows = [{"row": 1, "message": "```\n**bold** <b>x</b>"}]
        _, body = render(Event.FAILED, payload(details={"failed_rows": rows}), "markdown")
        fenced = body.split("**First failing rows (1 of 20):**\n", 1)[1].split("**Output:**")[0]
        assert fenced.count("```") == 2

    @settings(max_examples=200, deadline=None)
    @given(
        kind=st.sampled_from(list(Event)),
        data=st.dictionaries(
            st.sampled_from(
                [
                    "key",
                    "name",
                    "state",
                    "progress",
                    "details",
                    "tags",
                    "started_at",
                    "ended_at",
                    "at",
                    "error",
                    "last_change_at",
                    "outage_since",
                ]
            ),
            st.recursive(
                st.none()
                | st.booleans()
                | st.integers()
                | st.floats(allow_nan=True)
                | st.text(max_size=50),
                lambda inner: (
                    st.lists(inner, max_size=4)
                    | st.dictionaries(
                        st.sampled_from(
                            [
                                "failed_rows",
                                "failure_reason",
                                "output",
                                "total_rows",
                                "row",
                                "message",
                            ]
                        ),
                        inner,
                        max_size=4,
                    )
                ),
                max_leaves=10,
            ),
        ),
    )
    def test_any_payload_renders_without_raising(self, kind: Event, data: dict[str, Any]) -> None:
        """Whatever the stored payload holds, a message comes out (both formats, digests)."""
        for fmt in ("text", "markdown"):
            title, _body = render(kind, data, fmt)  # type: ignore[arg-type]
            assert title and "\n" not in title
        assert render_digest([(kind, data), (Event.FAILED, data)])[0]


class TestTemplates:
    """Jinja2 templates, sandboxed, checked at load time."""

    def test_variables_and_default_text_are_available(self) -> None:
        """Every documented variable renders; title and body of poller are there too."""
        source = "\n".join(f"{name}={{{{ {name} }}}}" for name in TEMPLATE_VARIABLES)
        template = compile_template("{{ marker }} {{ name }}: {{ state }}", source)
        title, body = template.render(Event.FAILED, FAILED)
        assert title == "❌ Nightly revenue upload: failed"
        assert "key=ruler-prod/4f2a/9c1e-77" in body
        assert "reason=Column 'amount' is missing" in body
        assert "duration=10m" in body and "progress=40.0" in body
        assert "body=Job: ruler-prod/4f2a/9c1e-77" in body

    def test_missing_values_render_empty_and_loops_work(self) -> None:
        """None prints as nothing; lists of rows can be looped over."""
        template = compile_template(
            None,
            "[{{ reason }}]{% for r in failed_rows %} {{ r.row }}={{ r.message }}{% endfor %}",
        )
        assert template.render(Event.STARTED, {"key": "a/b"})[1] == "[]"
        assert template.render(Event.FAILED, FAILED)[1].endswith(" 3=Invalid email")

    def test_variables_are_cleaned_and_titles_are_one_line(self) -> None:
        """Hostile values arrive defused; a template cannot break the title onto two lines."""
        template = compile_template("{{ name }}\nBcc: x@example.com", "{{ reason }}")
        title, body = template.render(
            Event.FAILED, payload(name="<!here>", details={"failure_reason": "@channel"})
        )
        assert "\n" not in title and "<!here>" not in title
        assert "@channel" not in body

    def test_markdown_templates_get_escaped_variables(self) -> None:
        """In a markdown template, a value cannot become a link; the template's own can."""
        template = compile_template(None, "[docs](https://wiki) {{ reason }}", "markdown")
        _, body = template.render(
            Event.FAILED, payload(details={"failure_reason": "[x](http://evil)"})
        )
        assert body == r"[docs](https://wiki) \[x\](http://evil)"

    @pytest.mark.parametrize(
        ("source", "line", "words"),
        [
            ("ok\n{% if %}\n", 2, "Expected an expression"),
            ("{{ name }}\n\n{{ nmae }}", 3, "unknown variable nmae"),
            ("{{ progress + 1 }}", 1, "fails on a sample started event"),
            ("x\n{{ ''.__class__.__mro__ }}", 2, "SecurityError"),
            ("{{ 'x' * 1000000 }}", 1, "repetition too large"),
        ],
    )
    def test_problems_name_their_line(self, source: str, line: int, words: str) -> None:
        """Syntax errors, unknown variables, sample failures, sandbox escapes: with the line."""
        with pytest.raises(TemplateProblem) as caught:
            compile_template(None, source)
        assert caught.value.line == line
        assert words in caught.value.message


class TestDigests:
    """One message for many events."""

    def test_grouped_worst_first_every_job_named(self) -> None:
        """Groups by outcome, failures first; each job with its name, key and reason."""
        items = [
            (Event.SUCCEEDED, {"key": "r/s/ok1"}),
            (
                Event.FAILED,
                {"key": "r/s/bad1", "name": "Ledger", "details": {"failure_reason": "x"}},
            ),
            (Event.FAILED, {"key": "r/s/bad2"}),
            (Event.PARTIAL, {"key": "r/s/half", "details": {"failure_count": 2}}),
        ]
        title, body, severity = render_digest(items)
        assert title == "❌ 4 job events: 2 failed, 1 partly succeeded, 1 succeeded"
        assert severity == "failure"
        assert body.index("Failed (2):") < body.index("Partly succeeded (1):")
        assert body.index("Partly succeeded (1):") < body.index("Succeeded (1):")
        assert "- Ledger (r/s/bad1): x" in body and "- r/s/bad2" in body and "- r/s/ok1" in body
        assert "- r/s/half: 0 succeeded, 2 failed" in body

    def test_a_few_events_are_shown_in_full(self) -> None:
        """Two or three events together keep every detail of their own messages."""
        title, body, _severity = render_digest(
            [(Event.SUCCEEDED, {"key": "r/s/ok1"}), (Event.FAILED, FAILED)]
        )
        assert title == "❌ 2 job events: 1 failed, 1 succeeded"
        assert body.startswith("❌ Nightly revenue upload failed")
        assert "First failing rows (1 of 20):\n  row 3: Invalid email" in body
        assert "✅ r/s/ok1 succeeded\nJob: r/s/ok1" in body

    def test_one_outcome_and_truncation_with_counts(self) -> None:
        """Past the limit, the rest is counted by outcome."""
        items = [(Event.FAILED, {"key": f"r/s/j{n}"}) for n in range(10)]
        items += [(Event.STALLED, {"key": "r/s/slow"})]
        title, body, _severity = render_digest(items, max_jobs=4)
        assert title.startswith("❌ 11 job events: 10 failed, 1 stalled")
        assert body.count("\n- ") + body.startswith("- ") == 4
        assert "… and 7 more not listed here (6 failed, 1 stalled)" in body
        assert render_digest(items[:3])[0] == "❌ 3 jobs failed"


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    """A webhook receiver on loopback."""
    server = WebhookSink()
    with SimThread(server):
        yield server


class TestNotifier:
    """Apprise per channel: answers, secrets, timeouts, Retry-After."""

    def test_success_answer_names_the_service(self, sink: WebhookSink) -> None:
        """A sent message comes back with the (masked) service URL and its status."""
        notifier = Notifier({"hook": sink.apprise_url})
        answer = asyncio.run(notifier.send("hook", "t", "b", Event.FAILED))
        assert answer == f"json://127.0.0.1:{sink.port}/hook success"
        assert sink.wait_for(1)[0]["type"] == "failure"
        assert notifier.format_for("hook") == "text"

    def test_failure_is_notify_error_with_the_answer_and_no_secret(self, sink: WebhookSink) -> None:
        """A 500 becomes NotifyError saying what the service said; the password is masked."""
        secret = "s3cr3t-pass-4242"
        notifier = Notifier({"hook": f"json://user:{secret}@127.0.0.1:{sink.port}/hook"})
        sink.answer(500, times=1)
        with pytest.raises(NotifyError) as caught:
            asyncio.run(notifier.send("hook", "t", "b", Event.FAILED))
        answer = caught.value.answer
        assert "error=500" in answer and "HTTP 500" in answer
        assert "user:****@" in answer or "user:***@" in answer
        assert secret not in answer and secret not in str(caught.value)
        assert caught.value.retry_after is None

    def test_429_retry_after_is_reported(self, sink: WebhookSink) -> None:
        """Retry-After of a 429 reaches the caller, though Apprise keeps the response."""
        notifier = Notifier({"hook": sink.apprise_url})
        sink.answer(429, times=1, retry_after=7)
        with pytest.raises(NotifyError) as caught:
            asyncio.run(notifier.send("hook", "t", "b", Event.FAILED))
        assert caught.value.retry_after == 7
        assert "Retry-After: 7" in caught.value.answer

    def test_a_hanging_service_is_bounded_by_the_timeout(self, sink: WebhookSink) -> None:
        """No answer within the per-send timeout is a failure, not a stuck task."""
        notifier = Notifier({"hook": sink.apprise_url})
        sink.answer(mode="hang", times=1)
        started = time.monotonic()
        with pytest.raises(NotifyError):
            asyncio.run(notifier.send("hook", "t", "b", Event.FAILED, timeout=0.5))
        assert time.monotonic() - started < 3

    def test_format_follows_what_the_service_prefers(self) -> None:
        """Slack and email get Markdown (email as HTML); webhooks get text."""
        notifier = Notifier(
            {
                "slack": "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ",
                "mail": "mailto://u:p4ssw0rd@127.0.0.1:2525?to=a@example.com&from=p@example.com",
                "hook": "json://127.0.0.1:9/x",
            }
        )
        assert notifier.format_for("slack") == "markdown"
        assert notifier.format_for("mail") == "markdown"
        assert notifier.format_for("hook") == "text"

    def test_what_the_masked_url_hides_is_scrubbed_from_answers(self) -> None:
        """Tokens in the URL path and passwords never survive into an answer."""
        token = "TIiajkdnlazkcOXrIdevi7FQ"
        notifier = Notifier({"slack": f"slack://T1JJ3T3L2/A1BRTD4JD/{token}"})
        (masked,) = notifier.describe("slack")
        assert token not in masked
        said = notifier.scrub("slack", f"POST https://hooks.slack.com/services/x/y/{token} 404")
        assert token not in said and "***" in said

    def test_refused_connection_is_a_failure(self, sink: WebhookSink) -> None:
        """A closed connection without an answer is reported as such."""
        notifier = Notifier({"hook": sink.apprise_url})
        sink.answer(mode="refuse", times=1)
        with pytest.raises(NotifyError) as caught:
            asyncio.run(notifier.send("hook", "t", "b", Event.FAILED, timeout=2))
        assert "connection error" in caught.value.answer.lower()


def _event_rules() -> str:
    return "  - on: [stalled, unreachable, recovered]\n    notify: [hook]\n"


def _said(w: DeliveryWorld) -> str:
    """Everything the channel received: events due together arrive as one message that
    shows each in full, so each event's own title appears once, in a title or a body."""
    return "\n".join(f"{m['title']}\n{m['message']}" for m in w.messages())


class TestEventsEndToEnd:
    """stalled, unreachable and recovered through the daemon, with their overrides."""

    def test_stalled_once_per_stall_with_job_and_source_overrides(
        self, dworld: DeliveryWorld
    ) -> None:
        """A job and a source with stall_after 1s stall; one with the default (1h) does not."""
        w = dworld
        for job in ("stall-job", "stall-src", "calm"):
            w.ruler.add_job(SITE, job, status="processing")
            w.ruler.set_job(SITE, job, processed_rows=40)
        w.write_config(
            job_yaml("stall-job", "Stuck upload", extra="polling: {stall_after: 1s}")
            + job_yaml("stall-src", source="ruler-fast")
            + job_yaml("calm"),
            rules=_event_rules(),
            polling="  interval: 100ms\n  max_interval: 300ms\n  stall_after: 1h\n",
            sources=(
                f"  ruler-fast:\n    type: ruler\n    base_url: {w.ruler.base_url}\n"
                "    token: ${RULER_TOKEN}\n    polling: {stall_after: 1s}\n"
            ),
        )
        w.start()
        stalls = [
            "🐢 Stuck upload is stalled at 40%",
            "🐢 ruler-fast/s1/stall-src is stalled at 40%",
        ]
        eventually(lambda: all(t in _said(w) for t in stalls), what="both stalls")
        time.sleep(2.0)  # long enough for a second stall, if there were one
        said = _said(w)
        assert [said.count(t) for t in stalls] == [1, 1]
        assert "calm" not in said
        assert "Progress: 40%" in said and "No progress since:" in said
        assert all(m["type"] == "warning" for m in w.messages())
        # progress again, then a new stall: a message for the new stall only
        w.ruler.set_job(SITE, "stall-job", processed_rows=60)
        eventually(lambda: "Stuck upload is stalled at 60%" in _said(w), what="second stall")
        time.sleep(0.5)
        assert [_said(w).count(t) for t in stalls] == [1, 1]

    def test_failing_rows_from_the_api_reach_the_message(self, dworld: DeliveryWorld) -> None:
        """A partial Ruler job: the counts and the first failing rows, cleaned, in the body."""
        w = dworld
        rows = [{"rowNumber": n, "errorMessage": f"Invalid email in row {n}"} for n in (3, 7)]
        rows.append({"rowNumber": 9, "errorMessage": "<!here> row 9\nBcc: x@example.com"})
        w.ruler.add_job(SITE, "rows", status="processing", total_rows=1000, failures=rows)
        w.write_config(
            job_yaml("rows", "CRM import"), rules="  - on: [partial]\n    notify: [hook]\n"
        )
        w.start()
        eventually(lambda: w.status()["watches"][0]["state"] == "running", what="polled")
        w.ruler.set_job(SITE, "rows", status="partialcomplete", failure_count=3)
        (message,) = eventually(lambda: w.messages(), what="the partial message")
        assert message["title"] == "⚠️ CRM import partly succeeded (3 of 1000 rows failed)"
        body = str(message["message"])
        assert "Rows: 997 succeeded, 3 failed of 1000" in body
        assert "First failing rows:\n  row 3: Invalid email in row 3\n  row 7:" in body
        assert "row 9: <\u200b!here> row 9 Bcc: x@example.com" in body

    def test_unreachable_once_then_recovered(self, dworld: DeliveryWorld) -> None:
        """error_after 1s per job and per source: one unreachable each, then recovered."""
        w = dworld
        for job in ("err-job", "err-src", "err-calm"):
            w.ruler.add_job(SITE, job, status="processing")
            w.ruler.fail(f"/{job}/", status=500, times=None)
        w.write_config(
            job_yaml("err-job", extra="polling: {error_after: 1s}")
            + job_yaml("err-src", source="ruler-fast")
            + job_yaml("err-calm"),
            rules=_event_rules(),
            polling="  interval: 100ms\n  max_interval: 300ms\n  error_after: 1h\n",
            sources=(
                f"  ruler-fast:\n    type: ruler\n    base_url: {w.ruler.base_url}\n"
                "    token: ${RULER_TOKEN}\n    polling: {error_after: 1s}\n"
            ),
        )
        w.start()
        down = [
            "📡 ruler-fast/s1/err-src cannot be reached",
            "📡 ruler-prod/s1/err-job cannot be reached",
        ]
        eventually(lambda: all(t in _said(w) for t in down), what="unreachable")
        time.sleep(1.5)
        said = _said(w)
        assert [said.count(t) for t in down] == [1, 1] and "err-calm" not in said
        assert said.count("Error: server_error: HTTP 500") == 2
        assert said.count("Failing since:") == 2
        assert all(m["type"] == "failure" for m in w.messages())
        before = len(w.messages())
        w.ruler.clear_faults()
        back = [
            "🔁 ruler-fast/s1/err-src can be reached again",
            "🔁 ruler-prod/s1/err-job can be reached again",
        ]
        eventually(lambda: all(t in _said(w) for t in back), what="recovered")
        time.sleep(0.5)
        said = _said(w)
        assert [said.count(t) for t in back] == [1, 1]
        assert said.count("Unreachable for:") == 2
        assert all(m["type"] == "info" for m in w.messages()[before:])
