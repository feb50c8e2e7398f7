"""Configuration: typed from the environment, and a bad value stops start-up
with one line per problem naming the variable, never a traceback."""

import asyncio
import os
import sys
from pathlib import Path

import pytest

from settings import ROOT, Settings, load_settings

# Somewhere no PostgreSQL listens: a command that gets past its settings
# fails fast instead of starting or reaching anything.
NOWHERE = "postgresql://clips@127.0.0.1:1/clips"


async def run(*args: str, **env: str) -> tuple[int, list[str]]:
    """Run the project's Python with only `env` set; exit code and stderr lines."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "DATABASE_URL": NOWHERE, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    return process.returncode, stderr.decode().splitlines()


SERVER_CASES = [
    ({"PORT": "abc"}, ["PORT"]),
    ({"PORT": "70000"}, ["PORT"]),
    ({"PORT": "0"}, ["PORT"]),
    ({"DB_POOL_MAX": "0"}, ["DB_POOL_MAX"]),
    ({"LOG_LEVEL": "LOUD"}, ["LOG_LEVEL"]),
    ({"MIGRATE_ON_START": "perhaps"}, ["MIGRATE_ON_START"]),
    ({"DB_ACQUIRE_TIMEOUT": "-1"}, ["DB_ACQUIRE_TIMEOUT"]),
    ({"DATABASE_URL": "mysql://clips:hunter2@db/clips"}, ["DATABASE_URL"]),
    ({"DATABASE_URL": "postgresql://clips:hunter2@db:notaport/clips"}, ["DATABASE_URL"]),
    ({"DATABASE_URL": "postgresql://clips:hunter2@db:99999/clips"}, ["DATABASE_URL"]),
    ({"S3_ENDPOINT_URL": "http://minio:hunter2@minio:9000"}, ["S3_ENDPOINT_URL"]),
    ({"S3_ENDPOINT_URL": "https://store.example?token=hunter2"}, ["S3_ENDPOINT_URL"]),
    (
        {"PORT": "abc", "DB_POOL_MAX": "0", "LOG_LEVEL": "LOUD"},
        ["PORT", "DB_POOL_MAX", "LOG_LEVEL"],
    ),
]


async def test_server_refuses_invalid_settings_with_one_line_each():
    results = await asyncio.gather(*(run("server.py", **env) for env, _ in SERVER_CASES))
    for (env, variables), (code, lines) in zip(SERVER_CASES, results, strict=True):
        assert code != 0, env
        assert len(lines) == len(variables), (env, lines)
        for line, variable in zip(lines, variables, strict=True):
            assert line.startswith(f"invalid setting {variable}: "), (env, line)
        assert not any("Traceback" in line or "hunter2" in line for line in lines), (env, lines)


async def test_migrate_refuses_a_database_url_that_is_not_postgresql():
    code, lines = await run("-m", "db.migrate", DATABASE_URL="mysql://clips@db/clips")
    assert code != 0
    assert len(lines) == 1
    assert lines[0].startswith("invalid setting DATABASE_URL: ")
    assert "postgresql://" in lines[0]


async def test_migrate_says_in_one_line_when_the_database_is_unreachable():
    code, lines = await run("-m", "db.migrate")
    assert code != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith("migrate: cannot reach the database: ")
    assert "127.0.0.1" in lines[0]


@pytest.fixture
def environment(monkeypatch):
    """A clean environment for load_settings(); returns a setter."""
    for name in Settings.model_fields:
        alias = Settings.model_fields[name].alias
        monkeypatch.delenv(alias, raising=False)
    return monkeypatch.setenv


def test_defaults():
    settings = Settings.model_validate({})
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.database_url is None  # the embedded development server
    assert settings.migrate_on_start is True
    assert settings.media_dir == ROOT / "media"
    assert settings.log_level == "INFO"
    assert settings.access_log_probes is True
    assert settings.db_pool_min <= settings.db_pool_max


def test_values_are_read_and_typed_from_the_environment(environment):
    environment("HOST", "0.0.0.0")
    environment("ALLOW_OPEN_API", "true")
    environment("PORT", "9000")
    environment("DATABASE_URL", "postgresql://clips@db:5432/clips")
    environment("DB_POOL_MAX", "3")
    environment("DB_ACQUIRE_TIMEOUT", "0.5")
    environment("MIGRATE_ON_START", "false")
    environment("MEDIA_DIR", "/srv/media")
    environment("LOG_LEVEL", " debug")
    environment("UPSTREAM_ALLOW", "10.0.0.0/8, cdn.internal")
    environment("ACCESS_LOG_PROBES", "false")
    settings = load_settings()
    assert settings.host == "0.0.0.0"
    assert settings.allow_open_api is True
    assert settings.port == 9000
    assert settings.database_url == "postgresql://clips@db:5432/clips"
    assert settings.db_pool_max == 3
    assert settings.db_acquire_timeout == 0.5
    assert settings.migrate_on_start is False
    assert settings.media_dir == Path("/srv/media")
    assert settings.log_level == "DEBUG"
    assert settings.upstream_allow == ("10.0.0.0/8", "cdn.internal")
    assert settings.access_log_probes is False


def test_an_empty_variable_means_the_default(environment):
    environment("PORT", "")
    environment("DATABASE_URL", "")
    settings = load_settings()
    assert settings.port == 8000
    assert settings.database_url is None


def test_an_invalid_value_exits_naming_the_variable_not_the_value(environment):
    environment("PORT", "99999")
    environment("DATABASE_URL", "redis://:s3cret@cache/0")
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    lines = str(stopped.value.code).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "invalid setting PORT",
        "invalid setting DATABASE_URL",
    ]
    assert "s3cret" not in str(stopped.value.code)


def test_every_setting_is_documented_in_env_example_and_readme():
    env_example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for field in Settings.model_fields.values():
        assert f"\n{field.alias}=" in "\n" + env_example, f"{field.alias} not in .env.example"
        assert f"`{field.alias}`" in readme, f"{field.alias} not in the README"


def test_secrets_stay_out_of_repr_and_str():
    settings = Settings(
        DATABASE_URL="postgresql://clips:db-pass-0123456789@db:5432/clips?password=qs-pass-0123",
        API_KEYS="read:reader-key-0123456789",
        STREAM_URL_SECRET="stream-secret-0123456789",
        METRICS_TOKEN="metrics-token-0123456789",
    )
    for shown in (repr(settings), str(settings), f"{settings}"):
        for secret in ("db-pass", "qs-pass", "reader-key", "stream-secret", "metrics-token"):
            assert secret not in shown
        assert "postgresql://clips:***@db:5432/clips?password=***" in shown
    assert settings.database_url.endswith("?password=qs-pass-0123")  # the value itself is whole


def test_the_keys_file_is_read_once(tmp_path):
    """Copies made with changed() keep the keys already read: a file rotated
    or removed after start-up changes nothing until the next start."""
    keys = tmp_path / "keys"
    keys.write_text("read:reader-key-0123456789\n")
    settings = Settings(API_KEYS_FILE=keys, STREAM_URL_SECRET="s" * 32)
    keys.unlink()
    copy = settings.changed({"port": 9001})
    assert copy.api_key_entries() == (("read", "reader-key-0123456789"),)
    with pytest.raises(ValueError, match="API_KEYS_FILE: cannot read it"):
        settings.changed({"api_keys_file": keys})


def test_every_libpq_password_is_masked():
    url = "postgresql://clips@db/clips?sslpassword=hunter2&password=hunter3&sslmode=require"
    shown = repr(Settings(DATABASE_URL=url))
    assert "hunter2" not in shown and "hunter3" not in shown
    assert "sslmode=require" in shown


async def test_server_refuses_a_temporary_directory_too_long_for_its_sockets(tmp_path):
    # The upload readers and job processes listen on Unix sockets under
    # TMPDIR: past 75 characters every upload and job would fail later.
    long = tmp_path / ("t" * (100 - len(str(tmp_path))))
    long.mkdir()
    code, lines = await run("server.py", TMPDIR=str(long), PORT="18999")
    assert code != 0
    assert lines == [
        f"server: cannot start: TMPDIR is {len(str(long))} characters long; the upload"
        " readers' and job processes' Unix sockets need one of at most 75 (set a shorter TMPDIR)"
    ]
