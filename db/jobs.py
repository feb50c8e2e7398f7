"""The job queue on PostgreSQL (sql/jobs.sql): previews and waveform peaks.

A job is a row of `jobs`, one per clip and kind ("preview", "peaks"),
queued with its clip (db/clips.py create_clip). Any server process claims
due jobs with `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent claimers
never get the same row, and holds each under a lease it renews while it
works (`renew_lease`); a job whose lease ran out (its process was killed
or hung) is due again. Every write after the claim names the claim's
token: a process whose claim was taken over changes nothing.
"""

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

from asyncpg import Connection, Pool, Record

from db import translated
from db.queries import SQL

Conn = Pool | Connection
KINDS = ("preview", "peaks")


@translated
async def claim_job(conn: Conn, lease_seconds: float, worker: str) -> Record | None:
    """The oldest due job, now claimed under a fresh token (`claim`), with
    its clip's media_path, audio_url, content_type and duration_seconds;
    None when nothing is due."""
    return await conn.fetchrow(SQL["claim_job"], uuid.uuid4(), lease_seconds, worker)


@translated
async def renew_lease(conn: Conn, job_id: int, claim: uuid.UUID, lease_seconds: float) -> bool:
    """Whether the claim still holds (and now for `lease_seconds` more)."""
    return await conn.fetchval(SQL["renew_lease"], job_id, claim, lease_seconds) is not None


@translated
async def release_job(conn: Conn, job_id: int, claim: uuid.UUID) -> bool:
    return await conn.fetchval(SQL["release_job"], job_id, claim) is not None


@translated
async def retry_job(
    conn: Conn, job_id: int, claim: uuid.UUID, after_seconds: float, reason: str
) -> bool:
    return await conn.fetchval(SQL["retry_job"], job_id, claim, after_seconds, reason) is not None


async def _with_clip_locked(conn: Conn, clip_id: int, query: str, *args: object) -> bool:
    """Run `query` (an outcome's write) in a transaction that first locks
    the job's clip (sql/jobs.sql lock_clip); False when the clip is gone or
    the query returns no row."""
    held = conn.acquire() if isinstance(conn, Pool) else _same(conn)
    async with held as connection, connection.transaction():
        if await connection.fetchval(SQL["lock_clip"], clip_id) is None:
            return False
        return await connection.fetchval(query, *args) is not None


@contextlib.asynccontextmanager
async def _same(conn: Connection) -> AsyncIterator[Connection]:
    yield conn


@translated
async def fail_job(conn: Conn, job_id: int, claim: uuid.UUID, clip_id: int, reason: str) -> bool:
    """Fail the job for good (a preview job marks the clip's preview failed)."""
    return await _with_clip_locked(conn, clip_id, SQL["fail_job"], job_id, claim, reason)


@translated
async def finish_preview(
    conn: Conn,
    job_id: int,
    claim: uuid.UUID,
    *,
    clip_id: int,
    name: str,
    content_type: str,
    size_bytes: int,
    bitrate: int,
) -> bool:
    """Record the preview on its clip; False: the claim was lost (or the
    clip deleted) and the file `name` belongs to nobody."""
    return await _with_clip_locked(
        conn, clip_id, SQL["finish_preview"], job_id, claim, name, content_type, size_bytes,
        bitrate,
    )  # fmt: skip


@translated
async def finish_peaks(
    conn: Conn,
    job_id: int,
    claim: uuid.UUID,
    *,
    clip_id: int,
    sample_rate: int,
    samples_per_pixel: int,
    data: bytes,
) -> bool:
    return await _with_clip_locked(
        conn, clip_id, SQL["finish_peaks"], job_id, claim, sample_rate, samples_per_pixel, data
    )


@translated
async def queue_peaks(conn: Conn, clip_id: int) -> None:
    """Forget the clip's peaks and compute them again (its audio changed)."""
    await _with_clip_locked(conn, clip_id, SQL["queue_peaks"], clip_id)


@translated
async def queue_missing_jobs(conn: Conn) -> None:
    await conn.execute(SQL["queue_missing_jobs"])


@translated
async def get_peaks(conn: Conn, clip_id: int) -> Record | None:
    """The clip's peaks (sample_rate, samples_per_pixel, data, computed_at:
    None until computed) and its peaks job (job_state, job_error); no row:
    no such clip."""
    return await conn.fetchrow(SQL["get_peaks"], clip_id)


@translated
async def job_states(conn: Conn, clip_id: int) -> list[Record]:
    return await conn.fetch(SQL["job_states"], clip_id)


def version(computed_at: datetime) -> str:
    """A stable text for a computed_at, for validators."""
    return f"{computed_at.timestamp():.6f}"
