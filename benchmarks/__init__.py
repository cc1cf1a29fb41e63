"""Benchmarks: each prints a last line of JSON and writes benchmarks/results/<name>.json."""
