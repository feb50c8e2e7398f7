"""What an attacker sends, without a key: never a 500, never a forged log
line, never an internal address, never a metric series of their choosing.

Requests go over a plain socket where aiohttp's client would refuse the
bytes (header values that are not UTF-8), to the real app on a real
PostgreSQL; one test runs `python server.py` to read what it really logs.
"""

import asyncio
import io
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes, urlsplit, urlunsplit

import aiohttp
import aiohttp.http_parser
import aiohttp.web_protocol
import hypothesis
import pytest
from aiohttp.abc import AbstractResolver
from hypothesis import strategies as st

from streaming.upstream import UPSTREAM
from tests.scrape import samples, scrape
from tests.support import PROBLEM, free_port, read_problem
from web import auth
from web.requestlog import CONTINUATION, formatter

ROOT = Path(__file__).resolve().parent.parent
READ_KEY = "reader-key-0123456789"
WRITE_KEY = "writer-key-0123456789"
SECRET = "stream-secret-0123456789"
TOKEN = "metrics-token-0123456789"
# The request of issue 14, finding 4: a path whose %0A would start a line
# that reads as a record of its own, with a key that is not UTF-8.
FORGED = "2026-11-30T13:40:00.000Z WARNING handlers.auth: FORGED"
FORGING_TARGET = b"/clips%0A" + quote_from_bytes(FORGED.encode(), safe=":,").encode()
NOT_UTF8 = [(b"Authorization", b"Bearer \xff\xfe\xc3(")]
PLAIN_RECORD = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0]


async def raw_request(
    client, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]] = ()
) -> Answer:
    """One HTTP/1.1 request written byte for byte (aiohttp's client refuses
    header values that are not UTF-8); the answer as read until close."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
        lines += [name + b": " + value for name, value in headers]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        async with asyncio.timeout(10):
            data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    parsed = {}
    for field in fields:
        name, _, value = field.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), parsed, body)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access_log():
    """The access log records of the test server (aiohttp's TestServer logs
    through `aiohttp.access`, with the app's AccessLogger)."""
    logger = logging.getLogger("aiohttp.access")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def keyed_settings(settings):
    return settings.changed(
        {
            "api_keys": f"read:{READ_KEY},write:{WRITE_KEY}",
            "stream_url_secret": (SECRET,),
            "metrics_token": TOKEN,
        }
    )


@pytest.fixture
async def keyed_client(keyed_settings, make_client):
    return await make_client(keyed_settings)


def problem_of(answer: Answer, status: int) -> dict:
    assert answer.status == status, answer
    assert answer.content_type == PROBLEM, answer
    body = json.loads(answer.body)
    assert body["status"] == status and body["detail"]
    assert b"Traceback" not in answer.body
    return body


# Finding 5: input that was a 500 with a traceback, and left no access line.


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/clips", [(b"Authorization", b"Bearer \xff\xfe")]),
        ("/clips", [(b"X-API-Key", b"\xff\xfe" + b"k" * 20)]),
        ("/clips/1/stream", [(b"Authorization", b"Bearer \xc3(")]),
        ("/metrics", [(b"Authorization", b"Bearer \xff" + TOKEN.encode()[1:])]),
    ],
)
async def test_a_key_that_is_not_utf8_is_an_unknown_key(keyed_client, access_log, path, headers):
    answer = await raw_request(keyed_client, b"GET", path.encode(), headers)
    problem_of(answer, 401)
    assert "bearer" in answer.headers["www-authenticate"].lower()
    assert [r.fields["status"] for r in access_log] == [401]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("exp=%C2%B2&sig=abc", 403),  # "²": str.isdigit() says yes, int() says no
        ("exp=%D9%A3&sig=abc", 403),  # an Arabic-Indic 3, which int() reads
        ("exp=" + "9" * 5000 + "&sig=abc", 403),  # beyond int()'s 4,300 digits
        ("exp=" + "0" * 5000 + "1&sig=abc", 403),
        ("exp=1&sig=%FF%FE", 403),  # not ASCII
        ("exp=1&sig=%C3%A9", 403),
    ],
)
async def test_odd_numbers_in_a_signed_url_are_refused_not_a_500(
    keyed_client, make_clip, access_log, query, status
):
    clip_id = await make_clip(media_path="small.mp3")
    answer = await raw_request(keyed_client, b"GET", f"/clips/{clip_id}/stream?{query}".encode())
    problem_of(answer, status)
    assert [(r.fields["status"], r.fields["clip_id"]) for r in access_log] == [(status, clip_id)]


@pytest.mark.parametrize("clip_id", ["9" * 5000, "0" * 5000 + "1" + "0" * 30, "%C2%B2", "%D9%A3"])
async def test_an_odd_clip_id_is_a_400_or_a_403_not_a_500(keyed_client, access_log, clip_id):
    stream = f"/clips/{clip_id}/stream".encode()
    problem_of(await raw_request(keyed_client, b"GET", stream + b"?exp=1&sig=abc"), 403)
    key = [(b"X-API-Key", READ_KEY.encode())]
    for path in (stream, f"/clips/{clip_id}".encode(), f"/clips/{clip_id}/stats".encode()):
        problem = problem_of(await raw_request(keyed_client, b"GET", path, key), 400)
        assert problem["errors"] == [
            {"field": "clip_id", "reason": "not a positive 64-bit integer"}
        ]
    assert [r.fields["status"] for r in access_log] == [403, 400, 400, 400]
    assert all("clip_id" not in r.fields for r in access_log)


async def test_a_range_of_5000_digits_is_malformed_so_ignored(client, make_clip):
    clip_id = await make_clip(media_path="small.mp3")
    for header in ("bytes=" + "9" * 5000 + "-", "bytes=-" + "9" * 5000, "bytes=٣-"):
        response = await client.get(f"/clips/{clip_id}/stream", headers={"Range": header})
        assert response.status == 200 and len(await response.read()) == 10_000


# The property behind those examples: any header or query value, any id.

FIELD_BYTES = [9, *range(0x20, 0x7F), *range(0x80, 0x100)]  # what a field value may hold
field_values = st.lists(st.sampled_from(FIELD_BYTES), max_size=40).map(bytes)
numbers = st.one_of(
    st.integers(min_value=0).map(str),
    st.text(alphabet="0123456789²³¹٣۷०", min_size=1, max_size=30),
    # Past 64 bits (int()'s 4,300-digit limit is the examples' above), short
    # enough that an id and two query values stay under aiohttp's 8 KiB
    # request line (past it the parser answers a plain 400 before the app:
    # README, Errors).
    st.integers(min_value=19, max_value=2600).map(lambda n: "9" * n),
)
query_values = st.one_of(
    numbers.map(lambda text: quote_from_bytes(text.encode())),
    st.binary(max_size=40).map(lambda raw: quote_from_bytes(raw, safe="")),
)
credentials = st.one_of(
    field_values,
    field_values.map(lambda value: b"Bearer " + value),
    st.sampled_from([READ_KEY, WRITE_KEY, TOKEN]).map(lambda key: b"Bearer " + key.encode()),
)


@st.composite
def hostile_requests(draw, clip_id: int) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    clip = draw(st.one_of(st.just(str(clip_id)), query_values))
    path = draw(
        st.sampled_from(
            [
                f"/clips/{clip}/stream",
                f"/clips/{clip}",
                f"/clips/{clip}/stats",
                "/clips",
                "/metrics",
            ]
        )
    )
    query = "&".join(
        f"{name}={draw(query_values)}" for name in draw(st.sets(st.sampled_from(["exp", "sig"])))
    )
    headers = [
        (name, draw(values))
        for name, values in (
            (b"Authorization", credentials),
            (b"X-API-Key", credentials.map(lambda value: value.removeprefix(b"Bearer "))),
            (b"X-Request-ID", field_values),
        )
        if draw(st.booleans())
    ]
    method = draw(st.sampled_from([b"GET", b"HEAD", b"DELETE"]))
    return method, (path + ("?" + query if query else "")).encode(), headers


async def test_no_header_query_or_id_on_the_access_paths_is_a_500(
    keyed_client, make_clip, access_log
):
    """Every answer is below 500, an error is problem+json, and every request
    has its access-log record, whatever the credentials, signature, expiry,
    request id and clip id hold."""
    clip_id = await make_clip(media_path="small.mp3")
    loop = asyncio.get_running_loop()

    @hypothesis.settings(max_examples=120, deadline=None, database=None, derandomize=True)
    @hypothesis.example(request=(b"GET", b"/clips/1/stream?exp=%C2%B2&sig=x", []))
    @hypothesis.example(request=(b"GET", b"/clips", NOT_UTF8))
    @hypothesis.example(request=(b"GET", b"/metrics", [(b"Authorization", b"Bearer \xff")]))
    @hypothesis.given(request=hostile_requests(clip_id))
    def answers_every_request(request):
        logged = len(access_log)
        answer = asyncio.run_coroutine_threadsafe(raw_request(keyed_client, *request), loop).result(
            timeout=30
        )
        assert answer.status < 500, answer
        if answer.status >= 400 and request[0] != b"HEAD":
            assert answer.content_type == PROBLEM, answer
        assert [r.fields["status"] for r in access_log[logged:]] == [answer.status]

    await asyncio.to_thread(answers_every_request)


# Finding 4: no client text starts a log line, in either format.


@pytest.mark.parametrize("log_format", ["plain", "json"])
async def test_a_fault_that_logs_a_forged_path_keeps_it_inside_its_record(
    keyed_client, monkeypatch, log_format
):
    """Whatever fails while a client's text is at hand, the record of it
    (message and traceback) cannot be read as a record of the client's."""

    def fails(self, key):
        raise RuntimeError(f"cannot read the key {key!s}\n{FORGED}")

    monkeypatch.setattr(auth.ApiKeys, "role_of", fails)
    out = logging.StreamHandler(stream := io.StringIO())
    out.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.addHandler(out)
    try:
        answer = await raw_request(keyed_client, b"GET", FORGING_TARGET, NOT_UTF8)
    finally:
        root.removeHandler(out)
    problem_of(answer, 500)
    text = stream.getvalue()
    assert FORGED in text  # logged, but inside its record
    assert_one_record_per_line(text, log_format)


def assert_one_record_per_line(text: str, log_format: str) -> None:
    for line in text.splitlines():
        assert not line.startswith(FORGED), text
        if log_format == "json":
            json.loads(line)
        else:
            assert PLAIN_RECORD.match(line) or line.startswith(CONTINUATION), line


@pytest.mark.parametrize("log_format", ["plain", "json"])
async def test_the_server_logs_the_issues_request_as_records_with_no_secret(
    database_url, tmp_path, log_format
):
    """`python server.py`, as deployed: the issue's request is a 401, its
    access line is written, every line of the log is a record (or a
    continuation), and no secret appears from start-up to shutdown."""
    password = "db-password-0123456789"
    parts = urlsplit(database_url)
    with_password = urlunsplit(
        parts._replace(netloc=f"{parts.username}:{password}@{parts.netloc.rpartition('@')[2]}")
    )
    port = free_port()
    env = {
        **os.environ,
        "PYTHON_DOTENV_DISABLED": "1",
        "DATABASE_URL": with_password,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MEDIA_DIR": str(tmp_path),
        "CACHE_DIR": str(tmp_path / "cache"),
        "LOG_FORMAT": log_format,
        "LOG_LEVEL": "DEBUG",
        "API_KEYS": f"read:{READ_KEY}",
        "STREAM_URL_SECRET": SECRET,
        "METRICS_TOKEN": TOKEN,
        "SHUTDOWN_GRACE": "1",
    }
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, ROOT / "server.py", env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.returncode is None and time.monotonic() < deadline, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)  # a process starting up
        server = type("Server", (), {"host": "127.0.0.1", "port": port})
        answer = await raw_request(server, b"GET", FORGING_TARGET, NOT_UTF8)
        problem_of(answer, 401)
        bad_token = [(b"Authorization", b"Bearer \xff" + TOKEN.encode())]
        problem_of(await raw_request(server, b"GET", b"/metrics", bad_token), 401)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
    text = log.read_text(errors="backslashreplace")
    assert_one_record_per_line(text, log_format)
    for secret in (password, READ_KEY, SECRET, TOKEN):
        assert secret not in text
    access = [line for line in text.splitlines() if "clips.access" in line]
    assert len(access) == 2 and all("401" in line for line in access), text


# Finding 9: a refused origin never tells the client what a name resolved to.


class InternalDns(AbstractResolver):
    """Every name resolves to an internal address, as on a cluster's DNS."""

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [
            {
                "hostname": host,
                "host": "10.9.8.7",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


async def test_a_name_resolving_inward_is_refused_without_its_address(
    settings, make_client, make_clip, monkeypatch, caplog
):
    client = await make_client(settings.changed({"upstream_allow": ()}))
    monkeypatch.setattr(client.server.app[UPSTREAM].resolver, "_resolver", InternalDns())
    caplog.set_level(logging.INFO, logger="streaming.upstream")
    body = {
        "title": "Inward",
        "genre": "rock",
        "duration_seconds": 10,
        "audio_url": "http://media.corp.example/a.mp3",
    }
    created = await read_problem(await client.post("/clips", json=body), 400)
    clip_id = await make_clip(audio_url="http://media.corp.example/b.mp3")
    streamed = await read_problem(await client.get(f"/clips/{clip_id}/stream"), 502)
    for problem in (created, streamed):
        assert "10.9.8.7" not in json.dumps(problem)
        assert "resolves" not in json.dumps(problem)
        assert "not a public address" in problem["detail"]
    logged = [r.getMessage() for r in caplog.records if r.name == "streaming.upstream"]
    assert logged == ["upstream refused: media.corp.example resolves to 10.9.8.7, not public"] * 2


async def test_an_internal_literal_is_refused_without_echoing_it(settings, make_client):
    client = await make_client(settings.changed({"upstream_allow": ()}))
    body = {"title": "In", "genre": "rock", "duration_seconds": 1, "audio_url": "http://10.1.2.3/a"}
    problem = await read_problem(await client.post("/clips", json=body), 400)
    assert "10.1.2.3" not in json.dumps(problem)


# Finding 12: the method label is from a fixed set.


@pytest.mark.parametrize(
    ("parser", "method"),
    [
        (None, "PROPFIND"),  # a method the C parser (llhttp) knows
        (None, "M-SEARCH"),
        # AIOHTTP_NO_EXTENSIONS=1: the pure-Python parser takes any token.
        (aiohttp.http_parser.HttpRequestParserPy, "X-MADE-UP-1234"),
    ],
)
async def test_an_odd_method_is_counted_as_other(make_client, monkeypatch, parser, method):
    if parser is not None:
        monkeypatch.setattr(aiohttp.web_protocol, "HttpRequestParser", parser)
    client = await make_client()
    answer = await raw_request(client, method.encode(), b"/clips")
    assert answer.status == 405 and answer.content_type == PROBLEM
    methods = {
        dict(labels)["method"]
        for (name, labels) in samples(await scrape(client))
        if name == "clips_http_requests_total"
    }
    assert methods == {"other"}  # the scrape itself is counted once answered


# Finding 13: nosniff on every response; a CSP on /docs.


async def test_every_response_says_nosniff(keyed_client, make_clip):
    clip_id = await make_clip(media_path="small.mp3")
    key = {"X-API-Key": READ_KEY}
    asks = [
        ("GET", "/clips", key),
        ("GET", f"/clips/{clip_id}", key),
        ("GET", f"/clips/{clip_id}/stream", key),
        ("HEAD", f"/clips/{clip_id}/stream", key),
        ("GET", "/clips", {}),  # 401
        ("GET", "/nothing", {}),  # 404
        ("PUT", "/healthz", {}),  # 405
        ("GET", "/clips/abc", key),  # 400
        ("GET", "/healthz", {}),
        ("GET", "/readyz", {}),
        ("GET", "/metrics", {"Authorization": f"Bearer {TOKEN}"}),
        ("GET", "/metrics", {}),
        ("GET", "/docs", {}),
        ("GET", "/openapi.json", {}),
        (
            "OPTIONS",
            "/clips",
            {"Origin": "https://x.example", "Access-Control-Request-Method": "GET"},
        ),
    ]
    for method, path, headers in asks:
        response = await keyed_client.request(method, path, headers=headers)
        await response.read()
        assert response.headers.get("X-Content-Type-Options") == "nosniff", (method, path)


async def test_docs_runs_only_its_own_script_and_style(client):
    response = await client.get("/docs")
    page = await response.text()
    policy = dict(
        part.strip().split(" ", 1)
        for part in response.headers["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'none'"
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    # No inline code for the policy to allow, and nothing from elsewhere.
    assert not re.search(r"<script>|<style|\son\w+=", page)
    assert all(url.startswith("/") for url in re.findall(r'(?:src|href)="([^"]+)"', page))
