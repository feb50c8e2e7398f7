"""Time to first byte with plain blocking sockets: nothing between the
clock and the kernel but one recv() call, so the app's added latency is not
lost in client noise.

Each target keeps one keep-alive connection, as a player does, and every
body is read in full (and its length checked) so that connection is reused.
Targets take turns request by request, so a noisy moment on the shared
machine lands on all of them alike.
"""

import socket
import statistics
import threading
import time
from dataclasses import dataclass, field

BUFFER = 1024 * 1024


@dataclass
class FirstBytes:
    samples: list[float] = field(default_factory=list)  # seconds
    errors: int = 0
    bytes: int = 0
    busy: float = 0.0  # seconds spent on this target's requests

    def percentile(self, p: int) -> float:
        if not self.samples:
            return float("nan")
        if len(self.samples) == 1:
            return self.samples[0] * 1000
        return statistics.quantiles(self.samples, n=100, method="inclusive")[p - 1] * 1000


class Probe:
    """Requests to one server, one at a time on one connection: for `path`
    every time, or for each of `paths` in turn (a new clip each request:
    first listens)."""

    def __init__(self, host: str, port: int, path: str, size: int, paths: tuple[str, ...] = ()):
        self._address = (host, port)
        self._requests = [
            f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode() for p in paths or (path,)
        ]
        self._turn = 0
        self._size = size
        self._sock: socket.socket | None = None
        self._view = memoryview(bytearray(BUFFER))
        self.result = FirstBytes()
        # Over warm-up too, for the play count: whole 200s, and failures
        # that may or may not have started a stream.
        self.completed = 0
        self.failed = 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def once(self) -> None:
        began = time.perf_counter()
        try:
            if self._sock is None:
                self._sock = socket.create_connection(self._address)
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request = self._requests[self._turn % len(self._requests)]
            self._turn += 1
            sent = time.perf_counter()
            self._sock.sendall(request)
            # MSG_PEEK: wake at the first byte without consuming it.
            if not self._sock.recv(1, socket.MSG_PEEK):
                raise ConnectionError("closed before answering")
            self.result.samples.append(time.perf_counter() - sent)
            status, body, read = self._read_response()
            self.result.bytes += read
            if status != 200 or body != self._size:
                self.result.errors += 1
                self.failed += 1
            else:
                self.completed += 1
        except (OSError, ValueError, IndexError, StopIteration):
            self.result.errors += 1
            self.failed += 1
            self.close()
        finally:
            self.result.busy += time.perf_counter() - began

    def _read_response(self) -> tuple[int, int, int]:
        """Read one whole response: (status, body bytes, bytes on the wire)."""
        head = b""
        while b"\r\n\r\n" not in head:
            n = self._sock.recv_into(self._view)
            if not n:
                raise ConnectionError("closed before the headers ended")
            head += bytes(self._view[:n])
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(header.split(":", 1)[1])
            for header in lines[1:]
            if header.lower().startswith("content-length:")
        )
        got = len(rest)
        while got < length:
            n = self._sock.recv_into(self._view, min(BUFFER, length - got))
            if not n:
                raise ConnectionError("closed mid-body")
            got += n
        return status, got, len(head) + 4 + got


def measure(
    probes: dict[str, Probe], rounds: int, stop: threading.Event, warmup: int = 5
) -> dict[str, FirstBytes]:
    """`rounds` requests per probe, in turn; the first `warmup` rounds open
    connections and fill caches and are not kept."""
    try:
        for round_ in range(warmup + rounds):
            if round_ == warmup:
                for probe in probes.values():
                    probe.result = FirstBytes()
            for probe in probes.values():
                if stop.is_set():
                    return {name: probe.result for name, probe in probes.items()}
                probe.once()
    finally:
        for probe in probes.values():
            probe.close()
    return {name: probe.result for name, probe in probes.items()}
