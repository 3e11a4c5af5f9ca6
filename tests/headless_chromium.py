"""A real headless Chromium for page tests (Debian's `chromium`, imported as a plain module).

Missing Chromium skips a test locally but FAILS it under CI=true
(``deploy/setup.sh --test`` installs it). WebGL runs on SwiftShader (CPU).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# WebGL on the CPU: neuroglancer needs WebGL 2, which headless Chromium only
# offers through ANGLE's SwiftShader backend without a GPU
GL_FLAGS = ["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
COMMON_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # tests run as root in containers
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--hide-scrollbars",
    *GL_FLAGS,
]


def chromium_binary() -> str:
    """Path of the chromium executable; skip (or, under CI=true, fail) when missing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = "chromium is not installed (bash deploy/setup.sh --test installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def screenshot_page(url: str, out: Path, size: tuple[int, int], profile: Path) -> np.ndarray:
    """``chromium --headless --screenshot`` of a static page; returns its RGB pixels."""
    from PIL import Image

    command = [
        chromium_binary(),
        *COMMON_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={out}",
        "--virtual-time-budget=5000",
        url,
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(out).convert("RGB"))


def png_pixels(png: bytes) -> np.ndarray:
    """RGB pixels of a PNG."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


class Browser:
    """A headless Chromium showing one URL, with the DevTools protocol to evaluate JavaScript."""

    def __init__(self, url: str, profile: Path, size: tuple[int, int] = (1000, 800)) -> None:
        self.process = subprocess.Popen(
            [
                chromium_binary(),
                *COMMON_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.debug_port = self._read_debug_port()

    def _read_debug_port(self) -> int:
        assert self.process.stderr is not None
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if match:
                return int(match.group(1))
        self.close()
        raise RuntimeError("chromium did not open its DevTools port:\n" + "".join(lines))

    def evaluate(self, expression: str, timeout_s: float = 30.0) -> Any:
        """The JSON value of ``expression`` evaluated in the page (awaits promises)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.debug_port}/json/list") as reply:
            targets = json.load(reply)
        page = next(t for t in targets if t.get("type") == "page")
        return asyncio.run(self._evaluate(page["webSocketDebuggerUrl"], expression, timeout_s))

    @staticmethod
    async def _evaluate(ws_url: str, expression: str, timeout_s: float) -> Any:
        from tornado.websocket import websocket_connect

        connection = await asyncio.wait_for(websocket_connect(ws_url), timeout_s)
        try:
            message = {
                "id": 1,
                "method": "Runtime.evaluate",
                "params": {"expression": expression, "returnByValue": True, "awaitPromise": True},
            }
            await connection.write_message(json.dumps(message))
            while True:
                raw = await asyncio.wait_for(connection.read_message(), timeout_s)
                if raw is None:
                    raise RuntimeError("DevTools connection closed")
                reply = json.loads(raw)
                if reply.get("id") == 1:
                    result = reply["result"]
                    if "exceptionDetails" in result:
                        raise RuntimeError(f"page error: {result['exceptionDetails']}")
                    return result["result"].get("value")
        finally:
            connection.close()
            # wait for the server's close frame, so that the socket is closed here
            # and not left to the garbage collector
            while await asyncio.wait_for(connection.read_message(), timeout_s) is not None:
                pass

    def wait_for(self, expression: str, timeout_s: float = 60.0) -> Any:
        """Poll ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except (RuntimeError, OSError, StopIteration):
                value = None
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"{expression!r} stayed falsy for {timeout_s} s (last: {value!r})")

    def close(self) -> None:
        """Stop chromium and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
