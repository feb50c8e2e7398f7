"""Scenario: previews (issue 18). What a listen downloads before and after
previews, for the demo catalogue, and how many clips a minute the app's
job process makes, on the servers' core.

- Bytes per listen: the six demo clips (db/seed.py's WAVs) are added with
  their jobs, made by the running app, then each is fetched whole through
  its stream_url (the preview) and with `?variant=original`: the bytes a
  player downloads for one listen, after and before previews.
- Throughput: CLIPS copies of a 20 s 44.1 kHz stereo WAV (a typical
  upload) are queued at once; the app's one job runner (JOB_WORKERS=1,
  pinned with the app) makes each clip's preview and peaks. Clips per
  minute are counted from the first clip finished to the last (steady
  state: no poll interval or process start inside), and, from /metrics,
  as 60 s over the mean job time per clip.
"""

import asyncio
import math
import time
from pathlib import Path

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from bench.report import Row
from bench.scenarios import Bench
from db import clips
from db.queries import Queries
from db.seed import DEMOS, write_demo_files
from jobs.media import encode_preview, measure_peaks
from storage import MediaStore
from tests.audio import stereo_wav

SQL = Queries.load(Path(__file__).resolve().parent.parent, "previews.sql")

CLIPS = 20
STEREO_SECONDS = 20.0
JOBS = ("preview", "peaks")
WAIT_SECONDS = 300.0


def job_seconds(text: str) -> float:
    """Seconds of job time /metrics reports, both kinds together."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "clips_job_duration_seconds_sum"
    )


def cpu_seconds_per_clip(wav: Path, rounds: int = 3) -> float:
    """CPU seconds the same work (preview and peaks of `wav`) takes here,
    the least of `rounds`: what the machine's load cannot inflate, unlike
    the job times the app reports."""
    store = MediaStore(wav.parent)
    best = math.inf
    for _ in range(rounds):
        began = time.process_time()
        preview = encode_preview(store, str(wav), STEREO_SECONDS, 128)
        measure_peaks(str(wav), STEREO_SECONDS)
        best = min(best, time.process_time() - began)
        store.delete(preview.name)
    return best


async def add(conn, title: str, name: str, seconds: float) -> int:
    clip = await clips.create_clip(
        conn, title=title, description="", genre="bench", duration_seconds=seconds,
        audio_url=None, media_path=name, content_type="audio/wav", jobs=JOBS,
    )  # fmt: skip
    return clip["id"]


async def finished(conn, ids: list[int]) -> dict[int, tuple[str, float]]:
    """Each clip's jobs once all have ended: the worst state and when the
    last ended (epoch seconds); waits up to WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        rows = await conn.fetch(SQL["bench_jobs_ended"], ids)
        if len(rows) == len(ids) and all(r["ended"] for r in rows):
            return {r["clip_id"]: ("failed" if r["failed"] else "done", r["at"]) for r in rows}
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs of {len(ids)} clips not ended within {WAIT_SECONDS:g} s")
        await asyncio.sleep(0.1)  # polling the table the app writes


async def fetched_bytes(bench: Bench, url: str) -> int:
    async with bench.session.get(url) as response:
        response.raise_for_status()
        return len(await response.read())


async def run(bench: Bench) -> None:
    conn = await asyncpg.connect(bench.database_url)
    try:
        await bytes_per_listen(bench, conn)
        await throughput(bench, conn)
    finally:
        await conn.close()


async def bytes_per_listen(bench: Bench, conn) -> None:
    facts = await asyncio.to_thread(write_demo_files, bench.media_dir)
    ids = [
        await add(conn, title, name, fact.duration_seconds)
        for (name, title, *_), fact in zip(DEMOS, facts, strict=True)
    ]
    states = await finished(conn, ids)
    failed = sum(state == "failed" for state, _ in states.values())
    original = preview = 0
    for clip_id in ids:
        stream = f"{bench.app.url}/clips/{clip_id}/stream"
        preview += await fetched_bytes(bench, stream)
        original += await fetched_bytes(bench, stream + "?variant=original")
    before, after = original / len(ids), preview / len(ids)
    bench.report.add(
        Row(
            scenario="previews: bytes per listen",
            target="app",
            errors=failed,
            error_kinds={"preview failed": failed} if failed else {},
            ratio=after / before,
            ratio_to="the original",
            note=f"demo catalogue ({len(ids)} clips): {before:,.0f} B a listen before"
            f" previews, {after:,.0f} B after",
            extra={"bytes_per_listen_original": before, "bytes_per_listen_preview": after},
        )
    )


async def throughput(bench: Bench, conn) -> None:
    wav = await asyncio.to_thread(stereo_wav, STEREO_SECONDS)
    (bench.media_dir / "bench-stereo-0.wav").write_bytes(wav)
    for n in range(1, CLIPS):
        (bench.media_dir / f"bench-stereo-{n}.wav").hardlink_to(
            bench.media_dir / "bench-stereo-0.wav"
        )
    async with bench.session.get(f"{bench.app.url}/metrics") as response:
        metrics_before = await response.text()
    ids = [
        await add(conn, f"Stereo {n}", f"bench-stereo-{n}.wav", STEREO_SECONDS)
        for n in range(CLIPS)
    ]
    states = await finished(conn, ids)
    async with bench.session.get(f"{bench.app.url}/metrics") as response:
        metrics_after = await response.text()
    failed = sum(state == "failed" for state, _ in states.values())
    ends = sorted(at for _, at in states.values())
    steady = (len(ends) - 1) / (ends[-1] - ends[0]) * 60 if ends[-1] > ends[0] else None

    per_clip = (job_seconds(metrics_after) - job_seconds(metrics_before)) / CLIPS
    cpu = await asyncio.to_thread(cpu_seconds_per_clip, bench.media_dir / "bench-stereo-0.wav")
    cores = "1 core" if bench.cores.servers and len(bench.cores.servers) == 1 else "not pinned"
    bench.report.add(
        Row(
            scenario="previews: job throughput",
            target="app",
            errors=failed,
            error_kinds={"job failed": failed} if failed else {},
            note=f"{CLIPS} clips of {STEREO_SECONDS:g} s 44.1 kHz stereo WAV, preview + peaks,"
            f" JOB_WORKERS=1 ({cores}): {steady or 0:.0f} clips/min steady,"
            f" {per_clip:.2f} s of job time a clip ({60 / per_clip:.0f} clips/min);"
            f" {cpu:.2f} s of CPU a clip ({60 / cpu:.0f} clips per CPU-minute)",
            extra={
                "clips_per_minute": steady,
                "job_seconds_per_clip": per_clip,
                "clips_per_minute_by_job_time": 60 / per_clip,
                "cpu_seconds_per_clip": cpu,
                "clips_per_cpu_minute": 60 / cpu,
            },
        )
    )
