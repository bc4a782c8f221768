"""Hostile answers: compressed bombs are refused within the cap, and an answer that Python's
JSON parser cannot read (a 5,001-digit integer, 100,000 nested lists) costs only the job it is
about, in every adapter and in every answer about many jobs."""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import sqlite3
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from world import SITE, World, eventually, job_yaml

from poller.config import JobConfig
from poller.models import JobRef, PollFailure, PollOutcome, PollResult, State
from poller.sources import Source, lenient
from poller.sources.http import HttpSource
from poller.sources.http.adapter import HttpAdapter
from poller.sources.immuta import ImmutaSource
from poller.sources.immuta.adapter import ImmutaAdapter
from poller.sources.ruler import RulerSource
from poller.sources.ruler.adapter import RulerAdapter
from poller.testing import HttpServer, ImmutaSim, JsonJobSim, RulerSim, SimThread

TOKEN = "hostile-token-4711"
#: An integer JSON allows and Python's parser refuses (more than 4,300 digits).
LONG_NUMBER = "9" * 5001
#: Nesting JSON allows and Python's parser refuses (RecursionError).
DEEP = "[" * 100_000 + "]" * 100_000


def bomb(decoded_size: int, coding: str = "gzip") -> bytes:
    """A valid JSON status answer padded with whitespace to `decoded_size` bytes, compressed
    (to well under a hundredth of that), made without holding it whole."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}[coding]
    compressor = zlib.compressobj(1, zlib.DEFLATED, wbits)
    doc = b'{"status": "Complete", "totalRows": 1, "processedRows": 1'
    parts = [compressor.compress(doc)]
    pad, left = b" " * (1 << 20), decoded_size - len(doc) - 1
    while left > 0:
        parts.append(compressor.compress(pad[:left]))
        left -= len(pad)
    parts += (compressor.compress(b"}"), compressor.flush())
    return b"".join(parts)


@pytest.fixture(scope="module")
def ruler() -> Iterator[RulerSim]:
    server = RulerSim(token=TOKEN)
    with SimThread(server):
        yield server


@pytest.fixture(scope="module")
def immuta() -> Iterator[ImmutaSim]:
    server = ImmutaSim(TOKEN)
    with SimThread(server):
        yield server


@pytest.fixture(scope="module")
def json_api() -> Iterator[JsonJobSim]:
    server = JsonJobSim(TOKEN)
    with SimThread(server):
        yield server


@pytest.fixture(autouse=True)
def _clean(ruler: RulerSim, immuta: ImmutaSim, json_api: JsonJobSim) -> None:
    for server in (ruler, immuta, json_api):
        server.clear_faults()


def ruler_source(sim: RulerSim) -> RulerSource:
    return RulerSource(type="ruler", base_url=sim.base_url, token=SecretStr(TOKEN))


def immuta_source(sim: ImmutaSim, **kw: Any) -> ImmutaSource:
    return ImmutaSource(base_url=sim.base_url, token=SecretStr(TOKEN), **kw)


def http_source(sim: JsonJobSim) -> HttpSource:
    return HttpSource(
        url=sim.base_url + "/jobs/{id}",
        headers={"Authorization": SecretStr(f"Bearer {TOKEN}")},
        state="data.status",
        progress="data.percent",
        detail={"message": "data.message"},
        states={"RUNNING": "running", "DONE": "succeeded"},
    )


def ref(job_id: str, site: str | None = None) -> JobRef:
    return JobRef(key=f"s/{job_id}", source="s", job_id=job_id, site=site)


def poll(adapter: Source, refs: Sequence[JobRef], rounds: int = 1) -> dict[str, PollOutcome]:
    """Poll `refs` through `adapter` `rounds` times; the last outcomes by job id."""

    async def go() -> dict[str, PollOutcome]:
        try:
            for _ in range(rounds):
                outcomes = await adapter.poll(refs)
            return {r.job_id: outcomes[r.key] for r in refs}
        finally:
            await adapter.aclose()

    return asyncio.run(go())


def assert_bad_answer(outcome: PollOutcome, *words: str) -> None:
    assert isinstance(outcome, PollFailure), outcome
    assert outcome.kind == "bad_answer" and not outcome.transient, outcome
    for word in words:
        assert word in outcome.message, outcome


# -- item 1: the body cap applies to the decoded bytes ------------------------------------


class TestCompressedAnswers:
    """Every adapter decodes gzip and deflate itself, and stops at its cap."""

    @pytest.mark.parametrize("coding", ["gzip", "deflate"])
    def test_a_bomb_past_the_ruler_cap_is_too_big(self, ruler: RulerSim, coding: str) -> None:
        """9 MiB decoded (the Ruler cap is 8 MiB) from a few KB sent: refused, not read."""
        ruler.add_job(SITE, "bomb", status="processing")
        ruler.fail(
            "/bomb/status",
            status=200,
            body=bomb(9 << 20, coding),
            headers={"Content-Encoding": coding},
        )
        outcome = poll(RulerAdapter(ruler_source(ruler)), [ref("bomb", SITE)])["bomb"]
        assert_bad_answer(outcome, "too big")

    def test_a_bomb_past_the_immuta_cap_is_too_big(self, immuta: ImmutaSim) -> None:
        """The Immuta cap is 1 MiB, decoded: a 2 MiB statuses answer from 2 KB is refused."""
        immuta.add_job("a", state="active")
        plain = json.dumps({"a": {"state": "completed", "pad": " " * (2 << 20)}}).encode()
        immuta.fail(
            "/jobs/statuses",
            status=200,
            body=gzip.compress(plain),
            headers={"Content-Encoding": "gzip"},
        )
        outcome = poll(ImmutaAdapter(immuta_source(immuta)), [ref("a")])["a"]
        assert_bad_answer(outcome, "too big")

    def test_a_bomb_past_the_http_cap_is_too_big(self, json_api: JsonJobSim) -> None:
        """The generic http source's cap (1 MiB) holds for a gzip answer too."""
        json_api.add_job("a", status="RUNNING")
        body = json.dumps({"data": {"status": "DONE", "message": "x" * (2 << 20)}}).encode()
        json_api.fail(
            "/jobs/a", status=200, body=gzip.compress(body), headers={"Content-Encoding": "gzip"}
        )
        outcome = poll(HttpAdapter(http_source(json_api)), [ref("a")])["a"]
        assert_bad_answer(outcome, "too big")

    @pytest.mark.parametrize("coding", ["gzip", "deflate", "x-gzip", "identity"])
    def test_small_compressed_answers_are_read(self, json_api: JsonJobSim, coding: str) -> None:
        """Under the cap, a compressed answer reads like a plain one."""
        json_api.add_job("a", status="RUNNING")
        plain = json.dumps({"data": {"status": "DONE", "percent": 100}}).encode()
        body = {
            "gzip": gzip.compress(plain),
            "x-gzip": gzip.compress(plain),
            "deflate": zlib.compress(plain),
            "identity": plain,
        }[coding]
        json_api.fail("/jobs/a", status=200, body=body, headers={"Content-Encoding": coding})
        outcome = poll(HttpAdapter(http_source(json_api)), [ref("a")])["a"]
        assert isinstance(outcome, PollResult) and outcome.state == State.SUCCEEDED, outcome

    @pytest.mark.parametrize(
        ("coding", "body", "words"),
        [
            ("br", b"\x1b\x03\x00\xf8\xa5@\x02", ("unsupported encoding", "br")),
            ("gzip", b"not gzip at all", ("not valid gzip",)),
            ("gzip", gzip.compress(b'{"data": {"status": "DONE"}}')[:-12], ("truncated",)),
        ],
    )
    def test_undecodable_answers_are_bad_answers(
        self, json_api: JsonJobSim, coding: str, body: bytes, words: tuple[str, ...]
    ) -> None:
        """An encoding poller did not offer, or a broken stream: that job's bad_answer."""
        json_api.add_job("a", status="RUNNING")
        json_api.add_job("b", status="RUNNING")
        json_api.fail("/jobs/a", status=200, body=body, headers={"Content-Encoding": coding})
        outcomes = poll(HttpAdapter(http_source(json_api)), [ref("a"), ref("b")])
        assert_bad_answer(outcomes["a"], *words)
        assert isinstance(outcomes["b"], PollResult), outcomes["b"]


def _peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


#: What the daemon tests' gzip bomb expands to (from under 2 MiB sent).
BOMB = 384 << 20


@functools.cache
def _big_bomb() -> bytes:
    return bomb(BOMB)  # about a second to make: once for every test


def serve_bomb(server: HttpServer, path: str) -> None:
    """Make `server` answer every request to `path` with the `BOMB`, gzip-encoded."""
    body = _big_bomb()
    server.fail(path, status=200, body=body, headers={"Content-Encoding": "gzip"}, times=None)


def test_daemon_refuses_a_gzip_bomb_within_its_memory_bound(world: World) -> None:
    """`poller run` against a 384 MiB gzip bomb (under 2 MiB sent) on every poll: the
    watch records bad_answer "too big", is never taken for a finished job, and the daemon's
    peak memory stays far below what the bomb expands to."""
    world.ruler.add_job(SITE, "bomb", status="processing")
    world.ruler.add_job(SITE, "fine", status="processing")
    serve_bomb(world.ruler, "/bomb/status")
    world.write_config(jobs=job_yaml("bomb") + job_yaml("fine"))
    daemon = world.start()

    def polled_often() -> dict[str, Any] | None:
        watch = world.status()[f"ruler-prod/{SITE}/bomb"]
        return watch if watch["error_count"] >= 2 or watch["terminal"] else None

    watch = eventually(polled_often, timeout=30, what="several polls of the bomb")
    assert watch["state"] != "succeeded" and not watch["terminal"], watch
    assert watch["last_error"].startswith("bad_answer: answer too big"), watch
    fine = world.status()[f"ruler-prod/{SITE}/fine"]
    assert fine["last_error"] is None and fine["state"] == "running", fine
    peak = _peak_rss(daemon.pid)
    lines = world.log.read_text().splitlines()
    started = next(json.loads(line) for line in lines if '"event": "started"' in line)
    # the bound it announces: one Ruler source, 8 answers of at most 8 MiB in flight
    assert started["answer_memory_mib"] == 64
    # the bound is the Ruler cap (8 MiB) per request in flight over the daemon's own ~110 MiB,
    # far below the expansion
    assert peak < BOMB // 2, f"peak RSS {peak >> 20} MiB"
    assert daemon.poll() is None


def test_daemon_reads_a_channels_gzip_bomb_within_its_memory_bound(world: World) -> None:
    """A channel that answers each message with a 384 MiB gzip bomb: the message counts as
    delivered and the daemon reads no more than a MiB of that answer."""
    world.ruler.add_job(SITE, "done", status="complete")
    serve_bomb(world.sink, "/hook")
    world.write_config(jobs=job_yaml("done"))
    daemon = world.start()
    eventually(lambda: world.messages(), what="the message")
    eventually(
        lambda: world.status()["_deliveries"].get("sent"), what="the delivery recorded as sent"
    )
    peak = _peak_rss(daemon.pid)
    assert peak < BOMB // 2, f"peak RSS {peak >> 20} MiB"
    assert daemon.poll() is None


# -- item 2: what Python's JSON parser refuses costs one job -------------------------------


def _status_doc(extra: str) -> bytes:
    return ('{"status": "Processing", "totalRows": 10, "x": ' + extra + "}").encode()


class TestUnreadableAnswers:
    """A value JSON allows and Python cannot read: a bad_answer for its job, in every adapter."""

    @pytest.mark.parametrize("value", [LONG_NUMBER, DEEP], ids=["long-number", "deep"])
    def test_ruler_status(self, ruler: RulerSim, value: str) -> None:
        """One job's status answer is unreadable; the other jobs of the poll are not touched."""
        for job_id in ("good", "bad"):
            ruler.add_job(SITE, job_id, status="processing")
        ruler.fail("/bad/status", status=200, body=_status_doc(value), times=None)
        outcomes = poll(RulerAdapter(ruler_source(ruler)), [ref("good", SITE), ref("bad", SITE)])
        assert_bad_answer(outcomes["bad"], "cannot be read")
        assert isinstance(outcomes["good"], PollResult), outcomes["good"]

    @pytest.mark.parametrize("value", [LONG_NUMBER, DEEP], ids=["long-number", "deep"])
    def test_one_ruler_list_entry_costs_that_entry(self, ruler: RulerSim, value: str) -> None:
        """A site list with one unreadable entry: the others are read from it, and that job
        is asked for on its own (here its status is unreadable too: bad_answer)."""
        for job_id in ("l1", "l2", "lbad"):
            ruler.add_job(SITE, job_id, status="processing")
        entries = ",".join(
            f'{{"jobId": "{j}", "status": "Processing", "percentageProgress": 10}}'
            for j in ("l1", "l2")
        )
        bad_entry = '{"jobId": "lbad", "status": "Processing", "percentageProgress": ' + value
        listing = ('{"jobs": [' + entries + "," + bad_entry + "}]}").encode()
        refs = [ref(j, SITE) for j in ("l1", "l2", "lbad")]

        async def go() -> tuple[dict[str, PollOutcome], int]:
            adapter = RulerAdapter(ruler_source(ruler))
            try:
                await adapter.poll(refs)  # the first poll asks every job's status
                ruler.fail("/batch/jobs", status=200, body=listing)
                ruler.fail("/lbad/status", status=200, body=_status_doc(value))
                before = ruler.requests["status"]
                outcomes = await adapter.poll(refs)
                return {r.job_id: outcomes[r.key] for r in refs}, ruler.requests["status"] - before
            finally:
                await adapter.aclose()

        outcomes, status_requests = asyncio.run(go())
        for job_id in ("l1", "l2"):
            result = outcomes[job_id]
            assert isinstance(result, PollResult) and result.progress == 10, result
        assert_bad_answer(outcomes["lbad"], "cannot be read")
        assert status_requests == 1  # only the job whose entry could not be read

    def test_one_bad_failure_row_costs_that_row(self, ruler: RulerSim) -> None:
        """A partial job's failing rows, one of them unreadable: the others are shown."""
        ruler.add_job(SITE, "part", status="partialcomplete")
        rows = (
            '{"failures": [{"rowNumber": 1, "errorMessage": "bad date"}, '
            '{"rowNumber": ' + LONG_NUMBER + ', "errorMessage": "x"}, '
            '{"rowNumber": 3, "errorMessage": ' + DEEP + "}, "
            '{"rowNumber": 4, "errorMessage": "no such customer"}]}'
        )
        ruler.fail("/part/failures", status=200, body=rows.encode())
        outcome = poll(RulerAdapter(ruler_source(ruler)), [ref("part", SITE)])["part"]
        assert isinstance(outcome, PollResult) and outcome.state == State.PARTIAL, outcome
        assert outcome.details["failed_rows"] == [
            {"row": 1, "message": "bad date"},
            {"row": 4, "message": "no such customer"},
        ]

    def test_one_immuta_entry_costs_that_job(self, immuta: ImmutaSim) -> None:
        """One statuses answer for four jobs, two entries unreadable: two bad_answers."""
        for job_id in ("i1", "i2", "ilong", "ideep"):
            immuta.add_job(job_id, state="active")
        body = (
            '{"i1": {"state": "completed"}, "i2": {"state": "active", "progress": 5}, '
            '"ilong": {"state": "completed", "retryCount": ' + LONG_NUMBER + "}, "
            '"ideep": {"state": "completed", "output": ' + DEEP + "}}"
        )
        immuta.fail("/jobs/statuses", status=200, body=body.encode())
        outcomes = poll(
            ImmutaAdapter(immuta_source(immuta)), [ref(j) for j in ("i1", "i2", "ilong", "ideep")]
        )
        i1, i2 = outcomes["i1"], outcomes["i2"]
        assert isinstance(i1, PollResult) and i1.state == State.SUCCEEDED, i1
        assert isinstance(i2, PollResult) and i2.progress == 5, i2
        assert_bad_answer(outcomes["ilong"], "cannot be read", "number")
        assert_bad_answer(outcomes["ideep"], "cannot be read", "nested")

    def test_one_immuta_list_item_costs_that_job(self, immuta: ImmutaSim) -> None:
        """The list form of a statuses answer: an item whose id cannot be read is not
        mentioned; the others are read."""
        for job_id in ("k1", "k2"):
            immuta.add_job(job_id, state="active")
        body = (
            '[{"id": "k1", "state": "completed"}, {"id": ' + LONG_NUMBER + ', "state": "x"}, '
            '{"id": "k2", "state": "failed", "output": {"message": ' + DEEP + "}}]"
        )
        immuta.fail("/jobs/statuses", status=200, body=body.encode())
        outcomes = poll(ImmutaAdapter(immuta_source(immuta)), [ref("k1"), ref("k2")])
        k1 = outcomes["k1"]
        assert isinstance(k1, PollResult) and k1.state == State.SUCCEEDED, k1
        assert_bad_answer(outcomes["k2"], "nested")

    def test_immuta_discovery_skips_an_unreadable_job(self, immuta: ImmutaSim) -> None:
        """A page of a bulk with one unreadable job: the others are found."""
        page = (
            '{"jobs": [{"id": "d1"}, {"id": ' + LONG_NUMBER + '}, {"id": "d2", "x": ' + DEEP + "}]"
            ', "next": null}'
        )
        immuta.fail("/jobs", status=200, body=page.encode())

        async def go() -> dict[str, Any]:
            adapter = ImmutaAdapter(immuta_source(immuta))
            try:
                return await adapter.discover(JobConfig(source="im", bulk="b1"))
            finally:
                await adapter.aclose()

        # found, without a state as listed (none was given), so never taken for ended
        assert asyncio.run(go()) == {"d1": None, "d2": None}

    @pytest.mark.parametrize("value", [LONG_NUMBER, DEEP], ids=["long-number", "deep"])
    def test_http_source(self, json_api: JsonJobSim, value: str) -> None:
        """The generic http source: the unreadable job alone is a bad_answer."""
        json_api.add_job("good", status="RUNNING")
        json_api.add_job("bad", status="RUNNING")
        body = '{"data": {"status": "DONE", "percent": ' + value + "}}"
        json_api.fail("/jobs/bad", status=200, body=body.encode(), times=None)
        outcomes = poll(HttpAdapter(http_source(json_api)), [ref("good"), ref("bad")])
        assert_bad_answer(outcomes["bad"], "cannot be read")
        assert isinstance(outcomes["good"], PollResult), outcomes["good"]


def test_text_of_a_value_nested_near_the_stack_limit_does_not_raise() -> None:
    """`lenient.text` promises never to raise: a value Python parsed (nesting just under its
    limit) but cannot print again from deeper in the stack is shown as such."""
    value = json.loads("[" * 900 + "]" * 900)

    def deeper(levels: int) -> str | None:
        return deeper(levels - 1) if levels else lenient.text(value)

    assert deeper(300) == "[nested too deep to show]"


def test_daemon_records_bad_answer_for_that_job_alone(world: World) -> None:
    """`poller run`: two jobs polled in one group, one answering a 5,001-digit number. That
    watch records bad_answer; the other is polled as usual and nobody is told it is
    unreachable."""
    for job_id in ("ok", "huge", "nested"):
        world.ruler.add_job(SITE, job_id, status="processing")
    world.ruler.fail("/huge/status", status=200, body=_status_doc(LONG_NUMBER), times=None)
    world.ruler.fail("/nested/status", status=200, body=_status_doc(DEEP), times=None)
    world.write_config(
        jobs=job_yaml("ok") + job_yaml("huge") + job_yaml("nested"),
        extra="  error_after: 1s\n",  # under polling: unreachable after a second of errors
    )
    text = world.config.read_text().replace("started]", "started, unreachable]", 1)
    world.config.write_text(text)
    daemon = world.start()

    def polled() -> dict[str, Any] | None:
        status = world.status()
        watches = {k.split("/")[-1]: w for k, w in status.items() if "/" in k}
        done = all(watches[j]["unreachable"] for j in ("huge", "nested"))
        return watches if done else None

    watches = eventually(polled, timeout=30, what="the bad watches unreachable")
    assert watches["huge"]["last_error"].startswith("bad_answer: answer cannot be read")
    assert watches["nested"]["last_error"].startswith("bad_answer: answer cannot be read")
    assert watches["ok"]["last_error"] is None and watches["ok"]["error_count"] == 0
    assert watches["ok"]["state"] == "running"
    assert '"internal' not in world.log.read_text()

    def told() -> list[str]:
        titles = [m["title"] for m in world.messages() if "cannot be reached" in m["title"]]
        return titles if len(titles) >= 2 else []

    # the two bad watches are reported (so the route works); the healthy one is not
    titles = eventually(told, what="the bad watches reported unreachable")
    told_about = sorted(t.split()[1] for t in titles)
    assert told_about == [f"ruler-prod/{SITE}/huge", f"ruler-prod/{SITE}/nested"]
    assert daemon.poll() is None


def test_wait_command_shows_an_unreadable_answer_and_goes_on(world: World) -> None:
    """`poller wait`: an answer Python cannot parse is shown as a poll error, and the next
    poll sees the job end (exit 0), instead of a traceback."""
    world.ruler.add_job(SITE, "w", status="complete")
    world.ruler.fail("/w/status", status=200, body=_status_doc(DEEP))
    result = world.cli("wait", "ruler-prod", "w", "--site", SITE, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "poll error: bad_answer: answer cannot be read" in result.stdout


def test_daemon_stores_lone_surrogates_on_both_databases(world: World, db_url: str) -> None:
    """Valid JSON that no database driver can encode (a lone UTF-16 surrogate, escaped or as
    raw bytes) in one job's answer: stored as U+FFFD, and the watches written back with it in
    one group commit are not lost."""
    world.database = db_url
    world.ruler.add_job(SITE, "ok", status="processing")
    world.ruler.add_job(SITE, "odd", status="processing")
    body = (
        b'{"status": "Processing\\ud800", "failureReason": "x\xed\xa0\x80", "jobType": "\\udc00"}'
    )
    world.ruler.fail("/odd/status", status=200, body=body, times=None)
    world.write_config(jobs=job_yaml("ok") + job_yaml("odd"))
    world.start()

    def polled() -> dict[str, Any] | None:
        watches = {k.split("/")[-1]: w for k, w in world.status().items() if "/" in k}
        return watches if all(w["last_poll_at"] for w in watches.values()) else None

    watches = eventually(polled, what="both watches written back")
    assert watches["ok"]["state"] == "running"
    odd = watches["odd"]
    assert odd["remote_status"] == "Processing\ufffd"
    assert odd["details"]["failure_reason"] == "x\ufffd"
    assert odd["details"]["job_type"] == "\ufffd"


def test_overrides_stored_as_text_never_stop_a_watch(world: World) -> None:
    """A watch whose stored overrides another version wrote as text: the value is ignored
    (its default timing is used), and it and the watch polled with it go on being polled."""
    for job_id in ("plain", "odd"):
        world.ruler.add_job(SITE, job_id, status="processing")
    world.write_config(jobs=job_yaml("plain") + job_yaml("odd"))
    world.start()
    eventually(lambda: world.status()[f"ruler-prod/{SITE}/odd"]["last_poll_at"], what="a poll")
    with sqlite3.connect(world.database.removeprefix("sqlite:///")) as db:
        db.execute(
            "UPDATE watches SET overrides = ? WHERE key = ?",
            ('{"interval": "soon"}', f"ruler-prod/{SITE}/odd"),
        )
    before = {k: w["last_poll_at"] for k, w in world.status().items() if "/" in k}

    def recorded() -> dict[str, Any] | None:
        watches = {k: w for k, w in world.status().items() if "/" in k}
        polled_again = all(w["last_poll_at"] > before[k] for k, w in watches.items())
        return watches if polled_again else None

    watches = eventually(recorded, what="both watches polled again")
    for watch in watches.values():
        assert watch["last_error"] is None and watch["state"] == "running"


# -- the API's own words after an error status ---------------------------------------------

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


class TestErrorWords:
    """What an error answer says in its own words follows its status, in quotes: one line, no
    terminal escapes or controls, at most 200 characters, the request's token masked; HTML,
    dumps and bare reason phrases add nothing, and the category is the status's."""

    @pytest.mark.parametrize(
        ("status", "body", "content_type", "kind", "message"),
        [
            (
                401,
                {"message": "\x1b[2J\x1b[31mno\x1b[0m\nway\r\n\x00\u202eout\x1b]0;owned\x07"},
                _JSON,
                "auth",
                'HTTP 401: credentials refused; the API says: "no way out"',
            ),
            (
                403,
                {"detail": f"token Bearer {TOKEN} is revoked (hostile-tok\x1b[0men-4711)"},
                "application/problem+json",
                "auth",
                'HTTP 403: credentials refused; the API says: "token *** is revoked (***)"',
            ),
            (404, {"detail": "Not Found"}, _JSON, "not_found", "HTTP 404: job not found"),
            (
                422,
                {"detail": [{"loc": ["body"], "msg": "field required", "type": "missing"}]},
                _JSON,
                "http",
                'HTTP 422; the API says: "field required"',
            ),
            (
                400,
                {"error": {"code": 3, "message": "bad id"}, "title": "later"},
                _JSON,
                "http",
                'HTTP 400; the API says: "bad id"',
            ),
            (429, "slow down", _TEXT, "rate_limited", 'HTTP 429; the API says: "slow down"'),
            (
                502,
                "<html><h1>502 Bad Gateway</h1>nginx</html>",
                "text/html",
                "server_error",
                "HTTP 502",
            ),
            (403, "<html>sign in</html>", _TEXT, "auth", "HTTP 403: credentials refused"),
            (500, "Traceback (most recent call last):\n" * 100, _TEXT, "server_error", "HTTP 500"),
            (401, b"\xff\xfe{not json", _JSON, "auth", "HTTP 401: credentials refused"),
        ],
    )
    def test_error_answers(
        self,
        json_api: JsonJobSim,
        status: int,
        body: Any,
        content_type: str,
        kind: str,
        message: str,
    ) -> None:
        json_api.fail("/jobs/", status=status, body=body, headers={"Content-Type": content_type})
        (outcome,) = poll(HttpAdapter(http_source(json_api)), [ref("j")]).values()
        assert isinstance(outcome, PollFailure), outcome
        assert (outcome.kind, outcome.message) == (kind, message)

    def test_a_long_message_is_cut(self, json_api: JsonJobSim) -> None:
        """10,000 characters of message: 200 shown, the cut marked; a token past the cut is
        masked before it, not cut in two."""
        said = "x" * 190 + TOKEN + "y" * 10_000
        json_api.fail("/jobs/", status=404, body={"message": said})
        (outcome,) = poll(HttpAdapter(http_source(json_api)), [ref("j")]).values()
        assert isinstance(outcome, PollFailure) and outcome.kind == "not_found", outcome
        quoted = outcome.message.partition('the API says: "')[2].removesuffix('"')
        assert len(quoted) == 200 and quoted == "x" * 190 + "***" + "y" * 6 + "…", quoted

    def test_a_key_in_the_query_is_masked(self, json_api: JsonJobSim) -> None:
        """A credential in the URL's query (``?api_key=``), echoed back: masked; the job's
        id, which the message is about, stays."""
        config = http_source(json_api).model_copy(
            update={"url": json_api.base_url + "/jobs/{id}?run=j&api_key=qkey-5566"}
        )
        json_api.fail("/jobs/", status=404, body={"message": "no run j for api_key=qkey-5566"})
        (outcome,) = poll(HttpAdapter(config), [ref("j")]).values()
        assert isinstance(outcome, PollFailure), outcome
        assert (
            outcome.message == 'HTTP 404: job not found; the API says: "no run j for api_key=***"'
        )
