"""The untimed run before a measured one, for the lifecycle benchmark in this process and in
node processes of their own (`bench.processes`)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from bench.workload import WorkloadConfig, run_workload


def warm_up(stores: Sequence, seconds: float, config: WorkloadConfig) -> dict[str, Any] | None:
    """Run the workload untimed (its own session ids) so that what is measured next is the
    steady state: the broker's JIT-compiled request path, warm caches, started threads."""
    if seconds <= 0:
        return None
    print(f"warming up for {seconds:g} s (untimed; --warmup 0 skips it)", file=sys.stderr)
    result = run_workload(stores, dataclasses.replace(config, sessions=1_000_000_000, duration=seconds))
    return {"seconds": seconds, "sessions": result.sessions, "elapsed_s": round(result.elapsed_s, 3),
            "lifecycles_per_s": round(result.lifecycles_per_s, 1), "errors": sum(result.errors.values())}
