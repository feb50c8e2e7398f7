"""Scenarios 2 and 3 (with 6, counting): the 500 KiB clip streamed remote
and stored at rising concurrency, each level run against the origin first
so every ratio comes from neighbouring minutes of the same run."""

import contextlib

from bench import profile
from bench.counting import PlayTally
from bench.report import Row
from bench.scenarios import WARMUP_SECONDS, Bench, verdict

LEVELS = (1, 16, 64, 256)
# Issue 5's targets at c64, as ratios to the origin's requests/s.
TARGETS = {"stored": 0.6, "remote": 0.3}
P99_LIMIT_MS = 250  # at c256


async def run(bench: Bench, sources: list[str]) -> None:
    clips = {"remote": bench.catalogue.remote_small, "stored": bench.catalogue.stored_small}
    for source in sources:
        clip = clips[source]
        await bench.wrk(
            f"{bench.app.url}/clips/{clip.id}/stream",
            16,
            body_bytes=clip.size,
            duration=WARMUP_SECONDS,
        )
    for level in LEVELS:
        size = clips[sources[0]].size
        origin = await bench.wrk(
            bench.origin.url + clips[sources[0]].origin_path, level, body_bytes=size
        )
        bench.report.add(
            Row(
                scenario=f"origin c{level}",
                target=bench.origin.kind.split(" (")[0],
                rps=origin.rps,
                mib_s=origin.mib_s,
                p50_ms=origin.p50_ms,
                p99_ms=origin.p99_ms,
                errors=origin.error_count,
                error_kinds=origin.errors,
                note="500 KiB file straight from the origin",
            )
        )
        for source in sources:
            await stream(bench, source, clips[source], level, origin.rps)


async def stream(bench: Bench, source: str, clip, level: int, origin_rps: float) -> None:
    tally = await PlayTally.begin(bench.session, bench.app.url, clip.id, source, bench.exact_counts)
    profiled = bench.options.profile == source and level == 64
    recording = (
        profile.recording(
            bench.app.pid, bench.options.duration, bench.results / f"profile-{source}-c{level}.txt"
        )
        if profiled
        else contextlib.nullcontext([])
    )
    async with recording as summary:
        result = await bench.wrk(
            f"{bench.app.url}/clips/{clip.id}/stream", level, body_bytes=clip.size
        )
    count = await tally.count(result.requests, level)
    ratio = result.rps / origin_rps if origin_rps else None
    notes = []
    if level == 64 and ratio is not None:
        notes.append(f"target ≥ {TARGETS[source]}×: {verdict(ratio >= TARGETS[source])}")
    if level == 256:
        ok = result.error_count == 0 and result.p99_ms < P99_LIMIT_MS
        notes.append(f"target 0 errors, p99 < {P99_LIMIT_MS} ms: {verdict(ok)}")
    notes.append(f"count {count.describe()}")
    bench.report.add(
        Row.of_load(
            result,
            scenario=f"{source} c{level}",
            target="app",
            ratio=ratio,
            ratio_to="origin",
            count_ok=count.ok,
            count=count.describe(),
            note="; ".join(notes),
        )
    )
    for text in summary:
        print(f"\nprofile of the app, {source} c{level}:\n{text}\n", flush=True)
        bench.report.notes.append(f"profile {source} c{level}:\n{text}")
