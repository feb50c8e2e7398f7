#!/bin/sh
# Container entry point: bring the schema up to date, then become the server.
# `exec` makes the server the process that receives SIGTERM (from tini, PID 1),
# so it can drain in-flight streams before exiting.
set -eu
cd "$(dirname "$0")/.."
python -m db.migrate
exec python server.py "$@"
