"""The ``cpu`` part of the daemon benchmark; run it with
``.venv/bin/python bench/daemon.py --only cpu`` (its children run through that script too).

CPU per poll, all-in, of `poller.app.Daemon` as `poller run` runs it (`poller.app.runner`) on
a temporary SQLite database (4,000 watches at 1 s, more than it can poll, so it runs
saturated; one job per Ruler site so each poll is one ``/status`` request), against a bare
aiohttp GET + JSON loop with the same concurrency over the same endpoint, on the default
asyncio loop (target <= 2.5x). They alternate for three rounds; the ratio is the median of
the rounds' ratios. ``--baseline REF`` adds the daemon of another commit to every round (the
ratio before a change, measured beside it); ``--loops`` adds this daemon on the default loop
and collector, and on uvloop when it is installed. A ladder shows where the CPU goes:
poller's httpx transport alone, httpx's client over it, the `Requester`, then the Ruler
adapter. The naive design, one APScheduler 3.x interval job per watch doing an httpx GET
over httpx's own transport, runs with 500 watches at 1 s (a load it keeps up with) and
1,000 (one it does not; with 4,000 its loop stops answering for minutes).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from statistics import median
from typing import Any

from bench.common import (
    APS_HEAVY,
    APS_LIGHT,
    CHILD_TIMEOUT_SLACK,
    CONCURRENCY,
    TOKEN,
    DbCalls,
    Report,
    Sim,
    Sizes,
    baseline_tree,
    idle_share,
    job_of,
    per_poll_calls,
    prepare_watches,
    quiet_logs,
    run_child,
    running_daemon,
    site_of,
    spread,
    thread_cpu,
    wait_until,
    write_config,
)


async def measured(
    workers: list[asyncio.Task[None]], done: Callable[[], int], window: float
) -> dict[str, Any]:
    """Polls (`done`), CPU and wall time of this process over `window`, after a second in
    which connections open and caches warm; then waits for the `workers` to end."""
    await asyncio.sleep(1.0)
    polls0, cpu0, wall0 = done(), time.process_time(), time.perf_counter()
    await asyncio.sleep(window)
    polls1, cpu1, wall1 = done(), time.process_time(), time.perf_counter()
    await asyncio.gather(*workers)
    return {"polls": polls1 - polls0, "cpu": cpu1 - cpu0, "wall": wall1 - wall0}


class CollectorTime:
    """The CPU time the garbage collector takes from now until `stop`."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._began = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.process_time()
        else:
            self.seconds += time.process_time() - self._began

    def stop(self) -> None:
        """Stop counting."""
        gc.callbacks.remove(self._note)


async def child_cpu_daemon(spec: dict[str, Any]) -> dict[str, Any]:
    """The daemon on SQLite, saturated: CPU per poll over a window after one full round."""
    quiet_logs()
    work = Path(spec["dir"])
    database = f"sqlite:///{work}/cpu-{os.getpid()}.db"  # one per round
    n, interval = spec["watches"], spec["interval"]
    prepare_watches(database, n, interval, time.time())
    # ``listen``: with the HTTP listener on (bench/listener.py scrapes it from outside)
    config = write_config(
        work / f"cpu-{os.getpid()}.json",
        database=database,
        ruler_url=spec["ruler_url"],
        interval=interval,
        listen=spec.get("listen"),
    )
    profiler = None
    async with running_daemon(config) as daemon:
        calls = DbCalls(daemon)
        if not await wait_until(lambda: daemon.polls.polls >= n, 120):
            raise RuntimeError(f"first round not done in 120 s ({daemon.polls.polls} polls)")
        await asyncio.sleep(1.0)
        calls0 = calls.snapshot()
        if spec.get("profile"):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        collector = CollectorTime()
        polls0, cpu0, wall0, threads0 = (
            daemon.polls.polls,
            time.process_time(),
            time.perf_counter(),
            thread_cpu(),
        )
        await asyncio.sleep(spec["window"])
        collector.stop()
        polls1, cpu1, wall1, threads1 = (
            daemon.polls.polls,
            time.process_time(),
            time.perf_counter(),
            thread_cpu(),
        )
        calls1 = calls.snapshot()
        if profiler is not None:
            profiler.disable()
        # measured after the window: the sampler's own wake-ups would cost CPU inside it
        idle = await idle_share(daemon, min(5.0, spec["window"]))
    profile = ""
    if profiler is not None:
        import io
        import pstats

        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(
            os.environ.get("SORT", "cumulative")
        ).print_stats(int(os.environ.get("TOP", "50")))
        profile = text.getvalue()
    polls = polls1 - polls0
    return {
        "polls": polls,
        "cpu": cpu1 - cpu0,
        "wall": wall1 - wall0,
        "threads": {k: threads1.get(k, 0.0) - threads0.get(k, 0.0) for k in threads1},
        "db_calls": per_poll_calls(calls0, calls1, polls),
        "idle": idle,
        "collector": collector.seconds,
        "profile": profile,
    }


async def child_cpu_aiohttp(spec: dict[str, Any]) -> dict[str, Any]:
    """A bare aiohttp GET + JSON loop, `CONCURRENCY` workers, over the same job URLs."""
    import aiohttp

    n = spec["watches"]
    urls = [f"{spec['ruler_url']}/{site_of(i)}/batch/{job_of(i)}/status" for i in range(n)]
    done = 0
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        stop_at = time.monotonic() + 1.0 + spec["window"]

        async def worker(k: int) -> None:
            """Send requests one after another until the run ends."""
            nonlocal done
            i = k
            while time.monotonic() < stop_at:
                async with session.get(urls[i % n]) as response:
                    json.loads(await response.read())
                done += 1
                i += CONCURRENCY

        workers = [asyncio.create_task(worker(k)) for k in range(CONCURRENCY)]
        return await measured(workers, lambda: done, spec["window"])


async def child_cpu_requester(spec: dict[str, Any]) -> dict[str, Any]:
    """poller's `Requester` alone (over aiohttp), `CONCURRENCY` workers."""
    from poller.sources.auth import bearer
    from poller.sources.client import Requester

    requester = Requester(auth=bearer(TOKEN), max_concurrency=CONCURRENCY, deadline=10.0)
    result = await requests_loop(spec, lambda url: requester.json("GET", url))
    await requester.aclose()
    return result


async def child_cpu_transport(spec: dict[str, Any]) -> dict[str, Any]:
    """poller's httpx transport called directly (an `httpx.Request` built per call), JSON
    decoded: what the transport costs over bare aiohttp."""
    from poller.sources.client import build_request
    from poller.sources.transport import AiohttpTransport

    transport = AiohttpTransport(max_connections=CONCURRENCY)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def get(url: str) -> None:
        response = await transport.handle_async_request(build_request("GET", url, headers=headers))
        json.loads(response.content)

    result = await requests_loop(spec, get)
    await transport.aclose()
    return result


async def child_cpu_httpx(spec: dict[str, Any]) -> dict[str, Any]:
    """poller's `httpx.AsyncClient` (`http_client`, with its auth) over that transport,
    `client.send`: what httpx's client adds, without poller's limits and error handling."""
    from poller.sources.auth import bearer
    from poller.sources.client import build_request, http_client
    from poller.sources.transport import AiohttpTransport

    client = http_client(AiohttpTransport(max_connections=CONCURRENCY), bearer(TOKEN))

    async def get(url: str) -> None:
        response = await client.send(build_request("GET", url))
        json.loads(response.content)

    result = await requests_loop(spec, get)
    await client.aclose()
    return result


async def requests_loop(
    spec: dict[str, Any], get: Callable[[str], Awaitable[object]]
) -> dict[str, Any]:
    """`get` each job's status URL, `CONCURRENCY` workers, measured over the window."""
    n = spec["watches"]
    urls = [f"{spec['ruler_url']}/{site_of(i)}/batch/{job_of(i)}/status" for i in range(n)]
    done = 0
    stop_at = time.monotonic() + 1.0 + spec["window"]

    async def worker(k: int) -> None:
        """Send requests one after another until the run ends."""
        nonlocal done
        i = k
        while time.monotonic() < stop_at:
            await get(urls[i % n])
            done += 1
            i += CONCURRENCY

    workers = [asyncio.create_task(worker(k)) for k in range(CONCURRENCY)]
    return await measured(workers, lambda: done, spec["window"])


async def child_cpu_adapter(spec: dict[str, Any]) -> dict[str, Any]:
    """poller's Ruler adapter alone: `poll` on groups of jobs, as the dispatcher hands them."""
    from poller.models import JobRef
    from poller.sources.ruler import RulerSource
    from poller.sources.ruler.adapter import RulerAdapter

    n = spec["watches"]
    adapter = RulerAdapter(
        RulerSource(
            base_url=spec["ruler_url"],
            token=TOKEN,
            max_concurrency=CONCURRENCY,
            request_timeout=10.0,
            list_threshold=1_000_000,
        )
    )
    refs = [
        JobRef(f"bench/{site_of(i)}/{job_of(i)}", "bench", job_of(i), site_of(i)) for i in range(n)
    ]
    done = 0
    group = 4 * CONCURRENCY
    stop_at = time.monotonic() + 1.0 + spec["window"]

    async def worker(k: int) -> None:
        """Send requests one after another until the run ends."""
        nonlocal done
        first = k * group
        while time.monotonic() < stop_at:
            batch = [refs[(first + x) % n] for x in range(group)]
            await adapter.poll(batch)
            done += len(batch)
            first += 2 * group

    # two groups at a time, so that one group's tail overlaps the next one's start
    workers = [asyncio.create_task(worker(k)) for k in range(2)]
    result = await measured(workers, lambda: done, spec["window"])
    await adapter.aclose()
    return result


async def child_cpu_apscheduler(spec: dict[str, Any]) -> dict[str, Any]:
    """The naive design: one APScheduler interval job per watch, each an httpx GET."""
    import httpx
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    # APScheduler logs every skipped run of an overloaded job: that would be log cost, not
    # scheduling cost
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    n, interval = spec["watches"], spec["interval"]
    done = 0
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(
        limits=limits, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10.0
    ) as client:

        async def poll(url: str) -> None:
            """One poll: GET the job's status and decode it."""
            nonlocal done
            response = await client.get(url)
            response.json()
            done += 1

        scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        from datetime import UTC, datetime, timedelta

        start = datetime.now(UTC) + timedelta(seconds=0.5)
        for i in range(n):
            url = f"{spec['ruler_url']}/{site_of(i)}/batch/{job_of(i)}/status"
            scheduler.add_job(
                poll,
                IntervalTrigger(
                    seconds=interval, start_date=start + timedelta(seconds=i * interval / n)
                ),
                args=[url],
                id=f"w{i}",
            )
        scheduler.start()
        try:
            # connections open, the backlog of the first second settled
            await asyncio.sleep(5.0)
            polls0, cpu0, wall0 = done, time.process_time(), time.perf_counter()
            await asyncio.sleep(spec["window"])
            polls1, cpu1, wall1 = done, time.process_time(), time.perf_counter()
        finally:
            scheduler.shutdown(wait=False)
            await asyncio.sleep(0.5)
    return {"polls": polls1 - polls0, "cpu": cpu1 - cpu0, "wall": wall1 - wall0}


#: the daemon's CPU per poll against bare aiohttp's per request: the target (issue 13)
TARGET = 2.5


def part_cpu(
    sim: Sim,
    sizes: Sizes,
    work: Path,
    report: Report,
    profile: bool,
    baseline: str | None = None,
    loops: bool = False,
) -> None:
    """Part 1: CPU per poll of the daemon against the two baselines.

    With `baseline` (a git ref), the daemon of that commit runs in every round too, beside
    this one; with `loops`, this daemon also runs on the default asyncio loop and on uvloop.
    """
    n = sizes.cpu_watches
    sim.add_jobs(0, n, "pending")
    spec = {
        "dir": str(work),
        "ruler_url": sim.ruler_url,
        "watches": n,
        "interval": sizes.cpu_interval,
        "window": sizes.cpu_window,
        "profile": profile,
        # the baselines and the ladder run as a plain script does; the daemon as shipped
        "loop": "asyncio",
    }
    budget = sizes.cpu_window + CHILD_TIMEOUT_SLACK
    before_root = baseline_tree(baseline, work) if baseline else None

    def measure(name: str, child_spec: dict[str, Any], root: Path | None = None) -> dict[str, Any]:
        before = sim.usage()
        result = run_child(name, child_spec, work, budget, **({"root": root} if root else {}))
        after = sim.usage()
        result["sim"] = [b - a for a, b in zip(before, after, strict=True)]
        return result

    # What alternates, round after round (this machine's speed drifts by 10% from one minute
    # to the next, and more when anything else runs): every ratio is the median of the
    # rounds' ratios, each taken between runs of the same round.
    contenders: dict[str, tuple[str, dict[str, Any], Path | None]] = {
        "daemon": ("cpu-daemon", {**spec, "loop": "shipped"}, None),
        "aiohttp": ("cpu-aiohttp", spec, None),
    }
    if before_root is not None:
        # as that commit's `poller run` ran it: a tree whose bench knows no "shipped" loop
        # runs it as a plain script (its `child_runner` takes any other name so); comparing
        # it on the default collector against this daemon on the tuned one measured the
        # collector (0.74x), not the change
        contenders["before"] = ("cpu-daemon", {**spec, "loop": "shipped"}, before_root)
    uvloop = loops and importlib.util.find_spec("uvloop") is not None
    if loops:
        # as a plain script runs (the default loop and collector): what `runner` changes
        contenders["on asyncio"] = ("cpu-daemon", {**spec, "loop": "asyncio"}, None)
        if uvloop:  # not a dependency of poller: measured, not adopted (README)
            contenders["on uvloop"] = ("cpu-daemon", {**spec, "loop": "uvloop"}, None)
        else:
            report.notes.append("uvloop is not installed: `pip install uvloop` to compare it")
    names = list(contenders)
    rounds: list[dict[str, dict[str, Any]]] = []
    for i in range(sizes.cpu_rounds):
        order = names[i % len(names) :] + names[: i % len(names)]
        rounds.append({k: measure(*contenders[k]) for k in order})
    results: dict[str, dict[str, Any]] = dict(rounds[0])
    # APScheduler gets fewer watches: with as many as the others its job runs queue for
    # httpx's pool, each queued request rescans the pool, and the loop stops answering for
    # minutes (PoolTimeouts). 500 at 1 s it keeps up with; 1,000 at 1 s it does not.
    ladder = ("cpu-transport", "cpu-httpx", "cpu-requester", "cpu-adapter")
    runs: list[tuple[str, str, dict[str, Any]]] = [(name, name, spec) for name in ladder]
    aps = (APS_LIGHT, APS_HEAVY)
    runs += [(f"aps-{k}", "cpu-apscheduler", {**spec, "watches": k}) for k in aps]
    for key, name, child_spec in runs:
        results[key] = measure(name, child_spec)
    if profile:
        print(results["daemon"]["profile"])

    def cost(result: dict[str, Any]) -> float:
        return float(result["cpu"]) / max(1, result["polls"])

    def ratios(top: str, bottom: str) -> list[float]:
        return [cost(r[top]) / cost(r[bottom]) for r in rounds]

    def each(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    per = {k: cost(r) for k, r in results.items()}
    rate = {k: r["polls"] / r["wall"] for k, r in results.items()}
    # the simulator's CPU per request it served, over the child's whole life
    sim_per = {k: r["sim"][0] / max(1, r["sim"][1]) for k, r in results.items()}
    daemon_costs = [cost(r["daemon"]) for r in rounds]
    aiohttp_costs = [cost(r["aiohttp"]) for r in rounds]
    d, a = median(daemon_costs), median(aiohttp_costs)
    threads = results["daemon"]["threads"]
    polls = max(1, results["daemon"]["polls"])
    split = ", ".join(f"{k} {v / polls * 1e6:.0f}" for k, v in sorted(threads.items()))
    label = f"{n} watches @{sizes.cpu_interval:g}s, {CONCURRENCY} in flight"
    report.add(
        "cpu",
        f"daemon CPU/poll, as shipped ({label}; median of {len(rounds)} rounds)",
        f"{d * 1e6:.0f} µs ({spread(daemon_costs)})",
    )
    report.add("cpu", "  of which by thread, round 1 (µs/poll)", split)
    report.add("cpu", "  daemon polls/s (saturated), round 1", f"{rate['daemon']:.0f}")
    report.add("cpu", "  database calls per poll", results["daemon"]["db_calls"])
    report.add(
        "cpu",
        "  time with no poll in flight (saturated)",
        f"{results['daemon']['idle'] * 100:.0f}%",
    )

    def collector(key: str) -> str:
        shares = [r[key].get("collector", 0.0) / r[key]["cpu"] * 100 for r in rounds]
        return ", ".join(f"{v:.0f}%" for v in shares)

    report.add("cpu", "  of its CPU, in the garbage collector (rounds)", collector("daemon"))
    report.add(
        "cpu",
        "bare aiohttp GET+JSON CPU/request, default loop (median)",
        f"{a * 1e6:.0f} µs ({spread(aiohttp_costs)})",
    )
    report.add("cpu", "  aiohttp requests/s", f"{rate['aiohttp']:.0f}")
    steps = (
        ("cpu-transport", "transport alone (httpx.Request built per call)"),
        ("cpu-httpx", "httpx AsyncClient.send over it, with auth"),
        ("cpu-requester", "Requester.json (limits, deadline, errors)"),
        ("cpu-adapter", "RulerAdapter.poll"),
    )
    for key, what in steps:
        report.add("cpu", f"  ladder: {what}", f"{per[key] * 1e6:.0f} µs ({per[key] / a:.2f}x)")
    shipped = ratios("daemon", "aiohttp")
    ratio = median(shipped)
    report.add(
        "cpu",
        f"ratio daemon / bare aiohttp (median of rounds: {each(shipped)})",
        f"{ratio:.2f}x",
        f"<= {TARGET}",
        ratio <= TARGET,
    )
    if "before" in contenders:
        old = ratios("before", "aiohttp")
        report.add("cpu", f"  the same, {baseline} (rounds: {each(old)})", f"{median(old):.2f}x")
        change = ratios("daemon", "before")
        report.add(
            "cpu", f"  daemon / {baseline} (rounds: {each(change)})", f"{median(change):.2f}x"
        )
    if loops:
        report.add(
            "cpu",
            "  with the default collector: in the collector (rounds)",
            collector("on asyncio"),
        )
        tuned = ratios("daemon", "on asyncio")
        what = f"  daemon as shipped / with the default collector (rounds: {each(tuned)})"
        report.add("cpu", what, f"{median(tuned):.2f}x")
    if uvloop:
        gain = ratios("on uvloop", "on asyncio")
        what = f"  daemon on uvloop / on asyncio, default collector (rounds: {each(gain)})"
        report.add("cpu", what, f"{median(gain):.2f}x")
    for k in aps:
        s = per[f"aps-{k}"]
        report.add(
            "cpu",
            f"APScheduler job per watch + httpx, {k} @{sizes.cpu_interval:g}s: CPU/poll",
            f"{s * 1e6:.0f} µs",
        )
        report.add("cpu", "  its polls/s", f"{rate[f'aps-{k}']:.0f}")
        report.add(
            "cpu", "  ratio APScheduler+httpx / daemon", f"{s / d:.2f}x", "far worse", s / d >= 2
        )
    report.add(
        "cpu",
        "simulator CPU/request (daemon, aiohttp run)",
        f"{sim_per['daemon'] * 1e6:.0f}, {sim_per['aiohttp'] * 1e6:.0f} µs",
    )
    report.add(
        "cpu",
        "  connections opened (daemon, aiohttp run)",
        f"{results['daemon']['sim'][2]}, {results['aiohttp']['sim'][2]}",
    )


#: the child measurements of this part, by the name `bench/daemon.py --child` takes
CHILDREN: dict[str, Callable[[dict[str, Any]], Any]] = {
    "cpu-daemon": child_cpu_daemon,
    "cpu-aiohttp": child_cpu_aiohttp,
    "cpu-transport": child_cpu_transport,
    "cpu-httpx": child_cpu_httpx,
    "cpu-requester": child_cpu_requester,
    "cpu-adapter": child_cpu_adapter,
    "cpu-apscheduler": child_cpu_apscheduler,
}
