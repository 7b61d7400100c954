"""The log: its plain types (`entries`, what the projections read) and the port command
handling appends through (`port`). The adapters live beside it, one folder each
(`csaf_events.embedded`, `csaf_events.kafka`)."""
