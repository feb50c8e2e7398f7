"""What a job does to audio, in a job process (jobs/pool.py): decode it,
encode its MP3 preview, measure its waveform peaks.

Decoding is miniaudio's (dr_wav, dr_flac, dr_mp3, stb_vorbis: WAV, FLAC, MP3
and Ogg Vorbis); encoding LAME's, through lameenc. Together 4.2 MB of
image, against 103 MB for PyAV's bundled FFmpeg or about 160 MB for
Debian's ffmpeg and its libraries (README, "Previews and peaks"). The price:
Ogg Opus and AAC/M4A uploads, which the upload path accepts, are not
decoded here; their preview and peaks fail with that reason, and the clip
plays its original (already compressed, so a preview would save little).

Audio is decoded as a stream of 16-bit chunks, never whole in memory: a
50 MB FLAC decodes to several hundred MB of samples. These functions run in
a separate process (a crafted file can crash a C decoder), so they take
and return only plain, picklable values, and raise only `Unreadable` (the
file's fault: retrying cannot help) or `Retryable`.
"""

import array
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lameenc
import miniaudio

from schemas.fields import MAX_DURATION_SECONDS
from schemas.peaks import BASE_SAMPLES_PER_PIXEL
from settings import PREVIEW_BITRATES
from storage import MediaStore, StorageError
from streaming.audio import sniff

PREVIEW_TYPE = "audio/mpeg"
PREVIEW_EXTENSION = ".mp3"
# The finest waveform served (audiowaveform's default zoom); coarser ones
# are computed from it (`zoom`).
SAMPLES_PER_PIXEL = BASE_SAMPLES_PER_PIXEL
# Frames decoded at a time: a whole number of peaks blocks (0.37 s at 44.1 kHz).
FRAMES_PER_CHUNK = SAMPLES_PER_PIXEL * 64
# Sample rates an MP3 can have; anything else is resampled to the nearest family.
MP3_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000})
DECODED = "WAV, FLAC, MP3 and Ogg Vorbis"
# What each decodable format (streaming/audio.py sniff) is read with.
INFO_READERS = {
    "wav": miniaudio.wav_get_file_info,
    "flac": miniaudio.flac_get_file_info,
    "mp3": miniaudio.mp3_get_file_info,
    "ogg": miniaudio.vorbis_get_file_info,
}
# A decode that yields less than this share of the clip's duration (less a
# half second of slack) is a damaged file, not a short one.
MIN_DECODED_SHARE = 0.9
# A decode that goes on past this share of the clip's duration (plus a
# second) is a file whose header lies (a FLAC whose STREAMINFO says 10 s
# ahead of an hour of frames, which the upload measured as 10 s): stopped,
# as its preview, peaks and job time would be sized by audio nobody
# declared. A remote clip's duration is its creator's word: its decode
# stops at MAX_DURATION_SECONDS, the longest any clip may be.
MAX_DECODED_SHARE = 1.1


NOT_LIGHTER = (
    "a {kbps} kbit/s preview would be no lighter than the original ({original_bytes} bytes),"
    " which is served instead"
)


class Unreadable(Exception):
    """The audio cannot be decoded (an unsupported codec, a damaged file):
    the job fails for good with this reason."""


class Retryable(Exception):
    """Something outside the file failed (the media store): try again later."""


@dataclass(frozen=True)
class StoreConfig:
    """How a job process opens the app's media store: everything it needs,
    picklable (the app's MediaStore holds callbacks that are not). A store
    of another kind (object storage) adds what its client needs here, and
    its `open` must give a readable file (`local_copy` copies it to a
    temporary file for the decoders, which want a path) and `create` a
    NewFile-like writer whose `rename` stores the preview under a new name."""

    directory: Path
    min_free_bytes: int = 0

    def open_store(self) -> MediaStore:
        return MediaStore(self.directory, min_free_bytes=self.min_free_bytes)


@dataclass(frozen=True)
class Preview:
    name: str  # the preview's file in the media store
    size_bytes: int
    bitrate: int  # bits per second
    duration_seconds: float


@dataclass(frozen=True)
class Peaks:
    sample_rate: int
    samples_per_pixel: int
    data: bytes  # min/max pairs of signed 8-bit values
    duration_seconds: float


@contextlib.contextmanager
def local_copy(store: MediaStore, name: str) -> Iterator[str]:
    """A local path holding the stored file `name`: the store's own file
    when it is on this machine's disk, else a temporary copy of what
    `store.open` reads (an object store's file, say). Raises Retryable
    when the store fails, Unreadable when the file is gone."""
    try:
        path = store.path(name)
        if path.exists():
            yield str(path)
            return
        source = store.open(name)
    except StorageError as error:
        raise Retryable(str(error)) from None
    if source is None:
        raise Unreadable("the stored audio file is missing")
    with source, tempfile.NamedTemporaryFile(prefix="clips-job-") as copy:
        shutil.copyfileobj(source, copy)
        copy.flush()
        yield copy.name


def kind_of(path: str) -> str:
    with open(path, "rb") as file:
        return sniff(file.read(64)) or "unknown"


def decode(
    path: str, expected_seconds: float, mp3_rate: bool = True
) -> tuple[int, int, Iterator[array.array]]:
    """(sample rate, channels, chunks of interleaved 16-bit samples) of the
    audio at `path`, at most two channels, at an MP3 sample rate (or, when
    not `mp3_rate`, at its own rate up to 48 kHz). The
    iterator raises Unreadable when it ends well short of
    `expected_seconds` (a damaged file decodes partly)."""
    kind = kind_of(path)
    try:
        # By the file's bytes, as uploads are judged (miniaudio's own
        # get_file_info goes by the name's extension).
        info = INFO_READERS[kind](path)
    except (KeyError, miniaudio.MiniaudioError):
        raise Unreadable(
            f"its audio ({kind.upper()}) cannot be decoded here: previews and peaks are"
            f" made from {DECODED}"
        ) from None
    channels = min(info.nchannels, 2)
    rate = info.sample_rate
    if rate not in MP3_RATES and (mp3_rate or rate > 48000):
        rate = 44100 if rate % 11025 == 0 else 48000

    if expected_seconds:
        most = rate * (MAX_DECODED_SHARE * expected_seconds + 1)
        too_long = f"the file is damaged: it decodes longer than the {expected_seconds:.1f} s"
        too_long += " it announces"
    else:
        most = rate * MAX_DURATION_SECONDS
        too_long = f"its audio is longer than any clip may be ({MAX_DURATION_SECONDS} s)"

    def chunks() -> Iterator[array.array]:
        frames = 0
        try:
            stream = miniaudio.stream_file(
                path, miniaudio.SampleFormat.SIGNED16, channels, rate, FRAMES_PER_CHUNK
            )
            for chunk in stream:
                frames += len(chunk) // channels
                if frames > most:
                    raise Unreadable(too_long)
                yield chunk
        except miniaudio.MiniaudioError as error:
            raise Unreadable(f"its audio cannot be decoded: {error}") from None
        decoded = frames / rate
        if decoded < MIN_DECODED_SHARE * expected_seconds - 0.5:
            raise Unreadable(
                f"the file is damaged: {decoded:.1f} s of its {expected_seconds:.1f} s decode"
            )

    return rate, channels, chunks()


def encode_preview(store: MediaStore, path: str, expected_seconds: float, kbps: int) -> Preview:
    """Encode the audio at `path` as a constant-bitrate MP3 into the store.
    Raises Unreadable, and stops writing, once the preview would be no
    lighter than the original (a low-bitrate MP3 upload): the original is
    served instead, and a crafted upload cannot make the job write more
    than its own size."""
    original_bytes = os.path.getsize(path)
    rate, channels, chunks = decode(path, expected_seconds)
    kbps = preview_kbps(kbps, rate, channels)
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(kbps)
    encoder.set_in_sample_rate(rate)
    encoder.set_channels(channels)
    # LAME's own default, -q 5: measured here 2.3x faster than -q 2 (0.14 s
    # against 0.32 s of CPU for 20 s of stereo) at the same size; the finer
    # search of -q 2 is not worth it for a preview.
    encoder.set_quality(5)
    try:
        out = store.create()
    except StorageError as error:
        raise Retryable(str(error)) from None
    try:
        size = frames = 0
        for chunk in chunks:
            frames += len(chunk) // channels
            encoded = encoder.encode(chunk.tobytes())
            size += len(encoded)
            if size >= original_bytes:
                raise Unreadable(NOT_LIGHTER.format(kbps=kbps, original_bytes=original_bytes))
            out.write(bytes(encoded))
        tail = encoder.flush()
        size += len(tail)
        if size >= original_bytes:
            raise Unreadable(NOT_LIGHTER.format(kbps=kbps, original_bytes=original_bytes))
        out.write(bytes(tail))
        out.close()
        if size == 0:
            raise Unreadable("its audio decodes to nothing")
        name = out.rename(PREVIEW_EXTENSION)
    except StorageError as error:
        raise Retryable(str(error)) from None
    finally:
        out.remove()  # the temporary file, unless renamed
    return Preview(name, size, kbps * 1000, frames / rate)


def preview_kbps(stereo_kbps: int, rate: int, channels: int) -> int:
    """The bitrate for this audio: PREVIEW_BITRATE is for stereo, one channel
    gets half of it (the same quality per channel: a mono 22 kHz demo clip
    needs no 128 kbit/s), within what MP3 allows at this sample rate
    (MPEG-2 and 2.5, below 32 kHz, stop at 160)."""
    wanted = stereo_kbps if channels == 2 else stereo_kbps // 2
    allowed = [b for b in PREVIEW_BITRATES if rate >= 32000 or b <= 160]
    return min(allowed, key=lambda b: (abs(b - wanted), b))


def measure_peaks(path: str, expected_seconds: float) -> Peaks:
    """The waveform of the audio at `path`: for every SAMPLES_PER_PIXEL
    frames, the lowest and highest sample of any channel, as 8-bit values
    (audiowaveform's `--bits 8`, channels merged), at the audio's own sample
    rate as audiowaveform gives it (48 kHz at most). Never resampled up:
    a 60 KB WAV at 1 Hz announcing 16 hours made 16 hours of 48 kHz
    samples to scan, minutes of a job process for nothing."""
    rate, channels, chunks = decode(path, expected_seconds, mp3_rate=False)
    block = SAMPLES_PER_PIXEL * channels
    peaks = array.array("b")
    carry = array.array("h")
    frames = 0
    for chunk in chunks:
        frames += len(chunk) // channels
        samples = carry + chunk if carry else chunk
        whole = len(samples) - len(samples) % block
        for start in range(0, whole, block):
            part = samples[start : start + block]
            peaks.append(min(part) >> 8)
            peaks.append(max(part) >> 8)
        carry = samples[whole:]
    if carry:
        peaks.append(min(carry) >> 8)
        peaks.append(max(carry) >> 8)
    return Peaks(rate, SAMPLES_PER_PIXEL, peaks.tobytes(), frames / rate)


def make_preview(config: StoreConfig, name: str, expected_seconds: float, kbps: int) -> Preview:
    """The job "preview" of a stored clip, in a job process."""
    store = config.open_store()
    with local_copy(store, name) as path:
        return encode_preview(store, path, expected_seconds, kbps)


def make_stored_peaks(config: StoreConfig, name: str, expected_seconds: float) -> Peaks:
    """The job "peaks" of a stored clip, in a job process."""
    with local_copy(config.open_store(), name) as path:
        return measure_peaks(path, expected_seconds)


def zoom(data: bytes, multiple: int) -> list[int]:
    """Stored peaks (min/max pairs of signed bytes) at `multiple` times
    their samples per pixel: each new pixel the lowest min and the highest
    max of `multiple` stored ones (the last may cover fewer)."""
    values = array.array("b", data)
    if multiple == 1:
        return values.tolist()
    lows, highs = values[0::2], values[1::2]
    zoomed = []
    for start in range(0, len(lows), multiple):
        zoomed.append(min(lows[start : start + multiple]))
        zoomed.append(max(highs[start : start + multiple]))
    return zoomed


def make_preview_of(config: StoreConfig, path: str, expected_seconds: float, kbps: int) -> Preview:
    """The job "preview" of audio already copied to `path` (from a bucket):
    the preview is made in the local store, and the runner moves it on."""
    return encode_preview(config.open_store(), path, expected_seconds, kbps)
