"""Headless Chromium tabs that a test drives step by step (``matssocket_js/browser/tabs.mjs``).

`Tabs` starts the script (puppeteer-core and the machine's Chromium) and sends it one JSON
line per step: open a page, evaluate an expression in it, take a screenshot, close it; each
answer comes back as a line. A test can so act between two looks at a page (kill a node,
then read what the page saw). The pages' console errors go to the script's stderr, a file
that failure messages quote.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TABS_SCRIPT = Path(__file__).parent / "matssocket_js" / "browser" / "tabs.mjs"


def chromium() -> str:
    """The Chromium executable (``$CHROMIUM`` or /usr/bin/chromium); the test fails without one."""
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no Chromium at {path}: the browser tests need it (Debian: apt-get install -y chromium;"
                    " or set CHROMIUM to a Chromium or Chrome executable)")
    return path


class Tabs:
    """One browser, its tabs numbered from 0; `close` ends it."""

    def __init__(self, browser: str, log: Path, timeout: float = 30.0) -> None:
        if not (TABS_SCRIPT.parent.parent / "node_modules" / "puppeteer-core" / "package.json").exists():
            pytest.fail("puppeteer-core is not in tests/matssocket_js/node_modules (npm ci there installs it)")
        self.log = log
        self._stderr = open(log, "w")
        self._process = subprocess.Popen(["node", str(TABS_SCRIPT)], cwd=TABS_SCRIPT.parent, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                         env={**os.environ, "CHROMIUM": browser})
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name="tabs-stdout", daemon=True).start()
        self._next = 0
        ready = self._line(timeout)
        if not ready.get("ready"):
            self.close()
            pytest.fail(f"the browser did not start: {ready}\n{self.stderr()}")
        self.version: str = ready["browser"]

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _line(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the browser script did not answer in {timeout:.0f}s\n{self.stderr()}")
        if line is None:
            pytest.fail(f"the browser script ended (exit {self._process.poll()})\n{self.stderr()}")
        return json.loads(line)

    def stderr(self) -> str:
        self._stderr.flush()
        return "--- browser stderr ---\n" + self.log.read_text(errors="replace")[-4000:]

    def call(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        """One step (see tabs.mjs); its value, or the test fails with the script's error."""
        self._next += 1
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"id": self._next, "op": op, **args}) + "\n")
        self._process.stdin.flush()
        answer = self._line(timeout)
        if answer.get("id") != self._next:
            pytest.fail(f"the browser script answered out of turn: {answer}")
        if "error" in answer:
            pytest.fail(f"{op} {args} failed in the browser: {answer['error']}\n{self.stderr()}")
        return answer["value"]

    def open(self, url: str) -> int:
        return self.call("open", url=url)

    def eval(self, tab: int, js: str) -> Any:
        return self.call("eval", tab=tab, js=js)

    def screenshot(self, tab: int, path: Path) -> None:
        self.call("screenshot", tab=tab, path=str(path))

    def close_tab(self, tab: int) -> None:
        self.call("close", tab=tab)

    def wait(self, tab: int, js: str, until: Callable[[Any], bool], timeout: float, what: str) -> Any:
        """Evaluate `js` in the tab every 0.2 s until `until` holds for its value (returned);
        the test fails after `timeout` seconds, naming `what` and the last value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(tab, js)
            if until(value):
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"tab {tab}: not {what} after {timeout:.0f}s; last: {json.dumps(value)[:3000]}\n"
                            f"{self.stderr()}")
            time.sleep(0.2)

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._stderr.close()
