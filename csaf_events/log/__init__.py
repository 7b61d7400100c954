"""The log port and its adapters (embedded RocksDB log, Kafka)."""

from csaf_events.log.port import EventLog, LogEntry

__all__ = ["EventLog", "LogEntry"]
