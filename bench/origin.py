"""The real origin the remote clips point at: Debian's nginx, one worker,
sendfile on, access log off, everything it writes kept in the run's
temporary directory. A Python static origin stands in only where nginx
cannot be installed, and the run says so."""

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import processes

NGINX_CONF = """\
# Written by bench/origin.py for one benchmark run.
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {run}/nginx.pid;
error_log {run}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    # wrk keeps its connections for the whole run: never close them under it.
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


@dataclass(frozen=True)
class Origin:
    url: str
    kind: str  # "nginx 1.22.1" or "python aiohttp static (fallback)"
    pid: int


def ensure_tools() -> list[str]:
    """Install nginx and wrk with apt where missing; returns what it did."""
    missing = [name for name in ("nginx", "wrk") if not shutil.which(name)]
    if not missing:
        return []
    notes = [f"{', '.join(missing)} not found: installing with apt-get"]
    print(notes[0], flush=True)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing],
            check=True,
            capture_output=True,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    except (OSError, subprocess.CalledProcessError) as error:
        notes.append(f"apt-get failed: {error}")
        print(notes[-1], flush=True)
    return notes


def nginx_path() -> str | None:
    # apt installs it in /usr/sbin, which a non-login PATH may lack.
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )


def nginx_version() -> str | None:
    path = nginx_path()
    if path is None:
        return None
    result = subprocess.run([path, "-v"], capture_output=True, text=True)
    return result.stderr.strip().split("/", 1)[-1] or "unknown"


async def wait_until_serving(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            if process.returncode is not None:
                raise RuntimeError(f"origin exited ({process.returncode}):\n{processes.tail(log)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"origin did not answer {url}")


@contextlib.asynccontextmanager
async def running(www: Path, run: Path, cpus: frozenset[int] | None) -> AsyncIterator[Origin]:
    port = processes.free_port()
    version = nginx_version()
    log = run / "origin.log"
    if version is not None:
        conf = run / "nginx.conf"
        conf.write_text(NGINX_CONF.format(run=run, port=port, root=www))
        argv = [nginx_path(), "-c", str(conf), "-p", str(run), "-e", str(run / "nginx-error.log")]
        kind = f"nginx {version}"
    else:
        print("nginx could not be installed: using the Python static origin instead", flush=True)
        argv = [sys.executable, "-m", "bench.static_origin", str(www), str(port)]
        kind = "python aiohttp static (fallback: nginx unavailable)"
    process = await processes.spawn(*argv, cpus=cpus, log=log, cwd=Path.cwd())
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_until_serving(f"{url}/audio/clip-500k.mp3", process, log)
        yield Origin(url=url, kind=kind, pid=process.pid)
    finally:
        # SIGQUIT: nginx's graceful stop; the Python origin treats it as fatal too.
        await processes.stop(process, sig=signal.SIGQUIT if version else signal.SIGTERM)
