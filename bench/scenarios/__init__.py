"""The scenarios of issue 5, a module each; `Bench` is what they share:
the running parts, the options, and the report they add rows to."""

from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import load
from bench.catalogue import Catalogue
from bench.options import Options
from bench.origin import Origin
from bench.processes import Cores
from bench.report import Report
from bench.service import App

# A short run on a cold app measures imports and empty pools, not serving.
WARMUP_SECONDS = 1.0


@dataclass
class Bench:
    options: Options
    cores: Cores
    app: App
    origin: Origin
    catalogue: Catalogue
    session: aiohttp.ClientSession
    report: Report
    scratch: Path  # the run's temporary directory
    results: Path  # bench/results/
    database_url: str
    media_dir: Path
    # With one worker /metrics sees every stream, so counts are checked
    # exactly; with more, only against the client's bounds.
    exact_counts: bool

    async def wrk(
        self,
        url: str,
        connections: int,
        *,
        body_bytes: int | None = None,
        duration: float | None = None,
        pinned: bool = True,
    ) -> load.Load:
        return await load.run(
            url,
            connections=connections,
            duration=self.options.duration if duration is None else duration,
            scratch=self.scratch,
            cpus=self.cores.load if pinned else None,
            body_bytes=body_bytes,
        )


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"
