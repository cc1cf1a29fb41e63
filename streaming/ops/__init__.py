"""Ops: watching the pipeline, and running its processes.

- :mod:`~streaming.ops.metrics`: each component's Prometheus metrics and their HTTP endpoint;
- :mod:`~streaming.ops.health`: component heartbeats in Redis;
- :mod:`~streaming.ops.lag`: consumer lag and a Burrow-style group status (pure);
- :mod:`~streaming.ops.lag_monitor`: reads lag from Kafka, rates the groups, exports the metrics;
- :mod:`~streaming.ops.process`: child processes (``streamrec up``, the evaluation, the benchmarks).
"""
