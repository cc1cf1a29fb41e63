"""Reading and writing ``model-updates``, the source of truth for which checkpoint is served.

The trainer (rank 0) reads the newest announcement before each publish, to judge the new
checkpoint against the served model and to keep the served version and the rollback target on
disk; ``streamrec model list | promote | rollback`` read it and publish operator announcements.
Records are :class:`~streaming.contract.updates.ModelUpdate`; each carries the whole serving
state (``served``), so the newest one alone says what is served after compaction.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson

from models.checkpoint import Manifest, list_versions, load_checkpoint, read_manifest, version_dir
from models.spec import spec_for
from streaming.contract.updates import ModelUpdate, ServedVersion
from streaming.errors import BrokerError, CheckpointError
from streaming.io.kafka import client_config
from streaming.io.producer import RecordProducer
from streaming.settings import Settings

log = logging.getLogger(__name__)

# librdkafka requires a group id; the reader assigns its partition and never commits, so the
# group holds nothing. (Scorers use GROUP_SCORER_MODELS the same way.)
READER_GROUP = "streamrec-model-updates-reader"


class AnnouncementLog:
    """A reader of the ``model-updates`` partition that remembers the newest valid record."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topics.model_updates
        self._consumer = confluent_kafka.Consumer(client_config(settings.kafka, **{
            "group.id": READER_GROUP,
            "enable.auto.commit": False, "enable.partition.eof": True}))
        self._consumer.assign([confluent_kafka.TopicPartition(
            self.topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        self.latest: ModelUpdate | None = None

    def refresh(self, timeout_s: float = 10.0) -> ModelUpdate | None:
        """Read up to the partition's end (at most ``timeout_s``); the newest valid record.
        Raises :class:`BrokerError` if the end cannot be reached in time."""
        try:
            _, high = self._consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(self.topic, 0), timeout=timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"reading {self.topic}: {exc}") from None
        deadline = time.monotonic() + timeout_s
        position = self._position()
        while position < high:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerError(f"reading {self.topic}: at offset {position} of {high} after "
                                  f"{timeout_s} s")
            for msg in self._consumer.consume(500, min(left, 0.5)):
                if msg.error():
                    if msg.error().code() != confluent_kafka.KafkaError._PARTITION_EOF:
                        raise BrokerError(f"reading {self.topic}: {msg.error().str()}")
                    continue
                try:
                    self.latest = ModelUpdate.from_json(msg.value())
                except ValueError as exc:
                    log.error("model announcement at offset %d: %s", msg.offset(), exc)
            position = self._position()
        return self.latest

    def _position(self) -> int:
        pos = self._consumer.position([confluent_kafka.TopicPartition(self.topic, 0)])[0].offset
        return max(pos, 0)  # OFFSET_BEGINNING / invalid before the first message

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


def read_latest(settings: Settings, timeout_s: float = 10.0) -> ModelUpdate | None:
    """The newest valid announcement on ``model-updates`` (None: there is none)."""
    reader = AnnouncementLog(settings)
    try:
        return reader.refresh(timeout_s)
    finally:
        reader.close()


def with_served(history: tuple[ServedVersion, ...], new: ServedVersion,
                keep: int) -> tuple[ServedVersion, ...]:
    """``history`` with ``new`` served last, the oldest entries beyond ``keep`` dropped."""
    return (*history, new)[-max(keep, 2):]


def protected(update: ModelUpdate | None) -> set[int]:
    """Versions retention must keep: the served one and the rollback target."""
    return {s.version for s in update.history[-2:]} if update is not None else set()


def announcement(manifest: Manifest, path: str, *, action: str, promoted: bool,
                 verdict: dict[str, Any], served: tuple[ServedVersion, ...]) -> ModelUpdate:
    """A :class:`ModelUpdate` about the checkpoint ``manifest`` at ``path``."""
    return ModelUpdate(version=manifest.version, path=path,
                       manifest=orjson.loads(manifest.to_json()), action=action,
                       promoted=promoted, verdict=verdict, served=served)


def send(settings: Settings, update: ModelUpdate, producer: RecordProducer | None = None,
         timeout_s: float = 30.0) -> None:
    """Produce ``update`` on ``model-updates`` and wait until the broker has it (a new producer
    unless one is given). Raises :class:`~streaming.errors.DeliveryError` (a BrokerError) if it
    is not delivered within ``timeout_s``."""
    producer = producer or RecordProducer(settings, topic=settings.topics.model_updates)
    producer.send_raw(update.key, update.to_json(), topic=settings.topics.model_updates)
    producer.flush(timeout_s)


def _served_checkpoint(settings: Settings, version: int) -> tuple[Manifest, Path]:
    """The manifest and directory of ``version``, verified as a scorer would load it (model
    weights and feature spec). Raises :class:`CheckpointError` / :class:`CorruptCheckpoint`."""
    path = version_dir(Path(settings.trainer.checkpoint_dir), version).resolve()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint v{version} is not in {path.parent} (removed by "
                              "retention, or another trainer.checkpoint_dir)")
    manifest, _ = load_checkpoint(path, spec_for(**settings.model.spec_args()).digest())
    return manifest, path


def promote(settings: Settings, version: int) -> tuple[ModelUpdate | None, ModelUpdate | None]:
    """Announce that scorers serve ``version`` (an operator's decision, whatever its verdict).
    Returns ``(the announcement, the one it supersedes)``; nothing is sent (None) if
    ``version`` is served already."""
    current = read_latest(settings)
    serving = current.serving if current is not None else None
    if serving is not None and serving.version == version:
        return None, current
    manifest, path = _served_checkpoint(settings, version)
    history = with_served(current.history if current else (), ServedVersion(version, str(path)),
                          settings.trainer.keep_checkpoints)
    update = announcement(manifest, str(path), action="promote", promoted=True,
                          verdict=manifest.promotion, served=history)
    send(settings, update)
    return update, current


def rollback(settings: Settings) -> tuple[ModelUpdate, ModelUpdate]:
    """Announce that scorers serve the version served before the current one. Returns
    ``(the announcement, the one it supersedes)``; raises :class:`CheckpointError` if there is
    nothing to roll back to or its checkpoint is gone."""
    current = read_latest(settings)
    history = current.history if current is not None else ()
    if current is None or len(history) < 2:
        served = f"only v{history[-1].version} has been served" if history else "nothing is served"
        raise CheckpointError(f"nothing to roll back to: {served}")
    target = history[-2]
    manifest, path = _served_checkpoint(settings, target.version)
    update = announcement(manifest, str(path), action="rollback", promoted=True,
                          verdict=manifest.promotion, served=history[:-1])
    send(settings, update)
    return update, current


def model_table(settings: Settings) -> list[dict[str, Any]]:
    """One row per checkpoint on disk (and per served version no longer on disk), newest first:
    version, ``kind`` (``full``, or ``delta of vN``), created_at_ms, step, examples_seen,
    prequential AUC, the promotion verdict, and
    ``status``: ``served``, ``rollback target``, ``held back``, ``promoted before`` or
    ``not judged`` (written before promotion existed)."""
    current = read_latest(settings)
    history = current.history if current is not None else ()
    served = history[-1].version if history else None
    target = history[-2].version if len(history) > 1 else None
    root = Path(settings.trainer.checkpoint_dir)
    rows: dict[int, dict[str, Any]] = {}
    for version in list_versions(root):
        try:
            m = read_manifest(version_dir(root, version))
        except CheckpointError as exc:
            rows[version] = {"version": version, "error": str(exc)}
            continue
        rows[version] = {"version": version,
                         "kind": f"delta of v{m.delta_of}" if m.delta_of else "full",
                         "created_at_ms": m.created_at_ms, "step": m.step,
                         "examples_seen": m.examples_seen,
                         "prequential_auc": m.metrics.get("prequential_auc"),
                         "verdict": m.promotion, "on_disk": True}
    for s in history:
        rows.setdefault(s.version, {"version": s.version, "verdict": {}, "on_disk": False})
    for version, row in rows.items():
        verdict = row.get("verdict") or {}
        row["status"] = ("served" if version == served else "rollback target" if version == target
                         else "held back" if verdict.get("promoted") is False
                         else "promoted before" if verdict else "not judged")
    return [rows[v] for v in sorted(rows, reverse=True)]
