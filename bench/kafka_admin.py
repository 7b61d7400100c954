"""Small Kafka and machine helpers for the benchmark: cleaning up a namespace on the
broker, and the CPU the machine, this process and a local broker use during a run."""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient


def delete_namespace(bootstrap: str, namespace: str, timeout: float = 30.0) -> list[str]:
    """Delete the topics (``<namespace>.*``) and consumer groups (``<namespace>.*``) of a
    benchmark namespace, best effort, so repeated runs do not pile up on a shared broker.
    Returns the topics deleted."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    prefix = f"{namespace}."
    try:
        names = [t for t in admin.list_topics(timeout=timeout).topics if t.startswith(prefix)]
    except Exception as e:  # noqa: BLE001 - cleanup must not hide the figures
        print(f"warning: cannot list the topics of {namespace}: {e}", file=sys.stderr)
        return []
    deleted = []
    if names:
        for name, fut in admin.delete_topics(names, operation_timeout=timeout).items():
            try:
                fut.result(timeout)
                deleted.append(name)
            except Exception as e:  # noqa: BLE001
                print(f"warning: deleting topic {name} failed: {e}", file=sys.stderr)
    try:
        listed = admin.list_consumer_groups(request_timeout=timeout).result(timeout)
        groups = [g.group_id for g in listed.valid if g.group_id.startswith(prefix)]
        if groups:
            for fut in admin.delete_consumer_groups(groups, request_timeout=timeout).values():
                try:
                    fut.result(timeout)
                except Exception:  # noqa: BLE001 - a group with live members stays; harmless
                    pass
    except Exception:  # noqa: BLE001
        pass
    return deleted


# ------------------------------------------------------------------------- CPU --------

def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f[9])
    return inodes


def local_broker_pids(bootstrap: str) -> list[int]:
    """Pids of the processes on this machine listening on the bootstrap ports (Linux; empty
    when the broker is elsewhere or /proc cannot tell)."""
    ports = set()
    for hp in bootstrap.split(","):
        host, _, port = hp.strip().rpartition(":")
        if host in ("127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0") and port.isdigit():
            ports.add(int(port))
    inodes = set().union(*(_listening_inodes(p) for p in ports)) if ports else set()
    if not inodes:
        return []
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    pids.append(int(pid))
                    break
        except OSError:
            continue
    return pids


def _proc_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def _machine_busy_s() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None
    tck = os.sysconf("SC_CLK_TCK")
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / tck, sum(f[:8]) / tck


class CpuMeter:
    """CPU used during an interval: by this process, by the local broker (if found) and by
    the whole machine, in cores (CPU seconds per second of wall time)."""

    def __init__(self, broker_pids: list[int] | None = None) -> None:
        self.broker_pids = broker_pids or []
        self._t = time.monotonic()
        self._self = self._self_cpu()
        self._broker = {p: _proc_cpu_s(p) for p in self.broker_pids}
        self._machine = _machine_busy_s()

    @staticmethod
    def _self_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def stop(self) -> dict:
        wall = time.monotonic() - self._t
        out: dict = {"wall_s": round(wall, 3),
                     "process_cores": round((self._self_cpu() - self._self) / wall, 3) if wall > 0 else None}
        if self.broker_pids:
            used = [(_proc_cpu_s(p), b) for p, b in self._broker.items()]
            if all(a is not None and b is not None for a, b in used):
                out["broker_cores"] = round(sum(a - b for a, b in used) / wall, 3) if wall > 0 else None
            out["broker_pids"] = self.broker_pids
        m = _machine_busy_s()
        if m is not None and self._machine is not None and wall > 0:
            out["machine_busy_cores"] = round((m[0] - self._machine[0]) / wall, 3)
        try:
            out["load_avg_1m"] = round(os.getloadavg()[0], 2)
        except OSError:
            pass
        return out
