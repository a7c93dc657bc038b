"""Headless Chromium driven through the DevTools protocol over a pipe (stdlib only).

`render(html_path)` opens a local file at a fixed viewport, waits for its load
event and returns what the page really did: every network request it made,
the result of a JavaScript probe, and optionally a PNG screenshot. Used by
tests/report/test_report_browser.py; also a script that refreshes the screenshot in
docs/:

    python tests/browser.py RUN_DIR/report.html docs/report_screenshot.png
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-debugging-pipe")


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@dataclass
class Rendered:
    requests: list[str] = field(default_factory=list)  # URL of every request the page made
    probe: Any = None  # the JavaScript probe's value
    screenshot: bytes | None = None


class _Pipe:
    """One Chromium process; CDP messages are NUL-terminated JSON on its fds 3 (in) and 4 (out)."""

    def __init__(self, binary: str, user_dir: str) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Park the child's ends above 10 so the dup2 onto 3/4 cannot clobber one another.
        high_r, high_w = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def child_fds() -> None:
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={user_dir}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=child_fds, close_fds=False)  # fds 3/4 are inheritable, the rest close on exec
        os.close(high_r)
        os.close(high_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            event = self._read(deadline)
            if event.get("method") == method:
                return event
            self.events.append(event)

    def _read(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited: {self.proc.stderr.read().decode(errors='replace')[-2000:]}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            os.close(fd)
        if self.proc.stderr:
            self.proc.stderr.close()


def render(html_path: Path | str, probe: str, *, width: int = 1280, height: int = 900,
           screenshot_clip: str | None = None, binary: str | None = None) -> Rendered:
    """Load `html_path` (a file, or an http:// URL) at width×height; evaluate `probe` (a JS expression, its value returned as JSON).
    With `screenshot_clip` (a JS expression giving {x, y, width, height}) a PNG of that region is kept."""
    binary = binary or chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="sustain-chromium-") as user_dir:
        cdp = _Pipe(binary, user_dir)
        try:
            page = next(t for t in cdp.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
            session = cdp.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
            for method in ("Network.enable", "Page.enable", "Runtime.enable"):
                cdp.send(method, session=session)
            cdp.send("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
            cdp.events.clear()
            url = html_path if str(html_path).startswith("http") else Path(html_path).resolve().as_uri()
            cdp.send("Page.navigate", {"url": str(url)}, session=session)
            cdp.wait_for("Page.loadEventFired", timeout=60)
            out = Rendered()
            value = cdp.send("Runtime.evaluate", {"expression": probe, "returnByValue": True, "awaitPromise": True},
                             session=session)
            out.probe = value["result"].get("value")
            if screenshot_clip:
                clip = cdp.send("Runtime.evaluate", {"expression": screenshot_clip, "returnByValue": True},
                                session=session)["result"]["value"]
                shot = cdp.send("Page.captureScreenshot", {"format": "png", "clip": {**clip, "scale": 1},
                                                           "captureBeyondViewport": True}, session=session)
                out.screenshot = base64.b64decode(shot["data"])
            out.requests = [e["params"]["request"]["url"] for e in cdp.events
                            if e.get("method") == "Network.requestWillBeSent"]
            return out
        finally:
            cdp.close()


GALLERY_CLIP = """(() => { const h = [...document.querySelectorAll('h2')].find(e => e.textContent.startsWith('Top mistakes'));
  const r = h.getBoundingClientRect();
  return {x: 0, y: r.top + window.scrollY - 10, width: 1280, height: 1000}; })()"""


if __name__ == "__main__":
    report, target = Path(sys.argv[1]), Path(sys.argv[2])
    shot = render(report, "1", screenshot_clip=GALLERY_CLIP).screenshot
    assert shot is not None
    target.write_bytes(shot)
    print(f"{target}: {len(shot) / 1024:.0f} KiB")
