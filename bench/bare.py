"""The bare-aiohttp reference: what aiohttp itself does on this machine
with the same bytes, so the app's own overhead is a number.

`python -m bench.bare PORT FILE ORIGIN_URL` serves two routes, a few lines
each, with no middleware, no database, no metrics and no access log:

- `/file`: FILE by one `loop.sendfile`, as the app sends a stored clip;
- `/pipe`: ORIGIN_URL through one shared ClientSession, read and written
  STREAM_BUFFER_BYTES (the app's default) at a time, as the app proxies a
  remote clip.

It listens with SO_REUSEPORT, so the harness runs it as the app runs: as
many processes on one port as WORKERS, pinned to the same cores.
"""

import asyncio
import sys

import aiohttp
from aiohttp import web

# The app's STREAM_BUFFER_BYTES default (settings.py): the same read size.
CHUNK = 128 * 1024
SESSION = web.AppKey("SESSION", aiohttp.ClientSession)


def make_app(path: str, origin_url: str) -> web.Application:
    async def file(request: web.Request) -> web.StreamResponse:
        # On the event loop, as the app opens stored files (streaming/stored.py).
        with open(path, "rb") as body:  # noqa: ASYNC230
            response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
            response.content_length = size = body.seek(0, 2)
            await response.prepare(request)
            await asyncio.get_running_loop().sendfile(request.transport, body, 0, size)
            await response.write_eof()
        return response

    async def pipe(request: web.Request) -> web.StreamResponse:
        async with request.app[SESSION].get(origin_url) as origin:
            response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
            response.content_length = origin.content_length
            await response.prepare(request)
            async for chunk in origin.content.iter_chunked(CHUNK):
                await response.write(chunk)
            await response.write_eof()
        return response

    async def session_ctx(app: web.Application):
        async with aiohttp.ClientSession(auto_decompress=False, read_bufsize=CHUNK) as session:
            app[SESSION] = session
            yield

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/file", file)
    app.router.add_get("/pipe", pipe)
    return app


def main() -> None:
    port, path, origin_url = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    web.run_app(
        make_app(path, origin_url),
        host="127.0.0.1",
        port=port,
        reuse_port=True,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
