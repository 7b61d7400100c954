"""pytest fixtures for a real Kafka broker (see brokers.py for where it comes from)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from brokers import kafka_bootstrap_for_tests, unique_namespace
from confluent_kafka.admin import AdminClient


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real broker for the whole test session: CSAF_KAFKA_BOOTSTRAP, testcontainers, or
    docker/kafka-local. Fails (never skips) with the reason when none can be had."""
    bootstrap, stop = kafka_bootstrap_for_tests()
    try:
        yield bootstrap
    finally:
        stop()


@pytest.fixture
def kafka_namespace() -> str:
    """A fresh namespace per test: its own topics and consumer groups on the shared broker."""
    return unique_namespace()


def delete_namespace_topics(bootstrap: str, namespace: str) -> None:
    """Drop a test's topics so a long session does not pile up partitions on the broker."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{namespace}.")]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            try:
                fut.result(30)
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
