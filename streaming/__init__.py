"""streamrec's stream side: events in, features and examples, live feeds out.

What an app needs is exported here (and only this is public; every other module may change)::

    from streaming import Event, EventProducer, FeedReader, Settings

    settings = Settings.load()                    # environment + defaults
    with EventProducer(settings) as producer:     # idempotent, acks=all, bounded queue
        producer.send(Event("e-1", "u42", "sku-7", "click", ts=1732345678123))
    with FeedReader(settings) as feeds:
        feed = feeds.read("u42")                  # Feed(items=[FeedItem(item_id, score, source)])

The packages follow the data flow: ``contract`` (records and names shared by every process) ->
``io`` (Kafka and Redis adapters) -> ``ingest`` (the Faust worker: validation, ``features``
state, labelled examples) -> the trainer (``trainer/``) -> ``serving`` (scorers writing feeds);
``sources`` feed events in, ``ops`` watches it all. Nothing opens a connection at import time.

Names are loaded on first use, so that importing one submodule (``streaming.contract``, which
``models/`` uses) does not import the Kafka and Redis clients.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streaming.contract.events import Event
    from streaming.contract.feeds import Feed, FeedItem
    from streaming.errors import (
        BackpressureTimeout,
        BrokerError,
        CheckpointError,
        ConfigError,
        CorruptCheckpoint,
        DeliveryError,
        EmbeddedServiceError,
        InvalidEvent,
        RecordRefused,
        ServiceError,
        SourceError,
        StoreError,
        StreamrecError,
    )
    from streaming.io.producer import EventProducer
    from streaming.serving.feed_store import FeedReader
    from streaming.settings import Settings

__all__ = [
    "BackpressureTimeout",
    "BrokerError",
    "CheckpointError",
    "ConfigError",
    "CorruptCheckpoint",
    "DeliveryError",
    "EmbeddedServiceError",
    "Event",
    "EventProducer",
    "Feed",
    "FeedItem",
    "FeedReader",
    "InvalidEvent",
    "RecordRefused",
    "ServiceError",
    "Settings",
    "SourceError",
    "StoreError",
    "StreamrecError",
]

_ERRORS = ("BackpressureTimeout", "BrokerError", "CheckpointError", "ConfigError",
           "CorruptCheckpoint", "DeliveryError", "EmbeddedServiceError", "InvalidEvent",
           "RecordRefused", "ServiceError", "SourceError", "StoreError", "StreamrecError")
_WHERE = {
    "Event": "streaming.contract.events",
    "EventProducer": "streaming.io.producer",
    "Feed": "streaming.contract.feeds",
    "FeedItem": "streaming.contract.feeds",
    "FeedReader": "streaming.serving.feed_store",
    "Settings": "streaming.settings",
    **dict.fromkeys(_ERRORS, "streaming.errors"),
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'streaming' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
