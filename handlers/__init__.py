"""HTTP routes, a module per resource, each thin: parse, ask, render.

clips    the catalogue: list, show, stats, create, upload, edit, delete
streams  a clip's audio (the byte path itself is streaming/)
health   liveness and readiness probes
docs     /openapi.json (generated from schemas/) and /docs
metrics  /metrics for Prometheus

Routes hold no SQL and never touch the database driver: they call db/'s
query functions (tests/test_architecture.py).
"""
