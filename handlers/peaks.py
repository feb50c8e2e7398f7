"""GET /clips/{id}/peaks: the clip's waveform, in audiowaveform's JSON
format (schemas/peaks.py), computed by a job (jobs/) and 404 until then.

Peaks change only when the clip's audio does (a remote clip's audio_url
edited), so the answer has an ETag naming the computation and the zoom,
and `Cache-Control: no-cache`: a client keeps its copy and revalidates it
for a 304 of a few bytes.
"""

import asyncio

from aiohttp import web

from db import POOL
from db import jobs as queue
from jobs.media import zoom
from schemas.peaks import MAX_LENGTH, Peaks, PeaksQuery
from streaming.ranges import not_modified
from web.params import parse_id, parse_query
from web.problems import Problem
from web.responses import json_response

routes = web.RouteTableDef()

# Seconds a client asking too early is told to wait: a job usually takes
# about a second per minute of audio.
RETRY_AFTER = "5"


@routes.get("/clips/{clip_id}/peaks")
async def clip_peaks(request: web.Request) -> web.Response:
    clip_id = parse_id(request.match_info["clip_id"])
    query = parse_query(PeaksQuery, request)
    row = await queue.get_peaks(request.app[POOL], clip_id)
    if row is None:
        raise Problem(404, f"No clip has id {clip_id}")
    if row["data"] is None:
        if row["job_state"] == "failed":
            raise Problem(404, f"The clip's peaks could not be computed: {row['job_error']}")
        raise Problem(
            404,
            "The clip's peaks are not computed yet; try again shortly",
            headers={"Retry-After": RETRY_AFTER},
        )
    multiple = query.multiple(row["sample_rate"])
    # The coarsest zoom whose answer fits MAX_LENGTH (schemas/peaks.py).
    least = -(-len(row["data"]) // 2 // MAX_LENGTH)
    if multiple < least and query.zoomed():
        spp = least * row["samples_per_pixel"]
        field = "samples_per_pixel" if query.samples_per_pixel else "pixels_per_second"
        raise Problem(
            400,
            f"Invalid query parameters: {field}",
            errors=[{
                "field": field,
                "reason": f"at most {MAX_LENGTH} pixels are served at once: this clip's"
                f" waveform needs samples_per_pixel {spp} or more",
            }],
        )  # fmt: skip
    multiple = max(multiple, least)
    etag = f'"{clip_id}-{queue.version(row["computed_at"])}-{multiple}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if not_modified(request, etag, None):
        return web.Response(status=304, headers=headers)
    # In a thread: a long clip's zoom is tenths of a second of work the
    # event loop need not wait for.
    data = await asyncio.to_thread(zoom, row["data"], multiple)
    body: Peaks = {
        "version": 2,
        "channels": 1,
        "sample_rate": row["sample_rate"],
        "samples_per_pixel": row["samples_per_pixel"] * multiple,
        "bits": 8,
        "length": len(data) // 2,
        "data": data,
    }
    return json_response(body, headers=headers)
