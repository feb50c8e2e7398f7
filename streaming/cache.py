"""A read-through cache of remote clips on local disk (CACHE_DIR), bounded by
CACHE_MAX_BYTES with least-recently-used eviction; 0 turns it off.

What it stores: the whole body of an origin's answer to a plain GET (a 200,
or a 206 covering all of it) of known length, no coding, that RFC 9111
lets a shared cache store (not `no-store`, not `private`, no `Vary: *`),
with the origin's validators (ETag, Last-Modified), its Content-Type and
its caching headers. Entries are keyed by clip id and the origin's
identity (the clip's audio_url), so a PATCHed audio_url never serves the
old bytes; handlers/clips.py drops a clip's entries on PATCH and DELETE.

The bound holds for bodies and fills under way together: a fill reserves
its declared length when it starts (evicting what that needs), and one
that does not fit beside the fills already under way is piped instead.

Freshness (RFC 9111 §4.2): `s-maxage`, else `max-age`, else `Expires`
minus `Date`, less `Age`; `no-cache` stores but is stale at once. Without
any of them, heuristically (§4.2.2) a tenth of the time since Last-Modified,
at most a day, or HEURISTIC_SECONDS without Last-Modified. A stale entry is
revalidated with If-None-Match/If-Modified-Since: a 304 refreshes it, a 200
refills it. While the origin cannot answer (unreachable, timed out, 5xx,
every origin connection busy) a stale entry is served anyway, like RFC
5861's stale-if-error without a bound, unless the origin said
`must-revalidate`, `proxy-revalidate` or `s-maxage` (§4.2.4): a hot clip
keeps playing through an origin outage. A 4xx on revalidation means the
audio is gone: the entry is dropped.

Files, all in CACHE_DIR: `<key>.json` (the entry, written last),
`<key>.<token>.audio` (the body, named per version, so that a process
holding an older entry's name never reads a newer body), and while
filling `.<key>.<pid>.<token>.part` (and, named alike, the link a peaks
job reads a body through: `Cache.pinned`). A body is renamed into place only
when complete with the length the origin declared; a fill that is cut,
short or fails removes its part file. At start the index is rebuilt from
the `.json` files (a missing or short body drops the entry), part files of
processes that are gone are removed, and so are bodies no entry names.

Several processes (WORKERS > 1) share one CACHE_DIR: every write is a
rename into place, each process coalesces its own listeners' fills (a cold
clip is fetched at most once per worker), picks up entries other workers
filled when it misses, and rescans the directory before evicting so the
bound holds for the directory, not per worker.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import aiohttp
from aiohttp import web

from db.clips import Row
from metrics.registry import METRICS, Metrics
from settings import SETTINGS, Settings
from streaming.headers import audio_type
from streaming.plays import Outcome, longest_life, tracked
from streaming.ranges import http_date
from streaming.stored import SEND_PIECE_BYTES, StoredFile, send_file

log = logging.getLogger(__name__)

# Freshness when the origin gives no explicit lifetime and no Last-Modified.
HEURISTIC_SECONDS = 300.0
# The most heuristic freshness (a tenth of the time since Last-Modified) gives.
HEURISTIC_MAX_SECONDS = 86400.0
# How long an origin's answer that may not be stored (no-store, private, no
# length, too big) sends later listeners of that clip straight to the pipe,
# without a first attempt to fill.
REFUSED_SECONDS = 60.0
# How often a hit records its entry's use on disk (the body's mtime), the
# order in which a restarted process evicts.
TOUCH_SECONDS = 60.0
# A body no entry names is removed at start only when older than this: a
# process may be between renaming a body and writing its entry.
ORPHAN_SECONDS = 60.0
# The headers an entry keeps: a 304 updates them (RFC 9111 §4.3.4).
KEPT_HEADERS = ("Content-Type", "ETag", "Last-Modified", "Cache-Control", "Expires")


# The names of the cache's own files (`Cache.key` is `<clip id>-<32 hex>`):
# nothing else in CACHE_DIR is ever read or removed, so a CACHE_DIR shared
# with other files (or set to the wrong directory) loses none of them.
KEY = r"\d+-[0-9a-f]{32}"
SIDECAR_NAME = re.compile(rf"{KEY}\.json")
BODY_NAME = re.compile(rf"{KEY}\.[0-9a-f]{{16}}\.audio")
PART_NAME = re.compile(rf"\.{KEY}\.(\d+)\.[0-9a-f]{{8}}(?:\.json)?\.part")


class FillFailed(Exception):
    """The fill a listener reads from was cut, short or failed."""


@dataclass
class Entry:
    """One cached body: `size` bytes in `body` (a file name in CACHE_DIR),
    fresh until `fresh_until` (Unix time), with the origin's headers."""

    clip_id: int
    identity: str
    key: str
    body: str
    size: int
    headers: dict[str, str]
    fresh_until: float
    must_revalidate: bool
    touched: float = field(default=0.0, compare=False)

    @property
    def validators(self) -> tuple[str | None, str | None]:
        return self.headers.get("ETag"), self.headers.get("Last-Modified")

    def fresh(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.fresh_until

    def conditions(self) -> dict[str, str]:
        """The origin request revalidating this entry."""
        etag, modified = self.validators
        asked = {}
        if etag is not None:
            asked["If-None-Match"] = etag
        if modified is not None:
            asked["If-Modified-Since"] = modified
        return asked

    def content_type(self, clip: Row) -> str:
        """The same Content-Type a piped stream gets (streaming/headers.py)."""
        return audio_type(self.headers.get("Content-Type"), clip["content_type"])

    def sidecar(self) -> dict:
        data = asdict(self)
        del data["touched"]
        return data


def plain(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers caching reads, each field's lines joined (RFC 9110 §5.3)."""
    names = (*KEPT_HEADERS, "Date", "Age", "Vary")
    getall = getattr(headers, "getall", None)
    if getall is None:
        return {name: headers[name] for name in names if name in headers}
    return {name: ", ".join(getall(name)) for name in names if name in headers}


def directives(value: str | None) -> dict[str, str | None]:
    """Cache-Control as {directive: argument or None}, names in lowercase."""
    found: dict[str, str | None] = {}
    for item in (value or "").split(","):
        name, eq, argument = item.strip().partition("=")
        if name:
            found.setdefault(name.lower(), argument.strip().strip('"') if eq else None)
    return found


def seconds(value: str | None) -> float | None:
    """A delta-seconds argument (RFC 9111 §1.2.2), or None if not one."""
    return float(value) if value is not None and value.isascii() and value.isdigit() else None


def freshness(headers: Mapping[str, str], now: float) -> tuple[float, bool] | None:
    """(fresh_until, must_revalidate) for an answer a shared cache may
    store, else None (RFC 9111 §3, §4.2; the module docstring)."""
    control = directives(headers.get("Cache-Control"))
    if "no-store" in control or "private" in control or headers.get("Vary", "").strip() == "*":
        return None
    must = bool({"must-revalidate", "proxy-revalidate", "s-maxage"} & control.keys())
    date = http_date(headers.get("Date"))
    sent = date.timestamp() if date is not None else now
    age = seconds(headers.get("Age")) or 0.0
    if "no-cache" in control:
        lifetime = 0.0
    elif (shared := seconds(control.get("s-maxage"))) is not None:
        lifetime = shared
    elif (own := seconds(control.get("max-age"))) is not None:
        lifetime = own
    elif "Expires" in headers:
        expires = http_date(headers.get("Expires"))  # invalid: already expired (§5.3)
        lifetime = expires.timestamp() - sent if expires is not None else 0.0
    elif (modified := http_date(headers.get("Last-Modified"))) is not None:
        lifetime = min(max(sent - modified.timestamp(), 0.0) / 10, HEURISTIC_MAX_SECONDS)
    else:
        lifetime = HEURISTIC_SECONDS
    return now + max(lifetime - age, 0.0), must


class Fill:
    """A body being written from its origin. Listeners read the file as the
    bytes land (`ready_up_to`), never a queue of their own: a slow listener
    costs what the kernel's socket buffer holds, not a copy of the clip."""

    def __init__(self, cache: "Cache", entry: Entry, first: bytes):
        """Create the part file and write the body's `first` bytes (read
        before the listener's headers, as a pipe reads them), so listeners
        can open it at once. Raises OSError when the disk refuses."""
        self.cache = cache
        self.entry = entry
        self.path = cache.part_path(entry.key)  # the part file, then the body
        self.written = 0
        self.failed: str | None = None  # why: "upstream_error" or "timeout"
        self.dropped = False
        self.reserved = entry.size  # given back by release(), once
        self._changed = asyncio.Event()
        # A local file in the page cache, written inline as stored.py reads:
        # a thread hop per chunk would cost more than the write. Unbuffered:
        # readers read the file, so what is counted must be in it.
        self._out = open(self.path, "wb", buffering=0)  # noqa: SIM115 (closed by run)
        try:
            self._write(first)
        except BaseException:
            self._out.close()
            self.path.unlink(missing_ok=True)
            raise

    def release(self) -> None:
        """Give the fill's bytes back to the bound: on install they count
        as the entry's; on failure, as nothing."""
        self.cache.release(self.reserved)
        self.reserved = 0

    @property
    def done(self) -> bool:
        return self.written >= self.entry.size

    def _write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:  # an unbuffered write may take less than it is given
            view = view[self._out.write(view) :]
        self.written += len(chunk)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def ready_up_to(self, position: int) -> int:
        """How many bytes of the body are written, once more than `position`
        are; raises FillFailed when they never will be."""
        while self.written <= position:
            if self.failed:
                raise FillFailed(self.failed)
            await self._changed.wait()
        return self.written

    async def run(
        self, origin: aiohttp.ClientResponse, held: ExitStack, chunk_bytes: int, longest: float
    ) -> None:
        """Write the rest of `origin`'s body, at most for `longest` seconds.
        `held` (the origin response and its connection slot) is closed at
        the end; the body is installed only when it has the length the
        origin declared."""
        part = self.path
        try:
            with held, self._out:
                async with asyncio.timeout(longest):
                    while not self.done and (chunk := await origin.content.read(chunk_bytes)):
                        self._write(chunk)
            if self.written != self.entry.size:
                raise FillFailed(f"the body ended at {self.written} of {self.entry.size} bytes")
            self.release()
            if self.dropped:
                part.unlink(missing_ok=True)
            else:
                self.path = self.cache.install(self.entry, part)
        except (Exception, asyncio.CancelledError) as error:
            # aiohttp's read timeout is a TimeoutError too: the origin fell
            # silent, as a pipe would say.
            self.failed = "timeout" if isinstance(error, TimeoutError) else "upstream_error"
            with contextlib.suppress(OSError):
                part.unlink()
            if isinstance(error, asyncio.CancelledError):
                raise
            log.warning("clip %s: cache fill failed: %r", self.entry.clip_id, error)
        finally:
            self.release()
            if self.cache.fills.get(self.entry.key) is self:
                del self.cache.fills[self.entry.key]
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()


class Cache:
    """CACHE_DIR's index, its fills, and its bound. One per app (cache_ctx)."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        metrics: Metrics,
        shared: bool = False,
        max_fills: int = 1024,
    ):
        self.directory = directory
        self.max_bytes = max_bytes
        # A fill outlives the listener who began it and holds an origin
        # connection until the origin has sent it all (within the clip's
        # longest life): fills nobody listens to, from an origin that
        # trickles, may hold at most this many of UPSTREAM_MAX_CONNECTIONS,
        # and the rest stay for listeners.
        self.max_fills = max_fills
        self.metrics = metrics
        self.shared = shared
        self.entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self.bytes = 0
        # Bytes this process's fills in flight will hold once whole: they
        # count against the bound from their start, so the directory (parts
        # and bodies together) never holds more than it.
        self.filling = 0
        self.fills: dict[str, Fill] = {}
        self.pending: dict[str, asyncio.Future] = {}  # a first listener's origin request
        # Keys whose clip was dropped while their origin request was under
        # way: the fill it becomes serves its listeners and is not kept.
        self.cancelled: set[str] = set()
        self.refused: dict[str, float] = {}
        self.tasks: set[asyncio.Task] = set()

    # --- keys and files ---------------------------------------------------

    @staticmethod
    def key(clip_id: int, identity: str) -> str:
        return f"{clip_id}-{hashlib.sha256(identity.encode()).hexdigest()[:32]}"

    def _sidecar(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def part_path(self, key: str) -> Path:
        return self.directory / f".{key}.{os.getpid()}.{secrets.token_hex(4)}.part"

    # --- the index --------------------------------------------------------

    def load(self, start: bool = False) -> None:
        """Rebuild the index from the directory: at `start` (then files left
        half-written by processes that are gone are removed), and before
        evicting when several processes share it."""
        named, now = set(), time.time()
        found = []
        # Made by the first fill: an app that never streams a remote clip
        # leaves no directory behind.
        bodies = []
        for path in self.directory.iterdir() if self.directory.is_dir() else ():
            if part := PART_NAME.fullmatch(path.name):
                if start and not alive(part[1]):
                    with contextlib.suppress(OSError):
                        path.unlink()
            elif SIDECAR_NAME.fullmatch(path.name):
                entry = self._read(path)
                if entry is None:
                    continue
                named.add(entry.body)
                found.append(entry)
            elif BODY_NAME.fullmatch(path.name):
                bodies.append(path)
        for path in bodies:
            if path.name not in named:
                with contextlib.suppress(OSError):
                    if now - path.stat().st_mtime > ORPHAN_SECONDS:
                        path.unlink()
        on_disk = {entry.key: entry for entry in found}
        for key, entry in list(self.entries.items()):
            if key not in on_disk or on_disk[key].body != entry.body:
                self._forget(key)  # evicted, dropped or replaced by another process
        # Entries this process has not used count as older than its own.
        for entry in sorted(found, key=lambda e: e.touched, reverse=True):
            if entry.key not in self.entries:
                self._index(entry)
                self.entries.move_to_end(entry.key, last=False)
        self._gauge()

    def _read(self, sidecar: Path) -> Entry | None:
        """The entry a sidecar describes, if its body is whole; else both go."""
        try:
            entry = Entry(**json.loads(sidecar.read_text()))
            if not BODY_NAME.fullmatch(entry.body) or f"{entry.key}.json" != sidecar.name:
                raise ValueError(f"not this sidecar's body: {entry.body!r}")
            stat = (self.directory / entry.body).stat()
            if stat.st_size == entry.size:
                entry.touched = stat.st_mtime
                return entry
        except (OSError, ValueError, TypeError):
            pass
        with contextlib.suppress(OSError):
            sidecar.unlink()
        return None

    def _index(self, entry: Entry) -> None:
        old = self.entries.pop(entry.key, None)
        if old is not None:
            self.bytes -= old.size
        self.entries[entry.key] = entry
        self.bytes += entry.size

    def _gauge(self) -> None:
        self.metrics.cache_bytes.set(self.bytes)

    def lookup(self, key: str) -> Entry | None:
        """The entry of `key`, this process's or (on a miss) one another
        process wrote; marks it used."""
        entry = self.entries.get(key)
        if entry is None:
            sidecar = self._sidecar(key)
            if not sidecar.exists() or (entry := self._read(sidecar)) is None:
                return None
            self._index(entry)
            self._gauge()
        self.entries.move_to_end(key)
        return entry

    def open(self, entry: Entry) -> BinaryIO | None:
        """The entry's body, or None when it is gone (evicted or replaced by
        another process: the entry is forgotten here too)."""
        path = self.directory / entry.body
        try:
            file = open(path, "rb")  # noqa: SIM115 (StoredFile closes it)
        except OSError:
            self._forget(entry.key)
            return None
        now = time.time()
        if now - entry.touched > TOUCH_SECONDS:
            entry.touched = now
            with contextlib.suppress(OSError):
                os.utime(path, (now, now))
        return file

    @contextlib.contextmanager
    def pinned(self, entry: Entry) -> Iterator[Path | None]:
        """The entry's body under a name of its own (a hard link) while the
        block runs, for a reader in another process (a peaks job, jobs/):
        eviction or a newer fill removes the entry's name, not this one, so
        that reader reads the body whole. None when the body is gone (or
        cannot be linked). The link is named as a part file of this
        process: one left by a process killed meanwhile goes at the next
        start. Its bytes may outlive an eviction by as long as the block."""
        link: Path | None = self.part_path(entry.key)
        try:
            os.link(self.directory / entry.body, link)
        except FileNotFoundError:
            self._forget(entry.key)  # evicted or replaced by another process
            link = None
        except OSError as error:
            log.warning("CACHE_DIR %s: cannot link a body: %s", self.directory, error.strerror)
            link = None
        try:
            yield link
        finally:
            if link is not None:
                with contextlib.suppress(OSError):
                    link.unlink()

    def _forget(self, key: str) -> Entry | None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size
            self._gauge()
        return entry

    def _remove(self, entry: Entry) -> None:
        """Delete an entry's files: the sidecar first, so no process adopts
        a body about to vanish."""
        sidecar = self._sidecar(entry.key)
        with contextlib.suppress(OSError):
            current = json.loads(sidecar.read_text())
            if current.get("body") == entry.body:
                sidecar.unlink()
        with contextlib.suppress(OSError):
            (self.directory / entry.body).unlink()

    def install(self, entry: Entry, part: Path) -> Path:
        """A complete body: rename it into place, write its entry, evict
        what the bound needs. Returns the body's path."""
        entry.body = f"{entry.key}.{secrets.token_hex(8)}.audio"
        body = self.directory / entry.body
        os.replace(part, body)
        entry.touched = time.time()
        self.write(entry)
        old = self.entries.get(entry.key)
        if old is not None and old.body != entry.body:
            with contextlib.suppress(OSError):
                (self.directory / old.body).unlink()
        self._index(entry)
        self.entries.move_to_end(entry.key)
        self.evict(keep=entry.key)
        return body

    def write(self, entry: Entry) -> None:
        """Write an entry's sidecar atomically (after its body is in place)."""
        temp = self.directory / f".{entry.key}.{os.getpid()}.{secrets.token_hex(4)}.json.part"
        temp.write_text(json.dumps(entry.sidecar()))
        os.replace(temp, self._sidecar(entry.key))

    def refresh(self, entry: Entry, headers: Mapping[str, str]) -> bool:
        """A 304 for `entry`: its headers updated (RFC 9111 §4.3.4) and its
        freshness recomputed. False when the 304 names another version, or
        the entry was dropped or evicted while the origin was asked."""
        if self.entries.get(entry.key) is not entry:
            return False
        headers = plain(headers)
        etag = headers.get("ETag")
        if etag is not None and entry.headers.get("ETag") not in (None, etag):
            return False
        for name in KEPT_HEADERS:
            if name in headers and name != "Content-Type":
                entry.headers[name] = headers[name]
        merged = {**entry.headers, **{k: headers[k] for k in ("Date", "Age") if k in headers}}
        fresh = freshness(merged, time.time())
        if fresh is None:
            return False
        entry.fresh_until, entry.must_revalidate = fresh
        with contextlib.suppress(OSError):
            self.write(entry)
        return True

    def evict(self, keep: str | None = None) -> None:
        """Least recently used entries out until the bound holds for them
        and the fills in flight together."""
        if self.shared and self.bytes + self.filling > self.max_bytes:
            self.load()  # others' entries count against the bound too
        for key in list(self.entries):
            if self.bytes + self.filling <= self.max_bytes:
                break
            if key == keep:
                continue
            entry = self._forget(key)
            self._remove(entry)
            self.metrics.cache_evictions.inc()
        self._gauge()

    def drop_key(self, key: str) -> None:
        """Forget one entry (its origin says it is gone or may not be kept)."""
        entry = self._forget(key)
        if entry is not None:
            self._remove(entry)

    def drop(self, clip_id: int) -> None:
        """Forget every entry and fill of a clip (its audio_url changed, or
        it was deleted), in this process and on disk."""
        for key in [k for k, e in self.entries.items() if e.clip_id == clip_id]:
            self._remove(self._forget(key))
        for sidecar in self.directory.glob(f"{clip_id}-*.json"):
            if not SIDECAR_NAME.fullmatch(sidecar.name):
                continue
            entry = self._read(sidecar)
            if entry is not None:
                self._remove(entry)
        for key, fill in list(self.fills.items()):
            if fill.entry.clip_id == clip_id:
                fill.dropped = True  # it completes for its listeners, and is not kept
                del self.fills[key]
        self.cancelled.update(k for k in self.pending if k.startswith(f"{clip_id}-"))
        for key in [k for k in self.refused if k.startswith(f"{clip_id}-")]:
            del self.refused[key]

    def refuse(self, key: str) -> None:
        """The origin's answer for `key` may not be stored: pipe for a while."""
        now = time.monotonic()
        if len(self.refused) >= 10_000:  # forget the expired, so this stays small
            self.refused = {k: until for k, until in self.refused.items() if until > now}
        self.refused[key] = now + REFUSED_SECONDS

    def refuses(self, key: str) -> bool:
        until = self.refused.get(key)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self.refused[key]
        return False

    def room_for(self, size: int) -> bool:
        """Whether a body of `size` bytes may ever be filled: within the
        bound, and leaving the disk a bound's worth of room besides (with
        what the fills in flight have still to write)."""
        if size > self.max_bytes:
            return False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            stat = os.statvfs(self.directory)
        except OSError as error:
            log.warning("CACHE_DIR %s cannot be used: %s", self.directory, error.strerror)
            return False
        coming = sum(fill.entry.size - fill.written for fill in self.fills.values())
        reserve = min(self.max_bytes, 256 * 1024 * 1024)
        return stat.f_bavail * stat.f_frsize > size + coming + reserve

    def reserve(self, size: int) -> bool:
        """Count a fill of `size` bytes against the bound from now on,
        evicting what it needs; False (nothing reserved) when the fills in
        flight hold too much of the bound, or are `max_fills` already: then
        the listener is piped. Each reservation is given back once, by `release`."""
        if self.filling + size > self.max_bytes or len(self.fills) >= self.max_fills:
            return False
        self.filling += size
        self.evict()
        return True

    def release(self, size: int) -> None:
        self.filling -= size

    def start(self, fill: Fill, *args) -> None:
        """Run `fill` in the background: it outlives the listener who began
        it. One whose clip was dropped meanwhile (`cancelled`) is not kept."""
        if fill.entry.key in self.cancelled:
            fill.dropped = True  # as drop() leaves a fill: unlisted, not kept
        else:
            self.fills[fill.entry.key] = fill
        task = asyncio.create_task(fill.run(*args))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def alive(pid: str) -> bool:
    """Whether the process that named a part file still runs (not this one:
    this process has just started and fills nothing yet)."""
    try:
        number = int(pid)
        if number == os.getpid():
            return False
        os.kill(number, 0)
    except (ValueError, OverflowError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def new_entry(
    clip_id: int, identity: str, key: str, size: int, headers: Mapping[str, str]
) -> Entry | None:
    """The entry an origin's whole answer would make, or None when it may
    not be stored."""
    headers = plain(headers)
    fresh = freshness(headers, time.time())
    if fresh is None:
        return None
    kept = {name: headers[name] for name in KEPT_HEADERS if name in headers}
    return Entry(clip_id, identity, key, "", size, kept, fresh[0], fresh[1])


async def send_entry(
    request: web.Request, cache: Cache, entry: Entry, clip: Row
) -> web.StreamResponse | None:
    """A complete entry, as a stored clip goes out (one sendfile under one
    deadline), with the origin's validators; None when its body is gone."""
    file = cache.open(entry)
    if file is None:
        return None
    with StoredFile(
        request, file, entry.content_type(clip), size=entry.size, validators=entry.validators
    ) as stored:
        await send_file(request, stored, clip)
    return stored.response


async def send_filling(request: web.Request, fill: Fill, clip: Row) -> web.StreamResponse | None:
    """The body being filled, sent with sendfile as its bytes land; None
    when its file is gone already."""
    try:
        file = open(fill.path, "rb")  # noqa: ASYNC230, SIM115 (StoredFile closes it)
    except OSError:
        return None
    entry = fill.entry
    settings = request.app[SETTINGS]
    with StoredFile(
        request, file, entry.content_type(clip), size=entry.size, validators=entry.validators
    ) as stored:
        if fill.done and not fill.failed:
            await send_file(request, stored, clip)
            return stored.response
        with tracked(request) as outcome:
            await stored.response.prepare(request)
            if request.method == "HEAD" or stored.count == 0:
                return stored.response
            await send_as_filled(
                request, stored, fill, outcome, settings, longest_life(settings, clip)
            )
            if outcome.reason != "complete" and request.transport is not None:
                # Headers are gone: closing is the only way left to tell
                # the listener the body is short.
                if outcome.reason == "send_timeout":
                    request.transport.abort()
                else:
                    log.warning("clip %s: cache fill %s mid-body", clip["id"], outcome.reason)
                    request.transport.close()
    return stored.response


async def send_as_filled(
    request: web.Request,
    stored: StoredFile,
    fill: Fill,
    outcome: Outcome,
    settings: Settings,
    life: float,
) -> None:
    """Sendfile each run of bytes as it is written; sets `outcome.reason`
    as streaming/proxy.py's pipe does."""
    loop = asyncio.get_running_loop()
    position, end = stored.offset, stored.offset + stored.count
    sending = None
    try:
        async with asyncio.timeout(life):
            while position < end:
                available = min(await fill.ready_up_to(position), end)
                count = available - position
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError("the listener is gone")
                pace = settings.stream_send_timeout * max(1, math.ceil(count / SEND_PIECE_BYTES))
                async with asyncio.timeout(pace) as sending:
                    await loop.sendfile(request.transport, stored.file, position, count)
                position += count
                outcome.sent += count
            async with asyncio.timeout(settings.stream_send_timeout) as sending:
                await stored.response.write_eof()
    except TimeoutError:
        outcome.reason = "send_timeout" if sending is not None and sending.expired() else "timeout"
    except FillFailed as failed:
        outcome.reason = str(failed)


CACHE = web.AppKey("CACHE", Cache)


async def cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """The app's cache, unless CACHE_MAX_BYTES is 0 (then app.get(CACHE) is
    None and remote streams pipe, as without a cache)."""
    settings = app[SETTINGS]
    if settings.cache_max_bytes == 0:
        yield
        return
    cache = Cache(
        settings.cache_dir,
        settings.cache_max_bytes,
        app[METRICS],
        shared=settings.workers > 1,
        max_fills=max(1, settings.upstream_max_connections // 2),
    )
    cache.load(start=True)
    cache.evict()
    app[CACHE] = cache
    try:
        yield
    finally:
        await cache.close()
