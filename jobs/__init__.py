"""Durable jobs: each clip's MP3 preview and waveform peaks, made off the
event loop from a queue in PostgreSQL (db/jobs.py; README, "Previews and
peaks").

Every server process runs JOB_WORKERS runners (0: none, an API-only
replica), each with one job process of its own (jobs/pool.py). A runner
claims a due job (`FOR UPDATE SKIP LOCKED`: replicas share the queue, no
job is claimed twice while its lease holds), renews its lease every third
of JOB_LEASE_SECONDS while the job runs, and ends it one of three ways:

- done: the preview is recorded on the clip (stream_url then serves it) or
  the peaks stored;
- retried, after JOB_RETRY_SECONDS x 2^(attempt-1), when something outside
  the audio failed (the media store, the origin, the database, the job's
  process crashed or overran JOB_TIMEOUT_SECONDS), until JOB_MAX_ATTEMPTS;
- failed for good, at once when the audio itself cannot be decoded: the
  clip's preview is `failed` with the reason, and the clip plays its
  original as before.

A process killed mid-job (SIGKILL, a lost machine) leaves its job
`running` under a lease nobody renews; once the lease runs out any runner
claims it again. On a clean stop (the app's cleanup) each runner kills its
job process and gives its job back, due at once, its attempt not counted.
Runners wait JOB_POLL_SECONDS between empty claims; a job this process
queued (an upload) wakes them at once (`Runner.wake`).
"""

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import yarl
from aiohttp import web

from db import POOL, DatabaseError
from db import jobs as queue
from db.clip_cache import CLIP_CACHE
from db.clips import Conn, Row
from jobs.media import (
    PREVIEW_TYPE,
    Retryable,
    StoreConfig,
    Unreadable,
    make_preview,
    make_preview_of,
    make_stored_peaks,
    measure_peaks,
)
from jobs.pool import JobCrashed, JobProcess, JobTimeout
from metrics.registry import METRICS, Metrics
from settings import SETTINGS, Settings
from storage import MEDIA_STORE, MediaStore, StorageError
from storage.s3 import Bucket, copy_file
from streaming.bucket import BUCKET
from streaming.cache import CACHE, Cache
from streaming.upstream import UPSTREAM, Upstream, UpstreamBusy, UpstreamRefused

log = logging.getLogger(__name__)

FETCH_CHUNK_BYTES = 64 * 1024
# What a failed attempt may be, besides the file's own fault (Unreadable):
# retried until JOB_MAX_ATTEMPTS. Anything else is a fault of ours, logged
# with its traceback, and retried alike (the runner itself carries on).
RETRYABLE = (
    Retryable, JobTimeout, JobCrashed, DatabaseError, StorageError, OSError, aiohttp.ClientError,
)  # fmt: skip
# Seconds a presigned URL for fetching an original from the bucket holds.
FETCH_URL_SECONDS = 3600


class OriginAnswered(Retryable):
    """A remote clip's origin answered neither 200 nor (to a revalidation) 304."""

    def __init__(self, status: int):
        super().__init__(f"its origin answered {status}")
        self.status = status


class Runner:
    """The app's job runners' shared state: what they need to do a job, and
    the event that wakes them."""

    def __init__(
        self,
        settings: Settings,
        pool: Conn,
        store: MediaStore,
        upstream: Upstream,
        metrics: Metrics,
        on_done: Callable[[int], None] = lambda clip_id: None,
        bucket: Bucket | None = None,
        cache: Cache | None = None,
    ):
        self.settings = settings
        # MEDIA_STORE=s3: originals are fetched from the bucket, previews
        # made in MEDIA_DIR and copied there.
        self.bucket = bucket
        self.pool = pool
        self.store = store
        self.store_config = StoreConfig(store.directory, store.min_free_bytes)
        self.upstream = upstream
        # The read-through cache of remote clips (None: CACHE_MAX_BYTES=0):
        # a remote clip's peaks are made from its copy when it holds one.
        self.cache = cache
        self.metrics = metrics
        self.on_done = on_done
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A job was queued here: idle runners claim at once."""
        self._wake.set()

    async def run_forever(self, process: JobProcess) -> None:
        """One runner: claim, do, repeat; idle for JOB_POLL_SECONDS (or
        until woken) when nothing is due."""
        while True:
            self._wake.clear()
            try:
                job = await queue.claim_job(self.pool, self.settings.job_lease_seconds, self.worker)
            except DatabaseError as error:
                log.warning("jobs: cannot claim a job: %s", error)
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.job_poll_seconds):
                        await self._wake.wait()
                continue
            await self.run(job, process)

    async def run(self, job: Row, process: JobProcess) -> None:
        """Do one claimed job and record how it ended."""
        kind = job["kind"]
        started = time.monotonic()
        keeper = asyncio.create_task(self._keep_lease(job), name=f"lease of job {job['id']}")
        try:
            outcome = await self._do(job, process)
        except asyncio.CancelledError:
            released = queue.release_job(self.pool, job["id"], job["claim"])
            self.metrics.jobs.labels(kind, await self._settle(job, "released", released)).inc()
            raise
        except Unreadable as error:
            outcome = await self._fail(job, str(error))
        except Exception as error:  # RETRYABLE, or a fault of ours: retried alike
            if not isinstance(error, RETRYABLE):
                log.exception("jobs: %s of clip %d raised", kind, job["clip_id"])
            reason = str(error) or type(error).__name__
            if job["attempts"] >= self.settings.job_max_attempts:
                outcome = await self._fail(
                    job, f"{reason} (after {job['attempts']} attempts)", log.error
                )
            else:
                after = self.settings.job_retry_seconds * 2 ** (job["attempts"] - 1)
                log.warning(
                    "jobs: %s of clip %d failed (attempt %d), retrying in %g s: %s",
                    kind, job["clip_id"], job["attempts"], after, reason,
                )  # fmt: skip
                retried = queue.retry_job(self.pool, job["id"], job["claim"], after, reason)
                outcome = await self._settle(job, "retried", retried)
        finally:
            keeper.cancel()
        self.metrics.jobs.labels(kind, outcome).inc()
        self.metrics.job_seconds.labels(kind).observe(time.monotonic() - started)
        if outcome in ("done", "failed"):
            self.on_done(job["clip_id"])

    async def _fail(self, job: Row, reason: str, say: Callable = log.info) -> str:
        say("jobs: %s of clip %d failed: %s", job["kind"], job["clip_id"], reason)
        return await self._settle(
            job,
            "failed",
            queue.fail_job(self.pool, job["id"], job["claim"], job["clip_id"], reason),
        )

    async def _settle(self, job: Row, outcome: str, write) -> str:
        """Record the outcome; "lost" when the claim no longer holds (the
        lease ran out and another runner has the job) or the database is away
        (the lease will run out, and the job is claimed again)."""
        try:
            held = await write
        except DatabaseError as error:
            log.warning("jobs: cannot record job %d as %s: %s", job["id"], outcome, error)
            return "lost"
        return outcome if held else "lost"

    async def _keep_lease(self, job: Row) -> None:
        lease = self.settings.job_lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            try:
                held = await queue.renew_lease(self.pool, job["id"], job["claim"], lease)
            except DatabaseError as error:
                log.warning("jobs: cannot renew the lease of job %d: %s", job["id"], error)
                continue
            if not held:
                log.warning("jobs: job %d was claimed by another runner", job["id"])
                return

    async def _do(self, job: Row, process: JobProcess) -> str:
        settings = self.settings
        seconds = settings.job_timeout_seconds
        if job["kind"] == "preview":
            if job["media_path"] is None:
                raise Unreadable("the clip has no stored audio to make a preview of")
            if self.bucket is None:
                preview = await process.run(
                    seconds,
                    make_preview,
                    self.store_config,
                    job["media_path"],
                    job["duration_seconds"],
                    settings.preview_bitrate,
                )
            else:
                async with self._from_bucket(job["media_path"]) as path:
                    preview = await process.run(
                        seconds, make_preview_of, self.store_config, path,
                        job["duration_seconds"], settings.preview_bitrate,
                    )  # fmt: skip
                await self._to_bucket(preview.name)
            finished = queue.finish_preview(
                self.pool,
                job["id"],
                job["claim"],
                clip_id=job["clip_id"],
                name=preview.name,
                content_type=PREVIEW_TYPE,
                size_bytes=preview.size_bytes,
                bitrate=preview.bitrate,
            )
            try:
                recorded = await finished
            except DatabaseError as error:
                # Kept: the write may have committed before the connection
                # failed, and a stray file costs less than a clip pointing at
                # none. The lease runs out and the job is done again.
                log.warning("jobs: cannot record job %d as done: %s", job["id"], error)
                return "lost"
            if not recorded:  # taken over, or the clip deleted: nobody points at it
                if self.bucket is not None:
                    await self.bucket.delete(preview.name)
                else:
                    await asyncio.to_thread(self.store.delete, preview.name)
                return "lost"
            return "done"
        if job["media_path"] is not None and self.bucket is not None:
            async with self._from_bucket(job["media_path"]) as path:
                peaks = await process.run(seconds, measure_peaks, path, job["duration_seconds"])
        elif job["media_path"] is not None:
            peaks = await process.run(
                seconds, make_stored_peaks, self.store_config, job["media_path"],
                job["duration_seconds"],
            )  # fmt: skip
        else:
            async with contextlib.AsyncExitStack() as held:
                path = await self._remote_audio(held, job["clip_id"], job["audio_url"])
                # A remote clip's duration is what its creator said: no
                # ground for calling the file damaged.
                peaks = await process.run(seconds, measure_peaks, path, 0.0)
        finished = queue.finish_peaks(
            self.pool, job["id"], job["claim"], clip_id=job["clip_id"],
            sample_rate=peaks.sample_rate, samples_per_pixel=peaks.samples_per_pixel,
            data=peaks.data,
        )  # fmt: skip
        return await self._settle(job, "done", finished)

    @contextlib.asynccontextmanager
    async def _from_bucket(self, name: str) -> AsyncIterator[str]:
        """The stored object `name`, fetched from the bucket (MEDIA_STORE=s3)
        into a temporary file; a StorageError or a timeout is retried."""
        url = self.bucket.presign(name, FETCH_URL_SECONDS)
        with tempfile.NamedTemporaryFile(prefix="clips-job-") as copy:
            async with (
                asyncio.timeout(self.settings.job_timeout_seconds),
                self.bucket.session.get(yarl.URL(url, encoded=True)) as response,
            ):
                if response.status == 404:
                    raise Unreadable("the stored audio object is missing")
                if response.status != 200:
                    raise Retryable(f"the bucket answered {response.status}")
                async for chunk in response.content.iter_chunked(FETCH_CHUNK_BYTES):
                    copy.write(chunk)
            copy.flush()
            yield copy.name

    async def _to_bucket(self, name: str) -> None:
        """Move the preview `name` made in MEDIA_DIR into the bucket."""
        try:
            await copy_file(self.bucket, self.store.path(name), PREVIEW_TYPE)
        finally:
            await asyncio.to_thread(self.store.delete, name)

    async def _remote_audio(self, held: contextlib.AsyncExitStack, clip_id: int, url: str) -> str:
        """A local file holding a remote clip's audio, for as long as `held`
        is open: the read-through cache's copy (streaming/cache.py) when it
        holds a fresh one, or a stale one its origin confirms (304) or,
        while the origin fails, one the cache would serve listeners anyway
        (not must-revalidate: the waveform of the bytes they hear); else
        the origin's answer, fetched once through the upstream guard.

        That fetch does not fill the cache: a peaks job runs once for every
        remote clip created (or re-pointed), most of which are played
        rarely, and the cache's least-recently-used order and its bound are
        for what listeners play; a catalogue import would otherwise evict
        the clips being listened to. The first listener fills it as before."""
        cache = self.cache
        entry = None if cache is None else cache.lookup(cache.key(clip_id, url))
        if entry is not None and not entry.fresh():
            try:
                path, answer = await self._fetched(held, url, entry.conditions())
            except Retryable as failed:
                if isinstance(failed, OriginAnswered) and 400 <= failed.status < 500:
                    cache.drop_key(entry.key)  # the audio is gone, as listeners learn too
                    raise
                if entry.must_revalidate:
                    raise
                log.info("jobs: peaks of clip %d from its stale cached copy: %s", clip_id, failed)
            else:
                if path is not None:
                    return path  # a newer version than the cache's
                if not cache.refresh(entry, answer):
                    entry = None  # a 304 naming another version: fetched below
        if entry is not None:
            if entry.size > self.settings.max_upload_bytes:  # as a fetch would find
                limit = self.settings.max_upload_bytes
                raise Unreadable(f"its audio is over MAX_UPLOAD_BYTES ({limit} bytes)")
            pinned = held.enter_context(cache.pinned(entry))
            if pinned is not None:
                return str(pinned)
        path, _ = await self._fetched(held, url, {})
        if path is None:
            raise Retryable("its origin answered 304 to a request without conditions")
        return path

    async def _fetched(
        self, held: contextlib.AsyncExitStack, url: str, conditions: dict[str, str]
    ) -> tuple[str | None, Mapping[str, str]]:
        """A remote clip's audio, fetched once through the upstream guard
        (streaming/upstream.py) into a temporary file that lives as long as
        `held`, at most MAX_UPLOAD_BYTES within JOB_TIMEOUT_SECONDS; with
        `conditions` (a cached copy's validators) a 304 gives no file.
        Returns (the file or None, the origin's headers)."""
        limit = self.settings.max_upload_bytes
        copy = held.enter_context(tempfile.NamedTemporaryFile(prefix="clips-job-"))  # noqa: SIM115
        try:
            async with asyncio.timeout(self.settings.job_timeout_seconds):
                with self.upstream.slot():
                    response = await self.upstream.open("GET", url, conditions)
                    try:
                        if response.status == 304 and conditions:
                            return None, response.headers
                        if response.status != 200:
                            raise OriginAnswered(response.status)
                        size = 0
                        async for chunk in response.content.iter_chunked(FETCH_CHUNK_BYTES):
                            size += len(chunk)
                            if size > limit:
                                raise Unreadable(
                                    f"its audio is over MAX_UPLOAD_BYTES ({limit} bytes)"
                                )
                            copy.write(chunk)
                    finally:
                        response.release()
        except UpstreamRefused as refused:
            raise Unreadable(f"its origin is refused: {refused}") from None
        except UpstreamBusy as busy:
            raise Retryable(str(busy)) from None
        except TimeoutError:
            raise Retryable(f"its origin {yarl.URL(url).host} was too slow") from None
        except aiohttp.ClientError as error:
            raise Retryable(
                f"its origin {yarl.URL(url).host} failed: {type(error).__name__}"
            ) from None
        copy.flush()
        return copy.name, response.headers


JOBS = web.AppKey("JOBS", Runner)


async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    """The app's runners (JOB_WORKERS of them, maybe none), from start to a
    clean stop: each kills its job process and gives its job back."""
    settings = app[SETTINGS]
    cache = app[CLIP_CACHE]
    runner = app[JOBS] = Runner(
        settings, app[POOL], app[MEDIA_STORE], app[UPSTREAM], app[METRICS], cache.forget,
        app.get(BUCKET), app.get(CACHE),
    )  # fmt: skip
    processes = [JobProcess() for _ in range(settings.job_workers)]
    tasks = [
        asyncio.create_task(runner.run_forever(process), name=f"job runner {n}")
        for n, process in enumerate(processes)
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(process.close() for process in processes))
