"""The status page (``/``, ``/watches/{key}``) and the JSON API (``/api/v1/``) of issue 15,
asked over real HTTP of a real `poller run` that polls the loopback Ruler API, on SQLite and
PostgreSQL; and the page in a real browser (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from test_listener import MISSING, free_port, get
from world import SITE, World, eventually, job_yaml

#: Debian's chromium (`apt-get install chromium`): Playwright's own browser download is not
#: reachable here, so it drives this one.
CHROMIUM = "/usr/bin/chromium"
#: A job name a person might paste, and an attacker would: markup, a link-ish and a mention.
HOSTILE = "<script>alert(1)</script> [/] @here"
TOKEN = "s3cret-api-token-0123456789"


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    token: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """One API request: status and the JSON answer (an error status is an answer)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def serving(world: World, port: int, jobs: str, token_file: Path | None = None) -> None:
    """The world's config with these jobs, the listener on `port`, and the API's token."""
    extra = f'http:\n  listen: "127.0.0.1:{port}"\n'
    if token_file is not None:
        extra += f"  token_file: {token_file}\n"
    world.write_config(jobs, extra=extra)


def watch_path(key: str) -> str:
    return "/watches/" + quote(key, safe="")


KEY = f"ruler-prod/{SITE}/j1"
MISSING_KEY = f"ruler-prod/{SITE}/{MISSING}"


class TestReading:
    """The page and the read API of a daemon that polls and delivers."""

    def test_page_and_api(self, any_world: World) -> None:
        """The page lists the watches with their state and progress, filters and pages
        them, and shows a watch's history with each channel's answer; the API gives the
        objects of `poller status --json`, paged by cursor, and one watch's history."""
        world, port = any_world, free_port()
        world.ruler.add_job(SITE, "j1", status="processing")
        world.ruler.set_job(SITE, "j1", processed_rows=40)
        serving(world, port, job_yaml("j1", "Nightly upload") + job_yaml(MISSING))
        daemon = world.start()

        status, headers, html = eventually(
            lambda: (a := get(port, "/"))[0] == 200 and 'value="40.0"' in a[2] and a,
            what="the page with j1 running",
        )
        assert headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert "Nightly upload" in html and KEY in html and MISSING_KEY in html
        assert '<progress max="100" value="40.0">' in html and "state-running" in html
        assert world.ruler.token not in html
        # the replica that answered is named
        assert json.loads(get(port, "/healthz")[2])["replica"] in html

        # filters
        running = get(port, "/?state=running")[2]
        assert '<option value="running" selected>' in running
        assert KEY in running and MISSING_KEY not in running
        assert MISSING_KEY in get(port, "/?state=new")[2]
        assert KEY not in get(port, "/?source=elsewhere")[2]
        bad = get(port, "/?state=bogus")
        assert bad[0] == 400 and "state must be one of" in bad[2]

        # the API: the same objects as `poller status --json`
        status, doc = call(port, "GET", "/api/v1/watches")
        assert status == 200 and doc["replica"] and doc["next_cursor"] is None
        listed = {w["key"]: w for w in doc["watches"]}
        cli = world.status()
        assert set(listed) == {KEY, MISSING_KEY}
        for key, watch in listed.items():
            assert set(watch) == set(cli[key]), key
            for field in ("name", "source", "site", "job_id", "tags", "removed"):
                assert watch[field] == cli[key][field], (key, field)
        assert listed[KEY]["progress"] == 40.0 and listed[KEY]["state"] == "running"

        # paged by cursor: one at a time, oldest first
        status, first = call(port, "GET", "/api/v1/watches?limit=1")
        assert [w["key"] for w in first["watches"]] == [KEY] and first["next_cursor"]
        status, second = call(port, "GET", f"/api/v1/watches?limit=1&cursor={first['next_cursor']}")
        assert [w["key"] for w in second["watches"]] == [MISSING_KEY]
        assert second["next_cursor"] is None
        page_one = get(port, "/?limit=1")[2]
        assert KEY in page_one and MISSING_KEY not in page_one and "next page" in page_one
        for query in ("limit=0", "limit=501", "cursor=-1", "limit=x"):
            status, said = call(port, "GET", f"/api/v1/watches?{query}")
            assert status == 400 and "must be a whole number" in said["error"], query

        # a watch's history, with each channel's answer
        world.ruler.set_job(SITE, "j1", status="complete")
        eventually(lambda: world.messages("success"), what="the success message")
        status, one = eventually(
            lambda: (
                (a := call(port, "GET", f"/api/v1/watches/{quote(KEY, safe='')}"))[1].get("history")
                and any(
                    d["status"] == "sent"
                    for e in a[1]["history"]
                    if e["what"] == "succeeded"
                    for d in e["deliveries"]
                )
                and a
            ),
            what="the success delivered",
        )
        assert one["watch"]["state"] == "succeeded"
        cli_history = json.loads(world.cli("history", KEY, "--json").stdout)["history"]
        assert [e["what"] for e in one["history"]] == [e["what"] for e in cli_history]
        status, html_page = 200, get(port, watch_path(KEY))[2]
        assert "Nightly upload" in html_page and "succeeded" in html_page
        assert "hook" in html_page and "sent after 1 attempt" in html_page
        assert (
            'href="../static/style.css"' in html_page
        )  # links are relative: a proxy's prefix stays
        typed = get(port, f"/watches/{KEY}")[2]  # the key's "/" as they are
        assert "Nightly upload" in typed and 'href="../../../static/style.css"' in typed
        assert get(port, watch_path("ruler-prod/nope/x"))[0] == 404
        assert call(port, "GET", "/api/v1/watches/ruler-prod%2Fnope%2Fx")[0] == 404
        # a key no database driver can encode (not UTF-8), or too long: no such watch
        for odd in ("%ED%A0%80", "%00", "x" * 5000):
            assert get(port, f"/watches/{odd}")[0] == 404, odd
            assert call(port, "GET", f"/api/v1/watches/{odd}")[0] == 404, odd
        assert get(port, "/?tag=a%01b")[0] == 400

        # without a token the API only reads
        assert call(port, "POST", "/api/v1/watches", {"source": "ruler-prod"})[0] == 404
        assert call(port, "DELETE", f"/api/v1/watches/{quote(KEY, safe='')}")[0] == 404
        assert world.stop(daemon) == 0

    def test_static_files(self, world: World) -> None:
        """The script and style are served from the listener, with the same policy."""
        port = free_port()
        serving(world, port, "")
        world.start()
        status, headers, script = get(port, "/static/refresh.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        assert "fetch(location.href" in script
        assert get(port, "/static/style.css")[0] == 200
        assert get(port, "/static/nothing.js")[0] == 404
        assert "No watches" in get(port, "/")[2]


class TestSecrets:
    """No secret reaches the page or the API, and `http.token_file` is read like any secret."""

    def test_a_refusing_channel_with_a_password(self, world: World) -> None:
        """A channel whose URL holds a password refuses every message: the watch's page and
        the API show its failed attempts and its answer, never the password nor the source's
        token."""
        port, password = free_port(), "pw-9f8e7d6c"
        world.sink.answer(500)
        world.ruler.add_job(SITE, "j1", status="processing")
        serving(world, port, job_yaml("j1"))
        world.config.write_text(
            world.config.read_text().replace("json://", f"json://poller:{password}@")
        )
        world.start()
        path = f"/api/v1/watches/{quote(KEY, safe='')}"
        _status, doc = eventually(
            lambda: (
                (a := call(port, "GET", path))[1].get("history")
                and any(d["last_error"] for e in a[1]["history"] for d in e.get("deliveries", []))
                and a
            ),
            what="a failed attempt recorded",
        )
        html = get(port, watch_path(KEY))[2]
        assert "answer:" in html and "pending after" in html
        listed = json.dumps(call(port, "GET", "/api/v1/watches")[1])
        for text in (json.dumps(doc), html, get(port, "/")[2], listed):
            assert password not in text and world.ruler.token not in text

    def test_token_file_is_one_line(self, world: World, tmp_path: Path) -> None:
        """A token file of two lines is a config error that names the key, not the token."""
        token_file = tmp_path / "api-token"
        token_file.write_text("first-line-secret\nsecond\n")
        serving(world, free_port(), "", token_file)
        checked = world.cli("check", check=False)
        assert checked.returncode == 2 and "token_file" in checked.stderr
        assert "one line" in checked.stderr and "first-line-secret" not in checked.stderr


class TestWriting:
    """``POST`` and ``DELETE /api/v1/watches``, with the token of ``http.token_file``."""

    def test_write_api(self, any_world: World, tmp_path: Path) -> None:
        """Without or with a wrong token: 401 and nothing written. Bad input: 400 with the
        CLI's words. A body over 64 KiB: 413. A job added is polled within seconds; a job
        removed is no longer watched; a job of the config is refused, as the CLI does."""
        world, port = any_world, free_port()
        token_file = tmp_path / "api-token"
        token_file.write_text(TOKEN + "\n")
        world.ruler.add_job(SITE, "j1", status="processing")
        world.ruler.add_job(SITE, "j2", status="processing")
        serving(world, port, job_yaml("j1"), token_file)
        world.start()
        job = {"source": "ruler-prod", "site": SITE, "id": "j2", "name": "From CI", "tags": ["ci"]}

        for token in (None, "wrong", TOKEN + "x", ""):
            status, said = call(port, "POST", "/api/v1/watches", job, token=token)
            assert status == 401 and "token" in said["error"], token
        status, said = call(port, "DELETE", f"/api/v1/watches/{quote(KEY, safe='')}", token="wrong")
        assert status == 401
        watched = world.status()
        assert set(watched) - {"_deliveries"} == {KEY} and not watched[KEY]["removed"]

        # bad input: the CLI's message
        for body, args in (
            ({"source": "nope", "id": "x"}, ["add", "nope", "x"]),
            ({"source": "ruler-prod", "id": "x"}, ["add", "ruler-prod", "x"]),
            (
                {"source": "ruler-prod", "site": SITE, "id": "x", "name": " "},
                ["add", "ruler-prod", "x", "--site", SITE, "--name", " "],
            ),
            (
                {"source": "ruler-prod", "site": SITE, "id": "j1", "name": "other"},
                ["add", "ruler-prod", "j1", "--site", SITE, "--name", "other"],
            ),
        ):
            status, said = call(port, "POST", "/api/v1/watches", body, token=TOKEN)
            cli = world.cli(*args, check=False)
            assert status == 400 and cli.returncode == 2, (body, cli.stderr)
            assert cli.stderr.strip() == f"poller: {said['error']}", body
        for raw, words in (
            (b"{", "not JSON"),
            (b"[]", "JSON object"),
            (b'{"source": "ruler-prod"}', "source and id are required"),
            (b'{"source": "ruler-prod", "id": 3}', "id must be a string"),
            (b'{"source": "ruler-prod", "id": "x", "evil": 1}', "unknown fields: evil"),
        ):
            status, said = call(port, "POST", "/api/v1/watches", raw, token=TOKEN)
            assert status == 400 and words in said["error"], raw
        status, said = call(port, "POST", "/api/v1/watches", b" " * (65 * 1024), token=TOKEN)
        assert status == 413, said
        assert set(world.status()) - {"_deliveries"} == {KEY}

        # added, polled by the daemon within seconds, found by its tag
        status, added = call(port, "POST", "/api/v1/watches", job, token=TOKEN)
        key = added["watch"]["key"]
        assert status == 201 and key == f"ruler-prod/{SITE}/j2", added
        assert added["watch"]["name"] == "From CI" and added["watch"]["tags"] == ["ci"]
        eventually(
            lambda: world.status()[key]["state"] == "running",
            what="the added job polled",
        )
        status, again = call(port, "POST", "/api/v1/watches", job, token=TOKEN)
        assert status == 200 and again["watch"]["key"] == key
        status, tagged = call(port, "GET", "/api/v1/watches?tag=ci")
        assert [w["key"] for w in tagged["watches"]] == [key]
        assert call(port, "GET", "/api/v1/watches?tag=c")[1]["watches"] == []
        assert key in get(port, "/?tag=ci")[2] and KEY not in get(port, "/?tag=ci")[2]

        # removed; a config job is refused with the CLI's words; an unknown key is 404
        status, gone = call(port, "DELETE", f"/api/v1/watches/{quote(key, safe='')}", token=TOKEN)
        assert status == 200 and gone["watch"]["removed"] is True
        assert world.status()[key]["removed"] is True
        status, said = call(port, "DELETE", f"/api/v1/watches/{quote(KEY, safe='')}", token=TOKEN)
        cli = world.cli("remove", KEY, check=False)
        assert status == 400 and cli.stderr.strip() == f"poller: {said['error']}"
        assert call(port, "DELETE", "/api/v1/watches/ruler-prod%2Fx%2Fy", token=TOKEN)[0] == 404
        # each change is logged; the token never is
        log = world.log.read_text()
        assert "watch added over the API" in log and "watch removed over the API" in log
        assert TOKEN not in log


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (Debian package chromium: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright; no browser download)"
    return None


@pytest.fixture
def browser_page() -> Any:
    """A page of headless chromium; skipped with the reason where it cannot run, except
    under ``CI=true``, where it must."""
    missing = _browser_missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser tests must run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 700})
        finally:
            browser.close()


class TestBrowser:
    """What a person sees of the page in a real browser."""

    def test_the_page_in_chromium(self, world: World, browser_page: Any, tmp_path: Path) -> None:
        """Names, states and progress bars rendered; a hostile name shown as text; the page
        refreshing itself to the job's new state; no console error; no request leaving the
        listener; a screenshot."""
        page, port = browser_page, free_port()
        base = f"http://127.0.0.1:{port}"
        world.ruler.add_job(SITE, "j1", status="processing")
        world.ruler.set_job(SITE, "j1", processed_rows=40)
        world.ruler.add_job(SITE, "j2", status="processing")
        world.ruler.set_job(SITE, "j2", processed_rows=75)
        hostile = job_yaml("j2").replace("}", ", name: '" + HOSTILE.replace("'", "''") + "'}")
        serving(world, port, job_yaml("j1", "Nightly upload") + hostile + job_yaml(MISSING))
        world.start()
        eventually(lambda: "75.0" in get(port, "/")[2], what="j2 polled")

        problems: list[str] = []
        requests: list[str] = []
        page.on("console", lambda m: m.type in ("error", "warning") and problems.append(m.text))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(base + "/")

        rows = page.locator("tr.watch")
        assert rows.count() == 3
        names = page.locator("td.name").all_inner_texts()
        assert names == ["Nightly upload", HOSTILE, MISSING]
        assert page.locator("script").count() == 1  # the page's own, not the name's
        states = page.locator("td.state").all_inner_texts()
        assert states[0].strip() == "running" and states[2].strip() == "new"
        bars = page.locator("progress")
        assert bars.count() == 2
        assert [bars.nth(i).get_attribute("value") for i in range(2)] == ["40.0", "75.0"]
        assert page.locator("footer .replica").inner_text()
        page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)
        if os.environ.get("POLLER_SCREENSHOT"):  # docs/status-page.png is made so
            shutil.copy(tmp_path / "status-page.png", os.environ["POLLER_SCREENSHOT"])

        # the job ends on the API: the page shows it without being reloaded, and keeps what
        # someone is typing into the filters meanwhile
        page.fill("input[name=tag]", "half-typed")
        world.ruler.set_job(SITE, "j1", status="complete")
        page.locator("tr.watch").first.locator("td.state", has_text="succeeded").wait_for(
            timeout=20_000
        )
        assert page.locator("tr.watch").first.locator("progress").get_attribute("value") == "100.0"
        assert page.input_value("input[name=tag]") == "half-typed"

        # a watch's own page, by its link
        page.get_by_role("link", name=f"ruler-prod/{SITE}/j2").click()
        page.locator("h1.name").wait_for()
        assert page.locator("h1.name").inner_text() == HOSTILE
        page.screenshot(path=str(tmp_path / "watch-page.png"), full_page=True)
        assert page.locator("script").count() == 1
        page.get_by_role("link", name="every watch").click()
        page.locator("tr.watch").first.wait_for()

        assert problems == []
        assert requests and all(url.startswith(base + "/") for url in requests), requests


class TestPaging:
    """The store's pages of watches: bounded by the limit, every watch once, filters exact."""

    def test_pages_cover_every_watch_once(self, db_url: str) -> None:
        """1,201 watches in pages of 500 (the most a page may ask), each page's deliveries
        counted; a tag filter matches whole tags only; state and source filters."""
        from poller.models import WatchSpec
        from poller.store.repo import Store, WatchFilter

        store = Store(db_url)
        try:
            store.migrate()
            specs = [
                WatchSpec(
                    source="ruler-prod" if n % 3 else "other",
                    job_id=f"job-{n}",
                    site=SITE,
                    tags=("even",) if n % 2 == 0 else ('odd "quoted"', "even-not"),
                )
                for n in range(1201)
            ]
            assert len(store.add_new_watches(specs, 1000.0)) == 1201
            store.remove_watch(specs[7].key, 1001.0)

            def every(where: WatchFilter) -> list[str]:
                keys, after = [], 0
                while True:
                    page = store.watch_page(where, after, 500)
                    assert len(page.watches) <= 500
                    keys += [w.key for w in page.watches]
                    if page.next_cursor is None:
                        assert len(set(keys)) == len(keys)  # none twice
                        return sorted(keys)
                    after = page.next_cursor

            def keys(chosen: list[WatchSpec]) -> list[str]:
                return sorted(s.key for s in chosen)

            assert every(WatchFilter()) == keys(specs)
            assert every(WatchFilter(tags=("even",))) == keys(specs[::2])
            assert every(WatchFilter(tags=('odd "quoted"',))) == keys(specs[1::2])
            assert every(WatchFilter(tags=("odd",))) == []
            assert every(WatchFilter(sources=("other",))) == keys(specs[::3])
            both = WatchFilter(states=("new",), sources=("other",), tags=("even",))
            assert every(both) == keys(specs[::6])
            assert every(WatchFilter(states=("removed",))) == [specs[7].key]
            assert every(WatchFilter(states=("running",))) == []
            # the page's filter is `poller status`'s: the same watches, in the same order
            for where in (both, WatchFilter(sources=("other",)), WatchFilter(states=("new",))):
                assert every(where) == sorted(w.key for w in store.list_watches(where))
        finally:
            store.close()
