"""/metrics, request ids and the access log, as operators see them."""

import json
import logging

from tests.scrape import metric, samples, scrape
from tests.support import read_problem
from web.requestlog import JsonFormatter


async def test_requests_are_labelled_by_route_template_never_the_raw_path(client, make_clip):
    clip_id = await make_clip(media_path="small.mp3")
    await (await client.get(f"/clips/{clip_id}")).read()
    await (await client.get("/clips/424242")).read()
    text = await scrape(client)
    assert (
        metric(
            text, "clips_http_requests_total", method="GET", route="/clips/{clip_id}", status="200"
        )
        == 1
    )
    assert (
        metric(
            text, "clips_http_requests_total", method="GET", route="/clips/{clip_id}", status="404"
        )
        == 1
    )
    assert str(clip_id) not in {
        v for (name, labels) in samples(text) if "http" in name for _, v in labels
    }
    assert metric(text, "clips_http_request_duration_seconds_count", route="/clips/{clip_id}") == 2


async def test_hostile_input_does_not_grow_the_number_of_series(client):
    async def hostile_round(n: int) -> None:
        for i in range(n):
            await (await client.get(f"/no/such/path/{i}?q={i}")).read()
            await (await client.get(f"/clips/{10**6 + i}?x={i}")).read()
            await (await client.get(f"/clips/not-an-id-{i}/stats")).read()
            await (await client.get(f"/clips?genre=g{i}&q=hello{i}")).read()
            await (await client.post(f"/clips?{i}", data=b"x")).read()

    await hostile_round(3)
    await scrape(client)  # the scrape's own series exist from here on
    before = set(samples(await scrape(client)))
    await hostile_round(40)
    after = set(samples(await scrape(client)))
    assert after == before
    for _name, labels in after:
        for _, label_value in labels:
            assert "no/such" not in label_value and "hello" not in label_value
            assert "127.0.0.1" not in label_value


async def test_clip_series_are_capped(settings, make_client, make_clip):
    client = await make_client(settings.changed({"metrics_max_clip_series": 3}))
    ids = []
    for i in range(5):
        (settings.media_dir / f"s{i}.mp3").write_bytes(b"\xff" * 100)
        ids.append(await make_clip(media_path=f"s{i}.mp3"))
    for clip_id in ids:
        await (await client.get(f"/clips/{clip_id}/stream")).read()
    text = await scrape(client)
    labels = {
        dict(lbls)["clip_id"]
        for (name, lbls) in samples(text)
        if name == "clips_streams_started_total"
    }
    assert labels == {str(ids[0]), str(ids[1]), str(ids[2]), "other"}
    assert metric(text, "clips_streams_started_total", clip_id="other", source="stored") == 2


async def test_pool_and_process_metrics_are_exported(client):
    text = await scrape(client)
    assert metric(text, "clips_db_pool_max_connections") == 10
    assert metric(text, "clips_db_pool_connections") >= 1
    assert metric(text, "process_resident_memory_bytes") > 0
    assert metric(text, "process_open_fds") > 0


async def test_metrics_token_protects_the_scrape(settings, make_client):
    client = await make_client(settings.changed({"metrics_token": "s3cret-token-0123456789"}))
    refused = await client.get("/metrics")
    await read_problem(refused, 401)
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    text = await scrape(client, Authorization="Bearer s3cret-token-0123456789")
    assert "clips_http_requests_total" in text


async def test_request_id_is_echoed_generated_and_in_problem_bodies(client):
    given = await client.get("/clips/0", headers={"X-Request-ID": "trace-42"})
    assert given.headers["X-Request-ID"] == "trace-42"
    assert (await given.json())["request_id"] == "trace-42"
    generated = await client.get("/healthz")
    assert len(generated.headers["X-Request-ID"]) == 32
    hostile = await client.get("/healthz", headers={"X-Request-ID": "a b<script>" + "x" * 200})
    assert len(hostile.headers["X-Request-ID"]) == 32  # replaced, not echoed


async def test_access_log_has_one_structured_line_per_request(client, make_clip, caplog):
    clip_id = await make_clip(media_path="small.mp3")
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    response = await client.get(f"/clips/{clip_id}/stream", headers={"X-Request-ID": "r-1"})
    await response.read()
    await (await client.get("/healthz")).read()
    lines = [r for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) == 2
    fields = lines[0].fields
    assert fields == {
        "method": "GET",
        "route": "/clips/{clip_id}/stream",
        "status": 200,
        "duration_ms": fields["duration_ms"],
        "bytes": 10_000,
        "clip_id": clip_id,
        "request_id": "r-1",
    }
    assert fields["duration_ms"] > 0
    assert "GET /clips/{clip_id}/stream 200" in lines[0].getMessage()
    as_json = json.loads(JsonFormatter().format(lines[0]))
    assert as_json["route"] == "/clips/{clip_id}/stream" and as_json["request_id"] == "r-1"
