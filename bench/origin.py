"""The real origin the remote clips point at: Debian's nginx, one worker,
sendfile on, everything it writes kept in the run's temporary directory.
It serves the same files over HTTP and over HTTPS (a certificate for
127.0.0.1 from a CA made for the run: `tls.make`), and logs only the
requests the app makes (those with a User-Agent: wrk and the harness's
probes send none), so origin fetches per play are counted where they
land. A Python static origin stands in only where nginx cannot be
installed, and the run says so (no HTTPS and no fetch counts then)."""

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

from bench import processes, tls

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
    # One line per request the app (or the bare reference) makes: a
    # User-Agent. wrk and the probes send none, so their load is not
    # slowed by a log write per request.
    map $http_user_agent $fetched {{ "" 0; default 1; }}
    log_format fetch '$scheme $uri $status';
    access_log {run}/origin-fetches.log fetch if=$fetched;
    # Fresh for an hour, as CDNs and object stores commonly say of audio:
    # a cache may serve it that long without asking again.
    expires 1h;
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
{tls_server}}}
"""

TLS_SERVER = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {root};
    }}
"""


@dataclass(frozen=True)
class Origin:
    url: str
    kind: str  # "nginx 1.22.1" or "python aiohttp static (fallback)"
    pid: int
    # The same files over HTTPS, and the PEM CA that signed its certificate
    # (the app's UPSTREAM_CA_BUNDLE); None where no HTTPS origin could run.
    https_url: str | None = None
    ca_bundle: Path | None = None
    fetch_log: Path | None = None  # None: fetches cannot be counted

    def fetch_mark(self) -> int:
        """Where the fetch log ends now: `fetches_since` counts from here."""
        if self.fetch_log is None or not self.fetch_log.exists():
            return 0
        return self.fetch_log.stat().st_size

    def fetches_since(self, mark: int, path: str, scheme: str = "http") -> "Fetches | None":
        """Requests for `path` over `scheme` the origin answered since
        `mark`, by anyone with a User-Agent (the app); None when this
        origin cannot tell. nginx writes each line as the response ends:
        read after the streams are over, the count is complete."""
        if self.fetch_log is None:
            return None
        if not self.fetch_log.exists():
            return Fetches(0, 0)
        with self.fetch_log.open("rb") as log:
            log.seek(mark)
            text = log.read().decode(errors="replace")
        wanted = f"{scheme} {path} "
        statuses = [line[len(wanted) :] for line in text.splitlines() if line.startswith(wanted)]
        return Fetches(len(statuses), statuses.count("304"))


@dataclass(frozen=True)
class Fetches:
    requests: int  # every request the origin answered
    revalidations: int  # of which 304s: a cache asking whether its copy is current

    @property
    def bodies(self) -> int:
        return self.requests - self.revalidations

    def per_1000(self, plays: int) -> float | None:
        return self.requests * 1000 / plays if plays else None

    def describe(self) -> str:
        fetches = "fetch" if self.bodies == 1 else "fetches"
        revalidations = "revalidation" if self.revalidations == 1 else "revalidations"
        return f"{self.bodies:,} origin {fetches} + {self.revalidations:,} {revalidations}"


def ensure_tools() -> list[str]:
    """Install nginx, wrk and openssl (the HTTPS origin's certificate) with
    apt where missing; returns what it did."""
    missing = [name for name in ("nginx", "wrk", "openssl") if not shutil.which(name)]
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
    https_url = ca_bundle = fetch_log = None
    if version is not None:
        conf = run / "nginx.conf"
        tls_server = ""
        try:
            made = tls.make(run / "tls")
        except tls.TLSUnavailable as error:
            print(f"no HTTPS origin: {error}", flush=True)
        else:
            tls_port = processes.free_port()
            tls_server = TLS_SERVER.format(
                port=tls_port, cert=made.server_cert, key=made.server_key, root=www
            )
            https_url, ca_bundle = f"https://127.0.0.1:{tls_port}", made.ca_bundle
        conf.write_text(NGINX_CONF.format(run=run, port=port, root=www, tls_server=tls_server))
        argv = [nginx_path(), "-c", str(conf), "-p", str(run), "-e", str(run / "nginx-error.log")]
        kind = f"nginx {version}"
        fetch_log = run / "origin-fetches.log"
    else:
        print("nginx could not be installed: using the Python static origin instead", flush=True)
        argv = [sys.executable, "-m", "bench.static_origin", str(www), str(port)]
        kind = "python aiohttp static (fallback: nginx unavailable)"
    process = await processes.spawn(*argv, cpus=cpus, log=log, cwd=Path.cwd())
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_until_serving(f"{url}/audio/clip-500k.mp3", process, log)
        yield Origin(
            url=url,
            kind=kind,
            pid=process.pid,
            https_url=https_url,
            ca_bundle=ca_bundle,
            fetch_log=fetch_log,
        )
    finally:
        # SIGQUIT: nginx's graceful stop; the Python origin treats it as fatal too.
        await processes.stop(process, sig=signal.SIGQUIT if version else signal.SIGTERM)
