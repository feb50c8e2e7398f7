"""Scenario 1: the catalogue API at c32, against /healthz as the
framework's floor (same process, no database)."""

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
        result = await bench.wrk(bench.app.url + path, CONNECTIONS)
        floor = floor or result.rps
        ratio = result.rps / floor if floor else None
        target = TARGETS.get(name)
        note = f"GET {path}"
        if target is not None and ratio is not None:
            note += f"; target ≥ {target}×: {verdict(ratio >= target)}"
        bench.report.add(
            Row(
                scenario=f"api {name} c{CONNECTIONS}",
                target="app",
                rps=result.rps,
                mib_s=result.mib_s,
                p50_ms=result.p50_ms,
                p99_ms=result.p99_ms,
                errors=result.error_count,
                error_kinds=result.errors,
                ratio=None if name == "healthz" else ratio,
                ratio_to=None if name == "healthz" else "healthz",
                note=note,
            )
        )
