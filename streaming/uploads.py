"""Audio uploads: multipart/form-data streamed into the media store.

The file goes to disk chunk by chunk (never whole in memory) under a name of
our own, is hashed and measured on the way, and must stop at
MAX_UPLOAD_BYTES (413). Its format is read from its bytes, not its name or
declared type (415 for anything but MP3, AAC/M4A, Ogg Vorbis/Opus, WAV and
FLAC), and mutagen reads duration and bitrate from it (422 when it cannot).
`receive` is a context manager: unless the caller keeps the upload, the file
is removed however the request ends, a client abort included. A failing
disk raises storage.StorageError (a 500 or 507 naming storage).
"""

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import mutagen
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from storage import MediaStore, NewFile
from web.problems import Problem

CHUNK_BYTES = 64 * 1024
FIELD_MAX_BYTES = 8 * 1024
FILE_FIELD = "audio"
TEXT_FIELDS = frozenset({"title", "description", "genre"})

# Format: content type, file extension, and the mutagen types that read it.
FORMATS = {
    "mp3": ("audio/mpeg", ".mp3", ("MP3",)),
    "m4a": ("audio/mp4", ".m4a", ("MP4",)),
    "aac": ("audio/aac", ".aac", ("AAC",)),
    "ogg": ("audio/ogg", ".ogg", ("OggVorbis", "OggOpus")),
    "wav": ("audio/wav", ".wav", ("WAVE",)),
    "flac": ("audio/flac", ".flac", ("FLAC",)),
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


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    name: str | None = None  # the stored file's name inside MEDIA_DIR
    content_type: str = ""
    size_bytes: int = 0
    sha256: str = ""
    duration_seconds: float = 0.0
    bitrate: int | None = None
    kept: bool = False

    def keep(self) -> None:
        self.kept = True


async def _read_text(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(1024):
        data += chunk
        if len(data) > FIELD_MAX_BYTES:
            raise Problem(413, f"Form field {part.name!r} is over {FIELD_MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(400, f"Form field {part.name!r} is not UTF-8") from None


async def _write_file(part: BodyPartReader, out: NewFile, upload: Upload, limit: int) -> bytes:
    """Stream the part into `out`; returns its first bytes for sniffing."""
    digest = hashlib.sha256()
    head = b""
    while chunk := await part.read_chunk(CHUNK_BYTES):
        upload.size_bytes += len(chunk)
        if upload.size_bytes > limit:
            raise Problem(413, f"The audio file is over MAX_UPLOAD_BYTES ({limit} bytes)")
        if len(head) < 64:
            head += chunk[: 64 - len(head)]
        digest.update(chunk)
        out.write(chunk)
    out.close()
    upload.sha256 = digest.hexdigest()
    return head


def _read_audio(path: Path, kind: str, size: int) -> tuple[float, int | None]:
    """Duration and bitrate as mutagen reads them, or a 422 when it cannot,
    or when the file is far shorter than its own headers announce (a
    truncated upload whose first frame still claims the full length)."""
    try:
        audio = mutagen.File(path)
    except (mutagen.MutagenError, OSError, ValueError, EOFError):  # malformed files raise all sorts
        audio = None
    readers = FORMATS[kind][2]
    if audio is None or type(audio).__name__ not in readers or not audio.info.length:
        raise Problem(422, f"The file looks like {kind.upper()} but its audio cannot be read")
    length = float(audio.info.length)
    bitrate = getattr(audio.info, "bitrate", None) or None
    if bitrate and size < 0.9 * bitrate / 8 * length:
        raise Problem(
            422, f"The file is truncated: it announces {length:.1f} s but holds {size} bytes"
        )
    return length, bitrate


@contextlib.asynccontextmanager
async def receive(request: web.Request, store: MediaStore, limit: int) -> AsyncIterator[Upload]:
    """Receive the upload into `store`; the file stays only if the caller
    calls `upload.keep()` inside the block."""
    upload = Upload()
    files: list[NewFile] = []
    try:
        await _receive_parts(request, upload, store, files, limit)
        yield upload
    finally:
        for new in files:
            new.remove()
        if upload.name is not None and not upload.kept:
            store.delete(upload.name)


async def _receive_parts(
    request: web.Request, upload: Upload, store: MediaStore, files: list[NewFile], limit: int
) -> None:
    head: bytes | None = None  # the file's first bytes, once it is received
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                raise Problem(400, "Nested or unnamed multipart parts are not accepted")
            if part.name == FILE_FIELD:
                if head is not None:
                    raise Problem(400, "Send one audio file per clip")
                files.append(store.create())
                head = await _write_file(part, files[0], upload, limit)
            elif part.name in TEXT_FIELDS:
                upload.fields[part.name] = await _read_text(part)
            else:
                raise Problem(400, f"Unknown form field {part.name[:40]!r}")
    except (ValueError, AssertionError, HttpProcessingError) as error:  # a malformed body
        raise Problem(400, f"The multipart body is malformed: {error}") from None
    if head is None:
        raise Problem(400, f"Attach the audio as a file in the form field {FILE_FIELD!r}")
    kind = sniff(head)
    if kind is None:
        raise Problem(
            415, "The file is not audio this service accepts (MP3, AAC/M4A, Ogg, WAV, FLAC)"
        )
    received = files[0]
    upload.duration_seconds, upload.bitrate = await asyncio.to_thread(
        _read_audio, received.path, kind, upload.size_bytes
    )
    upload.content_type, extension, _ = FORMATS[kind]
    upload.name = await asyncio.to_thread(received.rename, extension)
