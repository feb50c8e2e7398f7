"""Two replicas that share nothing but PostgreSQL: real `python server.py`
processes on two ports, as a load balancer would spread listeners over
them. Plays through both add up exactly; a clip deleted through one is gone
from the other within CLIP_CACHE_SECONDS (each replica keeps clip rows that
long, db/clip_cache.py), and from the one that deleted it at once."""

import asyncio

import aiohttp

from tests.replicas import replicas
from tests.scrape import metric
from tests.support import read_problem, wait_until

# Short, so the delete test waits little; its bound is this plus polling.
CLIP_CACHE_SECONDS = 2.0


async def create_remote_clip(session: aiohttp.ClientSession, base: str, audio_url: str) -> int:
    body = {"title": "Shared", "genre": "rock", "duration_seconds": 20.0, "audio_url": audio_url}
    async with session.post(f"{base}/clips", json=body) as response:
        assert response.status == 201, await response.text()
        return (await response.json())["id"]


async def play_count(session: aiohttp.ClientSession, base: str, clip_id: int) -> int:
    async with session.get(f"{base}/clips/{clip_id}") as response:
        assert response.status == 200, await response.text()
        return (await response.json())["play_count"]


async def test_plays_spread_over_two_replicas_count_exactly(
    database_url, origin, audio_dir, tmp_path
):
    plays = 200
    expected = (audio_dir / "small.mp3").read_bytes()
    async with (
        replicas(database_url, tmp_path, count=2) as pair,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session,
    ):
        clip_id = await create_remote_clip(
            session, pair[0].base, str(origin.make_url("/audio/small.mp3"))
        )

        async def listen(n: int) -> tuple[int, bytes]:
            # Alternate: half the listeners reach each replica.
            async with session.get(pair[n % 2].url(f"/clips/{clip_id}/stream")) as response:
                return response.status, await response.read()

        answers = await asyncio.gather(*(listen(n) for n in range(plays)))
        assert [status for status, _ in answers] == [200] * plays
        assert all(body == expected for _, body in answers)

        async def committed() -> list[float] | None:
            # What each replica says it committed, once they add up (a
            # replica counts a batch just after PostgreSQL has it).
            counts = []
            for replica in pair:
                async with session.get(replica.url("/metrics")) as response:
                    counts.append(metric(await response.text(), "clips_plays_total"))
            return counts if sum(counts) == plays else None

        per_replica = await wait_until(committed, f"{plays} plays committed", seconds=10)
        # Each replica counts the plays it served; together, every play once.
        assert per_replica == [plays / 2, plays / 2]
        assert await play_count(session, pair[1].base, clip_id) == plays
        assert await play_count(session, pair[0].base, clip_id) == plays


async def test_a_delete_through_one_replica_is_a_404_on_the_other(database_url, origin, tmp_path):
    async with (
        replicas(database_url, tmp_path, count=2, CLIP_CACHE_SECONDS=str(CLIP_CACHE_SECONDS)) as (
            first,
            second,
        ),
        aiohttp.ClientSession() as session,
    ):
        clip_id = await create_remote_clip(
            session, first.base, str(origin.make_url("/audio/small.mp3"))
        )
        stream = f"/clips/{clip_id}/stream"
        # The second replica has played it, so it holds the clip's row.
        async with session.get(second.url(stream)) as response:
            assert response.status == 200

        async with session.delete(first.url(f"/clips/{clip_id}")) as response:
            assert response.status == 204

        async with session.get(first.url(stream)) as response:
            await read_problem(response, 404)

        async def gone_on_the_second() -> aiohttp.ClientResponse | None:
            response = await session.get(second.url(stream))
            if response.status == 404:
                return response
            assert response.status == 200, await response.text()
            await response.read()
            return None

        # Polled, bounded by the cache's lifetime (plus the polling's own pace).
        response = await wait_until(
            gone_on_the_second,
            "the deleted clip answering 404 on the other replica",
            seconds=CLIP_CACHE_SECONDS + 1.0,
        )
        problem = await read_problem(response, 404)
        assert str(clip_id) in problem["detail"]
        async with session.get(second.url(f"/clips/{clip_id}")) as response:
            await read_problem(response, 404)
