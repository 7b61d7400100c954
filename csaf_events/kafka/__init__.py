"""Kafka mode: the log adapter and everything a node needs to share a Kafka cluster.

- `backend`: wiring (what a node runs and in which order it starts and stops);
- `ownership`: which partitions this node owns, and taking them over;
- `transaction`: the node's transactional producer and its group commit;
- `log`: the `EventLog` adapter on the events topic;
- `reader`: reading a partition of committed records, without joining any group;
- `routing`: commands to other partitions' owners, and their replies;
- `registry_tail`: the sessions topic tailed into the session registry;
- `topics`: creating and verifying topics against topics.yaml.
"""
