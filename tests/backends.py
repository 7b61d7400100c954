"""The backends the tests run on: the one table. A fixture parametrized over
`backend_params()` runs its tests on each; adding a backend is one entry in `BACKENDS`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from brokers import unique_namespace
from kafka_fixtures import delete_namespace_topics


@dataclass(frozen=True)
class BackendSpec:
    """How to open stores on one backend.

    `options(request)` returns the extra `open_store` keyword arguments for one test (for
    a broker backend: the bootstrap servers and a namespace unique to the test, shared by
    all nodes the test opens). `cluster` says whether several nodes can be open at once
    and share one store (embedded mode is one node).
    """

    options: Callable[[pytest.FixtureRequest], dict[str, Any]] = field(default=lambda request: {})
    cluster: bool = False
    marks: tuple = ()


def _kafka_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A real broker (see kafka_fixtures), a namespace of the test's own, and few partitions
    (every partition is a takeover to do at boot)."""
    namespace = unique_namespace()
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    request.addfinalizer(lambda: delete_namespace_topics(bootstrap, namespace))
    return {"bootstrap_servers": bootstrap, "namespace": namespace, "partitions": 3, "request_timeout": 20.0}


BACKENDS: dict[str, BackendSpec] = {
    "embedded": BackendSpec(),
    "kafka": BackendSpec(options=_kafka_options, cluster=True, marks=(pytest.mark.kafka,)),
}


def backend_params() -> list:
    """`BACKENDS` as pytest parameters (Kafka ones marked `kafka`)."""
    return [pytest.param(name, marks=spec.marks, id=name) for name, spec in BACKENDS.items()]
