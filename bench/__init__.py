"""Benchmarks of the data path, the shard's sync step and training; each prints a table."""
