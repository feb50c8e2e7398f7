"""The access log: one definition of bytes (the body sent, never headers),
fields only when they have a value, UTC timestamps with their zone in both
formats, and health checks and scrapes left out when ACCESS_LOG_PROBES=false."""

import json
import logging
import re

import pytest

from web.requestlog import JsonFormatter, PlainFormatter

ACCESS = "aiohttp.access"  # the test server's access logger
UTC_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def access_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS]


@pytest.fixture
def access_log(caplog):
    caplog.set_level(logging.INFO, logger=ACCESS)
    return caplog


async def test_bytes_is_the_body_sent_for_every_kind_of_response(client, make_clip, access_log):
    clip_id = await make_clip(media_path="small.mp3")
    sent = {}
    for method, path in [
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/clips"),
        ("GET", "/clips/999"),  # a problem body
        ("GET", f"/clips/{clip_id}/stream"),
        ("HEAD", f"/clips/{clip_id}/stream"),
    ]:
        response = await client.request(method, path)
        sent[path, method] = len(await response.read())
    lines = access_lines(access_log)
    assert len(lines) == len(sent)
    for line, ((path, method), body) in zip(lines, sent.items(), strict=True):
        assert line.fields["bytes"] == body, (method, path, line.getMessage())
    assert sent["/openapi.json", "GET"] > 1000  # a body, not a header's worth


async def test_a_field_without_a_value_is_left_out(client, make_clip, origin, access_log):
    clip_id = await make_clip(media_path="small.mp3")
    await (await client.get("/healthz")).read()
    await (await client.get(f"/clips/{clip_id}")).read()
    await (await client.patch(f"/clips/{clip_id}", json={"title": "New"})).read()
    created = await client.post(
        "/clips",
        json={
            "title": "Remote",
            "genre": "rock",
            "duration_seconds": 20.0,
            "audio_url": str(origin.make_url("/audio/small.mp3")),
        },
    )
    assert created.status == 201, await created.text()
    new_id = (await created.json())["id"]
    health, show, edit, create = access_lines(access_log)
    for line in (health, show, edit, create):
        assert "None" not in line.getMessage()
        assert None not in line.fields.values()
    assert "clip_id" not in health.fields and "clip=" not in health.getMessage()
    assert show.fields["clip_id"] == edit.fields["clip_id"] == clip_id
    assert create.fields["clip_id"] == new_id
    assert create.getMessage().startswith("POST /clips 201 ")
    assert f" clip={new_id} id=" in create.getMessage()


async def test_every_line_is_stamped_in_utc_with_its_zone_in_both_formats(
    client, access_log, monkeypatch
):
    monkeypatch.setenv("TZ", "America/New_York")
    import time

    time.tzset()
    try:
        await (await client.get("/healthz")).read()
        logging.getLogger("clips.test").warning("an ordinary line")
        for record in [access_lines(access_log)[0], access_log.records[-1]]:
            plain = PlainFormatter().format(record)
            stamp = plain.split(" ", 1)[0]
            assert UTC_STAMP.fullmatch(stamp), plain
            assert json.loads(JsonFormatter().format(record))["time"] == stamp
            expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            assert stamp.startswith(expected)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


async def test_probes_can_be_left_out_of_the_access_log(settings, make_client, access_log):
    quiet = await make_client(settings.changed({"access_log_probes": False}))
    for path in ("/healthz", "/readyz", "/metrics", "/clips"):
        await (await quiet.get(path)).read()
    assert [r.fields["route"] for r in access_lines(access_log)] == ["/clips"]
    scraped = await (await quiet.get("/metrics")).text()
    assert 'route="/healthz"' in scraped  # still counted, only not logged


async def test_a_failed_probe_is_always_logged(settings, make_client, access_log):
    """A 401 on /metrics may be someone guessing the token: never hidden."""
    quiet = await make_client(
        settings.changed({"access_log_probes": False, "metrics_token": "metrics-token-0123456789"})
    )
    for _ in range(3):
        response = await quiet.get("/metrics", headers={"Authorization": "Bearer guess"})
        assert response.status == 401
    assert [(r.fields["route"], r.fields["status"]) for r in access_lines(access_log)] == [
        ("/metrics", 401)
    ] * 3


async def test_probes_are_logged_by_default(client, access_log):
    for path in ("/healthz", "/readyz", "/metrics"):
        await (await client.get(path)).read()
    assert [r.fields["route"] for r in access_lines(access_log)] == [
        "/healthz",
        "/readyz",
        "/metrics",
    ]
