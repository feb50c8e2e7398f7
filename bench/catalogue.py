"""The benchmark catalogue: audio files of the two sizes the issue names,
and 10,000 clips pointing at them, some remote and some stored."""

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


@dataclass(frozen=True)
class Clip:
    id: int
    size: int
    source: str  # "remote" or "stored"
    origin_path: str  # the same bytes, at the origin


@dataclass(frozen=True)
class Catalogue:
    remote_small: Clip
    remote_big: Clip
    stored_small: Clip
    stored_big: Clip
    genre: str
    clips: int


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


async def seed(database_url: str, audio: Path, media_dir: Path, origin_url: str) -> Catalogue:
    """Insert the catalogue in one statement, then give every stored clip
    its file: hard links, so 5,000 names share two files' page cache."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            SQL["bench_seed_clips"], CLIPS, GENRES, f"{origin_url}/audio/", BIG[0], SMALL[0]
        )
    finally:
        await conn.close()
    return give_files(rows, audio, media_dir)


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
