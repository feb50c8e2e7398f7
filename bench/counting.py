"""Counting under load: after a stream scenario, the clip's play_count
delta must equal the number of 0-based GET streams the server started.

The server's own count of started streams comes from /metrics (exact with
one worker; a scrape reaches a single worker otherwise). The client side
bounds it: every completed request was started, and at most one request per
connection was in flight when the load generator stopped.
"""

import asyncio
import time
from dataclasses import dataclass

import aiohttp

STARTED = "clips_streams_started_total"


def started_streams(values: dict[str, float], source: str, clip_id: int | None = None) -> float:
    """Streams started from `source` (of one clip, when given: the app
    labels its first METRICS_MAX_CLIP_SERIES clips by id), summed over the
    other labels."""
    clip = f'clip_id="{clip_id}"'
    return sum(
        value
        for key, value in values.items()
        if key.split("{")[0] == STARTED
        and f'source="{source}"' in key
        and (clip_id is None or clip in key)
    )


async def metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


async def play_count(session: aiohttp.ClientSession, url: str, clip_id: int) -> int:
    async with session.get(f"{url}/clips/{clip_id}") as response:
        response.raise_for_status()
        return (await response.json())["play_count"]


async def settled_play_count(
    session: aiohttp.ClientSession, url: str, clip_id: int, want: int | None, bound: float = 10.0
) -> int:
    """play_count once it stops moving (and reaches `want`, when known).

    The app commits plays in the background within milliseconds: poll, no
    fixed sleep, and give up after `bound` seconds with what it has.
    """
    deadline = time.monotonic() + bound
    last, same = None, 0
    while True:
        value = await play_count(session, url, clip_id)
        same = same + 1 if value == last else 0
        last = value
        if same >= 3 and (want is None or value == want):
            return value
        if time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Count:
    plays: int  # play_count delta
    started: int | None  # streams the server says it started (None: not exact)
    completed: int  # requests the client completed
    cut: int  # at most this many more were in flight at the end

    @property
    def ok(self) -> bool:
        within = self.completed <= self.plays <= self.completed + self.cut
        return within and (self.started is None or self.plays == self.started)

    def describe(self) -> str:
        server = "server count n/a" if self.started is None else f"server started {self.started}"
        verdict = "ok" if self.ok else "WRONG"
        return (
            f"{verdict}: plays +{self.plays}, {server}, "
            f"client completed {self.completed} (+≤{self.cut} cut)"
        )


class PlayTally:
    """A snapshot before a scenario; `count()` gives the verdict after it.

    The server's started streams are those of the clip's source, or, with
    `by_clip`, of the clip alone: for runs that stream several clips of one
    source at once, or seek (a seek starts a stream but is no play)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        clip_id: int,
        source: str,
        exact: bool,
        by_clip: bool = False,
    ):
        self._session, self._url, self._clip_id = session, url, clip_id
        self._source = source
        self._exact = exact
        self._started_of = clip_id if by_clip else None
        self._plays = self._started = 0

    @classmethod
    async def begin(
        cls,
        session: aiohttp.ClientSession,
        url: str,
        clip_id: int,
        source: str,
        exact: bool,
        by_clip: bool = False,
    ) -> "PlayTally":
        tally = cls(session, url, clip_id, source, exact, by_clip)
        tally._plays = await settled_play_count(session, url, clip_id, None)
        tally._started = tally._started_streams(await metrics(session, url))
        return tally

    def _started_streams(self, values: dict[str, float]) -> float:
        return started_streams(values, self._source, self._started_of)

    async def _settled_started(self, bound: float = 10.0) -> float:
        # Streams cut at the end finish (as client_gone) a moment after the
        # load generator exits: read the counter once none is in flight.
        deadline = time.monotonic() + bound
        while True:
            values = await metrics(self._session, self._url)
            if values.get("clips_streams_in_flight", 0) == 0 or time.monotonic() > deadline:
                return self._started_streams(values)
            await asyncio.sleep(0.05)

    async def count(self, completed: int, cut: int) -> Count:
        started = None
        if self._exact:
            started = int(await self._settled_started() - self._started)
        want = None if started is None else self._plays + started
        plays = await settled_play_count(self._session, self._url, self._clip_id, want)
        return Count(plays - self._plays, started, completed, cut)
