"""The fallback origin, for machines where nginx cannot be installed:
`python -m bench.static_origin ROOT PORT` serves ROOT with aiohttp's static
route (real Range, ETag, sendfile). Far slower than nginx per core, so
ratios measured against it flatter the app: the run prints which it used."""

import sys

from aiohttp import web


def main() -> None:
    root, port = sys.argv[1], int(sys.argv[2])
    app = web.Application()
    app.router.add_static("/", root)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
