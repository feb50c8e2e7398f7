"""Copy MEDIA_DIR's uploaded audio into the bucket: `python -m streaming.migrate_to_s3`
(`make migrate-media`).

Each stored file becomes the object S3_PREFIX + its name, which is the
clip's media_path, so no row changes and a clip streams the same once the
app runs with MEDIA_STORE=s3. Run it with the S3_* and AWS_* settings the
app will use; MEDIA_STORE may still be "local" (the app keeps serving from
MEDIA_DIR meanwhile).

- Idempotent: a file whose object already exists with the same size is
  skipped; one whose object differs is copied again.
- Resumable: the bucket is listed at start, so a run that was stopped (or
  failed on a file) goes on where it ended. A file cut mid-copy leaves no
  object: its multipart upload is aborted.
- Progress: one line per file, `[n/total] copied|skipped NAME (bytes)`, and
  a summary; exit status 1 when any file failed (each failure named).

Partial uploads (`.upload-*`) are not copied, and MEDIA_DIR is never
changed: remove the files once the app serves from the bucket (README,
"Past one machine").

The order that loses no upload: run it, switch the app to MEDIA_STORE=s3,
run it again for the uploads that arrived in between.
"""

import argparse
import asyncio
import mimetypes
import sys
from pathlib import Path

import aiohttp

from settings import Settings, load_settings
from storage import PARTIAL, StorageError
from storage.s3 import Bucket, copy_file
from streaming.bucket import bucket_config
from streaming.upstream import client_session


def stored_files(media_dir: Path) -> list[Path]:
    """MEDIA_DIR's stored files, by name: no partial uploads, no folders."""
    return sorted(
        path for path in media_dir.iterdir() if path.is_file() and not path.name.startswith(PARTIAL)
    )


async def migrate(settings: Settings, out=sys.stdout) -> int:
    """Copy what is missing; returns the number of files that failed."""
    files = stored_files(settings.media_dir)
    failed = copied = skipped = 0
    async with client_session(settings, aiohttp.ThreadedResolver()) as session:
        bucket = Bucket(bucket_config(settings), session)
        present = await bucket.sizes()
        for number, path in enumerate(files, start=1):
            step = f"[{number}/{len(files)}]"
            try:
                size = path.stat().st_size
            except OSError as error:  # removed or unreadable since the listing
                failed += 1
                print(f"{step} FAILED {path.name}: {error.strerror}", file=out)
                continue
            if present.get(path.name) == size:
                skipped += 1
                print(f"{step} skipped {path.name} ({size} bytes, already in the bucket)", file=out)
                continue
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            try:
                sent = await copy_file(bucket, path, content_type)
            except StorageError as error:
                failed += 1
                print(f"{step} FAILED {path.name}: {error}", file=out)
                continue
            copied += 1
            print(f"{step} copied {path.name} ({sent} bytes)", file=out)
    print(
        f"migrate_to_s3: {copied} copied, {skipped} already in s3://{settings.s3_bucket}/"
        f"{settings.s3_prefix}, {failed} failed",
        file=out,
    )
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    settings = load_settings()
    try:
        settings = settings.changed({"media_store": "s3"})  # the S3_* settings are required
    except ValueError as error:
        message = str(error).split("Value error, ", 1)[-1].split(" [type=", 1)[0]
        raise SystemExit(f"migrate_to_s3: {message}") from None
    if not settings.media_dir.is_dir():
        raise SystemExit(f"migrate_to_s3: MEDIA_DIR {settings.media_dir} is not a directory")
    try:
        failed = asyncio.run(migrate(settings))
    except StorageError as error:  # the bucket cannot even be listed
        raise SystemExit(f"migrate_to_s3: {error}") from None
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
