"""A real headless Chromium, driven over the DevTools protocol (CDP).

No npm, Selenium or Playwright: Chromium listens on a loopback websocket and
aiohttp's client speaks to it. One browser per `async with Chromium()`, in a
fresh profile directory; leaving the block closes the browser, kills
whatever is left of its process group and deletes the directory.

    async with Chromium() as browser:
        await browser.navigate("http://127.0.0.1:8080/page")
        title = await browser.evaluate("document.title")
"""

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = (
    "--headless",
    "--no-sandbox",  # runs as root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # play() without a user gesture, as a page script would after a click.
    # No audio flag is needed without a sound card: ALSA fails to open a
    # device (errors on stderr), Chromium falls back to a fake output
    # stream, and the media clock still advances in real time.
    "--autoplay-policy=no-user-gesture-required",
    # Port 0: the kernel picks a free one; Chromium writes it to
    # DevToolsActivePort in the profile directory.
    "--remote-debugging-port=0",
)


# Everything the test watches, in one round trip. NaN and Infinity do not
# survive JSON, so finiteness is decided in the page.
AUDIO_STATE = """(a => ({
    time: a.currentTime,
    finite: Number.isFinite(a.duration),
    duration: Number.isFinite(a.duration) ? a.duration : String(a.duration),
    paused: a.paused,
    seeking: a.seeking,
    error: a.error && a.error.code,
    played: Array.from({length: a.played.length}, (_, i) => [a.played.start(i), a.played.end(i)]),
}))(document.querySelector("audio"))"""


class JavaScriptError(Exception):
    """An expression given to evaluate() threw, or its promise rejected."""


@dataclass
class Request:
    """One HTTP request the page made, as the Network domain reported it."""

    url: str
    method: str
    range: str | None
    status: int | None = None


class Chromium:
    def __init__(self, executable: str = "chromium", *, timeout: float = 15.0):
        self.executable = executable
        self.timeout = timeout  # for startup and for each protocol command
        self.requests: list[Request] = []
        # Console errors, uncaught exceptions and the browser's own error
        # log (failed loads, CSP violations), as "source: text" lines.
        self.errors: list[str] = []
        self._dir: Path | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None
        self._port: int | None = None
        self._session_id: str | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future] = {}
        self._waiters: list[tuple[str, asyncio.Future]] = []
        self._by_id: dict[str, Request] = {}

    async def __aenter__(self) -> "Chromium":
        self._dir = Path(tempfile.mkdtemp(prefix="chromium-"))
        try:
            browser_path = await self._launch()
            await self._connect(browser_path)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    # The page.

    async def navigate(self, url: str) -> None:
        """Load url in the page and return once its load event fired."""
        loaded = self._expect("Page.loadEventFired")
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            loaded.cancel()
            raise RuntimeError(f"Chromium could not load {url}: {result['errorText']}")
        async with asyncio.timeout(self.timeout):
            await loaded

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page; a promise
        is awaited. NaN and ±Infinity inside objects arrive as None."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            thrown = details.get("exception", {})
            raise JavaScriptError(thrown.get("description") or details.get("text"))
        return result["result"].get("value")

    async def wait_for(
        self,
        expression: str,
        predicate: Callable[[Any], bool],
        *,
        within: float,
        interval: float = 0.05,
    ) -> Any:
        """Evaluate expression until predicate accepts its value; return that
        value. After `within` seconds, fail showing the last value seen."""
        deadline = time.monotonic() + within
        while True:
            value = await self.evaluate(expression)
            if predicate(value):
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"still waiting after {within}s; last value: {value!r}")
            await asyncio.sleep(interval)

    # The protocol.

    async def send(self, method: str, params: dict | None = None, *, page: bool = True) -> dict:
        """One CDP command, to the page's session (or the browser); its result."""
        if self._ws is None or self._ws.closed:
            raise ConnectionError("the DevTools connection is closed")
        message_id = next(self._ids)
        reply = asyncio.get_running_loop().create_future()
        self._replies[message_id] = reply
        message = {"id": message_id, "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self._session_id
        try:
            await self._ws.send_str(json.dumps(message))
            async with asyncio.timeout(self.timeout):
                return await reply
        finally:
            self._replies.pop(message_id, None)

    def _expect(self, method: str) -> asyncio.Future:
        event = asyncio.get_running_loop().create_future()
        self._waiters.append((method, event))
        return event

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                if "id" in data:
                    reply = self._replies.get(data["id"])
                    if reply is None or reply.done():
                        continue
                    if "error" in data:
                        reply.set_exception(RuntimeError(f"CDP error: {data['error']}"))
                    else:
                        reply.set_result(data.get("result", {}))
                else:
                    self._on_event(data["method"], data.get("params", {}))
        finally:
            gone = ConnectionError("Chromium closed the DevTools connection")
            for future in [*self._replies.values(), *(f for _, f in self._waiters)]:
                if not future.done():
                    future.set_exception(gone)

    def _on_event(self, method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            args = params.get("args", [])
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
            self.errors.append(f"console: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            thrown = details.get("exception", {})
            self.errors.append(f"exception: {thrown.get('description') or details.get('text')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.errors.append(f"{entry['source']}: {entry['text']} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            request = params["request"]
            headers = {k.lower(): v for k, v in request.get("headers", {}).items()}
            entry = Request(request["url"], request["method"], headers.get("range"))
            self._by_id[params["requestId"]] = entry
            self.requests.append(entry)
        elif method == "Network.responseReceived":
            entry = self._by_id.get(params["requestId"])
            if entry is not None:
                entry.status = params["response"]["status"]
        for waiter in [w for w in self._waiters if w[0] == method]:
            self._waiters.remove(waiter)
            if not waiter[1].done():
                waiter[1].set_result(params)

    # Life cycle.

    async def _launch(self) -> str:
        """Start Chromium; the path of its browser websocket."""
        assert self._dir is not None
        profile = self._dir / "profile"
        log = os.open(self._dir / "chromium.log", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            self._process = await asyncio.create_subprocess_exec(
                self.executable,
                *FLAGS,
                f"--user-data-dir={profile}",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group, so renderers and helpers die with it.
                start_new_session=True,
            )
        finally:
            os.close(log)
        active_port = profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while True:
            lines = active_port.read_text().splitlines() if active_port.exists() else []
            if len(lines) >= 2:
                self._port = int(lines[0])
                return lines[1]
            if self._process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start:\n{self._log_tail()}")
            await asyncio.sleep(0.05)

    async def _connect(self, browser_path: str) -> None:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(
            f"ws://127.0.0.1:{self._port}{browser_path}", max_msg_size=0
        )
        self._reader = asyncio.create_task(self._read(), name="chromium-devtools")
        target = await self.send("Target.createTarget", {"url": "about:blank"}, page=False)
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, page=False
        )
        self._session_id = attached["sessionId"]
        await self.send("Page.enable")
        await self.send("Network.enable")
        await self.send("Runtime.enable")
        await self.send("Log.enable")

    async def close(self) -> None:
        """Close the browser (killing it if it lingers) and delete its profile."""
        if self._ws is not None and not self._ws.closed:
            # Chromium may drop the connection before it answers.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.send("Browser.close", page=False)
        if self._process is not None:
            try:
                async with asyncio.timeout(5):
                    await self._process.wait()
            except TimeoutError:
                self._kill_group()
                await self._process.wait()
            # Helpers that outlived the browser process, if any.
            self._kill_group()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._http is not None:
            await self._http.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _kill_group(self) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)

    def _log_tail(self, lines: int = 20) -> str:
        assert self._dir is not None
        log = self._dir / "chromium.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
