"""Benchmarks of csaf-events (run from the repository root: ``python -m bench.lifecycle``)."""
