"""A headless Chromium for tests, driven over the DevTools protocol with aiohttp's websocket client.

Started with the flags that keep it on loopback (no background networking, a dead proxy for every other host),
its own profile directory, and port 0: the port it chose is read from DevToolsActivePort.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

INSTALL_HINT = "install Debian's chromium (scripts/install-test-peers.sh as root installs it)"
START_DEADLINE = 30.0

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--no-default-browser-check", "--disable-domain-reliability", "--no-pings",
    "--disable-breakpad", "--mute-audio", "--hide-scrollbars", "--proxy-server=http://127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--window-size=1280,800",
)


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Tab:
    """One page target: commands in order, events collected."""

    ws: aiohttp.ClientWebSocketResponse
    events: list[dict[str, Any]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _waiting: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, timeout=30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def named(self, method: str) -> list[dict[str, Any]]:
        return [event["params"] for event in self.events if event["method"] == method]

    async def wait_for(self, method: str, *, where: Any = None, deadline: float = 30.0) -> dict[str, Any]:
        """The first event `method` (matching `where(params)`), polling until the deadline."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for params in self.named(method):
                if where is None or where(params):
                    return params
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no {method} within {deadline} s")

    async def open(self, url: str) -> None:
        """Navigate and wait until the page has loaded and the network is idle."""
        self.events.clear()
        await self.send("Page.navigate", url=url)
        await self.wait_for("Page.lifecycleEvent", where=lambda p: p.get("name") == "networkIdle")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def screenshot(self, path: Path, *, width: int, height: int = 900) -> None:
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=width < 600)
        metrics = await self.send("Page.getLayoutMetrics")
        full = int(metrics["cssContentSize"]["height"])
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=max(min(full, 4000), height),
                        deviceScaleFactor=1, mobile=width < 600)
        shot = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


@dataclass
class Chromium:
    process: subprocess.Popen[bytes]
    port: int
    http: aiohttp.ClientSession

    @asynccontextmanager
    async def tab(self) -> AsyncIterator[Tab]:
        async with self.http.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as response:
            target = await response.json()
        ws = await self.http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        tab = Tab(ws=ws)
        tab.start()
        try:
            for domain in ("Page", "Runtime", "Network"):
                await tab.send(f"{domain}.enable")
            await tab.send("Page.setLifecycleEventsEnabled", enabled=True)
            yield tab
        finally:
            await ws.close()
            if tab._reader is not None:
                tab._reader.cancel()
            async with self.http.get(f"http://127.0.0.1:{self.port}/json/close/{target['id']}"):
                pass


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Chromium]:
    binary = chromium_binary()
    assert binary is not None
    await asyncio.to_thread(profile.mkdir, parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(profile), "XDG_CONFIG_HOME": str(profile / ".config"),
           "XDG_CACHE_HOME": str(profile / ".cache")}
    process = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child; its output is discarded
        [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + START_DEADLINE
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > end:
                raise RuntimeError("chromium did not start")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            yield Chromium(process=process, port=port, http=http)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
