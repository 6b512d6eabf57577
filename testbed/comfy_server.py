"""Start ComfyUI's own main.py (--cpu) with our pack in custom_nodes, and talk to it over HTTP.

Used by the server and browser test layers and by scripts that read /object_info. The base directory
is a temporary folder: models, inputs and outputs never touch the ComfyUI tree or the repo.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from testbed import comfyhost
from testbed.images import example_image

REPO = Path(__file__).resolve().parents[1]
TESTBED = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def post_json(url: str, payload: Any, timeout: float = 30.0) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
            return r.status, json.loads(body) if body else None
    except urllib.error.HTTPError as err:
        body = err.read()
        return err.code, json.loads(body) if body else None


def prepare_base(base: Path, test_pack: bool = True) -> None:
    """custom_nodes with our pack (and the test pack), and the images the workflows load."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (base / "input").mkdir(exist_ok=True)
    os.symlink(REPO, base / "custom_nodes" / "exact-inversion")
    if test_pack:
        os.symlink(TESTBED / "tinypack", base / "custom_nodes" / "exact-inversion-tinypack")
    example_image().save(base / "input" / "example.png")
    shutil.copy(REPO / "workflows" / "toy_example.png", base / "input" / "toy_example.png")


@contextlib.contextmanager
def comfy_server(base: Path | None = None, test_pack: bool = True, timeout: float = 90.0) -> Iterator[dict[str, Any]]:
    """A running main.py --cpu; yields {"url", "log", "base", "proc"} and always terminates it."""
    comfy = comfyhost.comfy_dir()
    own_base = base is None
    base = Path(tempfile.mkdtemp(prefix="exact-inversion-server-")) if base is None else base
    prepare_base(base, test_pack)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.environ.get("COMFYUI_STUBS", ""), str(REPO)])}
    log_path = base / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
         str(base), "--disable-api-nodes", "--disable-auto-launch", "--database-url", "sqlite:///:memory:"],
        cwd=comfy, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log_path.read_text()[-3000:]}")
            try:
                get_json(url + "/system_stats", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"server did not start:\n{log_path.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield {"url": url, "log": log_path, "base": base, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if own_base:
            shutil.rmtree(base, ignore_errors=True)


def run_prompt(url: str, prompt: dict, timeout: float = 120.0, client_id: str = "tests") -> dict:
    """POST an API graph and wait for its history entry (success or error)."""
    status, body = post_json(url + "/prompt", {"prompt": prompt, "client_id": client_id})
    assert status == 200, body
    return wait_history(url, body["prompt_id"], timeout)


def wait_history(url: str, prompt_id: str, timeout: float = 120.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        hist = get_json(f"{url}/history/{prompt_id}")
        if prompt_id in hist and hist[prompt_id]["status"].get("completed") is not None:
            entry = hist[prompt_id]
            if entry["status"]["status_str"] in ("success", "error"):
                return entry
        time.sleep(0.2)
    raise TimeoutError(f"prompt {prompt_id} did not finish")


class WebSocketListener:
    """The server's /ws messages for one client id, collected by a background thread (aiohttp's client).

    Why: 'executing' and 'progress' tell the moment a node really runs, and 'execution_interrupted' when
    it stopped, without polling. Each JSON message is kept as (time.monotonic() on arrival, type, data);
    binary preview frames are skipped.
    """

    def __init__(self, url: str, client_id: str) -> None:
        import asyncio
        import threading

        self.client_id = client_id
        self.messages: list[tuple[float, str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._stop: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        ws_url = url.replace("http://", "ws://", 1) + f"/ws?clientId={client_id}"
        self._thread = threading.Thread(target=self._run, args=(ws_url,), daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise TimeoutError(f"no websocket connection to {ws_url}")
        if self._error is not None:
            raise RuntimeError(f"websocket connection to {ws_url} failed: {self._error}")

    def _run(self, ws_url: str) -> None:
        import asyncio

        import aiohttp

        async def listen() -> None:
            self._stop = asyncio.Event()
            try:
                async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, heartbeat=30) as ws:
                    self._ready.set()
                    stop = asyncio.ensure_future(self._stop.wait())
                    while True:
                        receive = asyncio.ensure_future(ws.receive())
                        done, _ = await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
                        if stop in done:
                            receive.cancel()
                            return
                        msg = receive.result()
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            data = json.loads(msg.data)
                            with self._cond:
                                self.messages.append((time.monotonic(), data.get("type", ""), data.get("data") or {}))
                                self._cond.notify_all()
                        elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            return
            except Exception as err:  # reported to the caller by __init__ or wait_for
                self._error = err
                self._ready.set()

        self._loop.run_until_complete(listen())
        self._loop.close()

    def wait_for(self, predicate: Any, timeout: float, start: int = 0) -> tuple[int, tuple[float, str, dict]]:
        """The first message from index ``start`` on for which ``predicate(type, data)`` holds: (index, message)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.messages):
                    if predicate(self.messages[i][1], self.messages[i][2]):
                        return i, self.messages[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or self._error is not None:
                    kinds = [m[1] for m in self.messages[start:]][-20:]
                    raise TimeoutError(f"no such websocket message in {timeout} s (last: {kinds}; error: "
                                       f"{self._error})")
                self._cond.wait(min(left, 0.5))

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@contextlib.contextmanager
def listen_ws(url: str, client_id: str) -> Iterator[WebSocketListener]:
    """A WebSocketListener for ``client_id`` that is always closed."""
    listener = WebSocketListener(url, client_id)
    try:
        yield listener
    finally:
        listener.close()
