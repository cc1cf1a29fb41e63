"""Event contract, Kafka/Redis adapters, Faust agents, feature store, labels, scorer and lag.

Nothing in this package opens a connection at import time: every adapter is built from an
explicit :class:`streaming.settings.Settings`.
"""
