"""py-spy on the app while it is under load (BENCH_PROFILE=remote|stored|api):
where the CPU goes, as the top frames by own time and by inclusive time."""

import asyncio
import contextlib
import shutil
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

TOP = 15


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def summarise(collapsed: Path, top: int = TOP) -> str:
    """Top frames of a py-spy "raw" (collapsed stacks) file."""
    if not collapsed.exists():
        return "py-spy wrote nothing"
    own, inclusive, total = Counter(), Counter(), 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "py-spy recorded no samples"
    lines = [f"{total} samples; top frames by own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("top frames by inclusive time:")
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def recording(pid: int, seconds: float, out: Path) -> AsyncIterator[list[str]]:
    """Record `pid` for `seconds`; the yielded list receives the summary
    (or why there is none) once the block ends."""
    summary: list[str] = []
    tool = py_spy()
    if tool is None:
        summary.append("py-spy not installed: `.venv/bin/pip install py-spy` to profile")
        yield summary
        return
    process = await asyncio.create_subprocess_exec(
        tool,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield summary
        _, err = await asyncio.wait_for(process.communicate(), seconds + 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        summary.append(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
    else:
        summary.append(summarise(out))
