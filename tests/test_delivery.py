"""Delivery through the real daemon: channel outages, independence, Retry-After, giving up,
storms and digests, templates at send time."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterator

import pytest
from delivery_world import SITE, DeliveryWorld, dworld, job_yaml, named_keys
from world import eventually

from poller.models import DeliveryOutcome, Event, EventRecord, WatchSpec
from poller.store.repo import Store, WriteBack

__all__ = ["dworld"]  # the fixture, imported for pytest

FAST_RETRIES = "  timeout: 1s\n  retry_initial: 200ms\n  retry_max: 1s\n"


def two_channels(w: DeliveryWorld, broken: str = "/broken") -> str:
    """A failing-to-be channel and a healthy one on the same loopback sink."""
    return (
        f"  broken: {w.sink.apprise_url_for(broken)}\n"
        f"  healthy: {w.sink.apprise_url_for('/healthy')}\n"
    )


FAILED_TO_BOTH = "  - on: [failed]\n    notify: [broken, healthy]\n"


def fail_job(w: DeliveryWorld, job: str) -> float:
    """Make a watched job fail now; returns when."""
    w.ruler.set_job(SITE, job, status="failed", failure_reason=f"{job} broke")
    return time.time()


def arrived(w: DeliveryWorld, path: str, job: str) -> list[dict[str, object]]:
    """Messages on `path` that name `job`."""
    return [m for m in w.messages(path) if f"/{job}" in str(m["message"])]


def failed_sends(w: DeliveryWorld) -> str:
    """What the services answered to every failed send, as logged ("delivery failed")."""
    return " ".join(str(e.get("error")) for e in w.logs() if e.get("event") == "delivery failed")


class TestChannelOutage:
    """A channel answers 500, then refuses, then hangs; the daemon restarts meanwhile."""

    def test_everything_arrives_once_and_the_healthy_channel_never_waits(
        self, dworld: DeliveryWorld
    ) -> None:
        """Broken: nothing lost, nothing twice. Healthy: every message within a second."""
        w = dworld
        jobs = ["o1", "o2", "o3", "o4"]
        for job in jobs:
            w.ruler.add_job(SITE, job, status="processing")
        w.write_config(
            "".join(job_yaml(job) for job in jobs),
            channels=two_channels(w),
            rules=FAILED_TO_BOTH,
            delivery=FAST_RETRIES + "  digest: {wait: 0s}\n",
        )
        latencies: list[float] = []

        def healthy_gets(job: str, since: float) -> None:
            (msg,) = eventually(lambda: arrived(w, "/healthy", job), timeout=5, what=job)
            latencies.append(float(msg["received_at"]) - since)  # type: ignore[arg-type]

        daemon = w.start()
        eventually(lambda: w.status()["watches"][3]["state"] == "running", what="polled")

        w.sink.fail("/broken", status=500, times=None)
        healthy_gets("o1", fail_job(w, "o1"))
        eventually(lambda: "error=500" in failed_sends(w), what="the broken channel's 500")

        w.sink.clear_faults()
        w.sink.fail("/broken", mode="refuse", times=None)
        healthy_gets("o2", fail_job(w, "o2"))
        time.sleep(0.5)  # a few refused attempts
        assert w.stop(daemon) == 0  # a failing channel does not hold up a graceful stop
        w.start()

        w.sink.clear_faults()
        hang = w.sink.fail("/broken", mode="hang", times=None)
        healthy_gets("o3", fail_job(w, "o3"))
        healthy_gets("o4", fail_job(w, "o4"))
        eventually(lambda: hang.hits >= 2, what="attempts on the hanging channel")
        assert not w.messages("/broken")

        w.sink.clear_faults()
        eventually(
            lambda: all(arrived(w, "/broken", job) for job in jobs), timeout=15, what="recovery"
        )
        eventually(lambda: w.pending_deliveries() == 0, what="outbox empty")
        time.sleep(1.0)
        named = [k for m in w.messages("/broken") for k in named_keys(str(m["message"]))]
        assert sorted(named) == sorted(f"ruler-prod/{SITE}/{job}" for job in jobs)  # once each
        assert len(w.messages("/healthy")) == 4
        assert max(latencies) < 1.5, latencies

        errors = failed_sends(w)
        assert "error=500" in errors and "connection error" in errors.lower()
        failures = [e for e in w.logs() if e.get("event") == "delivery failed"]
        assert all(e.get("channel") == "broken" for e in failures)


class TestRetryAfter:
    """429 with Retry-After is obeyed, for the whole channel."""

    def test_no_retry_before_retry_after(self, dworld: DeliveryWorld) -> None:
        """With retries every 100ms, a Retry-After of 2s still holds every message back."""
        w = dworld
        for job in ("r1", "r2"):
            w.ruler.add_job(SITE, job, status="processing")
        w.write_config(
            job_yaml("r1") + job_yaml("r2"),
            channels=f"  hook: {w.sink.apprise_url}\n",
            rules="  - on: [failed]\n    notify: [hook]\n",
            delivery="  retry_initial: 100ms\n  retry_max: 200ms\n  digest: {enabled: false}\n",
        )
        w.start()
        eventually(lambda: w.status()["watches"][1]["state"] == "running", what="polled")
        limited = w.sink.fail("/hook", status=429, retry_after=2, times=1)
        fail_job(w, "r1")
        fail_job(w, "r2")
        hit_at = eventually(lambda: limited.hits and time.time(), what="the 429")
        messages = eventually(lambda: len(w.messages()) == 2 and w.messages(), what="both")
        waited = min(float(m["received_at"]) for m in messages) - hit_at  # type: ignore[arg-type]
        assert waited >= 1.8, waited
        (failed,) = [e for e in w.logs() if e.get("event") == "delivery failed"]
        assert failed["retry_in"] >= 1.9 and "Retry-After: 2" in failed["error"]


class TestGivingUp:
    """After give_up_after a delivery is given up, logged as an error, shown by status."""

    def test_given_up_is_logged_and_listed(self, dworld: DeliveryWorld) -> None:
        """The failing channel's delivery ends given up; status says which, where and why."""
        w = dworld
        secret = "pw-" + "9f8e7d6c5b4a"
        w.ruler.add_job(SITE, "g1", status="processing")
        w.write_config(
            job_yaml("g1", "Payroll export"),
            channels=(
                f"  broken: json://ops:{secret}@127.0.0.1:{w.sink.port}/broken\n"
                f"  healthy: {w.sink.apprise_url_for('/healthy')}\n"
            ),
            rules=FAILED_TO_BOTH,
            delivery="  retry_initial: 200ms\n  retry_max: 400ms\n  give_up_after: 1500ms\n",
        )
        w.sink.fail("/broken", status=503, times=None)
        w.start()
        eventually(lambda: w.status()["watches"][0]["state"] == "running", what="polled")
        fail_job(w, "g1")
        eventually(lambda: w.messages("/healthy"), what="healthy delivery")
        doc = eventually(
            lambda: (d := w.status())["deliveries"].get("given_up") == 1 and d, what="given up"
        )
        assert doc["deliveries"].get("pending", 0) == 0
        (entry,) = doc["given_up"]
        assert entry["key"] == f"ruler-prod/{SITE}/g1" and entry["name"] == "Payroll export"
        assert entry["event"] == "failed" and entry["channel"] == "broken"
        assert entry["attempts"] >= 3 and "error=503" in entry["last_error"]
        assert doc["watches"][0]["deliveries_given_up"] == 1
        table = w.cli("status").stdout
        assert f"ruler-prod/{SITE}/g1" in table
        # one line per channel: its pending and given-up counts, then the service's answer
        (broken,) = [line.split() for line in table.splitlines() if line.startswith("broken ")]
        assert broken[1:3] == ["0", "1"], table
        assert "broken" in table and "error=503" in table
        logged = [e for e in w.logs() if e.get("event") == "delivery given up"]
        assert len(logged) == 1 and logged[0]["level"] == "error"
        everything = w.log.read_text() + json.dumps(doc) + table
        everything += " ".join(str(r) for r in w.query("SELECT * FROM deliveries"))
        assert secret not in everything


class TestStorm:
    """Many events for one channel become a digest (the outbox guarantees hold)."""

    def test_200_failures_within_5s_make_at_most_3_messages_naming_all(
        self, dworld: DeliveryWorld
    ) -> None:
        """200 jobs fail within 5 s: at most 3 messages, every job named, nothing pending."""
        w = dworld
        jobs = [f"storm{n:03d}" for n in range(200)]
        for job in jobs:
            w.ruler.add_job(SITE, job, status="processing")
        w.write_config(
            "".join(job_yaml(job) for job in jobs),
            rules="  - on: [failed]\n    notify: [hook]\n",
            polling="  interval: 300ms\n  max_interval: 1s\n",
            delivery="  digest: {window: 8s}\n",
        )
        w.start()
        eventually(
            lambda: w.query("SELECT count(*) FROM watches WHERE state = 'running'")[0][0] == 200,
            timeout=20,
            what="all running",
        )
        rng = random.Random(4)
        for job in jobs:
            w.ruler.script_job(
                SITE, job, [(rng.uniform(0, 5), {"status": "failed", "failure_reason": "boom"})]
            )
        everyone = {f"ruler-prod/{SITE}/{job}" for job in jobs}

        def all_named() -> bool:
            return everyone <= {k for m in w.messages() for k in named_keys(str(m["message"]))}

        eventually(all_named, timeout=40, what="every job named")
        eventually(lambda: w.pending_deliveries() == 0, what="outbox empty")
        messages = w.messages()
        print(
            f"\nstorm: 200 failures -> {len(messages)} messages: {[m['title'] for m in messages]}"
        )
        assert len(messages) <= 3, [m["title"] for m in messages]
        assert any(re.match(r"❌ \d+ jobs failed", str(m["title"])) for m in messages)
        sent = w.query("SELECT count(*) FROM deliveries WHERE status = 'sent'")[0][0]
        assert sent == 200

    def test_a_failure_storm_does_not_wait_for_the_started_storms_window(
        self, dworld: DeliveryWorld
    ) -> None:
        """60 jobs start (a digest of ``started``), then all fail 3 s later, well within the
        20 s window the started digest opened: the failure digest goes out within
        ``digest.wait`` (+ a poll and a margin), in a window of its own, not at the end of the
        info window. Every event is sent once."""
        w = dworld
        jobs = [f"lane{n:02d}" for n in range(60)]
        for job in jobs:
            w.ruler.add_job(SITE, job, status="processing")
        window, wait = 20.0, 1.0
        w.write_config(
            "".join(job_yaml(job) for job in jobs),
            rules="  - on: [started, failed]\n    notify: [hook]\n",
            polling="  interval: 200ms\n  max_interval: 500ms\n",
            delivery=f"  digest: {{window: {window:g}s, wait: {wait:g}s}}\n",
        )
        w.start()

        def digests(marker: str) -> list[dict[str, object]]:
            return [m for m in w.messages() if str(m["title"]).startswith(marker)]

        (started,) = eventually(lambda: digests("▶️"), timeout=30, what="the started digest")
        assert re.match(r"▶️ 60 jobs started", str(started["title"])), started["title"]
        time.sleep(3.0)  # well inside the 20 s window the started digest opened
        failing_from = time.time()
        for job in jobs:
            w.ruler.set_job(SITE, job, status="failed", failure_reason="boom")
        failing_until = time.time()
        failed = eventually(lambda: digests("❌"), timeout=window + 10, what="the failure digest")
        first = failed[0]
        late = float(first["received_at"]) - failing_until
        info_window_ends = float(started["received_at"]) + window
        print(
            f"\nfailures set in {failing_until - failing_from:.2f}s; first failure message "
            f"{late:.2f}s later; the info window had {info_window_ends - failing_until:.1f}s left"
        )
        # a poll (max_interval) + wait + a margin for a loaded machine; the info window's end
        # is 17 s away, which is when the failures went out before lanes
        assert late < 0.5 + wait + 5.0, late
        assert float(first["received_at"]) < info_window_ends - 5.0
        assert re.match(r"❌ \d+ jobs failed", str(first["title"])), first["title"]
        assert "started" not in str(first["title"])  # a digest of failures alone
        everyone = {f"ruler-prod/{SITE}/{job}" for job in jobs}
        eventually(
            lambda: everyone <= {k for m in digests("❌") for k in named_keys(str(m["message"]))},
            timeout=window + 10,
            what="every failure named",
        )
        eventually(lambda: w.pending_deliveries() == 0, what="outbox empty")
        sent = w.query(
            "SELECT e.kind, count(*) FROM deliveries d JOIN events e ON e.id = d.event_id"
            " WHERE d.status = 'sent' GROUP BY e.kind ORDER BY e.kind"
        )
        assert sent == [("failed", 60), ("started", 60)]

    def test_a_digest_killed_mid_send_is_sent_again_whole(self, dworld: DeliveryWorld) -> None:
        """SIGKILL while a digest is on the wire: after restart it goes out again, complete."""
        w = dworld
        jobs = [f"d{n}" for n in range(12)]
        for job in jobs:
            w.ruler.add_job(SITE, job, status="processing")
        w.write_config(
            "".join(job_yaml(job) for job in jobs),
            rules="  - on: [failed]\n    notify: [hook]\n",
            delivery="  timeout: 10s\n",
        )
        daemon = w.start()
        eventually(
            lambda: w.query("SELECT count(*) FROM watches WHERE state = 'running'")[0][0] == 12,
            what="all running",
        )
        w.sink.answer(mode="delay", delay=3.0, times=1)  # recorded at once, answered late
        for job in jobs:
            fail_job(w, job)
        (on_the_wire,) = eventually(lambda: w.messages(), what="the digest on the wire")
        w.kill(daemon)
        # nothing was marked sent without an answer
        assert w.query("SELECT count(*) FROM deliveries WHERE status = 'sent'")[0][0] == 0
        w.start()
        eventually(
            lambda: w.query("SELECT count(*) FROM deliveries WHERE status = 'sent'")[0][0] == 12,
            what="all sent",
        )
        time.sleep(1.0)
        first_keys = named_keys(str(on_the_wire["message"]))
        later = [named_keys(str(m["message"])) for m in w.messages()[1:]]
        assert len(first_keys) > 1
        assert first_keys in later  # the interrupted digest went out again, whole
        assert set().union(*later) == {f"ruler-prod/{SITE}/{job}" for job in jobs}
        assert sum(len(keys) for keys in later) == 12  # and nothing else twice


class TestTemplatesAtSendTime:
    """Templates chosen per rule and per channel, as the daemon sends."""

    def test_rule_template_wins_over_channel_template(self, dworld: DeliveryWorld) -> None:
        """A rule's template for its events; the channel's for the rest."""
        w = dworld
        w.ruler.add_job(SITE, "t1", status="processing")
        w.write_config(
            job_yaml("t1", "Nightly"),
            channels=(
                f"  hook:\n    url: {w.sink.apprise_url}\n"
                "    template:\n      title: 'chan {{ event }} {{ name }}'\n"
            ),
            rules=(
                "  - on: [failed]\n    notify: [hook]\n    template:\n"
                "      title: 'rule {{ marker }} {{ name }}'\n"
                "      body: |\n        {{ name }} failed: {{ reason }}\n        {{ rows }}\n"
                "  - on: [started]\n    notify: [hook]\n"
            ),
            delivery="  digest: {enabled: false}\n",
        )
        w.start()
        eventually(lambda: w.messages(), what="started")
        fail_job(w, "t1")
        started, failed = eventually(lambda: len(w.messages()) == 2 and w.messages())
        assert started["title"] == "chan started Nightly"
        assert str(started["message"]).startswith(f"Job: ruler-prod/{SITE}/t1")
        assert failed["title"] == "rule ❌ Nightly"
        assert failed["message"] == "Nightly failed: t1 broke\n0 succeeded, 0 failed of 100"


T0 = 1_700_000_000.0


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated store on SQLite and on PostgreSQL (the `db_url` fixture)."""
    s = Store(db_url)
    s.migrate()
    yield s
    s.close()


def queue(store: Store, job: str, channels: tuple[str, ...], at: float = T0) -> None:
    """One watch with one failed event for `channels`."""
    store.add_watch(WatchSpec(source="ruler-prod", job_id=job, site="s1", name=job.upper()), at)
    (watch,) = [w for w in store.claim_due("poller", at, 100, 30) if w.job_id == job]
    store.write_back(
        "poller",
        [
            WriteBack(
                watch=watch,
                progress=watch.progress,
                next_poll_at=at + 30,
                polled_at=at,
                events=[EventRecord(Event.FAILED, at, {"key": watch.key}, channels)],
            )
        ],
    )


class TestOutboxQueries:
    """The store's per-channel outbox queries, on SQLite and PostgreSQL."""

    def test_ready_waits_for_first_attempts_only(self, store: Store) -> None:
        """A first attempt is ready after `wait`; a retry as soon as it is due."""
        queue(store, "a", ("slack",))
        assert store.ready_channels(T0 + 1, wait=2) == []
        assert store.ready_channels(T0 + 2, wait=2) == ["slack"]
        assert store.next_delivery_ready_at(2.0) == T0 + 2
        (d,) = store.claim_deliveries("me", T0 + 2, 10, 30, channel="slack")
        assert store.ready_channels(T0 + 3, wait=0) == []  # leased
        assert store.next_delivery_ready_at(2.0, now=T0 + 3) is None
        store.finish_deliveries("me", [DeliveryOutcome(d.id, False, "x", T0 + 10)], T0 + 3)
        assert store.ready_channels(T0 + 9, wait=100) == []
        assert store.ready_channels(T0 + 10, wait=100) == ["slack"]
        assert store.next_delivery_ready_at(100.0) == T0 + 10

    def test_claims_one_channel_in_order_and_releases_untried(self, store: Store) -> None:
        """A channel's claim leaves other channels alone; releasing counts no attempt."""
        queue(store, "a", ("slack", "mail"))
        queue(store, "b", ("slack",))
        claimed = store.claim_deliveries("me", T0, 10, 30, channel="slack")
        assert [d.payload["key"] for d in claimed] == ["ruler-prod/s1/a", "ruler-prod/s1/b"]
        assert store.ready_channels(T0, wait=0) == ["mail"]
        assert store.next_delivery_ready_at(0.0, exclude=["mail"], now=T0) is None
        assert store.release_deliveries("other", [d.id for d in claimed], T0 + 50) == 0
        assert store.release_deliveries("me", [d.id for d in claimed], T0 + 50) == 2
        again = store.claim_deliveries("me", T0 + 50, 1, 30, channel="slack")
        assert [(d.payload["key"], d.attempts) for d in again] == [("ruler-prod/s1/a", 0)]

    def test_renew_answers_only_for_rows_still_held(self, store: Store) -> None:
        """After a lease ran out and another owner took the rows, renewing them returns none."""
        queue(store, "a", ("slack",))
        queue(store, "b", ("slack",))
        a, b = store.claim_deliveries("frozen", T0, 10, 30, channel="slack")
        assert store.renew_deliveries("frozen", [a.id, b.id], T0 + 60) == {a.id, b.id}
        assert store.claim_deliveries("other", T0 + 59, 10, 30, channel="slack") == []
        (taken,) = store.claim_deliveries("other", T0 + 61, 1, 30, channel="slack")
        assert taken.id == a.id
        store.finish_deliveries("other", [DeliveryOutcome(a.id, True)], T0 + 62)
        assert store.renew_deliveries("frozen", [a.id, b.id], T0 + 90) == {b.id}
        assert store.renew_deliveries("other", [a.id, b.id], T0 + 90) == set()

    def test_sent_times_and_undelivered(self, store: Store) -> None:
        """What was sent when; what is pending or given up, per watch and newest first."""
        queue(store, "a", ("slack", "mail"))
        queue(store, "b", ("slack",))
        slack = store.claim_deliveries("me", T0, 10, 30, channel="slack")
        (mail,) = store.claim_deliveries("me", T0, 10, 30, channel="mail")
        store.finish_deliveries("me", [DeliveryOutcome(d.id, True) for d in slack], T0 + 5)
        store.finish_deliveries("me", [DeliveryOutcome(mail.id, False, "HTTP 500")], T0 + 6)
        assert store.sent_times("slack", T0) == [T0 + 5, T0 + 5]
        assert store.sent_times("slack", T0 + 6) == []
        # a lane's window after a restart: only its own events count
        assert store.sent_times("slack", T0, [Event.FAILED, Event.CANCELLED]) == [T0 + 5] * 2
        assert store.sent_times("slack", T0, [Event.STARTED]) == []
        (given_up,) = store.undelivered("given_up")
        assert (given_up.key, given_up.name, given_up.event, given_up.channel) == (
            "ruler-prod/s1/a",
            "A",
            "failed",
            "mail",
        )
        assert given_up.attempts == 1 and given_up.last_error == "HTTP 500"
        assert store.undelivered("pending") == []
        assert store.undelivered_by_watch() == {"ruler-prod/s1/a": {"given_up": 1}}
