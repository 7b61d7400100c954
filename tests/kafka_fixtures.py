"""pytest fixtures for a real Kafka broker (see brokers.py for where it comes from)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from brokers import kafka_bootstrap_for_tests, unique_namespace


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
