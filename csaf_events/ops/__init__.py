"""The operator side: the ``csaf`` command (`cli`, with `cli_log`, `cli_ops` and `cli_run`),
cluster status and the offline log tools (`cluster_status`, `offline`), metrics and health
(`metrics`, `health`), logging (`logs`) and process scheduling (`scheduling`)."""
