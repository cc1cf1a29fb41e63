"""The model-update record: a checkpoint announcement on the ``model-updates`` topic.

The trainer (rank 0) publishes one per checkpoint, keyed by the model name on a compacted topic
so that the newest announcement survives; scorers load the checkpoint it points to. The record is
the checkpoint's manifest plus where to find it::

    {"model": "default", "path": "/abs/checkpoints/v000042", "version": 42, "step": ...,
     "examples_seen": ..., "offsets": {...}, "metrics": {...}, "spec_digest": ..., ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["MODEL_NAME", "ModelUpdate"]

MODEL_NAME = "default"


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """A published checkpoint: its version and directory, and the rest of its manifest."""

    version: int
    path: str
    model: str = MODEL_NAME
    manifest: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> bytes:
        """Kafka message key: the model name (the topic is compacted per model)."""
        return self.model.encode()

    def to_json(self) -> bytes:
        """The wire form: the manifest's fields with ``model`` and ``path`` added."""
        return orjson.dumps({**self.manifest, "model": self.model, "path": self.path,
                             "version": self.version})

    @classmethod
    def from_json(cls, raw: bytes) -> ModelUpdate:
        """Parse an announcement; raises ``ValueError`` for anything unreadable."""
        try:
            doc = orjson.loads(raw)
            return cls(version=int(doc["version"]), path=str(doc["path"]),
                       model=str(doc.get("model", MODEL_NAME)), manifest=doc)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unreadable model update: {exc}") from None
