"""Continuous sharded training on the examples stream, and checkpoint publishing."""
