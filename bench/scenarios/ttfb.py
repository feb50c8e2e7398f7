"""Scenario 4: time to first byte over sequential requests, against the
same file from the origin, in two passes:

- hot: the 5 MiB clip, remote (in the app's cache after the warm-up
  rounds, once the app has one) and stored, taking turns with nginx;
- cold: first listens, each request a remote 500 KiB clip no one has
  played (a URL of its own, so no cache has it), taking turns with nginx
  serving the 500 KiB file.

Issue 15's targets: added p50 ≤ 0.5 ms hot and ≤ 1 ms cold."""

import asyncio
import threading
import time

from bench import cache, counting, firstbyte
from bench.catalogue import Clip, sum_plays
from bench.counting import Count, PlayTally
from bench.report import Row
from bench.scenarios import Bench, verdict

ROUNDS = 200
WARMUP = 5
HOT_LIMIT_MS = 0.5  # remote, cached
COLD_LIMIT_MS = 1.0  # remote, first listen; stored as before
STORED_LIMIT_MS = 1.0


async def run(bench: Bench) -> None:
    await hot(bench)
    await cold(bench)


def probe_of(bench: Bench, clip: Clip) -> firstbyte.Probe:
    return firstbyte.Probe("127.0.0.1", bench.app.port, f"/clips/{clip.id}/stream", clip.size)


def origin_probe(bench: Bench, clip: Clip) -> firstbyte.Probe:
    port = int(bench.origin.url.rsplit(":", 1)[1])
    return firstbyte.Probe("127.0.0.1", port, clip.origin_path, clip.size)


async def measure(
    probes: dict[str, firstbyte.Probe], rounds: int
) -> dict[str, firstbyte.FirstBytes]:
    stop = threading.Event()
    try:
        return await asyncio.to_thread(firstbyte.measure, probes, rounds, stop, WARMUP)
    except asyncio.CancelledError:
        stop.set()  # the thread cannot be cancelled: ask it to stop
        raise


def origin_row(bench: Bench, label: str, origin: firstbyte.FirstBytes) -> Row:
    return Row(
        scenario=f"ttfb {label}",
        target=bench.origin.kind.split(" (")[0],
        rps=len(origin.samples) / origin.busy if origin.busy else None,
        mib_s=origin.bytes / origin.busy / 2**20 if origin.busy else None,
        p50_ms=origin.percentile(50),
        p99_ms=origin.percentile(99),
        errors=origin.errors,
        error_kinds={"failed": origin.errors} if origin.errors else {},
        note=f"{ROUNDS} sequential requests, one keep-alive connection",
    )


def app_row(
    scenario: str,
    result: firstbyte.FirstBytes,
    origin: firstbyte.FirstBytes,
    limit: float,
    count: Count,
    what: str,
) -> Row:
    base50, base99 = origin.percentile(50), origin.percentile(99)
    p50, p99 = result.percentile(50), result.percentile(99)
    added50, added99 = p50 - base50, p99 - base99
    return Row(
        scenario=scenario,
        target="app",
        rps=len(result.samples) / result.busy if result.busy else None,
        mib_s=result.bytes / result.busy / 2**20 if result.busy else None,
        p50_ms=p50,
        p99_ms=p99,
        errors=result.errors,
        error_kinds={"failed": result.errors} if result.errors else {},
        ratio=p50 / base50 if base50 else None,
        ratio_to="origin p50",
        count_ok=count.ok,
        count=count.describe(),
        note=(
            f"{what}added p50 {added50:+.2f} ms, p99 {added99:+.2f} ms; target added p50 ≤ "
            f"{limit} ms: {verdict(added50 <= limit)}; count {count.describe()}"
        ),
        extra={"added_p50_ms": added50, "added_p99_ms": added99},
    )


async def hot(bench: Bench) -> None:
    cat = bench.catalogue
    clips = {"remote": cat.remote_big, "stored": cat.stored_big}
    probes = {"origin": origin_probe(bench, cat.remote_big)}
    probes.update({source: probe_of(bench, clip) for source, clip in clips.items()})
    tallies = {
        source: await PlayTally.begin(
            bench.session, bench.app.url, clip.id, source, bench.exact_counts
        )
        for source, clip in clips.items()
    }
    caching = await cache.snapshot(bench.session, bench.app.url)
    mark = bench.origin.fetch_mark()
    results = await measure(probes, ROUNDS)
    origin = results["origin"]
    bench.report.add(origin_row(bench, "5 MiB", origin))
    for source, clip in clips.items():
        probe = probes[source]
        count = await tallies[source].count(probe.completed, probe.failed)
        if source == "stored":
            row = app_row("ttfb stored 5 MiB", results[source], origin, STORED_LIMIT_MS, count, "")
            bench.report.add(row)
            continue
        used = cache.use(caching, await cache.snapshot(bench.session, bench.app.url), True)
        # The target for a hot clip holds only once a cache makes it hot.
        limit = HOT_LIMIT_MS if used.on else COLD_LIMIT_MS
        what = f"{used.describe()}; " if used.on else f"{used.describe()}, so judged as cold; "
        row = app_row("ttfb remote 5 MiB", results[source], origin, limit, count, what)
        row.cache = used.state
        fetches = bench.origin.fetches_since(mark, clip.origin_path)
        if fetches is not None:
            row.origin_per_1000 = fetches.per_1000(count.plays)
            row.extra["origin_fetches"] = fetches.bodies
        bench.report.add(row)


async def cold(bench: Bench) -> None:
    """First listens: the app's remote_cold probe asks for a new clip each
    time. Their plays are summed in the database, and must equal the
    remote streams the app says it started over the pass."""
    cat = bench.catalogue
    clips = cat.cold[: WARMUP + ROUNDS]
    if len(clips) < WARMUP + ROUNDS:
        bench.report.notes.append(f"ttfb cold skipped: only {len(clips)} cold clips")
        return
    probes = {
        "origin": origin_probe(bench, clips[0]),
        "cold": firstbyte.Probe(
            "127.0.0.1",
            bench.app.port,
            "",
            clips[0].size,
            paths=tuple(f"/clips/{clip.id}/stream" for clip in clips),
        ),
    }
    exact = bench.exact_counts
    values = await counting.metrics(bench.session, bench.app.url)
    started = counting.started_streams(values, "remote")
    plays = await sum_plays(bench.database_url, clips)
    caching = await cache.snapshot(bench.session, bench.app.url)
    mark = bench.origin.fetch_mark()
    results = await measure(probes, ROUNDS)
    origin = results["origin"]
    bench.report.add(origin_row(bench, "500 KiB", origin))
    probe = probes["cold"]
    count = await cold_count(bench, clips, plays, started if exact else None, probe)
    used = cache.use(caching, await cache.snapshot(bench.session, bench.app.url), True)
    row = app_row(
        "ttfb remote cold 500 KiB",
        results["cold"],
        origin,
        COLD_LIMIT_MS,
        count,
        f"a new clip each request; {used.describe()}; ",
    )
    row.cache = used.state
    fetches = bench.origin.fetches_since(mark, clips[0].origin_path)
    if fetches is not None:
        row.origin_per_1000 = fetches.per_1000(count.plays)
        row.extra["origin_fetches"] = fetches.bodies
    bench.report.add(row)


async def cold_count(
    bench: Bench,
    clips: tuple[Clip, ...],
    plays_before: int,
    started_before: float | None,
    probe: firstbyte.Probe,
    bound: float = 10.0,
) -> Count:
    """The cold clips' plays against the remote streams the app started
    (read once none is in flight), polled until they agree or `bound`."""
    deadline = time.monotonic() + bound
    while True:
        values = await counting.metrics(bench.session, bench.app.url)
        settled = values.get("clips_streams_in_flight", 0) == 0
        started = None
        if started_before is not None:
            started = int(counting.started_streams(values, "remote") - started_before)
        plays = await sum_plays(bench.database_url, clips) - plays_before
        agree = plays == started if started is not None else plays >= probe.completed
        if (settled and agree) or time.monotonic() > deadline:
            return Count(plays, started, probe.completed, probe.failed)
        await asyncio.sleep(0.05)
