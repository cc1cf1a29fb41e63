"""The model-update record: an announcement on the ``model-updates`` topic, and the source of
truth for which checkpoint scorers serve.

The trainer (rank 0) publishes one per checkpoint; operators publish one per ``streamrec model
promote | rollback``. They are keyed by the model name on a compacted topic, so only the newest
survives compaction: every record therefore carries the whole serving state, not a delta::

    {"model": "default", "action": "publish", "version": 42, "path": "/abs/checkpoints/v00000042",
     "promoted": false, "verdict": {...}, "step": ..., "examples_seen": ..., "offsets": {...},
     "metrics": {...}, "spec_digest": ..., ...,
     "served": [{"version": 39, "path": "..."}, {"version": 41, "path": "..."}]}

``version`` / ``path`` (and the manifest fields) describe the checkpoint the record is about:
the new one (``publish``), the one promoted, or the one rolled back to. ``promoted`` says
whether a published checkpoint passed the promotion check (``verdict``: both models' held-out
metrics, the margins, the reason). ``served`` lists the versions served so far, oldest first:
scorers serve the last one, a rollback goes back to the one before it. A record without
``served`` (written before promotion existed) means its own version is served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["ACTIONS", "MODEL_NAME", "ModelUpdate", "ServedVersion"]

MODEL_NAME = "default"
ACTIONS = ("publish", "promote", "rollback")


@dataclass(frozen=True, slots=True)
class ServedVersion:
    """A checkpoint version scorers serve (or served), and its directory."""

    version: int
    path: str


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """An announcement: the checkpoint it is about (``version``, ``path``, ``manifest``), the
    ``action`` that produced it, the promotion ``verdict``, and the served-version history."""

    version: int
    path: str
    model: str = MODEL_NAME
    manifest: Mapping[str, Any] = field(default_factory=dict)
    action: str = "publish"
    promoted: bool = True
    verdict: Mapping[str, Any] = field(default_factory=dict)
    served: tuple[ServedVersion, ...] = ()

    @property
    def key(self) -> bytes:
        """Kafka message key: the model name (the topic is compacted per model)."""
        return self.model.encode()

    @property
    def serving(self) -> ServedVersion | None:
        """The checkpoint scorers serve after this announcement (None: nothing served yet)."""
        if self.served:
            return self.served[-1]
        return ServedVersion(self.version, self.path) if self.promoted else None

    @property
    def history(self) -> tuple[ServedVersion, ...]:
        """Served versions, oldest first, the served one last (legacy records: their own)."""
        serving = self.serving
        return self.served or ((serving,) if serving else ())

    def to_json(self) -> bytes:
        """The wire form: the manifest's fields with the announcement's own fields added."""
        return orjson.dumps({
            **self.manifest, "model": self.model, "path": self.path, "version": self.version,
            "action": self.action, "promoted": self.promoted, "verdict": dict(self.verdict),
            "served": [{"version": s.version, "path": s.path} for s in self.served]})

    @classmethod
    def from_json(cls, raw: bytes) -> ModelUpdate:
        """Parse an announcement; raises ``ValueError`` for anything unreadable."""
        try:
            doc = orjson.loads(raw)
            action = str(doc.get("action", "publish"))
            if action not in ACTIONS:
                raise ValueError(f"action {action!r}")
            served = tuple(ServedVersion(int(s["version"]), str(s["path"]))
                           for s in doc.get("served") or ())
            return cls(version=int(doc["version"]), path=str(doc["path"]),
                       model=str(doc.get("model", MODEL_NAME)), manifest=doc, action=action,
                       promoted=bool(doc.get("promoted", True)),
                       verdict=dict(doc.get("verdict") or {}), served=served)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"unreadable model update: {exc}") from None
