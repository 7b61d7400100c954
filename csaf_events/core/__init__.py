"""The domain: the event catalog (`events`), the commands and their decisions (`commands`,
`codec`), the values callers see (`dtos`, `errors`, `validation`), and the writers that turn
commands into events on the log (`writer`, `group_commit`, `pending`, `node`); the session
registry and relays (`registry`, `relays`), a session's history (`history`), the calls a
store offers (`session_calls`, `unit_of_work`) and the hook they are observed through
(`observe`). It builds on the log port (`csaf_events.log`) and the projections, never on the
application or its tools."""
