"""Faust agents, one module per domain."""
