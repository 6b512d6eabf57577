"""Headless Chromium (Debian's package) driven over the DevTools protocol with aiohttp.

Why not Playwright: it downloads its own browser at install time. Chromium comes from apt
(scripts/setup_browser.sh) and aiohttp is already in ComfyUI's environment, so the browser tests need
nothing else. The API is synchronous so tests read top to bottom.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from testbed.comfy_server import free_port

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


class BrowserMissing(RuntimeError):
    pass


def chromium_path() -> str:
    """The Chromium binary: $CHROMIUM, or the Debian package's. Raises with the fix when absent."""
    explicit = os.environ.get("CHROMIUM")
    found = explicit or next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    if not found:
        raise BrowserMissing("Chromium not found: run scripts/setup_browser.sh (apt-get install chromium)")
    return found


class Page:
    """One Chromium tab: evaluate JavaScript, click, take screenshots, collect console errors."""

    def __init__(self, width: int = 1600, height: int = 1000) -> None:
        self._profile = tempfile.mkdtemp(prefix="exact-inversion-chromium-")
        port = free_port()
        self._proc = subprocess.Popen(
            [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--window-size={width},{height}", f"--user-data-dir={self._profile}",
             f"--remote-debugging-port={port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._loop = asyncio.new_event_loop()
        self._ids = itertools.count(1)
        self.errors: list[str] = []  # uncaught exceptions and console.error lines
        ws_url = self._page_ws(port)
        self._session = self._loop.run_until_complete(self._open_session())
        self._ws = self._loop.run_until_complete(self._session.ws_connect(ws_url, max_msg_size=0))
        for domain in ("Page.enable", "Runtime.enable"):
            self.send(domain)
        self.size = (width, height)
        self.resize(width, height)

    def resize(self, width: int, height: int) -> None:
        """Set the page's viewport (window.innerWidth x innerHeight); the front end relayouts on resize."""
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.js("window.dispatchEvent(new Event('resize')), true")

    @staticmethod
    async def _open_session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def _page_ws(self, port: int, timeout: float = 30.0) -> str:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            if self._proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            time.sleep(0.2)

    async def _call(self, method: str, params: dict | None, timeout: float) -> dict:
        msg_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        deadline = time.time() + timeout
        while True:
            msg = await self._ws.receive(timeout=max(0.1, deadline - time.time()))
            data = json.loads(msg.data)
            if data.get("id") == msg_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data["result"]
            self._event(data)

    def _event(self, data: dict) -> None:
        method, params = data.get("method"), data.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))

    def send(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        return self._loop.run_until_complete(self._call(method, params, timeout))

    def js(self, expression: str, timeout: float = 60.0) -> Any:
        """Evaluate an expression (awaited if it is a promise) and return its JSON value."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(f"page error: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.2) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.time() + timeout
        while True:
            try:
                value = self.js(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.time() > deadline:
                raise TimeoutError(f"timed out waiting for: {expression}")
            time.sleep(interval)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def click(self, x: float, y: float, count: int = 1) -> None:
        """A real mouse click at page coordinates (press and release, left button); count 2 double-clicks."""
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for n in range(1, count + 1):
            for kind in ("mousePressed", "mouseReleased"):
                self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": n})

    def move(self, x: float, y: float) -> None:
        """Move the mouse to page coordinates (no button): what hover and drag-to-place listen to."""
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        time.sleep(0.1)

    def press(self, key: str, code: int) -> None:
        """Press and release one key (``key`` as KeyboardEvent.key names it, ``code`` its Windows key code)."""
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code})

    def type_text(self, text: str) -> None:
        """Type into the focused element as a keyboard would (trusted input events), so whatever a widget
        library listens to sees it, as with a user; setting .value from script bypasses those listeners."""
        self.send("Input.insertText", {"text": text})

    def screenshot(self, path: Path, clip: tuple[float, float, float, float] | None = None) -> Path:
        """Save the window (or its rectangle clip = x, y, width, height) as a PNG."""
        params: dict[str, Any] = {"format": "png"}
        if clip:
            params["clip"] = {"x": clip[0], "y": clip[1], "width": clip[2], "height": clip[3], "scale": 1}
        data = self.send("Page.captureScreenshot", params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._ws.close())
            self._loop.run_until_complete(self._session.close())
        finally:
            self._loop.close()
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            shutil.rmtree(self._profile, ignore_errors=True)
