"""Scenario 1: the catalogue API at c32, against /healthz as the
framework's floor (same process, no database)."""

import contextlib

from bench import profile
from bench.report import Row
from bench.scenarios import WARMUP_SECONDS, Bench, verdict

CONNECTIONS = 32
# Issue 5's targets, as ratios to /healthz's requests/s.
TARGETS = {"list": 0.5, "stats": 0.6}


async def run(bench: Bench) -> None:
    clip = bench.catalogue.stored_small.id
    paths = [
        ("healthz", "/healthz"),
        ("list", "/clips?limit=50"),
        ("genre popular", f"/clips?genre={bench.catalogue.genre}&sort=popular&limit=50"),
        ("stats", f"/clips/{clip}/stats"),
    ]
    for _, path in paths:
        await bench.wrk(bench.app.url + path, CONNECTIONS, duration=WARMUP_SECONDS)
    floor = None
    for name, path in paths:
        recording = (
            profile.recording(
                bench.app.pid, bench.options.duration, bench.results / "profile-api-list.txt"
            )
            if bench.options.profile == "api" and name == "list"
            else contextlib.nullcontext([])
        )
        async with recording as summary:
            result = await bench.wrk(bench.app.url + path, CONNECTIONS)
        for text in summary:
            print(f"\nprofile of the app, api {name}:\n{text}\n", flush=True)
            bench.report.notes.append(f"profile api {name}:\n{text}")
        floor = floor or result.rps
        ratio = result.rps / floor if floor else None
        target = TARGETS.get(name)
        note = f"GET {path}"
        if target is not None and ratio is not None:
            note += f"; target ≥ {target}×: {verdict(ratio >= target)}"
        bench.report.add(
            Row.of_load(
                result,
                scenario=f"api {name} c{CONNECTIONS}",
                target="app",
                ratio=None if name == "healthz" else ratio,
                ratio_to=None if name == "healthz" else "healthz",
                note=note,
            )
        )
