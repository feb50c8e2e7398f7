"""Child processes: spawning them apart from the terminal, stopping them,
and reading what the kernel says about them (/proc)."""

import asyncio
import contextlib
import os
import resource
import signal
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(log: Path, chars: int = 3000) -> str:
    """The end of a child's output, for the error that explains its death."""
    try:
        return log.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no output)"


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one: 1,000 held streams
    need ~2,000 fds in the app (listener side plus upstream side), and
    children inherit the limit from here."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(frozen=True)
class Cores:
    """Which CPUs the servers (app, origin, PostgreSQL) and the load
    generator may use; None means "anywhere"."""

    servers: frozenset[int] | None = None
    load: frozenset[int] | None = None

    @classmethod
    def split(cls, pin: str) -> "Cores":
        cpus = sorted(os.sched_getaffinity(0))
        if pin == "0" or (pin == "auto" and len(cpus) < 2) or len(cpus) < 2:
            return cls()
        # The load generator gets the last core, the servers the rest: a
        # server measured while wrk steals its core measures wrk.
        return cls(servers=frozenset(cpus[:-1]), load=frozenset(cpus[-1:]))

    def describe(self) -> str:
        if self.servers is None:
            return "not pinned"
        return f"servers on CPU {sorted(self.servers)}, load generator on CPU {sorted(self.load)}"


def pin(pids: Iterable[int], cpus: frozenset[int] | None) -> None:
    if cpus is None:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(pid, cpus)


async def spawn(
    *argv: str,
    cpus: frozenset[int] | None,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> asyncio.subprocess.Process:
    """Start a child in its own session, so Ctrl-C reaches only the harness,
    which then stops everything in order; output goes to `log`."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )


async def stop(
    process: asyncio.subprocess.Process, sig: int = signal.SIGTERM, grace: float = 10.0
) -> None:
    """Signal the child as its supervisor would (it stops its own workers),
    wait, then kill whatever is left in its session."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    # Workers forked by the child may outlive it (same session id).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def tree(pid: int) -> list[int]:
    """The process and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


@dataclass(frozen=True)
class Usage:
    rss_kib: int
    fds: int
    threads: int


def usage(pid: int) -> Usage:
    """Resident memory, open fds and threads of a process tree."""
    rss = fds = threads = 0
    for member in tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
            fds += len(os.listdir(f"/proc/{member}/fd"))
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("Threads:"):
                threads += int(line.split()[1])
    return Usage(rss, fds, threads)


def listeners(pid: int, port: int) -> list[int]:
    """Processes of the tree that hold a socket listening on `port`: the
    app's real worker count, whatever WORKERS asked for."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    holders = []
    for member in tree(pid):
        try:
            fd_dir = f"/proc/{member}/fd"
            links = [os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir)]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if any(link.startswith("socket:[") and link[8:-1] in inodes for link in links):
            holders.append(member)
    return holders
