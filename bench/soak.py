"""`python -m bench.soak` (`make soak`): SOAK_MINUTES (default 10) of mixed
load against one app process, its resources sampled every 10 s, then three
verdicts: no upward trend, no failed request, every play counted exactly.

The parts are the benchmark's (bench/rig.py): a fresh PostgreSQL, the
10,000-clip catalogue, nginx as origin, the app as its own process; the
load is bench/mix.py. Writes bench/results/soak-latest.json, prints a
table, and exits non-zero on a failed request, a wrong count or a trend.
"""

import asyncio
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import counting, load, mix, report, rig
from bench.catalogue import Clip
from bench.counting import PlayTally
from bench.mix import Traffic
from bench.options import OptionError, SoakOptions
from bench.rig import Rig
from bench.scenarios import WARMUP_SECONDS
from bench.trend import Limit, Trend, judge

OUTPUT = Path(__file__).resolve().parent / "results" / "soak-latest.json"
SAMPLE_SECONDS = 10.0
MIN_SAMPLES = 12  # short runs sample faster, so each third has a few
# After the load: time for streams to end, and for pooled keep-alive
# connections to the origin to expire (aiohttp keeps them 15 s).
SETTLE_BOUND = 30.0
BACK_BOUND = 60.0

# What may move, and by how much, before it counts as a leak. RSS is judged
# under load only: the allocator keeps its arenas after a peak. Counts of
# things (fds, tasks) must also come back to idle once the load has gone.
LIMITS = {
    "rss_mib": Limit(growth=0.10),
    "fds": Limit(growth=0.10, slack=16, after_slack=16),
    "tasks": Limit(growth=0.10, slack=16, after_slack=16),
    "pool_connections": Limit(growth=0.10, slack=1),
    "pool_in_use": Limit(growth=None, after_slack=0),
    "streams_in_flight": Limit(growth=None, after_slack=0),
}
LABELS = {
    "rss_mib": "RSS MiB",
    "fds": "open fds",
    "tasks": "event-loop tasks",
    "pool_connections": "pool connections",
    "pool_in_use": "pool in use",
    "streams_in_flight": "streams in flight",
}
TASKS = "clips_event_loop_tasks"
CREATE = f"POST /clips (1 in {mix.UPLOAD_EVERY} uploads)"
# Counters whose change over the soak goes into the result, for the story
# behind a failure: how streams ended, what the origin and database did.
COUNTERS = (
    "clips_streams_ended_total",
    "clips_upstream_requests_total",
    "clips_db_errors_total",
    "clips_plays_total",
)


@dataclass(frozen=True)
class Sample:
    t_s: float  # since the load began (the idle sample: since sampling began)
    phase: str  # "idle", "load" or "after"
    rss_mib: float  # VmRSS of the app's process tree
    fds: int  # /proc/PID/fd
    threads: int
    pool_connections: float | None
    pool_in_use: float | None
    tasks: float | None  # None: /metrics has no task gauge
    streams_in_flight: float | None
    requests_per_s: float | None  # answered since the previous sample, /metrics included


class Sampler:
    def __init__(self, parts: Rig):
        self._parts = parts
        self.samples: list[Sample] = []
        self.began = time.monotonic()
        self._last: tuple[float, float] | None = None  # (time, requests answered)

    async def take(self, phase: str) -> Sample:
        usage = self._parts.app.usage()
        values = await counting.metrics(self._parts.session, self._parts.app.url)
        now = time.monotonic()
        answered = sum(v for k, v in values.items() if k.startswith("clips_http_requests_total"))
        rate = None
        if self._last is not None and now > self._last[0]:
            rate = (answered - self._last[1]) / (now - self._last[0])
        self._last = (now, answered)
        sample = Sample(
            t_s=round(now - self.began, 1),
            phase=phase,
            rss_mib=round(usage.rss_kib / 1024, 1),
            fds=usage.fds,
            threads=usage.threads,
            pool_connections=values.get("clips_db_pool_connections"),
            pool_in_use=values.get("clips_db_pool_connections_in_use"),
            tasks=values.get(TASKS),
            streams_in_flight=values.get("clips_streams_in_flight"),
            requests_per_s=None if rate is None else round(rate, 1),
        )
        self.samples.append(sample)
        return sample

    async def every(self, seconds: float, stop: asyncio.Event) -> None:
        """A sample every `seconds` from the load's start (not at it: the
        first would be idle) until `stop`."""
        due = time.monotonic()
        while True:
            due += seconds
            await mix.pause(stop, max(0.0, due - time.monotonic()))
            if stop.is_set():
                return
            print(progress(await self.take("load")), flush=True)

    def restart_clock(self) -> None:
        self.began = time.monotonic()


def progress(sample: Sample) -> str:
    tasks = "n/a" if sample.tasks is None else f"{sample.tasks:.0f}"
    rate = "-" if sample.requests_per_s is None else f"{sample.requests_per_s:,.0f}"
    return (
        f"  {sample.phase:5} t={sample.t_s:6.0f} s  RSS {sample.rss_mib:6.1f} MiB  "
        f"fds {sample.fds:4}  pool {sample.pool_connections or 0:.0f}"
        f"/{sample.pool_in_use or 0:.0f} in use  tasks {tasks:>4}  "
        f"streams {sample.streams_in_flight or 0:4.0f}  {rate} req/s"
    )


async def in_flight(parts: Rig) -> float:
    values = await counting.metrics(parts.session, parts.app.url)
    return values.get("clips_streams_in_flight", 0)


async def settle(parts: Rig, bound: float) -> bool:
    """Wait until no stream is in flight; False if some never ended."""
    deadline = time.monotonic() + bound
    while await in_flight(parts) > 0:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def is_back(now: Sample, idle: Sample) -> bool:
    return all(limit.back(getattr(idle, n), getattr(now, n)) for n, limit in LIMITS.items())


async def back_to_idle(sampler: Sampler, idle: Sample, bound: float) -> float | None:
    """Sample every second until the counts are back near idle (pooled
    keep-alive connections expire on their own clock); the seconds it
    took, or None if they were not back within `bound`."""
    began = time.monotonic()
    while not is_back(await sampler.take("after"), idle):
        if time.monotonic() - began > bound:
            return None
        await asyncio.sleep(1.0)
    return round(time.monotonic() - began, 1)


@dataclass(frozen=True)
class Mix:
    """What the soak sends where; the Traffic names are the table's rows."""

    api: dict[str, str]  # name: path, each at API_CONNECTIONS
    streamed: dict[str, Clip]  # name: clip, 500 KiB through wrk
    listened: dict[str, Clip]  # name: clip, 5 MiB to slow listeners
    seeked: dict[str, tuple[int, int]]  # name: (clip id, size), Range only

    @classmethod
    async def plan(cls, parts: Rig, audio: bytes) -> "Mix":
        cat = parts.catalogue
        # Seeks go to clips of their own, made here: the played clips' counts
        # stay exact, and these must end with zero plays.
        remote = await mix.create_remote(parts, 0)
        stored = await mix.create_uploaded(parts, 0, audio)
        return cls(
            api={
                f"api list c{mix.API_CONNECTIONS}": "/clips?limit=50",
                f"api genre popular c{mix.API_CONNECTIONS}": (
                    f"/clips?genre={cat.genre}&sort=popular&limit=50"
                ),
                f"api stats c{mix.API_CONNECTIONS}": f"/clips/{cat.stored_small.id}/stats",
            },
            streamed={
                f"{c.source} 500 KiB c{mix.STREAM_CONNECTIONS}": c
                for c in (cat.remote_small, cat.stored_small)
            },
            listened={
                f"{c.source} 5 MiB slow listeners": c for c in (cat.remote_big, cat.stored_big)
            },
            seeked={
                "remote Range seeks": (remote, cat.remote_small.size),
                "stored Range seeks": (stored, len(audio)),
            },
        )

    @property
    def played(self) -> dict[str, Clip]:
        """The clips whose plays must equal the streams started from byte 0."""
        return self.streamed | self.listened


async def warm(parts: Rig, plan: Mix, cpus: frozenset[int] | None) -> None:
    """Imports, pool, upstream connections and caches, before idle is read."""
    targets = [(path, None) for path in plan.api.values()]
    targets += [(f"/clips/{c.id}/stream", c.size) for c in plan.streamed.values()]
    await asyncio.gather(
        *(
            load.run(
                parts.app.url + path,
                connections=2,
                duration=WARMUP_SECONDS,
                scratch=parts.scratch,
                cpus=cpus,
                body_bytes=size,
            )
            for path, size in targets
        )
    )


async def drive(
    parts: Rig,
    plan: Mix,
    audio: bytes,
    seconds: float,
    sampler: Sampler,
    cpus: frozenset[int] | None,
) -> dict[str, Traffic]:
    """Every part of the mix at once for `seconds`, sampled meanwhile."""
    rng = random.Random(9)  # the same come-and-go pattern every run
    traffic = {
        name: Traffic(name)
        for name in (*plan.api, *plan.streamed, *plan.listened, *plan.seeked, CREATE)
    }
    stop = asyncio.Event()
    until = time.monotonic() + seconds
    sampler.restart_clock()
    async with asyncio.TaskGroup() as group:

        def start(work) -> None:
            group.create_task(work)

        for name, path in plan.api.items():
            start(mix.hammer(parts, traffic[name], path, mix.API_CONNECTIONS, until, cpus))
        for name, clip in plan.streamed.items():
            path = f"/clips/{clip.id}/stream"
            start(
                mix.hammer(
                    parts, traffic[name], path, mix.STREAM_CONNECTIONS, until, cpus, clip.size
                )
            )
        listened = list(plan.listened.items())
        for n in range(mix.READER_GROUPS):
            name, clip = listened[n % len(listened)]
            # Staggered, so some group arrives or leaves every few seconds.
            delay = n * sum(mix.HOLD_SECONDS) / 2 / mix.READER_GROUPS
            path = f"/clips/{clip.id}/stream"
            start(mix.come_and_go(parts, traffic[name], path, delay, stop, fork(rng)))
        for name, (clip_id, size) in plan.seeked.items():
            start(mix.seek(parts, traffic[name], clip_id, size, stop, fork(rng)))
        start(mix.create(parts, traffic[CREATE], audio, stop))
        start(sampler.every(min(SAMPLE_SECONDS, seconds / MIN_SAMPLES), stop))
        await asyncio.sleep(seconds)
        stop.set()
    return traffic


def fork(rng: random.Random) -> random.Random:
    return random.Random(rng.random())


async def soak(options: SoakOptions, host: rig.Host, parts: Rig) -> dict:
    """Run the mix; the result, its "failures" included."""
    app, cpus = parts.app, host.cores.load
    seconds = options.minutes * 60
    audio = mix.wav()
    plan = await Mix.plan(parts, audio)
    await warm(parts, plan, cpus)
    await settle(parts, SETTLE_BOUND)
    await asyncio.sleep(1.0)  # closed transports are released on the next loop turns
    sampler = Sampler(parts)
    idle = await sampler.take("idle")
    print(progress(idle), flush=True)
    before = await counting.metrics(parts.session, app.url)
    exact = app.workers() == 1
    tallies = {
        name: await PlayTally.begin(
            parts.session, app.url, clip.id, clip.source, exact, by_clip=True
        )
        for name, clip in plan.played.items()
    }

    traffic = await drive(parts, plan, audio, seconds, sampler, cpus)
    loaded = round(time.monotonic() - sampler.began, 1)

    failures = []
    if not await settle(parts, SETTLE_BOUND):
        failures.append(f"streams still in flight {SETTLE_BOUND:g} s after the load stopped")
    took = await back_to_idle(sampler, idle, BACK_BOUND)
    after = sampler.samples[-1]
    print(progress(after), flush=True)
    print(
        "back near idle "
        + (f"after {took:g} s" if took is not None else f"NOT within {BACK_BOUND:g} s"),
        flush=True,
    )
    counts = {
        name: await tallies[name].count(traffic[name].requests, traffic[name].cut)
        for name in plan.played
    }
    seek_plays = {
        name: await counting.play_count(parts.session, app.url, clip_id)
        for name, (clip_id, _) in plan.seeked.items()
    }
    end = await counting.metrics(parts.session, app.url)

    summary = summarise([s for s in sampler.samples if s.phase == "load"], idle, after)
    trend_problems = [p for t in summary.values() for p in t.problems]
    failures += [
        f"{t.name}: {t.error_count} failed requests {t.errors}"
        for t in traffic.values()
        if t.error_count
    ]
    failures += [f"count wrong, {name}: {c.describe()}" for name, c in counts.items() if not c.ok]
    failures += [f"{name} counted {p} plays" for name, p in seek_plays.items() if p]
    failures += trend_problems
    result = dict(
        settings={
            "minutes": options.minutes,
            "load_seconds": loaded,
            "sample_seconds": min(SAMPLE_SECONDS, seconds / MIN_SAMPLES),
            "pinning": host.cores.describe(),
            "origin": parts.origin.kind,
            "clips": parts.catalogue.clips,
            "app_processes_serving": app.workers(),
            "mix": {
                "api_paths": plan.api,
                "api_connections": mix.API_CONNECTIONS,
                "stream_connections": mix.STREAM_CONNECTIONS,
                "wrk_round_seconds": mix.ROUND_SECONDS,
                "slow_listeners": mix.READER_GROUPS * mix.READERS_PER_GROUP,
                "listener_groups": mix.READER_GROUPS,
                "listener_hold_seconds": mix.HOLD_SECONDS,
                "seek_pause_seconds": mix.SEEK_PAUSE,
                "create_every_seconds": mix.CREATE_EVERY,
                "upload_every": mix.UPLOAD_EVERY,
            },
            "limits": {name: asdict(limit) for name, limit in LIMITS.items()},
        },
        verdict="upward trend" if trend_problems else "no upward trend",
        back_to_idle_seconds=took,
        summary={name: {**asdict(t), "change": t.change} for name, t in summary.items()},
        traffic=[{**asdict(t), "error_count": t.error_count} for t in traffic.values()],
        counts={name: {**asdict(c), "ok": c.ok} for name, c in counts.items()},
        seek_clip_plays=seek_plays,
        app_counters={
            key: value - before.get(key, 0)
            for key, value in end.items()
            if key.startswith(COUNTERS) and value != before.get(key, 0)
        },
        samples=[asdict(s) for s in sampler.samples],
        failures=failures,
    )
    print("\n" + trend_table(summary) + "\n\n" + traffic_table(list(traffic.values()), loaded))
    for name, count in counts.items():
        print(f"count {name}: {count.describe()}")
    for name, plays in seek_plays.items():
        print(f"count {name}: {'WRONG' if plays else 'ok'}: plays +{plays} (seeks only)")
    return result


def summarise(samples: list[Sample], idle: Sample, after: Sample) -> dict[str, Trend]:
    found = {}
    for name, limit in LIMITS.items():
        points = [(s.t_s, getattr(s, name)) for s in samples]
        points = [(t, v) for t, v in points if v is not None]
        if not points:
            continue  # e.g. no task gauge on this app
        times, values = zip(*points, strict=True)
        found[name] = judge(
            LABELS[name],
            list(times),
            list(values),
            getattr(idle, name),
            getattr(after, name),
            limit,
        )
    return found


def _cell(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def trend_table(summary: dict[str, Trend]) -> str:
    head = (
        f"{'series':18} {'idle':>8} {'first ⅓':>8} {'last ⅓':>8} {'change':>7} "
        f"{'slope/min':>9} {'after':>8}  verdict"
    )
    lines = [head]
    for name in LIMITS:
        label = LABELS[name]
        if name not in summary:
            lines.append(f"{label:18} {'n/a':>8}  (not exported by /metrics)")
            continue
        t = summary[name]
        digits = 1 if name == "rss_mib" else 0
        change = "-" if t.change is None else f"{t.change:+.1%}"
        lines.append(
            f"{label:18} {_cell(t.idle, digits):>8} {_cell(t.first, digits):>8} "
            f"{_cell(t.last, digits):>8} {change:>7} {t.slope_per_min:>+9.2f} "
            f"{_cell(t.after, digits):>8}  {'UP' if t.problems else 'ok'}"
        )
    return "\n".join(lines)


def traffic_table(traffic: list[Traffic], seconds: float) -> str:
    lines = [
        f"{'traffic':30} {'requests':>10} {'req/s':>8} {'MiB/s':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
    ]
    for t in traffic:
        p50 = sorted(t.p50_ms)[len(t.p50_ms) // 2] if t.p50_ms else None
        lines.append(
            f"{t.name:30} {t.requests:>10,} {t.requests / seconds:>8,.1f} "
            f"{t.bytes / seconds / 2**20:>7,.1f} {_cell(p50, 2):>7} {_cell(t.p99_ms, 2):>7} "
            f"{t.error_count:>6}"
        )
    return "\n".join(lines)


async def run(options: SoakOptions) -> int:
    host = rig.prepare(options.pin)
    machine = report.machine()
    # Other work on a shared machine moves every figure: say how busy it was.
    machine["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    began = time.monotonic()
    async with rig.running(options.database_url, 1, host.cores) as parts:
        print(
            f"soak: {options.minutes:g} min of mixed load; origin {parts.origin.kind}; "
            f"{parts.catalogue.clips} clips; app pid {parts.app.pid}; {host.cores.describe()}",
            flush=True,
        )
        result = await soak(options, host, parts)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {"machine": machine, "seconds": round(time.monotonic() - began, 1)} | result
    result["notes"] = host.notes
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nverdict: {result['verdict']}; written to {OUTPUT}")
    for failure in result["failures"]:
        print(f"FAILED {failure}")
    print(
        f"load average (1, 5, 15 min): {machine['loadavg_at_start']} at start, "
        f"{machine['loadavg_at_end']} at end"
    )
    return 1 if result["failures"] else 0


def main() -> None:
    try:
        options = SoakOptions.from_env(dict(os.environ))
    except OptionError as error:
        raise SystemExit(f"soak: {error}") from None
    rig.stop_on_sigterm()
    try:
        code = asyncio.run(run(options))
    except KeyboardInterrupt:
        print("\nsoak: interrupted; everything it started is stopped and removed", flush=True)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
