"""The log port: what command handling and projections need from a log. Its adapters live
beside it, one folder each (`csaf_events.embedded`, `csaf_events.kafka`)."""

from csaf_events.log.port import EventLog, LogEntry

__all__ = ["EventLog", "LogEntry"]
