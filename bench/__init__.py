"""The benchmark harness: `make bench` (see bench/README.md).

Every part is real and started fresh: PostgreSQL, the app as its own
process, Debian's nginx as the origin and wrk as the load generator.
Ratios come from runs made side by side in one invocation, because the
machines are shared and absolute numbers drift between runs.
"""
