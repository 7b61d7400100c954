"""The store's clock: integer milliseconds since the epoch, like every timestamp of the API."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
