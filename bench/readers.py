"""Slow listeners: many streams held open, each read at a player's pace,
to see what a held stream costs the app in memory, fds and tasks."""

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass, field

RATE = 16 * 1024  # bytes per second per listener
# A small receive window, as a phone on a poor link has: with loopback's
# default of several MiB the kernel would hold the stream, not the app.
RCVBUF = 64 * 1024
# Connect in batches: a burst of 1,000 SYNs overflows the accept backlog
# and costs one-second retransmits that are not the app's doing.
BATCH = 100
PACE = 0.05  # seconds between batches


@dataclass
class Tally:
    started: int = 0  # got "200" and headers: the app counted a play
    failed: int = 0  # no 200, or the connection broke before the end
    stalled: int = 0  # could not read RATE bytes within a few seconds
    bytes: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


class SlowReaders:
    def __init__(self, host: str, port: int, path: str, streams: int):
        self._host, self._port, self._path, self._streams = host, port, path, streams
        self._tasks: list[asyncio.Task] = []
        self._up: list[asyncio.Future] = []
        self._release = asyncio.Event()
        self.tally = Tally()

    async def open(self) -> None:
        """Start every listener; returns once each has its headers (or failed).

        Batches are paced, not awaited one by one: a server that makes some
        listeners wait (say, for an upstream connection) must not stretch
        the ramp by that wait once per batch.
        """
        loop = asyncio.get_running_loop()
        for first in range(0, self._streams, BATCH):
            for _ in range(first, min(first + BATCH, self._streams)):
                up = loop.create_future()
                self._up.append(up)
                self._tasks.append(asyncio.create_task(self._listen(up)))
            await asyncio.sleep(PACE)
        await asyncio.gather(*self._up)

    async def close(self) -> None:
        self._release.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self, up: asyncio.Future) -> None:
        writer = None
        try:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, (self._host, self._port))
            except OSError:
                sock.close()
                raise
            reader, writer = await asyncio.open_connection(sock=sock, limit=RATE)
            writer.write(f"GET {self._path} HTTP/1.1\r\nHost: {self._host}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
            status = head.split(b" ", 2)[1]
            if status != b"200":
                self.tally.fail(f"status {status.decode()}")
                return
            self.tally.started += 1
            up.set_result(None)
            await self._read_slowly(reader)
        except asyncio.CancelledError:
            if not self._release.is_set():
                raise
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
        ) as error:
            self.tally.fail(type(error).__name__)
        finally:
            if not up.done():
                up.set_result(None)
            if writer is not None:
                # Abort, as a listener who walks away does: no FIN handshake.
                writer.transport.abort()

    async def _read_slowly(self, reader: asyncio.StreamReader) -> None:
        tick = time.monotonic()
        while not self._release.is_set():
            try:
                chunk = await asyncio.wait_for(reader.readexactly(RATE), 5)
            except TimeoutError:
                self.tally.stalled += 1
                continue
            self.tally.bytes += len(chunk)
            tick += 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), max(0.0, tick - time.monotonic()))
