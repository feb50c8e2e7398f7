"""Whether a run was served by the app's read-through cache of remote clips
(issue 15), as the app itself reports it: the change of its
`clips_cache_requests_total` series over the run, by label.

The harness sets CACHE_DIR and CACHE_MAX_BYTES whatever the app knows: an
app without the cache ignores them and exports no such series, and its
rows say "off" rather than claiming a cache that did not serve them.
"""

from dataclasses import dataclass

import aiohttp

from bench import counting

REQUESTS = "clips_cache_requests_total"
# The result label of requests the cache passed to the origin untouched:
# "on" means some request was served from it (hit, miss, coalesced, ...).
BYPASS = "bypass"


async def snapshot(session: aiohttp.ClientSession, url: str) -> dict[str, float] | None:
    """The app's cache request counters by label set, or None when it
    exports none (no cache in this app)."""
    values = await counting.metrics(session, url)
    found = {key: value for key, value in values.items() if key.split("{")[0] == REQUESTS}
    return found or None


def labels(key: str) -> str:
    """`name{result="hit",x="y"}` → `hit/y`: the label values, in order."""
    inside = key.partition("{")[2].rstrip("}")
    values = [part.partition("=")[2].strip('"') for part in inside.split(",") if "=" in part]
    return "/".join(values) or "all"


@dataclass(frozen=True)
class CacheUse:
    on: bool
    requests: dict[str, int]  # by label values, over the run
    why: str

    @property
    def state(self) -> str:
        return "on" if self.on else "off"

    def describe(self) -> str:
        return f"cache {self.state} ({self.why})"


def use(
    before: dict[str, float] | None, after: dict[str, float] | None, configured: bool
) -> CacheUse:
    """What the cache did between two snapshots; `configured`: whether the
    harness gave this app a cache (CACHE_MAX_BYTES > 0)."""
    if after is None:
        return CacheUse(False, {}, f"the app exports no {REQUESTS}")
    before = before or {}
    requests = {
        labels(key): int(value - before.get(key, 0))
        for key, value in sorted(after.items())
        if value - before.get(key, 0)
    }
    if not configured:
        return CacheUse(False, requests, "CACHE_MAX_BYTES=0")
    counted = ", ".join(f"{k} {v:,}" for k, v in requests.items())
    # `bypass`: the cache saw the request and sent it to the origin.
    if not any(v for k, v in requests.items() if k != BYPASS):
        return CacheUse(False, requests, counted or "no cache requests counted")
    return CacheUse(True, requests, counted)
