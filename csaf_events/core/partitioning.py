"""Which partition a session's records go to."""

from __future__ import annotations

from confluent_kafka import murmur2


def partition_for(session_id: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key), so Java clients agree."""
    return murmur2(session_id.encode(), partitions)
