"""`python -m bench` (`make bench`): start everything fresh, run the
selected scenarios, print the table, write bench/results/latest.json, and
exit non-zero if any request failed or any count was wrong.

Everything started here is stopped and deleted on the way out, on success,
failure, Ctrl-C or SIGTERM alike: the parts are entered in one exit stack
and run in their own sessions, so a Ctrl-C reaches only this process.
"""

import asyncio
import os
import sys
import time
import traceback
from pathlib import Path

import aiohttp

from bench import report, rig, service
from bench.load import wrk_version
from bench.options import OptionError, Options
from bench.scenarios import Bench, api, memory, previews, scaling, streams, ttfb

RESULTS = Path(__file__).resolve().parent / "results"


async def run(options: Options) -> int:
    host = rig.prepare(options.pin)
    cores = host.cores
    results = report.Report(
        machine=report.machine(),
        settings={
            "duration_s": options.duration,
            "scenarios": list(options.scenarios),
            "workers": options.workers,
            "pinning": cores.describe(),
            "database": "DATABASE_URL (fresh database on it)"
            if options.database_url
            else "embedded PostgreSQL (fresh, temporary)",
            "fd_limit": host.fd_limit,
        },
        notes=host.notes,
    )
    # Other work on a shared machine moves every absolute number: say how busy it was.
    results.machine["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    began = time.monotonic()
    async with rig.running(options.database_url, options.workers, cores) as parts:
        app = parts.app
        serving = app.workers()
        results.settings.update(
            origin=parts.origin.kind,
            load_generator=wrk_version(),
            app_processes_serving=serving,
            clips=parts.catalogue.clips,
            https_origin=parts.origin.https_url is not None,
            # Asked of every app but the cache-off one; whether an app has
            # a cache at all, each row's `cache` says.
            cache_max_bytes=service.CACHE_MAX_BYTES,
        )
        print(
            f"origin: {parts.origin.kind}; {parts.catalogue.clips} clips seeded; app pid "
            f"{app.pid} serving from {serving} process(es) (WORKERS={options.workers}); "
            f"{cores.describe()}; {options.duration:g} s per run\n",
            flush=True,
        )
        if options.workers > 1 and serving < options.workers:
            results.notes.append(
                f"WORKERS={options.workers} asked, but the app serves from "
                f"{serving} process(es): it ignores WORKERS"
            )
        bench = Bench(
            options=options,
            cores=cores,
            app=app,
            origin=parts.origin,
            catalogue=parts.catalogue,
            session=parts.session,
            report=results,
            scratch=parts.scratch,
            results=RESULTS,
            database_url=parts.database_url,
            media_dir=parts.media_dir,
            exact_counts=serving == 1,
        )
        print(report.header(), flush=True)
        aborted = None
        try:
            await scenarios(bench)
        except (OSError, RuntimeError, aiohttp.ClientError, TimeoutError) as error:
            aborted = f"aborted: {type(error).__name__}: {error}"
            traceback.print_exc()
            results.notes.append(aborted)
        results.settings["seconds"] = round(time.monotonic() - began, 1)
        results.machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        results.write(RESULTS / "latest.json")
    print("\n" + report.table(results))
    for note in results.notes:
        print(f"\nnote: {note}")
    failures = results.failures
    for failure in failures:
        print(f"FAILED {failure}")
    machine = results.machine
    print(
        f"\nload average (1, 5, 15 min): {machine['loadavg_at_start']} at start, "
        f"{machine.get('loadavg_at_end')} at end, on {machine['cores']} cores"
    )
    print(
        f"{len(results.rows)} rows in {time.monotonic() - began:.0f} s; "
        f"written to {RESULTS / 'latest.json'}"
    )
    return 1 if failures or aborted else 0


async def scenarios(bench: Bench) -> None:
    chosen = bench.options.scenarios
    sources = [s for s in ("remote", "stored") if s in chosen]
    steps = [
        ("api", "api" in chosen, lambda: api.run(bench)),
        ("+".join(sources), bool(sources), lambda: streams.run(bench, sources)),
        ("ttfb", "ttfb" in chosen, lambda: ttfb.run(bench)),
        ("memory", "memory" in chosen, lambda: memory.run(bench)),
        ("scaling", "scaling" in chosen, lambda: scaling.run(bench)),
        ("previews", "previews" in chosen, lambda: previews.run(bench)),
    ]
    timings = bench.report.settings.setdefault("scenario_seconds", {})
    for name, wanted, step in steps:
        if wanted:
            began = time.monotonic()
            await step()
            timings[name] = round(time.monotonic() - began, 1)


def main() -> None:
    try:
        options = Options.from_env(dict(os.environ))
    except OptionError as error:
        raise SystemExit(f"bench: {error}") from None

    rig.stop_on_sigterm()
    try:
        code = asyncio.run(run(options))
    except KeyboardInterrupt:
        print("\nbench: interrupted; everything it started is stopped and removed", flush=True)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
