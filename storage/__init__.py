"""Uploaded audio at rest: files in MEDIA_DIR, a local directory, or
(MEDIA_STORE=s3) objects in a bucket (storage/s3.py), where MEDIA_DIR holds
only the uploads being received.

No HTTP here: the byte path (streaming/uploads.py, streaming/stored.py)
reads and writes through `MediaStore`. A failing disk (full, gone, read-only)
raises `StorageError`, never a bare OSError, so it is answered as a storage
failure (500, or 507 when full) and never taken for a database outage or a
client leaving.

Disk space: the store keeps MEDIA_MIN_FREE_BYTES free. A write that would
go below that reserve is refused as if the disk were full (507), before and
while an upload arrives, so uploads never fill the disk that stored clips,
logs and PostgreSQL may share.

Partial uploads are `.upload-*` files. A process killed mid-upload leaves
its partial file behind; `sweep()` removes those nobody has written for a
while (several processes and replicas may be uploading into one MEDIA_DIR,
so age is the only safe sign that no upload owns a file).
"""

import contextlib
import errno
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

log = logging.getLogger(__name__)

# The name prefix of a file still being received.
PARTIAL = ".upload-"

# errno values that mean "no room left", answered 507 Insufficient Storage.
FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageError(Exception):
    """The store could not do `action`, for `reason` (an OSError's, or a
    bucket's answer in words); `full` when the disk has no room (507),
    `unavailable` when the store cannot be reached (503)."""

    def __init__(self, action: str, reason: OSError | str, *, unavailable: bool = False):
        if isinstance(reason, OSError):
            self.full = reason.errno in FULL
            reason = reason.strerror or type(reason).__name__
        else:
            self.full = False
        super().__init__(f"cannot {action}: {reason}")
        self.action = action
        self.unavailable = unavailable


class MediaStore:
    """MEDIA_DIR. `on_error(operation)` is called once per failure
    ("read", "write" or "delete"), for metrics."""

    def __init__(
        self,
        directory: Path,
        on_error: Callable[[str], None] = lambda op: None,
        min_free_bytes: int = 0,
    ):
        self.directory = directory
        self._on_error = on_error
        self.min_free_bytes = min_free_bytes

    def path(self, name: str) -> Path:
        """Where the stored file `name` (a clip's media_path) lives."""
        return self.directory / name

    @contextlib.contextmanager
    def failing_as(self, operation: str, action: str) -> Iterator[None]:
        """Turn an OSError inside the block into a StorageError."""
        try:
            yield
        except OSError as error:
            self._on_error(operation)
            raise StorageError(action, error) from error

    def make_room(self, size: int) -> None:
        """Raise StorageError (full) unless `size` more bytes leave the disk
        at least `min_free_bytes` free."""
        with self.failing_as("write", "write the upload to MEDIA_DIR"):
            if not self.min_free_bytes:
                return
            disk = os.statvfs(self.directory)
            if disk.f_bavail * disk.f_frsize - size < self.min_free_bytes:
                raise OSError(errno.ENOSPC, "it would leave less than MEDIA_MIN_FREE_BYTES free")

    def sweep(self, older_than: float) -> list[str]:
        """Remove partial uploads not written for `older_than` seconds;
        returns their names. Failures are logged, not raised."""
        removed = []
        cutoff = time.time() - older_than
        try:
            partials = list(self.directory.glob(f"{PARTIAL}*"))
        except OSError as error:
            log.error("cannot list MEDIA_DIR for partial uploads: %s", error)
            return removed
        for path in partials:
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path.name)
            except FileNotFoundError:
                continue  # its upload finished or gave up meanwhile
            except OSError as error:
                log.error("cannot remove the partial upload %s: %s", path.name, error)
        return removed

    def open(self, name: str) -> BinaryIO | None:
        """The stored file `name`, open for reading; None when there is no
        such file. Anything else (MEDIA_DIR gone or unreadable, a disk
        error, no descriptors left) raises StorageError, counted as "read"."""
        try:
            return self.path(name).open("rb")
        except FileNotFoundError:
            return None
        except OSError as error:
            self._on_error("read")
            raise StorageError(f"read {name} from MEDIA_DIR", error) from error

    def create(self) -> "NewFile":
        """A new file under a temporary name; raises StorageError."""
        return NewFile(self)

    def delete(self, name: str) -> bool:
        """Remove a stored file (gone already counts as removed). A failure is
        logged and counted, not raised: the clip it belonged to is gone
        either way. Returns whether the file is gone."""
        try:
            with self.failing_as("delete", f"remove {name} from MEDIA_DIR"):
                self.path(name).unlink(missing_ok=True)
        except StorageError as error:
            log.error("orphaned file in MEDIA_DIR: %s", error)
            return False
        return True


class NewFile:
    """A file being written into the store under a temporary name, until
    `rename()` gives it a name of its own. `remove()` deletes the temporary
    file if it is still there, whatever happened."""

    def __init__(self, store: MediaStore):
        self._store = store
        self.path = store.path(f"{PARTIAL}{uuid.uuid4().hex}")
        with store.failing_as("write", "create a file in MEDIA_DIR"):
            self._file: BinaryIO = self.path.open("xb")

    def write(self, chunk: bytes) -> None:
        self._store.make_room(len(chunk))
        with self._store.failing_as("write", "write the upload to MEDIA_DIR"):
            self._file.write(chunk)

    def touch(self) -> None:
        """Mark the file as owned by a live upload (see MediaStore.sweep)."""
        with self._store.failing_as("write", "write the upload to MEDIA_DIR"):
            os.utime(self.path)

    def close(self) -> None:
        with self._store.failing_as("write", "write the upload to MEDIA_DIR"):
            self._file.close()

    def rename(self, extension: str) -> str:
        """After close(): move to a fresh name ending in `extension`; returns it."""
        name = f"{uuid.uuid4().hex}{extension}"
        with self._store.failing_as("write", "store the upload in MEDIA_DIR"):
            self.path.rename(self._store.path(name))
        return name

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self.path.unlink(missing_ok=True)


MEDIA_STORE = web.AppKey("MEDIA_STORE", MediaStore)
