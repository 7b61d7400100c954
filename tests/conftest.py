"""Shared fixtures: stores for every backend, and a clock the test controls.

Backend-generic tests ask for `store` (one booted store) or `store_factory` (opens and
boots stores for the current backend, closes them at teardown). Both are parametrized
over `backends.BACKENDS`, the one list of the backends the tests run on.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from backends import BACKENDS, backend_params
from kafka_fixtures import kafka_bootstrap, kafka_namespace  # noqa: F401 - fixtures

from csaf_events import ClusterStoreAndForward, open_store


class ManualClock:
    """A clock (int milliseconds since the epoch) that moves only when told to."""

    def __init__(self, start: int = 1_700_000_000_000) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return self._now

    def advance(self, ms: int = 1) -> int:
        with self._lock:
            self._now += ms
            return self._now

    def set(self, now: int) -> None:
        with self._lock:
            self._now = now


class StoreFactory:
    """Opens (and by default boots) stores of one backend; closes them all at teardown.

    `make(node_name, data_dir=None, boot=True, **open_store_kwargs)`; the data dir defaults
    to `<tmp>/<node_name>`, so opening the same node name again after closing it reopens
    the same data (a restart).
    """

    def __init__(self, backend: str, tmp_path: Path, options: dict[str, Any]) -> None:
        self.backend = backend
        self.spec = BACKENDS[backend]
        self.cluster = self.spec.cluster
        self.tmp_path = tmp_path
        self.options = options
        self.opened: list[ClusterStoreAndForward] = []

    def data_dir(self, node_name: str) -> Path:
        return self.tmp_path / node_name

    def __call__(self, node_name: str = "node-a", *, data_dir: str | Path | None = None, boot: bool = True,
                 **kw: Any) -> ClusterStoreAndForward:
        opts = {**self.options, **kw}
        store = open_store(node_name, data_dir if data_dir is not None else self.data_dir(node_name), **opts)
        self.opened.append(store)
        if boot:
            store.boot()
        return store

    make = __call__

    def close_all(self) -> None:
        errors = []
        for store in reversed(self.opened):
            try:
                store.close()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
        self.opened.clear()
        if errors:
            raise errors[0]


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_factory(backend: str, tmp_path: Path, request: pytest.FixtureRequest):
    factory = StoreFactory(backend, tmp_path, BACKENDS[backend].options(request))
    yield factory
    factory.close_all()


@pytest.fixture
def store(store_factory: StoreFactory) -> ClusterStoreAndForward:
    return store_factory()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
