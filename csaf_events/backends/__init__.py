"""Backends: what a store runs on (embedded single node, or a Kafka cluster)."""
