"""Demo catalogue: `make seed` (`python -m db.seed [--public-urls]` in the venv).

The default set plays offline: it synthesises short pieces of real audio
(16-bit PCM WAV, which every browser plays) into MEDIA_DIR. `--public-urls`
adds the SoundHelix examples the original brief used, for deployments with
internet access (their hosts must pass the upstream guard). Running it again
changes nothing.
"""

import argparse
import asyncio
import hashlib
import math
import wave
from array import array
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from db import jobs
from db.embedded import database
from db.queries import SQL
from settings import load_settings

RATE = 22050
# (file, title, genre, description, root frequency, scale steps, tempo bpm)
DEMOS = [
    ("demo-sunrise.wav", "Sunrise Arpeggio", "ambient", "Slow rising arpeggios.",
     220.0, [0, 4, 7, 11, 12, 7], 72),
    ("demo-night-drive.wav", "Night Drive", "electronic", "A pulsing minor riff.",
     110.0, [0, 3, 7, 10, 12, 10, 7, 3], 120),
    ("demo-porch.wav", "Porch Song", "folk", "A plain major tune.",
     196.0, [0, 2, 4, 5, 7, 5, 4, 2], 96),
    ("demo-rain.wav", "Rain Study", "classical", "Falling minor phrases.",
     261.6, [12, 10, 8, 7, 5, 3, 2, 0], 84),
    ("demo-bounce.wav", "Bounce", "hip-hop", "A bass line that bounces.",
     82.4, [0, 0, 7, 5, 0, 3, 5, 7], 90),
    ("demo-sketch.wav", "Blue Sketch", "jazz", "Blues scale noodling.",
     146.8, [0, 3, 5, 6, 7, 10, 12, 7], 132),
]  # fmt: skip
PUBLIC = [
    (
        f"SoundHelix Song {n}",
        "electronic",
        f"https://www.soundhelix.com/examples/mp3/SoundHelix-Song-{n}.mp3",
    )
    for n in range(1, 5)
]
SECONDS = 24


def pluck(freq: float, beat: float, length: int) -> array:
    """One plucked note with a soft fifth below, decaying over a beat."""
    note = array("h")
    for i in range(length):
        t = i / RATE
        envelope = math.exp(-3.0 * t / beat)
        value = math.sin(2 * math.pi * freq * t) + 0.3 * math.sin(math.pi * freq * t)
        note.append(int(9000 * envelope * value))
    return note


def synthesise(root: float, steps: list[int], bpm: int, seconds: int = SECONDS) -> array:
    """A melody of plucked notes: real, audible audio."""
    beat = 60.0 / bpm
    per_note = int(RATE * beat)
    total = RATE * seconds
    notes: dict[int, array] = {}  # a melody repeats its notes: compute each once
    samples = array("h")
    index = 0
    while len(samples) < total:
        step = steps[index % len(steps)]
        if step not in notes:
            notes[step] = pluck(root * 2 ** (step / 12), beat, per_note)
        samples.extend(notes[step][: total - len(samples)])
        index += 1
    return samples


def write_wav(path: Path, samples: array) -> None:
    tmp = path.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(samples.tobytes())
    tmp.replace(path)


@dataclass(frozen=True)
class Facts:
    """What an upload records about its file, for a demo file."""

    duration_seconds: float
    size_bytes: int
    sha256: str
    bitrate: int  # bits per second, as mutagen reports it for PCM WAV


def write_demo_files(media_dir: Path) -> list[Facts]:
    """Synthesise the demo files missing from media_dir; their facts."""
    media_dir.mkdir(parents=True, exist_ok=True)
    facts = []
    for name, _, _, _, root, steps, bpm in DEMOS:
        path = media_dir / name
        if not path.exists():
            write_wav(path, synthesise(root, steps, bpm))
        with wave.open(str(path)) as audio:
            rate, width, channels = audio.getframerate(), audio.getsampwidth(), audio.getnchannels()
            duration = audio.getnframes() / rate
        data = path.read_bytes()
        facts.append(
            Facts(
                duration, len(data), hashlib.sha256(data).hexdigest(), rate * width * 8 * channels
            )
        )
    return facts


async def seed(database_url: str, media_dir: Path, public_urls: bool = False) -> int:
    """Add the demo clips that are missing; returns how many were added.
    Demo clips catalogued before their facts were recorded get them."""
    facts = await asyncio.to_thread(write_demo_files, media_dir)
    conn = await asyncpg.connect(database_url)
    added = 0
    try:
        for (name, title, genre, description, *_), fact in zip(DEMOS, facts, strict=True):
            status = await conn.execute(
                SQL["seed_stored_clip"],
                title,
                description,
                genre,
                fact.duration_seconds,
                name,
                "audio/wav",
                fact.size_bytes,
                fact.sha256,
                fact.bitrate,
            )
            added += int(status.split()[-1])
            await conn.execute(
                SQL["seed_stored_facts"], name, fact.size_bytes, fact.sha256, fact.bitrate
            )
        if public_urls:
            for title, genre, url in PUBLIC:
                status = await conn.execute(
                    SQL["seed_remote_clip"],
                    title,
                    "A SoundHelix example.",
                    genre,
                    300.0,
                    url,
                    "audio/mpeg",
                )
                added += int(status.split()[-1])
        # Queued, not made here: the server's job runners make the previews
        # and peaks within seconds of starting (`make run` starts it next),
        # and a seed stays quick and needs no decoder of its own.
        await jobs.queue_missing_jobs(conn)
    finally:
        await conn.close()
    return added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--public-urls", action="store_true", help="also add the SoundHelix URL set"
    )
    args = parser.parse_args()
    settings = load_settings()
    with database(settings) as url:
        try:
            added = asyncio.run(seed(url, settings.media_dir, args.public_urls))
        except (OSError, asyncpg.PostgresError) as error:
            raise SystemExit(f"seed failed: {error}") from None
    print(f"seed: {added} clips added")


if __name__ == "__main__":
    main()
