#!/bin/sh
# Container entry point: become the server, from the code's directory.
# The server applies pending migrations itself before it listens, once per
# start however many WORKERS (MIGRATE_ON_START, default true); set it to
# false to run `python -m db.migrate` as a separate step instead.
# `exec` makes the server the process that receives SIGTERM (from tini, PID 1),
# so it can drain in-flight streams before exiting.
set -eu
cd "$(dirname "$0")/.."
exec python server.py "$@"
