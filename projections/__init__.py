"""Read models of the store: RocksDB projections and the one fold that builds them from the
log. Depends only on the event catalog (`csaf_events.core.events`) and the log's plain types
(`csaf_events.log.entries`)."""
