"""Where the test suite gets a real Kafka broker from.

Plain functions only; fixtures are declared in conftest.py.

``kafka_bootstrap_for_tests(brokers)`` tries, in order:

1. ``CSAF_KAFKA_BOOTSTRAP`` set -> use that cluster as is (stop is a no-op).
2. A Docker engine answers -> ``testcontainers`` ``KafkaContainer`` in KRaft
   mode (single broker only; image from ``CSAF_KAFKA_TC_IMAGE``).
   Set ``CSAF_KAFKA_NO_DOCKER=1`` to skip this step.
3. ``docker/kafka-local start --brokers N --dir <tempdir>``: real Apache Kafka
   from the official jars, no Docker (needs ``java`` 17+ and, on first use,
   ``mvn``). Set ``CSAF_KAFKA_KEEP_DIR=1`` to keep the broker logs/data dir.

If none of them works a ``RuntimeError`` explains why each one failed; tests
never skip for want of a broker.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = REPO_ROOT / "docker" / "kafka-local"

DEFAULT_TC_IMAGE = "confluentinc/cp-kafka:7.6.0"
# Cold starts resolve ~45 MB of jars with mvn first; warm starts take seconds.
KAFKA_LOCAL_START_TIMEOUT = float(os.environ.get("CSAF_KAFKA_LOCAL_TIMEOUT", "900"))

_BOOTSTRAP_LINE = re.compile(r"^bootstrap=(\S+)\s*$", re.MULTILINE)


def _noop() -> None:
    return None


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    """Make a stop function idempotent and register it as an at-exit backstop."""
    lock = threading.Lock()
    done = False

    def stop() -> None:
        nonlocal done
        with lock:
            if done:
                return
            done = True
        fn()

    atexit.register(stop)
    return stop


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


# ---------------------------------------------------------------------------
# readiness (used for the Docker path; kafka-local does its own)


def wait_until_transactional(bootstrap: str, timeout: float = 60.0) -> None:
    """Block until `bootstrap` accepts a committed transactional produce."""
    from confluent_kafka import KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = "__csaf_ready"
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap})
            if topic not in admin.list_topics(timeout=5).topics:
                fut = admin.create_topics([NewTopic(topic, 1, 1)])[topic]
                try:
                    fut.result(timeout=20)
                except KafkaException as exc:
                    if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(exc):
                        raise
            producer = Producer({
                "bootstrap.servers": bootstrap,
                "transactional.id": f"{topic}-{secrets.token_hex(6)}",
                "log_level": 2,
            })
            remaining = max(1.0, deadline - time.monotonic())
            producer.init_transactions(remaining)
            producer.begin_transaction()
            producer.produce(topic, b"ready")
            producer.commit_transaction(max(1.0, deadline - time.monotonic()))
            return
        except Exception as exc:  # noqa: BLE001 - retry until the deadline
            last = exc
            time.sleep(0.5)
    raise TimeoutError(f"{bootstrap} did not accept a transactional produce within {timeout:.0f}s: {last!r}")


# ---------------------------------------------------------------------------
# option 2: Docker via testcontainers


def _docker_engine_answers() -> tuple[bool, str]:
    if os.environ.get("CSAF_KAFKA_NO_DOCKER", "").strip() not in ("", "0", "false", "no"):
        return False, "disabled by CSAF_KAFKA_NO_DOCKER"
    reasons = []
    docker = shutil.which("docker")
    if docker:
        try:
            proc = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], check=False,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15)
            if proc.returncode == 0 and proc.stdout.strip():
                return True, f"docker engine {proc.stdout.strip()}"
            reasons.append(f"`docker info` failed: {_tail(proc.stderr or proc.stdout, 2) or proc.returncode}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"`docker info` failed: {exc}")
    else:
        reasons.append("no `docker` CLI on PATH")
    try:
        import docker as docker_sdk  # shipped with testcontainers
    except Exception as exc:  # noqa: BLE001 - any failure is a reason to try the next way
        reasons.append(f"docker SDK not importable ({exc.__class__.__name__})")
    else:
        try:
            client = docker_sdk.from_env(timeout=5)
            try:
                client.ping()
            finally:
                client.close()
            return True, "docker SDK ping ok"
        except Exception as exc:  # noqa: BLE001 - any failure is a reason to try the next way
            reasons.append(f"docker SDK cannot connect: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    return False, "; ".join(reasons)


def _start_testcontainer() -> tuple[str, Callable[[], None]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:
            from testcontainers.kafka import KafkaContainer

    image = os.environ.get("CSAF_KAFKA_TC_IMAGE", DEFAULT_TC_IMAGE)
    container = (
        KafkaContainer(image=image)
        .with_kraft()
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "1000")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    container.start(timeout=180)
    stop = _once(container.stop)
    try:
        bootstrap = container.get_bootstrap_server()
        wait_until_transactional(bootstrap, timeout=120)
    except BaseException:
        stop()
        raise
    return bootstrap, stop


# ---------------------------------------------------------------------------
# option 3: docker/kafka-local (real Kafka jars, no Docker)


def _start_kafka_local(brokers: int) -> tuple[str, Callable[[], None]]:
    bootstrap, _, stop = _start_kafka_local_dir(brokers)
    return bootstrap, stop


def _start_kafka_local_dir(brokers: int) -> tuple[str, str, Callable[[], None]]:
    """Start a kafka-local cluster in a fresh temporary dir: ``(bootstrap, dir, stop)``."""
    if not KAFKA_LOCAL.is_file():
        raise RuntimeError(f"{KAFKA_LOCAL} is missing")
    workdir = tempfile.mkdtemp(prefix="csaf-kafka-")
    # sys.executable: the launcher then sees this interpreter's confluent_kafka
    # and checks readiness with a real transactional produce.
    base_cmd = [sys.executable, str(KAFKA_LOCAL)]

    keep = {"dir": os.environ.get("CSAF_KAFKA_KEEP_DIR", "").strip() not in ("", "0", "false", "no")}

    def stop_cluster() -> None:
        try:
            subprocess.run([*base_cmd, "stop", "--dir", workdir], check=False, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=120)
        finally:
            if not keep["dir"]:
                shutil.rmtree(workdir, ignore_errors=True)

    stop = _once(stop_cluster)
    cmd = [*base_cmd, "start", "--brokers", str(brokers), "--dir", workdir, "--watch-pid", str(os.getpid())]
    try:
        proc = subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=KAFKA_LOCAL_START_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        keep["dir"] = True  # leave the broker logs for inspection
        stop()
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise RuntimeError(f"`{' '.join(cmd)}` timed out after {KAFKA_LOCAL_START_TIMEOUT:.0f}s:\n"
                           f"{_tail(err)}") from None
    except BaseException:
        stop()
        raise
    match = _BOOTSTRAP_LINE.search(proc.stdout or "")
    if proc.returncode != 0 or not match:
        keep["dir"] = True  # leave the broker logs for inspection
        stop()
        raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{_tail(proc.stderr, 60)}")
    return match.group(1), workdir, stop


class LocalCluster:
    """A docker/kafka-local cluster whose brokers a test can stop and restart one by one.

    `dir` is the cluster's ``--dir`` (its ``cluster.json``, and ``node-<id>/server.log``
    per broker); `broker_ids` the KRaft node ids (1..N)."""

    def __init__(self, bootstrap: str, workdir: str, stop: Callable[[], None]) -> None:
        self.bootstrap = bootstrap
        self.dir = workdir
        self.stop = stop
        state = json.loads((Path(workdir) / "cluster.json").read_text())
        self.broker_ids = [int(n["id"]) for n in state["nodes"]]
        self.ports = {int(n["id"]): int(n["port"]) for n in state["nodes"]}

    def _run(self, *args: str, timeout: float = 180) -> None:
        cmd = [sys.executable, str(KAFKA_LOCAL), *args, "--dir", self.dir]
        proc = subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{_tail(proc.stderr, 30)}")

    def stop_broker(self, broker_id: int, kill: bool = True) -> None:
        """Stop one broker: SIGKILL (`kill`, the default) or a graceful SIGTERM."""
        self._run("stop-node", str(broker_id), *(["--kill"] if kill else []))

    def start_broker(self, broker_id: int, timeout: float = 300) -> None:
        """Restart a stopped broker with its old data; returns once it answers on its port (a
        broker recovering its logs on a busy machine can take minutes). Does nothing to a
        broker that runs."""
        self._run("start-node", str(broker_id), "--timeout", str(timeout), timeout=timeout + 60)

    def ensure_all_up(self) -> None:
        """Every broker running (a test that stopped one and failed may have left it down)."""
        for broker_id in self.broker_ids:
            self.start_broker(broker_id)

    def server_log(self, broker_id: int) -> Path:
        return Path(self.dir) / f"node-{broker_id}" / "server.log"


def local_cluster_for_tests(brokers: int = 3) -> LocalCluster:
    """A kafka-local cluster of `brokers` brokers that the test may stop and restart.

    ``CSAF_KAFKA_LOCAL_DIR`` names the --dir of a kafka-local cluster that is already
    running (it is used as is and left running); otherwise a fresh one is started in a
    temporary dir and `stop()` ends it. Docker and ``CSAF_KAFKA_BOOTSTRAP`` clusters are
    not used: their brokers cannot be stopped one at a time from here."""
    existing = os.environ.get("CSAF_KAFKA_LOCAL_DIR", "").strip()
    if existing:
        state = json.loads((Path(existing) / "cluster.json").read_text())
        if len(state["nodes"]) < brokers:
            raise RuntimeError(f"CSAF_KAFKA_LOCAL_DIR={existing} has {len(state['nodes'])} brokers, "
                               f"{brokers} are needed")
        return LocalCluster(state["bootstrap"], existing, _noop)
    try:
        bootstrap, workdir, stop = _start_kafka_local_dir(brokers)
    except Exception as exc:
        raise RuntimeError(f"no {brokers}-broker kafka-local cluster for the fault tests: {exc}") from exc
    return LocalCluster(bootstrap, workdir, stop)


# ---------------------------------------------------------------------------
# public API


def kafka_bootstrap_for_tests(brokers: int = 1) -> tuple[str, Callable[[], None]]:
    """Return ``(bootstrap_servers, stop)`` for a Kafka cluster with `brokers` brokers.

    ``stop()`` is idempotent and is also registered to run at interpreter exit.
    """
    if brokers < 1:
        raise ValueError("brokers must be >= 1")
    reasons: list[str] = []

    external = os.environ.get("CSAF_KAFKA_BOOTSTRAP", "").strip()
    if external:
        return external, _noop
    reasons.append("CSAF_KAFKA_BOOTSTRAP: not set")

    docker_ok, docker_why = _docker_engine_answers()
    if not docker_ok:
        reasons.append(f"Docker/testcontainers: no Docker engine ({docker_why})")
    elif brokers > 1:
        reasons.append(f"Docker/testcontainers: engine found ({docker_why}) but KafkaContainer is "
                       f"single-broker and {brokers} brokers were asked for")
    else:
        try:
            return _start_testcontainer()
        except Exception as exc:  # noqa: BLE001 - any failure is a reason to try the next way
            reasons.append(f"Docker/testcontainers: engine found ({docker_why}) but the Kafka "
                           f"container failed: {exc!r}")

    try:
        return _start_kafka_local(brokers)
    except Exception as exc:  # noqa: BLE001 - any failure is a reason to try the next way
        reasons.append(f"docker/kafka-local: {exc}")

    raise RuntimeError("no Kafka broker available for the tests:\n" +
                       "\n".join(f"  - {r}" for r in reasons))


def unique_namespace(prefix: str = "t") -> str:
    """A short unique namespace, e.g. ``t-3f9c01a7be``: lowercase letters, digits and dashes only.

    Lets test runs (and tests inside one run) share a broker without their topics,
    consumer groups and transactional ids colliding.
    """
    clean = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-") or "t"
    return f"{clean}-{secrets.token_hex(5)}"
