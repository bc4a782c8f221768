"""Deliveries queued for a channel survive a reload that renames or removes the channel."""

from __future__ import annotations

import json
import signal
import subprocess
from typing import Any

from world import SITE, World, eventually, job_yaml

#: no digests and quick retries, so that each event is one delivery retried within a second
DELIVERY = "delivery:\n  digest: {enabled: false}\n  retry_initial: 100ms\n  retry_max: 300ms"


def undelivered(world: World) -> dict[str, list[dict[str, Any]]]:
    """`poller status --json`: the pending (``undelivered``) and ``given_up`` deliveries."""
    doc = json.loads(world.cli("status", "--json").stdout)
    return {"pending": doc["undelivered"], "given_up": doc["given_up"]}


def reload(world: World, daemon: subprocess.Popen[bytes], channel: str, url: str) -> None:
    """Rewrite the config's one channel as `channel: url` (rules follow it), SIGHUP, and wait
    until the daemon has reloaded."""
    world.write_config(job_yaml("a"), extra=DELIVERY)
    text = world.config.read_text()
    text = text.replace(f"  hook: {world.sink.apprise_url}", f"  {channel}: {url}")
    world.config.write_text(text.replace("notify: [hook]", f"notify: [{channel}]"))
    before = world.log.read_bytes().count(b'"reloaded"')
    daemon.send_signal(signal.SIGHUP)
    eventually(lambda: world.log.read_bytes().count(b'"reloaded"') > before, what="the reload")


class TestChannelReload:
    """A renamed channel keeps its queue; a removed one's queue waits for it to come back."""

    def test_rename_then_remove_then_restore(self, world: World) -> None:
        """Events queue while the sink is down; the channel is renamed (same URL), then
        removed, then restored: nothing is given up, and every message arrives."""
        world.ruler.add_job(SITE, "a", status="processing")
        world.write_config(job_yaml("a"), extra=DELIVERY)
        world.sink.answer(503)  # down until further notice
        daemon = world.start()
        # seen running first, so that a "started" event is queued before the job ends
        eventually(lambda: world.status()[f"ruler-prod/{SITE}/a"]["state"] == "running")
        world.ruler.set_job(SITE, "a", status="complete")
        eventually(
            lambda: (
                {d["event"] for d in undelivered(world)["pending"] if d["attempts"]}
                >= {"started", "succeeded"}
            ),
            what="both events failing",
            timeout=30,
        )
        reload(world, daemon, "renamed", world.sink.apprise_url)
        queue = eventually(
            lambda: (
                (q := undelivered(world))["pending"]
                and all(d["channel"] == "renamed" for d in q["pending"])
                and q
            ),
            what="the queue moved to the new name",
            timeout=30,
        )
        assert queue["given_up"] == []
        # The channel goes away: its deliveries are kept and say why.
        reload(world, daemon, "elsewhere", world.sink.apprise_url_for("/elsewhere"))
        queue = eventually(
            lambda: (
                (q := undelivered(world))["pending"]
                and all("not in the config" in (d["last_error"] or "") for d in q["pending"])
                and q
            ),
            what="the queue kept for the missing channel",
            timeout=30,
        )
        assert queue["given_up"] == []
        assert {d["channel"] for d in queue["pending"]} == {"renamed"}
        # It comes back (and the sink is up): the kept messages go out at once.
        world.sink.answer()
        reload(world, daemon, "renamed", world.sink.apprise_url)
        eventually(lambda: world.messages("success"), timeout=30, what="the success message")
        eventually(lambda: undelivered(world)["pending"] == [], timeout=30, what="an empty queue")
        assert undelivered(world)["given_up"] == []
        assert world.stop(daemon) == 0


def test_channel_renames_match_by_url() -> None:
    """A channel gone from the config follows a name with its URL, preferring a new name."""
    from poller.engine.delivery import channel_renames

    old = {"a": "json://x", "b": "json://y", "c": "json://z"}
    new = {"b": "json://x", "d": "json://x", "e": "json://y", "c": "json://other"}
    assert channel_renames(old, new) == {"a": "d"}
    assert channel_renames({"a": "json://x"}, {"b": "json://x"}) == {"a": "b"}
    assert channel_renames({"a": "json://x"}, {"a": "json://y"}) == {}
