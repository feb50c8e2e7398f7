"""Scaling out on one machine: the stored and remote c64 runs against an
app started with WORKERS=1 and then WORKERS=2, both free to use every core
(as is the load generator: pinned, two workers would share one core).
Skipped, not failed, while the app serves with one process whatever
WORKERS says."""

import itertools

from bench import service
from bench.counting import PlayTally
from bench.report import Row
from bench.scenarios import WARMUP_SECONDS, Bench, verdict

CONNECTIONS = 64
TARGET = 1.7
RUNS = itertools.count()  # an empty cache per app started


def started(bench: Bench, workers: int):
    return service.running(
        bench.database_url,
        bench.media_dir,
        bench.scratch,
        workers,
        None,
        cache_dir=bench.scratch / f"cache-scaling-{next(RUNS)}",
        ca_bundle=bench.origin.ca_bundle,
    )


async def run(bench: Bench) -> None:
    async with started(bench, 2) as app:
        serving = app.workers()
    if serving < 2:
        text = (
            f"skipped: with WORKERS=2 the app served the port from {serving} process; "
            "it does not implement WORKERS yet"
        )
        bench.report.add(
            Row(scenario=f"scaling c{CONNECTIONS}", target="app (2 workers)", note=text)
        )
        bench.report.notes.append(text)
        return
    async with started(bench, 1) as app:
        one = await measure(bench, app, 1, {})
    async with started(bench, 2) as app:
        await measure(bench, app, 2, one)


async def measure(
    bench: Bench, app: service.App, workers: int, baseline: dict[str, float]
) -> dict[str, float]:
    rps = {}
    clips = {"stored": bench.catalogue.stored_small, "remote": bench.catalogue.remote_small}
    for source, clip in clips.items():
        url = f"{app.url}/clips/{clip.id}/stream"
        await bench.wrk(url, 16, body_bytes=clip.size, duration=WARMUP_SECONDS, pinned=False)
        # /metrics answers from one worker: exact server counts only with one.
        tally = await PlayTally.begin(bench.session, app.url, clip.id, source, workers == 1)
        result = await bench.wrk(url, CONNECTIONS, body_bytes=clip.size, pinned=False)
        count = await tally.count(result.requests, CONNECTIONS)
        rps[source] = result.rps
        base = baseline.get(source)
        ratio = result.rps / base if base else None
        note = f"target ≥ {TARGET}×: {verdict(ratio >= TARGET)}; " if ratio else ""
        bench.report.add(
            Row.of_load(
                result,
                scenario=f"scaling {source} c{CONNECTIONS}",
                target=f"app ({workers} workers)",
                ratio=ratio,
                ratio_to="1 worker" if ratio else None,
                count_ok=count.ok,
                count=count.describe(),
                note=note + f"not pinned; count {count.describe()}",
            )
        )
    return rps
