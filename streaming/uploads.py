"""Audio uploads: multipart/form-data streamed into the media store.

The file goes to disk chunk by chunk (never whole in memory) under a name of
our own, is hashed and measured on the way, and must stop at
MAX_UPLOAD_BYTES (413; a Content-Length past it and FORM_ALLOWANCE is 413
before anything is read). Its format is read from its bytes, not its name or
declared type (415 for anything but MP3, AAC/M4A, Ogg Vorbis/Opus, WAV and
FLAC, as soon as its first bytes arrive), and mutagen reads duration and
bitrate from it in a worker process (streaming/audio.py; 422 when it
cannot, or not within UPLOAD_PARSE_SECONDS).
`receive` is a context manager: unless the caller keeps the upload, the file
is removed however the request ends, a client abort included. A failing
disk raises storage.StorageError (a 500 or 507 naming storage).

Bounds, so that no client can hold the server: at most
UPLOAD_MAX_CONCURRENT uploads at once per process (503 with Retry-After,
before the body is read); at most MAX_PARTS form parts (400); every
CHUNK_BYTES of the body (or the end of a part) must arrive within
UPLOAD_IDLE_SECONDS (408), so a body that trickles is cut however it
trickles, and the whole body within UPLOAD_MAX_SECONDS (408), so one paced
just fast enough cannot hold its place for hours; the disk keeps
MEDIA_MIN_FREE_BYTES (507). Partial files of uploads that died with their
process are swept (`uploads_ctx`).

With MEDIA_STORE=s3 each chunk also goes to the bucket as it arrives
(storage/s3.py: a multipart upload past 5 MiB, one PUT below), named once
its first bytes tell its format; the file in MEDIA_DIR is then only the
copy mutagen reads the duration from, removed when the request ends. An
upload that fails or is abandoned, before or after its object is complete
(too large, not audio, the client gone, the database down), aborts the
multipart upload or deletes the object, as the local file is removed.
"""

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from settings import SETTINGS, Settings
from storage import MEDIA_STORE, MediaStore, NewFile
from storage.s3 import Bucket, NewObject
from streaming.audio import FORMATS, AudioReader, Busy, ReadTimeout, sniff
from streaming.bucket import BUCKET
from web.problems import Problem

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
FIELD_MAX_BYTES = 8 * 1024
FILE_FIELD = "audio"
TEXT_FIELDS = frozenset({"title", "description", "genre"})
# The form has four fields; a few more parts are tolerated (a browser may
# add an empty one), thousands are not.
MAX_PARTS = 16
# What a form may hold besides its file: three text fields of at most
# FIELD_MAX_BYTES, part headers and boundaries. A body declaring more than
# MAX_UPLOAD_BYTES plus this cannot be an upload we would keep.
FORM_ALLOWANCE = 64 * 1024
NOT_AUDIO = "The file is not audio this service accepts (MP3, AAC/M4A, Ogg, WAV, FLAC)"
# Seconds a client refused for being one upload too many is told to wait.
RETRY_AFTER = "5"

T = TypeVar("T")


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


async def _read_chunk(part: BodyPartReader) -> bytes:
    """The next CHUNK_BYTES of the part (a little more, at most twice that),
    or the rest of it; empty at its end."""
    chunk = bytearray()
    # read_chunk() returns whatever has arrived, a byte included: gather a
    # whole chunk, so that its deadline bounds the rate, not only silences.
    while len(chunk) < CHUNK_BYTES and (more := await part.read_chunk(CHUNK_BYTES)):
        chunk += more
    return bytes(chunk)


class Uploads:
    """One app's uploads: received into its media store within the bounds
    above, read by its audio reader; `sweep()` removes partial files no
    upload owns."""

    def __init__(
        self,
        settings: Settings,
        store: MediaStore,
        reader: AudioReader,
        bucket: Bucket | None = None,
    ):
        self.store = store
        self.bucket = bucket
        self.reader = reader
        self.limit = settings.max_upload_bytes
        self.idle = settings.upload_idle_seconds
        self.max_seconds = settings.upload_max_seconds
        self.max_concurrent = settings.upload_max_concurrent
        self.active = 0
        # A live upload writes or touches its partial file at least every
        # max(idle, 2 x parse) seconds (a worker is waited for at most the
        # parse budget, then the parse takes at most as long): a file left
        # alone four times that long (2 minutes by default: margin for loaded
        # machines, and for clocks of replicas sharing MEDIA_DIR) belongs to
        # no live upload.
        self.stale_after = 4 * max(self.idle, 2 * settings.upload_parse_seconds)

    def sweep(self) -> list[str]:
        removed = self.store.sweep(self.stale_after)
        if removed:
            log.warning(
                "removed %d partial upload(s) left by a process that died: %s",
                len(removed),
                ", ".join(removed),
            )
        return removed

    @contextlib.asynccontextmanager
    async def receive(self, request: web.Request) -> AsyncIterator[Upload]:
        """Receive the upload into the store; the file stays only if the
        caller calls `upload.keep()` inside the block."""
        declared = request.content_length
        if declared is not None and declared > self.limit + FORM_ALLOWANCE:
            # Before the disk is asked: a size no upload may have must not
            # pass for a full disk (a 507, its log and its metric).
            raise Problem(
                413,
                f"The body declares {declared} bytes: more than MAX_UPLOAD_BYTES"
                f" ({self.limit} bytes) and the form's other fields",
            )
        if self.active >= self.max_concurrent:
            raise Problem(
                503,
                f"Too many uploads at once (UPLOAD_MAX_CONCURRENT is {self.max_concurrent});"
                " try again shortly",
                headers={"Retry-After": RETRY_AFTER},
            )
        # The whole body must fit above the reserve (it is checked again as
        # bytes arrive: Content-Length may be absent, or others write too).
        self.store.make_room(request.content_length or 0)
        self.active += 1
        upload = Upload()
        files: list[NewFile] = []
        objects: list[NewObject] = []
        try:
            await self._receive_parts(request, upload, files, objects)
            yield upload
        finally:
            self.active -= 1
            for new in files:
                new.remove()
            # Shielded: the bucket must hear of it even when the handler is
            # cancelled again (its client left) while this runs.
            await asyncio.shield(self._discard(upload, objects))

    async def _discard(self, upload: Upload, objects: list["NewObject"]) -> None:
        """Remove what an upload left that is not kept: its multipart upload,
        and its object once the request making it went out, whether or not
        an answer came back (`NewObject.sent`): a commit whose answer was
        lost may have made an object no row names and no lifecycle rule
        removes."""
        for new in objects:
            await new.discard()
        if upload.kept:
            return
        if self.bucket is not None:
            for new in objects:
                if new.sent and new.name is not None:
                    await self.bucket.delete(new.name)
        elif upload.name is not None:
            self.store.delete(upload.name)

    async def _within_idle(self, read: Awaitable[T]) -> T:
        """`read`, or a 408 when it does not complete within the idle limit."""
        try:
            async with asyncio.timeout(self.idle):
                return await read
        except TimeoutError:
            raise Problem(
                408,
                f"The upload stalled: no {CHUNK_BYTES // 1024} KiB of it arrived within"
                f" UPLOAD_IDLE_SECONDS ({self.idle:g} s)",
            ) from None

    async def _write_file(
        self, part: BodyPartReader, out: NewFile, upload: Upload, sent: NewObject | None
    ) -> bytes:
        """Stream the part into `out` (and `sent`, the bucket's object);
        returns its first bytes for sniffing."""
        digest = hashlib.sha256()
        head = b""
        while chunk := await self._within_idle(_read_chunk(part)):
            upload.size_bytes += len(chunk)
            if upload.size_bytes > self.limit:
                raise Problem(413, f"The audio file is over MAX_UPLOAD_BYTES ({self.limit} bytes)")
            if len(head) < 64:
                head += chunk[: 64 - len(head)]
                if sniff(head) is None:
                    # The first chunk holds the whole head (_read_chunk):
                    # refused now, before the rest reaches the disk or the
                    # bucket (a 50 MiB file would go up as ten parts).
                    raise Problem(415, NOT_AUDIO)
            digest.update(chunk)
            out.write(chunk)
            if sent is not None:
                if upload.size_bytes == len(chunk):
                    # The first chunk holds the whole head (_read_chunk):
                    # the object's name and type, before its first part.
                    content_type, extension, _ = FORMATS.get(sniff(head) or "", ("", "", ()))
                    sent.name_as(extension, content_type or "application/octet-stream")
                await sent.write(chunk)
        out.close()
        upload.sha256 = digest.hexdigest()
        return head

    async def _receive_form(
        self,
        request: web.Request,
        upload: Upload,
        files: list[NewFile],
        objects: list[NewObject],
    ) -> bytes | None:
        """Read the form: its fields into `upload`, its file into a new file
        in `files`; returns the file's first bytes (None: no file)."""
        head: bytes | None = None
        parts = 0
        try:
            reader = await request.multipart()
            while (part := await self._within_idle(reader.next())) is not None:
                parts += 1
                if parts > MAX_PARTS:
                    raise Problem(400, f"The form has more than {MAX_PARTS} parts")
                if not isinstance(part, BodyPartReader) or part.name is None:
                    raise Problem(400, "Nested or unnamed multipart parts are not accepted")
                if part.name == FILE_FIELD:
                    if head is not None:
                        raise Problem(400, "Send one audio file per clip")
                    files.append(self.store.create())
                    if self.bucket is not None:
                        objects.append(self.bucket.create())
                    sent = objects[0] if objects else None
                    head = await self._write_file(part, files[0], upload, sent)
                elif part.name in TEXT_FIELDS:
                    upload.fields[part.name] = await self._within_idle(_read_text(part))
                    if files:
                        files[0].touch()  # still ours: see stale_after
                else:
                    raise Problem(400, f"Unknown form field {part.name[:40]!r}")
        except (ValueError, AssertionError, HttpProcessingError) as error:  # a malformed form
            if request.content.exception() is not None:
                raise  # the body itself cannot be decoded: web/problems.py answers that
            raise Problem(400, f"The multipart body is malformed: {error}") from None
        return head

    async def _receive_parts(
        self,
        request: web.Request,
        upload: Upload,
        files: list[NewFile],
        objects: list[NewObject],
    ) -> None:
        try:
            async with asyncio.timeout(self.max_seconds):
                head = await self._receive_form(request, upload, files, objects)
        except TimeoutError:
            raise Problem(
                408,
                f"The upload took too long: its body did not arrive within"
                f" UPLOAD_MAX_SECONDS ({self.max_seconds:g} s)",
            ) from None
        if head is None:
            raise Problem(400, f"Attach the audio as a file in the form field {FILE_FIELD!r}")
        kind = sniff(head)
        if kind is None:  # an empty file
            raise Problem(415, NOT_AUDIO)
        received = files[0]
        received.touch()
        try:
            audio = await self.reader.read(str(received.path), kind, upload.size_bytes)
        except ReadTimeout:
            raise Problem(
                422,
                f"The file's audio could not be read within UPLOAD_PARSE_SECONDS"
                f" ({self.reader.budget:g} s)",
            ) from None
        except Busy:
            raise Problem(
                503,
                "Every audio reader stayed busy; try again shortly",
                headers={"Retry-After": RETRY_AFTER},
            ) from None
        if audio.refused:
            raise Problem(422, audio.refused)
        upload.duration_seconds, upload.bitrate = audio.duration_seconds, audio.bitrate
        upload.content_type, extension, _ = FORMATS[kind]
        if objects:
            upload.name = await objects[0].commit()
        else:
            upload.name = await asyncio.to_thread(received.rename, extension)


UPLOADS = web.AppKey("UPLOADS", Uploads)


async def uploads_ctx(app: web.Application) -> AsyncIterator[None]:
    """The app's uploads and their audio reader processes; partial files
    left by a process that died are removed at start, and every
    `stale_after` seconds (a replica or worker may die at any time)."""
    settings = app[SETTINGS]
    reader = AudioReader(settings.upload_parse_workers, settings.upload_parse_seconds)
    uploads = app[UPLOADS] = Uploads(settings, app[MEDIA_STORE], reader, app.get(BUCKET))
    await asyncio.to_thread(uploads.sweep)

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(uploads.stale_after)
            await asyncio.to_thread(uploads.sweep)

    sweeper = asyncio.create_task(sweep_forever(), name="sweep partial uploads")
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await reader.close()
