"""Scenario 5: what held streams cost. 1,000 slow listeners (16 KiB/s each)
hold the 5 MiB clip open: remote hot (cached before they come), remote
filling (they arrive on a clip not played yet) and stored; the app's RSS,
fds and tasks are read at idle, while held, and after they are gone.
Issue 15's target: ≤ 150 KiB of RSS per listener, hot or filling.

Each run gets an app process (and an empty cache) of its own, so "idle" is
a fresh, warmed process and not whatever the runs before left in the
allocator."""

import asyncio
import time

from bench import cache, counting, service
from bench.counting import PlayTally
from bench.readers import SlowReaders
from bench.report import Row
from bench.scenarios import Bench, verdict

STREAMS = 1_000
PER_STREAM_LIMIT_KIB = 150
# Slack for "returns near idle": allocator arenas and pooled keep-alive
# connections to the origin may stay, a stream's worth each may not.
NEAR_IDLE_KIB = 10 * 1024
FD_SLACK = 16


async def in_flight(bench: Bench, app: service.App) -> float:
    return (await counting.metrics(bench.session, app.url)).get("clips_streams_in_flight", 0)


async def tasks(bench: Bench, app: service.App) -> float | None:
    """The app's asyncio task count, if its /metrics exports one."""
    values = await counting.metrics(bench.session, app.url)
    found = [v for k, v in values.items() if k.split("{")[0].endswith("_tasks")]
    return sum(found) if found else None


async def settle(bench: Bench, app: service.App, bound: float = 15.0) -> bool:
    """Wait until no stream is in flight; False if some never ended."""
    deadline = time.monotonic() + bound
    while await in_flight(bench, app) > 0:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


# (row name, source, warm the held clip first?): the remote clip held hot
# (in the cache before the listeners come, once the app has one) and
# filling (they arrive on a clip nobody has played), and the stored clip.
RUNS = (
    ("remote hot", "remote", True),
    ("remote filling", "remote", False),
    ("stored", "stored", True),
)


async def run(bench: Bench) -> None:
    for name, source, warm in RUNS:
        clip = bench.catalogue.remote_big if source == "remote" else bench.catalogue.stored_big
        async with service.running(
            bench.database_url,
            bench.media_dir,
            bench.scratch,
            bench.options.workers,
            bench.cores.servers,
            # A cache of its own, empty: "filling" must find the clip cold.
            cache_dir=bench.scratch / f"cache-memory-{name.replace(' ', '-')}",
            ca_bundle=bench.origin.ca_bundle,
        ) as app:
            await hold(bench, app, name, source, clip, warm)


async def hold(bench: Bench, app: service.App, name: str, source: str, clip, warm: bool) -> None:
    seconds = 2 * bench.options.duration  # 20 s at the default duration
    path = f"/clips/{clip.id}/stream"
    # Warm: imports, pool, upstream connection, metadata cache, and (hot)
    # the clip itself; filling warms on another remote clip.
    warming = clip if warm else bench.catalogue.remote_small
    await bench.wrk(f"{app.url}/clips/{warming.id}/stream", 4, body_bytes=warming.size, duration=1)
    await settle(bench, app)
    await asyncio.sleep(0.5)
    idle, idle_tasks = app.usage(), await tasks(bench, app)
    tally = await PlayTally.begin(bench.session, app.url, clip.id, source, app.workers() == 1)
    caching = await cache.snapshot(bench.session, app.url)
    mark = bench.origin.fetch_mark()
    readers = SlowReaders("127.0.0.1", app.port, path, STREAMS)
    peak = idle.rss_kib
    opened = time.monotonic()
    try:
        await readers.open()
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            await asyncio.sleep(1.0)
            peak = max(peak, app.usage().rss_kib)
        held = app.usage()
        held_tasks, held_streams = await tasks(bench, app), await in_flight(bench, app)
    finally:
        await readers.close()
    reading = time.monotonic() - opened
    ended = await settle(bench, app)
    await asyncio.sleep(1.0)  # closed transports are released on the next loop turns
    after, after_tasks = app.usage(), await tasks(bench, app)
    got = readers.tally
    count = await tally.count(got.started, got.failed)
    per_stream = (held.rss_kib - idle.rss_kib) / max(1, got.started)
    back = after.rss_kib - idle.rss_kib <= NEAR_IDLE_KIB
    no_leak = (
        ended
        and after.fds <= idle.fds + FD_SLACK
        and (idle_tasks is None or after_tasks <= idle_tasks + FD_SLACK)
    )
    task_text = (
        "tasks n/a (no *_tasks metric)"
        if idle_tasks is None
        else f"tasks {idle_tasks:.0f}→{held_tasks:.0f}→{after_tasks:.0f}"
    )
    kinds = dict(got.reasons)
    if got.stalled:
        kinds["stalled"] = got.stalled
    mib = 1024
    remote = {}
    if source == "remote":
        used = cache.use(caching, await cache.snapshot(bench.session, app.url), True)
        fetches = bench.origin.fetches_since(mark, clip.origin_path)
        remote = {"cache": used.state}
        origin_text = used.describe()
        if fetches is not None:
            remote["origin_per_1000"] = fetches.per_1000(count.plays)
            origin_text += f"; {fetches.describe()} for {count.plays:,} plays"
    bench.report.add(
        Row(
            scenario=f"memory {name} {STREAMS} slow",
            target="app",
            rss_kib_per_listener=per_stream,
            **remote,
            mib_s=got.bytes / reading / 2**20,
            errors=got.failed + got.stalled,
            error_kinds=kinds,
            count_ok=count.ok,
            count=count.describe(),
            note=(
                f"{got.started} held {seconds:g} s; RSS {idle.rss_kib / mib:.0f}→"
                f"{held.rss_kib / mib:.0f} (peak {peak / mib:.0f})→{after.rss_kib / mib:.0f} MiB, "
                f"{per_stream:.0f} KiB/stream (target ≤ {PER_STREAM_LIMIT_KIB}: "
                f"{verdict(per_stream <= PER_STREAM_LIMIT_KIB)}); "
                f"back near idle: {verdict(back)}; fds {idle.fds}→{held.fds}→{after.fds}; "
                f"{task_text}; threads {idle.threads}→{held.threads}→{after.threads}; "
                f"in flight while held {held_streams:.0f}; nothing left behind: "
                f"{verdict(no_leak)}; "
                + (f"{origin_text}; " if remote else "")
                + f"count {count.describe()}"
            ),
            extra={
                "streams_started": got.started,
                "hold_seconds": seconds,
                "rss_kib": {
                    "idle": idle.rss_kib,
                    "held": held.rss_kib,
                    "peak": peak,
                    "after": after.rss_kib,
                },
                "rss_growth_kib_per_stream": per_stream,
                "fds": {"idle": idle.fds, "held": held.fds, "after": after.fds},
                "tasks": {"idle": idle_tasks, "held": held_tasks, "after": after_tasks},
                "threads": {"idle": idle.threads, "held": held.threads, "after": after.threads},
            },
        )
    )
