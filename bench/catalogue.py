"""The benchmark catalogue: audio files of the two sizes the issue names,
and 10,000 clips pointing at them, some remote and some stored; one remote
clip on the HTTPS origin, and a few hundred remote clips no one has played
(each with a URL of its own) for first listens."""

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from db.queries import Queries

# The benchmark's own SQL lives with it, not in the product's sql/.
SQL = Queries.load(Path(__file__).resolve().parent, "catalogue.sql")

CLIPS = 10_000
GENRES = 20
SMALL = ("clip-500k.mp3", 500 * 1024)
BIG = ("clip-5m.mp3", 5 * 1024 * 1024)
# Remote 500 KiB clips kept cold for first-listen runs (the first-byte
# scenario's 200 rounds and its warm-up).
COLD = 210


@dataclass(frozen=True)
class Clip:
    id: int
    size: int
    source: str  # "remote" or "stored"
    origin_path: str  # the same bytes, at the origin (the path it logs)


@dataclass(frozen=True)
class Catalogue:
    remote_small: Clip
    remote_big: Clip
    stored_small: Clip
    stored_big: Clip
    genre: str
    clips: int
    # 500 KiB on the HTTPS origin; None when no HTTPS origin runs.
    https_small: Clip | None = None
    cold: tuple[Clip, ...] = ()  # 500 KiB, remote, never played


def write_audio(www: Path) -> Path:
    """The files the origin serves, under www/audio/; readable by nginx's
    unprivileged worker. Random bytes: nothing here decodes audio."""
    audio = www / "audio"
    audio.mkdir(parents=True)
    for name, size in (SMALL, BIG):
        (audio / name).write_bytes(os.urandom(size))
        (audio / name).chmod(0o644)
    for folder in (www.parent, www, audio):
        folder.chmod(0o755)
    return audio


async def seed(
    database_url: str, audio: Path, media_dir: Path, origin_url: str, https_url: str | None
) -> Catalogue:
    """Insert the catalogue in one statement, then give every stored clip
    its file: hard links, so 5,000 names share two files' page cache.
    Then point one remote 500 KiB clip at the HTTPS origin (with
    `https_url`) and COLD others at URLs of their own."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            SQL["bench_seed_clips"], CLIPS, GENRES, f"{origin_url}/audio/", BIG[0], SMALL[0]
        )
        catalogue = give_files(rows, audio, media_dir)
        spare = [
            row["id"]
            for row in rows
            if row["audio_url"] and row["audio_url"].endswith(SMALL[0])
            and row["id"] != catalogue.remote_small.id
        ]  # fmt: skip
        path = f"/audio/{SMALL[0]}"
        cold = tuple(Clip(id, SMALL[1], "remote", path) for id in spare[:COLD])
        urls = {clip.id: f"{origin_url}{path}?cold={clip.id}" for clip in cold}
        https_small = None
        if https_url is not None:
            https_small = Clip(spare[COLD], SMALL[1], "remote", path)
            urls[https_small.id] = f"{https_url}{path}"
        await conn.execute(SQL["bench_repoint_clips"], list(urls), list(urls.values()))
    finally:
        await conn.close()
    return dataclasses.replace(catalogue, https_small=https_small, cold=cold)


async def sum_plays(database_url: str, clips: tuple[Clip, ...]) -> int:
    """The play counts of `clips` added up, read from the database."""
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(SQL["bench_sum_plays"], [clip.id for clip in clips])
    finally:
        await conn.close()


def give_files(rows: list[asyncpg.Record], audio: Path, media_dir: Path) -> Catalogue:
    media_dir.mkdir(parents=True, exist_ok=True)
    picked: dict[tuple[str, str], Clip] = {}
    for row in rows:
        if row["media_path"] is not None:
            source, name = "stored", row["media_path"].split("-", 2)[2]
            os.link(audio / name, media_dir / row["media_path"])
        else:
            source, name = "remote", row["audio_url"].rsplit("/", 1)[1]
        size = dict((SMALL, BIG))[name]
        picked.setdefault((source, name), Clip(row["id"], size, source, f"/audio/{name}"))
    return Catalogue(
        remote_small=picked["remote", SMALL[0]],
        remote_big=picked["remote", BIG[0]],
        stored_small=picked["stored", SMALL[0]],
        stored_big=picked["stored", BIG[0]],
        genre=rows[0]["genre"],
        clips=len(rows),
    )
