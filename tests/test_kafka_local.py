"""The broker the suite runs against really honours Kafka transactions.

Starts a broker through ``kafka_bootstrap_for_tests()`` (an external one via
CSAF_KAFKA_BOOTSTRAP, Docker, or docker/kafka-local) and checks the two
properties the event store relies on: committed transactions are visible to
``read_committed`` consumers, aborted ones are not.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

try:
    from tests.brokers import kafka_bootstrap_for_tests, unique_namespace
except ImportError:  # tests/ not importable as a package
    from brokers import kafka_bootstrap_for_tests, unique_namespace

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def local_kafka() -> str:
    bootstrap, stop = kafka_bootstrap_for_tests()
    try:
        yield bootstrap
    finally:
        stop()


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=30)
    deadline = time.monotonic() + 30
    while topic not in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"topic {topic} never showed up in metadata"
        time.sleep(0.1)


def _producer(bootstrap: str, ns: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{ns}-tx"})
    producer.init_transactions(60)
    return producer


def _read_partition(bootstrap: str, topic: str, ns: str, isolation: str, timeout: float = 30) -> list[bytes]:
    """Every record of partition 0 visible under `isolation`, up to the end of the partition."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"{ns}-{isolation}",
        "enable.auto.commit": False,
        "isolation.level": isolation,
        "enable.partition.eof": True,
    })
    values: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"no end of partition after {timeout}s; read {values}"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return values
                raise AssertionError(f"consumer error: {msg.error()}")
            values.append(msg.value())
    finally:
        consumer.close()


def _fresh_topic(bootstrap: str, prefix: str) -> tuple[str, str, Producer]:
    """A namespace, a new topic in it, and a transactional producer of that namespace."""
    ns = unique_namespace(prefix)
    topic = f"{ns}-events"
    _create_topic(bootstrap, topic)
    return ns, topic, _producer(bootstrap, ns)


def test_committed_transaction_is_visible_to_read_committed(local_kafka: str) -> None:
    ns, topic, producer = _fresh_topic(local_kafka, "kl-commit")

    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, key=b"stream-1", value=f"event-{i}".encode())
    producer.commit_transaction(30)

    assert _read_partition(local_kafka, topic, ns, "read_committed") == [b"event-0", b"event-1", b"event-2"]


def test_aborted_transaction_is_invisible_to_read_committed(local_kafka: str) -> None:
    ns, topic, producer = _fresh_topic(local_kafka, "kl-abort")

    producer.begin_transaction()
    producer.produce(topic, value=b"committed-1")
    producer.commit_transaction(30)

    producer.begin_transaction()
    producer.produce(topic, value=b"aborted-1")
    producer.produce(topic, value=b"aborted-2")
    producer.flush(30)  # the aborted records really reach the log before the abort
    producer.abort_transaction(30)

    producer.begin_transaction()
    producer.produce(topic, value=b"committed-2")
    producer.commit_transaction(30)

    assert _read_partition(local_kafka, topic, ns, "read_committed") == [b"committed-1", b"committed-2"]
    # Not vacuous: the aborted records are in the log, only filtered out.
    assert _read_partition(local_kafka, topic, ns, "read_uncommitted") == [
        b"committed-1", b"aborted-1", b"aborted-2", b"committed-2",
    ]
