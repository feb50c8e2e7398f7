"""wrk, the load generator, driven through a Lua script that reports what
the table needs: latency percentiles and every kind of error, non-2xx
statuses included."""

import asyncio
import itertools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

# done() runs once, in wrk's main thread; response() in every worker thread,
# whose globals only thread:get() can read, hence the list of threads.
SCRIPT = """\
-- Written by bench/load.py for one wrk run.
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    non2xx = 0
end
%(response)s
function done(summary, latency, requests)
    local non2xx_total = 0
    for _, thread in ipairs(threads) do
        non2xx_total = non2xx_total + (thread:get("non2xx") or 0)
    end
    local e = summary.errors
    io.write(string.format(
        "BENCH-RESULT {\\"duration_us\\":%%.0f,\\"requests\\":%%.0f,\\"bytes\\":%%.0f," ..
        "\\"connect\\":%%.0f,\\"read\\":%%.0f,\\"write\\":%%.0f,\\"status\\":%%.0f," ..
        "\\"timeout\\":%%.0f,\\"non2xx\\":%%.0f,\\"p50_us\\":%%.0f,\\"p99_us\\":%%.0f," ..
        "\\"max_us\\":%%.0f}\\n",
        summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
        e.status, e.timeout, non2xx_total, latency:percentile(50), latency:percentile(99),
        latency.max))
end
"""

# Defining response() makes wrk copy every body into a buffer for Lua: on
# 500 KiB bodies that costs the load generator more than the servers
# under test. Stream runs leave it out and check statuses another way: wrk
# counts >= 400 itself, and the byte total must cover every body in full.
RESPONSE = """
function response(status, headers, body)
    if status < 200 or status > 299 then
        non2xx = non2xx + 1
    end
end
"""

# A request slower than this is an error, not a data point.
TIMEOUT = "10s"

# A script file per run: the soak runs several wrk at once, and one
# rewriting a shared file could truncate it under another starting up.
_RUNS = itertools.count()


@dataclass(frozen=True)
class Load:
    duration: float  # seconds
    requests: int
    bytes: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    connections: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration if self.duration else 0.0

    @property
    def mib_s(self) -> float:
        return self.bytes / self.duration / 2**20 if self.duration else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


class WrkError(RuntimeError):
    pass


def wrk_version() -> str:
    return "wrk 4 (Debian)" if shutil.which("wrk") else "missing"


async def run(
    url: str,
    *,
    connections: int,
    duration: float,
    scratch: Path,
    cpus: frozenset[int] | None,
    body_bytes: int | None = None,
) -> Load:
    """Load `url` with `connections` keep-alive connections for `duration`
    seconds. With `body_bytes` (a big body), statuses are checked by wrk's
    own >= 400 counter and by the byte total instead of in Lua."""
    threads = max(1, min(len(cpus) if cpus else os.cpu_count() or 1, connections))
    script = scratch / f"wrk-{os.getpid()}-{next(_RUNS)}.lua"
    script.write_text(SCRIPT % {"response": "" if body_bytes else RESPONSE})
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={TIMEOUT}",
        "-s",
        str(script),
        url,
    ]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    try:
        output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    line = next((row for row in text.splitlines() if row.startswith("BENCH-RESULT ")), None)
    if process.returncode != 0 or line is None:
        raise WrkError(f"wrk failed ({process.returncode}) on {url}:\n{text[-2000:]}")
    raw = json.loads(line.removeprefix("BENCH-RESULT "))
    errors = {k: int(raw[k]) for k in ("connect", "read", "write", "timeout", "non2xx")}
    if body_bytes:
        errors["non2xx"] = int(raw["status"])
        # Headers come on top of each body: fewer bytes than bodies means
        # some response was not the full file.
        if raw["requests"] and raw["bytes"] < raw["requests"] * body_bytes:
            errors["short_bodies"] = 1
    return Load(
        duration=raw["duration_us"] / 1e6,
        requests=int(raw["requests"]),
        bytes=int(raw["bytes"]),
        errors={k: v for k, v in errors.items() if v},
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        connections=connections,
    )
