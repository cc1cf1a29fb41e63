"""I/O: the Kafka and Redis adapters, with library errors translated to :mod:`streaming.errors`.

- :mod:`~streaming.io.kafka`: librdkafka client configuration, admin calls, topic creation;
- :mod:`~streaming.io.producer`: idempotent, bounded producers (events from apps; the DLQ,
  examples and model updates of streamrec's own components);
- :mod:`~streaming.io.redis_client`: Redis clients built from settings.
"""
