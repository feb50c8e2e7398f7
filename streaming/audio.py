"""What an uploaded file's bytes are: its format, sniffed from its first
bytes, and its duration and bitrate, read by mutagen in worker processes.

mutagen is pure Python: a crafted file can keep it busy for seconds (a WAV
of 400,000 empty chunks, about 3 MB) or make it recurse until Python gives
up (deeply nested MP4 atoms), and a thread would hold the GIL and starve the
event loop all the while. So files are read by a pool of
UPLOAD_PARSE_WORKERS processes the app owns (streaming/uploads.py's
`uploads_ctx`), each read gets
UPLOAD_PARSE_SECONDS, and a process that overruns is killed and replaced.
Whatever mutagen raises on a file is that file's fault: it cannot be read.
"""

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import mutagen.aac
import mutagen.flac
import mutagen.mp3
import mutagen.mp4
import mutagen.oggopus
import mutagen.oggvorbis
import mutagen.wave

from schemas.fields import INTEGER_MAX, MAX_DURATION_SECONDS

# Format: content type, file extension, and the mutagen types that read it.
FORMATS = {
    "mp3": ("audio/mpeg", ".mp3", ("MP3",)),
    "m4a": ("audio/mp4", ".m4a", ("MP4",)),
    "aac": ("audio/aac", ".aac", ("AAC",)),
    "ogg": ("audio/ogg", ".ogg", ("OggVorbis", "OggOpus")),
    "wav": ("audio/wav", ".wav", ("WAVE",)),
    "flac": ("audio/flac", ".flac", ("FLAC",)),
}
# The mutagen classes of those names. A file is read with its sniffed
# format's classes, not mutagen.File's guess: that guess scores file name
# extensions, which an upload being received has none of (MEDIA_DIR's
# `.upload-<hex>`), and ADTS AAC (and MP3 frames of MPEG 2.5 or layer II
# without an ID3 tag) is recognised by nothing else (mutagen 1.48, aac.py
# and mp3.py `score`): mutagen.File gave None and the upload a 422.
READERS = {
    cls.__name__: cls
    for cls in (
        mutagen.mp3.MP3,
        mutagen.mp4.MP4,
        mutagen.aac.AAC,
        mutagen.oggvorbis.OggVorbis,
        mutagen.oggopus.OggOpus,
        mutagen.wave.WAVE,
        mutagen.flac.FLAC,
    )
}


def sniff(head: bytes) -> str | None:
    """The audio format the first bytes of a file announce, if any."""
    if head.startswith(b"ID3"):
        return "mp3"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        layer = (head[1] >> 1) & 0b11
        return "aac" if layer == 0 else "mp3"  # ADTS frames have layer 00
    return None


@dataclass(frozen=True)
class Audio:
    """What a file holds, or why it cannot be read (`refused`)."""

    duration_seconds: float = 0.0
    bitrate: int | None = None
    refused: str | None = None


def read_audio(path: str, kind: str, size: int) -> Audio:
    """Duration and bitrate as mutagen reads them. Runs in a worker process:
    it returns why a file is refused rather than raising, and treats every
    exception as the file's (RecursionError and MemoryError included: the
    worker is disposable). A file far shorter than its own headers announce
    (a truncated upload whose first frame still claims the full length) is
    refused too."""
    readers = FORMATS[kind][2]
    audio = None
    for name in readers:  # the first of the format's readers that reads it
        try:
            audio = READERS[name](path)
            break
        except Exception:  # malformed files raise all sorts
            continue
    try:
        if audio is None or not audio.info.length:
            return Audio(refused=f"The file looks like {kind.upper()} but its audio cannot be read")
        length = float(audio.info.length)
        bitrate = int(getattr(audio.info, "bitrate", 0) or 0) or None
    except Exception:
        return Audio(refused=f"The file looks like {kind.upper()} but its audio cannot be read")
    if not 0 < length <= MAX_DURATION_SECONDS:
        return Audio(
            refused=f"The file announces {length:.0f} s of audio; at most"
            f" {MAX_DURATION_SECONDS} s is accepted"
        )
    if bitrate is not None and bitrate > INTEGER_MAX:
        return Audio(refused=f"The file announces a bitrate of {bitrate} bit/s, which no audio has")
    if bitrate and size < 0.9 * bitrate / 8 * length:
        return Audio(
            refused=f"The file is truncated: it announces {length:.1f} s but holds {size} bytes"
        )
    return Audio(length, bitrate)


class ReadTimeout(Exception):
    """A read overran its budget; its process was killed."""


class Busy(Exception):
    """No worker came free within the budget."""


def ignore_interrupts() -> None:
    """In a reader process: Ctrl-C reaches the whole process group, but the
    app decides when its readers stop (no KeyboardInterrupt traceback on
    the terminal mid-shutdown)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Worker:
    """One process (a single-process executor), and its pid so that it can be
    killed when a read overruns."""

    def __init__(self, context: multiprocessing.context.BaseContext):
        self.executor = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=context, initializer=ignore_interrupts
        )
        self.pid: int | None = None

    async def start(self) -> None:
        if self.pid is None:  # the first call starts the process
            loop = asyncio.get_running_loop()
            self.pid = await loop.run_in_executor(self.executor, os.getpid)

    def kill(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.executor.shutdown(wait=False, cancel_futures=True)


class AudioReader:
    """`workers` processes reading audio files, each read within `budget`
    seconds. Processes start on first use and are replaced when killed."""

    def __init__(self, workers: int, budget: float):
        self.budget = budget
        # forkserver: a fresh worker is a fork of a small server process that
        # has this module imported, never of the app with its threads.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([__name__])
        self._all = [_Worker(self._context) for _ in range(workers)]
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        for worker in self._all:
            self._idle.put_nowait(worker)

    def pids(self) -> list[int]:
        """The running worker processes."""
        return [w.pid for w in self._all if w.pid is not None]

    async def read(self, path: str, kind: str, size: int) -> Audio:
        """Read the file in a worker. Raises Busy when no worker is free
        within the budget, ReadTimeout when the read overran it."""
        try:
            async with asyncio.timeout(self.budget):
                worker = await self._idle.get()
        except TimeoutError:
            raise Busy from None
        try:
            await worker.start()
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(worker.executor, read_audio, path, kind, size)
            async with asyncio.timeout(self.budget):
                return await future
        except TimeoutError:
            worker = self._replace(worker)
            raise ReadTimeout from None
        except BrokenProcessPool:  # the process died on this file (or was killed)
            worker = self._replace(worker)
            return Audio(refused=f"The file looks like {kind.upper()} but its audio cannot be read")
        except BaseException:  # cancelled mid-read (the client left): the worker may be busy
            worker = self._replace(worker)
            raise
        finally:
            self._idle.put_nowait(worker)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        fresh = _Worker(self._context)
        self._all[self._all.index(worker)] = fresh
        return fresh

    async def close(self) -> None:
        for worker in self._all:
            worker.executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.gather(
            *(asyncio.to_thread(w.executor.shutdown, True) for w in self._all if w.pid)
        )
