"""Counting under load: after a stream scenario, the clip's play_count
delta must equal the number of 0-based GET streams the server started.

The server's own count of started streams comes from /metrics (exact with
one worker; a scrape reaches a single worker otherwise). The client side
bounds it: every completed request was started, and at most one request per
connection was in flight when the load generator stopped.

"Settled" means unchanged over several reads, never one reading of
`clips_streams_in_flight` at 0: requests the load generator sent just
before it stopped can still be unread in the app's sockets, and the event
loop may answer the scrape in the same turn in which it reads them, before
their streams start (measured: up to 46 streams at c64, 88 at c256, started
after a scrape that saw none in flight and none in progress). Their plays
counted, as they should (the requests reached the app); a counter read
before them was short.
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


# Reads in a row, SETTLE_INTERVAL apart, that must agree for a value to be settled.
SETTLE_READS = 4
SETTLE_INTERVAL = 0.05


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
        if same >= SETTLE_READS - 1 and (want is None or value == want):
            return value
        if time.monotonic() > deadline:
            return value
        await asyncio.sleep(SETTLE_INTERVAL)


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
        # Streams first, then plays: a stream still starting is counted in
        # both or in neither. Read again until the started count held still
        # around the play count's read (a few tries: an app that never
        # settles fails the count instead of hanging the harness).
        for _ in range(5):
            tally._started = await tally._settled_started()
            tally._plays = await settled_play_count(session, url, clip_id, None)
            if tally._started_streams(await metrics(session, url)) == tally._started:
                break
        return tally

    def _started_streams(self, values: dict[str, float]) -> float:
        return started_streams(values, self._source, self._started_of)

    async def _settled_started(self, bound: float = 10.0) -> float:
        # Streams cut at the end finish (as client_gone) a moment after the
        # load generator exits, and its last requests may start streams
        # after a scrape that saw none in flight (module docstring): read
        # the counter once none is in flight and it has held still.
        deadline = time.monotonic() + bound
        last, same = None, 0
        while True:
            values = await metrics(self._session, self._url)
            started = self._started_streams(values)
            idle = values.get("clips_streams_in_flight", 0) == 0
            same = same + 1 if idle and started == last else 0
            last = started if idle else None
            if same >= SETTLE_READS - 1 or time.monotonic() > deadline:
                return started
            await asyncio.sleep(SETTLE_INTERVAL)

    async def count(self, completed: int, cut: int) -> Count:
        started = None
        if self._exact:
            started = int(await self._settled_started() - self._started)
        want = None if started is None else self._plays + started
        plays = await settled_play_count(self._session, self._url, self._clip_id, want)
        return Count(plays - self._plays, started, completed, cut)
