"""Scenario 4: time to first byte of the 5 MiB clip, remote and stored,
over sequential requests, against the same file from the origin."""

import asyncio
import threading

from bench import firstbyte
from bench.counting import PlayTally
from bench.report import Row
from bench.scenarios import Bench, verdict

ROUNDS = 200
ADDED_P50_LIMIT_MS = 1.0


async def run(bench: Bench) -> None:
    cat = bench.catalogue
    origin_port = int(bench.origin.url.rsplit(":", 1)[1])
    clips = {"remote": cat.remote_big, "stored": cat.stored_big}
    probes = {
        "origin": firstbyte.Probe(
            "127.0.0.1", origin_port, cat.remote_big.origin_path, cat.remote_big.size
        ),
        **{
            source: firstbyte.Probe(
                "127.0.0.1", bench.app.port, f"/clips/{clip.id}/stream", clip.size
            )
            for source, clip in clips.items()
        },
    }
    tallies = {
        source: await PlayTally.begin(
            bench.session, bench.app.url, clip.id, source, bench.exact_counts
        )
        for source, clip in clips.items()
    }
    stop = threading.Event()
    try:
        results = await asyncio.to_thread(firstbyte.measure, probes, ROUNDS, stop)
    except asyncio.CancelledError:
        stop.set()  # the thread cannot be cancelled: ask it to stop
        raise
    origin = results["origin"]
    base50, base99 = origin.percentile(50), origin.percentile(99)
    bench.report.add(
        Row(
            scenario="ttfb 5 MiB",
            target=bench.origin.kind.split(" (")[0],
            rps=len(origin.samples) / origin.busy if origin.busy else None,
            mib_s=origin.bytes / origin.busy / 2**20 if origin.busy else None,
            p50_ms=base50,
            p99_ms=base99,
            errors=origin.errors,
            error_kinds={"failed": origin.errors} if origin.errors else {},
            note=f"{ROUNDS} sequential requests, one keep-alive connection",
        )
    )
    for source in clips:
        result, probe = results[source], probes[source]
        count = await tallies[source].count(probe.completed, probe.failed)
        p50, p99 = result.percentile(50), result.percentile(99)
        added50, added99 = p50 - base50, p99 - base99
        bench.report.add(
            Row(
                scenario=f"ttfb {source} 5 MiB",
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
                    f"added p50 {added50:+.2f} ms, p99 {added99:+.2f} ms; target added p50 ≤ "
                    f"{ADDED_P50_LIMIT_MS} ms: {verdict(added50 <= ADDED_P50_LIMIT_MS)}; "
                    f"count {count.describe()}"
                ),
                extra={"added_p50_ms": added50, "added_p99_ms": added99},
            )
        )
