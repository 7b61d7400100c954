"""A ``csaf serve`` node process for the tests that run MatsSocket nodes as processes of their
own (a cluster on one broker, a node killed mid-stream). One class for all of them: start it
(again after a kill: the same data dir), wait until it listens, ask its health, stop or kill it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

_LISTENING = re.compile(rb"MatsSocket node \S+ listening on \S+ port\(s\) \[(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`csaf serve <serve_args>` as node `name`, its data in <tmp>/<name>, its stderr in
    <tmp>/<name>.log, its health on a metrics port of its own. The tests' folder is on its
    PYTHONPATH, so an ``--app`` may be a test module's factory."""

    def __init__(self, name: str, tmp: Path, serve_args: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = tmp / f"{name}.log"
        self.metrics_port = free_port()
        self.command = [sys.executable, "-m", "csaf_events.ops.cli", "--log-level", "INFO", "serve", *serve_args,
                        "--node-name", name, "--data-dir", str(tmp / name), "--host", "127.0.0.1", "--port", "0",
                        "--metrics-port", str(self.metrics_port)]
        self.env = {**os.environ, **(env or {}),
                    "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
        self.process: subprocess.Popen | None = None
        self.port = 0
        self._log_from = 0

    def launch(self) -> ServeProcess:
        """Start the process (several can boot side by side; `wait_listening` then waits)."""
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=log, env=self.env)
        return self

    def wait_listening(self, deadline: float) -> ServeProcess:
        """Wait (until the `time.monotonic` deadline) for this start's "listening" line."""
        assert self.process is not None, "launch() first"
        while time.monotonic() < deadline and self.process.poll() is None:
            with open(self.log, "rb") as log:
                log.seek(self._log_from)
                match = _LISTENING.search(log.read())
            if match:
                self.port = int(match.group(1))
                return self
            time.sleep(0.05)
        self.kill()
        pytest.fail(f"node {self.name} did not start (exit {self.process.returncode}):\n{self.tail()}")

    def start(self, timeout: float = 120) -> ServeProcess:
        """Start the process and wait until it listens."""
        return self.launch().wait_listening(time.monotonic() + timeout)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/matssocket"

    def health(self) -> dict[str, Any] | None:
        """The node's ``store.health()`` (None if it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/health", timeout=2) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:  # 503: not ok, with the facts
            return json.loads(e.read())
        except OSError:
            return None

    def wait_dead(self, timeout: float = 10) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        """SIGTERM (the node closes its sockets and leaves the group), SIGKILL if it hangs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} log tail ---\n" + "\n".join(text.splitlines()[-lines:])
