"""Repeat plays by one listener, counted once (PLAY_DEDUP_SECONDS).

The product counts every listen, replays included, so this is off by
default (0). Turned on, it is the podcast industry's kind of
anti-inflation rule (IAB Podcast Measurement Guidelines: one download per
listener and episode in a window): the plays of one clip by one listener
within the window after a counted play count once, so a script that opens
the stream URL and hangs up, again and again, from one address with one
User-Agent, adds one play per window. It is a measurement rule, not a
defence: a client that changes its User-Agent (or its address) on every
request is a new listener each time, as the guidelines' own identity is.

A listener is its address and User-Agent (kept as a 16-byte digest, so an
entry's size does not depend on what the client sends; expired entries are
dropped as new plays arrive). Behind a reverse proxy every
request comes from the proxy: the address is then read from
X-Forwarded-For, parsed by aiohttp-remotes, but only when the peer is in
TRUSTED_PROXIES; otherwise the header is the client's own say and is
ignored. The rightmost address that is not a trusted proxy is the
listener's (each proxy appends the address it saw).

Each process remembers on its own, at most MAX_LISTENERS pairs (the oldest
forgotten first): with several workers or replicas, a listener whose
requests land on different processes may be counted once per process.
"""

import hashlib
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

    def of(self, request: web.Request) -> tuple[str, bytes]:
        """The listener: its address and a 16-byte digest of its User-Agent
        (whatever its length, an entry stays small)."""
        agent = request.headers.get("User-Agent", "").encode("utf-8", "surrogateescape")
        return self.address(request), hashlib.blake2b(agent, digest_size=16).digest()


class PlayDedup:
    """Whether a play is the first of its listener and clip in the window."""

    def __init__(self, window: float, listeners: Listeners):
        self.window = window
        self.listeners = listeners
        # Oldest window first: every window is as long, so entries expire in
        # this order and the expired ones are always at the front.
        self._until: OrderedDict[tuple[int, str, bytes], float] = OrderedDict()

    def first(self, clip_id: int, request: web.Request) -> bool:
        now = time.monotonic()
        while self._until and next(iter(self._until.values())) <= now:
            self._until.popitem(last=False)
        key = (clip_id, *self.listeners.of(request))
        if key in self._until:
            return False
        self._until[key] = now + self.window
        while len(self._until) > MAX_LISTENERS:
            self._until.popitem(last=False)
        return True


PLAY_DEDUP = web.AppKey("PLAY_DEDUP", PlayDedup)
