"""Repeat plays by one listener, counted once (PLAY_DEDUP_SECONDS).

The product counts every listen, replays included, so this is off by
default (0). Turned on, it is the podcast industry's kind of
anti-inflation rule (IAB Podcast Measurement Guidelines: one download per
listener and episode in a window): the plays of one clip by one listener
within the window after a counted play count once, so a script that opens
the stream URL and hangs up, again and again, adds one play per window.

A listener is its address and User-Agent. Behind a reverse proxy every
request comes from the proxy: the address is then read from
X-Forwarded-For, parsed by aiohttp-remotes, but only when the peer is in
TRUSTED_PROXIES; otherwise the header is the client's own say and is
ignored. The rightmost address that is not a trusted proxy is the
listener's (each proxy appends the address it saw).

Each process remembers on its own, at most MAX_LISTENERS pairs (the oldest
forgotten first): with several workers or replicas, a listener whose
requests land on different processes may be counted once per process.
"""

import ipaddress
import time
from collections import OrderedDict

from aiohttp import web
from aiohttp_remotes import XForwardedFiltered
from aiohttp_remotes.exceptions import RemoteError

MAX_LISTENERS = 100_000


class Listeners:
    """Who a request comes from, trusting X-Forwarded-For from `trusted`
    networks only."""

    def __init__(self, trusted: tuple[str, ...]):
        self._trusted = [ipaddress.ip_network(entry, strict=False) for entry in trusted]
        self._forwarded = XForwardedFiltered(set(trusted)) if trusted else None

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def address(self, request: web.Request) -> str:
        peer = request.remote or ""
        if self._forwarded is None or not self._is_trusted(peer):
            return peer
        try:
            chain = self._forwarded.get_forwarded_for(request.headers)
        except (RemoteError, web.HTTPBadRequest):
            return peer  # a malformed header: the peer is all we know
        for ip in reversed(chain):
            if not self._is_trusted(str(ip)):
                return str(ip)
        return str(chain[0]) if chain else peer

    def of(self, request: web.Request) -> tuple[str, str]:
        return self.address(request), request.headers.get("User-Agent", "")


class PlayDedup:
    """Whether a play is the first of its listener and clip in the window."""

    def __init__(self, window: float, listeners: Listeners):
        self.window = window
        self.listeners = listeners
        self._until: OrderedDict[tuple[int, str, str], float] = OrderedDict()

    def first(self, clip_id: int, request: web.Request) -> bool:
        now = time.monotonic()
        key = (clip_id, *self.listeners.of(request))
        until = self._until.get(key)
        if until is not None and now < until:
            return False
        self._until[key] = now + self.window
        self._until.move_to_end(key)
        while len(self._until) > MAX_LISTENERS:
            self._until.popitem(last=False)
        return True


PLAY_DEDUP = web.AppKey("PLAY_DEDUP", PlayDedup)
