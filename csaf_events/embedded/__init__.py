"""Embedded mode: one node owning every partition, on a durable RocksDB log in this process.

- `backend`: wiring;
- `log`: the `EventLog` adapter on a RocksDB column family.
"""
