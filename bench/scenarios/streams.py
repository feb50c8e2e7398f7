"""Scenarios 2 and 3 (with 6, counting), and issue 15's byte-path targets:
the 500 KiB clip streamed remote and stored at rising concurrency, each
level run against the origin first so every ratio comes from neighbouring
minutes of the same run.

At c64 the references and variants run beside them: the bare-aiohttp
reference (bench/bare.py, a file route and a pipe route, run like the app),
the remote clip from a second app with the cache off (CACHE_MAX_BYTES=0,
against the bare pipe), and the remote clip on the HTTPS origin (cached,
against nginx over HTTP). Every remote row counts the requests the origin
answered per 1,000 plays (nginx's log) and says whether the app's cache
served it; a last row plays the hot clip exactly 1,000 times.
"""

import asyncio
import contextlib
import time
from dataclasses import dataclass

import aiohttp

from bench import cache, profile, service
from bench.catalogue import SMALL, Clip
from bench.counting import PlayTally
from bench.report import Row
from bench.scenarios import WARMUP_SECONDS, Bench, verdict

LEVELS = (1, 16, 64, 256)
# Where the references and variants run, and issue 15's targets there.
REFERENCE_LEVEL = 64
TARGETS = {"stored": 0.6, "remote": 0.5, "https remote": 0.5, "remote cache off": 0.9}
P99_LIMIT_MS = 250  # at c256
PLAYS = 1_000
PLAYERS = 8  # concurrent players for the 1,000 plays


@dataclass(frozen=True)
class Target:
    """One stream wrk loads: which app, which clip, how its bytes come."""

    name: str  # the row's scenario before " c64"
    app: service.App
    clip: Clip
    cached: bool  # the harness gave this app a cache
    scheme: str | None  # how the app fetches it from the origin; None: stored

    @property
    def url(self) -> str:
        return f"{self.app.url}/clips/{self.clip.id}/stream"


async def run(bench: Bench, sources: list[str]) -> None:
    cat = bench.catalogue
    async with contextlib.AsyncExitStack() as stack:
        bare = await stack.enter_async_context(
            service.bare(
                bench.scratch / "www" / "audio" / SMALL[0],
                bench.origin.url + cat.remote_small.origin_path,
                bench.scratch,
                bench.options.workers,
                bench.cores.servers,
            )
        )
        main = {
            "remote": Target("remote", bench.app, cat.remote_small, True, "http"),
            "stored": Target("stored", bench.app, cat.stored_small, True, None),
        }
        # At c64, each bare route runs just before the rows it divides.
        at_reference: list[Target | str] = []
        if "stored" in sources:
            at_reference += ["file", main["stored"]]
        if "remote" in sources:
            off = await stack.enter_async_context(
                service.running(
                    bench.database_url,
                    bench.media_dir,
                    bench.scratch,
                    bench.options.workers,
                    bench.cores.servers,
                    cache_dir=None,
                )
            )
            at_reference += [
                "pipe",
                Target("remote cache off", off, cat.remote_small, False, "http"),
                main["remote"],
            ]
            if cat.https_small is not None:
                at_reference.append(
                    Target("https remote", bench.app, cat.https_small, True, "https")
                )
            else:
                bench.report.notes.append("https remote skipped: no HTTPS origin in this run")
        for step in at_reference:
            url = f"{bare.url}/{step}" if isinstance(step, str) else step.url
            await bench.wrk(url, 16, body_bytes=SMALL[1], duration=WARMUP_SECONDS)
        for level in LEVELS:
            origin = await bench.wrk(
                bench.origin.url + cat.remote_small.origin_path, level, body_bytes=SMALL[1]
            )
            bench.report.add(
                Row.of_load(
                    origin,
                    scenario=f"origin c{level}",
                    target=bench.origin.kind.split(" (")[0],
                    note="500 KiB file straight from the origin (HTTP)",
                )
            )
            references = {"origin": origin.rps}
            if level != REFERENCE_LEVEL:
                for source in sources:
                    await stream(bench, main[source], level, references)
                continue
            for step in at_reference:
                if isinstance(step, str):
                    references[f"bare {step}"] = await reference(
                        bench, bare, step, level, origin.rps
                    )
                else:
                    await stream(bench, step, level, references)
        if "remote" in sources:
            await thousand_plays(bench, main["remote"])


async def reference(
    bench: Bench, bare: service.Bare, route: str, level: int, origin_rps: float
) -> float:
    result = await bench.wrk(f"{bare.url}/{route}", level, body_bytes=SMALL[1])
    how = "one loop.sendfile" if route == "file" else "the origin through one ClientSession"
    bench.report.add(
        Row.of_load(
            result,
            scenario=f"bare {route} c{level}",
            target="bare aiohttp",
            ratio=result.rps / origin_rps if origin_rps else None,
            ratio_to="origin",
            note=f"the reference: aiohttp alone, {how}, no middleware or database",
        )
    )
    return result.rps


def ratios(
    target: Target, level: int, rps: float, references: dict[str, float]
) -> tuple[float | None, str, list[str]]:
    """The row's ratio (to what), and notes: the target where the issue
    sets one, and the ratio to the bare reference beside it."""
    reference = "bare pipe" if target.name == "remote cache off" else "origin"
    base = references.get(reference)
    ratio = rps / base if base else None
    notes = []
    goal = TARGETS.get(target.name)
    if level == REFERENCE_LEVEL and goal is not None and ratio is not None:
        to = {"bare pipe": "the bare pipe"}.get(reference, "nginx")
        if target.scheme == "https":
            to = "nginx over HTTP"
        notes.append(f"target ≥ {goal}× {to}: {verdict(ratio >= goal)}")
    bare = references.get("bare file" if target.scheme is None else "bare pipe")
    if bare and reference != "bare pipe":
        notes.append(f"{rps / bare:.2f}× bare {'file' if target.scheme is None else 'pipe'}")
    if reference == "bare pipe" and references.get("origin"):
        notes.append(f"{rps / references['origin']:.2f}× origin")
    return ratio, reference, notes


async def stream(bench: Bench, target: Target, level: int, references: dict[str, float]) -> None:
    app, clip = target.app, target.clip
    source = "stored" if target.scheme is None else "remote"
    tally = await PlayTally.begin(bench.session, app.url, clip.id, source, app.workers() == 1)
    caching = await cache.snapshot(bench.session, app.url)
    mark = bench.origin.fetch_mark()
    profiled = bench.options.profile == target.name and level == REFERENCE_LEVEL
    recording = (
        profile.recording(
            app.pid, bench.options.duration, bench.results / f"profile-{source}-c{level}.txt"
        )
        if profiled
        else contextlib.nullcontext([])
    )
    async with recording as summary:
        result = await bench.wrk(target.url, level, body_bytes=clip.size)
    count = await tally.count(result.requests, level)
    ratio, reference, notes = ratios(target, level, result.rps, references)
    if level == 256:
        ok = result.error_count == 0 and result.p99_ms < P99_LIMIT_MS
        notes.append(f"target 0 errors, p99 < {P99_LIMIT_MS} ms: {verdict(ok)}")
    row = Row.of_load(
        result,
        scenario=f"{target.name} c{level}",
        target="app" if target.app is bench.app else "app (cache off)",
        ratio=ratio,
        ratio_to=reference,
        count_ok=count.ok,
        count=count.describe(),
    )
    if target.scheme is not None:
        await origin_side(bench, row, target, caching, mark, count.plays, notes)
    notes.append(f"count {count.describe()}")
    row.note = "; ".join(notes)
    bench.report.add(row)
    for text in summary:
        print(f"\nprofile of the app, {target.name} c{level}:\n{text}\n", flush=True)
        bench.report.notes.append(f"profile {target.name} c{level}:\n{text}")


async def origin_side(
    bench: Bench,
    row: Row,
    target: Target,
    caching: dict[str, float] | None,
    mark: int,
    plays: int,
    notes: list[str],
) -> None:
    """Fill in what the origin and the cache saw of a remote row."""
    used = cache.use(caching, await cache.snapshot(bench.session, target.app.url), target.cached)
    fetches = bench.origin.fetches_since(mark, target.clip.origin_path, target.scheme)
    row.cache = used.state
    row.extra["cache_requests"] = used.requests
    notes.append(used.describe())
    if fetches is not None:
        row.origin_per_1000 = fetches.per_1000(plays)
        row.extra["origin_fetches"] = fetches.bodies
        row.extra["origin_revalidations"] = fetches.revalidations
        notes.append(f"{fetches.describe()} for {plays:,} plays")


async def thousand_plays(bench: Bench, target: Target) -> None:
    """The hot clip played exactly PLAYS times (PLAYERS at once, every body
    read in full and its length checked): how often did the origin hear
    of it? Issue 15's target: at most once, plus revalidations."""
    app, clip = target.app, target.clip
    tally = await PlayTally.begin(bench.session, app.url, clip.id, "remote", app.workers() == 1)
    caching = await cache.snapshot(bench.session, app.url)
    mark = bench.origin.fetch_mark()
    failed: dict[str, int] = {}
    turns = iter(range(PLAYS))
    received = 0

    async def player() -> None:
        nonlocal received
        for _ in turns:
            try:
                async with bench.session.get(target.url) as response:
                    body = await response.read()
                ok = response.status == 200 and len(body) == clip.size
                kind = "ok" if ok else f"status {response.status}, {len(body)} bytes"
            except aiohttp.ClientError as error:
                kind = type(error).__name__
            if kind == "ok":
                received += len(body)
            else:
                failed[kind] = failed.get(kind, 0) + 1

    began = time.monotonic()
    await asyncio.gather(*(player() for _ in range(PLAYERS)))
    seconds = time.monotonic() - began
    errors = sum(failed.values())
    count = await tally.count(PLAYS - errors, errors)
    row = Row(
        scenario=f"remote {PLAYS:,} plays",
        target="app",
        rps=PLAYS / seconds,
        mib_s=received / seconds / 2**20,
        errors=errors,
        error_kinds=failed,
        count_ok=count.ok,
        count=count.describe(),
    )
    notes = []
    await origin_side(bench, row, target, caching, mark, count.plays, notes)
    bodies = row.extra.get("origin_fetches")
    if bodies is not None:
        notes.insert(0, f"target ≤ 1 origin fetch (+ revalidations): {verdict(bodies <= 1)}")
    notes.append(f"{PLAYERS} players at once, harness client; count {count.describe()}")
    row.note = "; ".join(notes)
    bench.report.add(row)
