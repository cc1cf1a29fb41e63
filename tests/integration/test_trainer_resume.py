"""A checkpoint's offsets are never applied to another instance of the examples topic: after the
topic is deleted and created again, the trainer keeps its model but reads the new topic from
the beginning, and says why."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient

from benchmarks.examples_gen import produce_examples
from models.checkpoint import list_versions, read_manifest, version_dir
from streaming.errors import BrokerError
from streaming.io.kafka import KafkaAdmin, client_config, topic_specs
from streaming.settings import Settings

pytestmark = pytest.mark.integration


def train(settings: Settings, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "deploy.cli", "train", *args],
                          env=settings.child_env(os.environ), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def recreate(settings: Settings, topic: str) -> None:
    """Delete ``topic`` and create it again under the same name (a new topic id, offsets from 0)."""
    admin = AdminClient(client_config(settings.kafka))
    admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=30)
    deadline = time.monotonic() + 60
    while True:  # the deletion completes asynchronously
        try:
            report = KafkaAdmin(settings).ensure_topics(
                [s for s in topic_specs(settings) if s.name == topic])
        except (BrokerError, confluent_kafka.KafkaException):
            report = None
        if report is not None and report.created == [topic]:
            return
        assert time.monotonic() < deadline, f"{topic} was not created again"
        time.sleep(0.5)


def test_offsets_of_a_recreated_topic_are_not_applied(stack: Settings, tmp_path: Path) -> None:
    settings = stack.with_values({
        "trainer.batch_size": "100", "trainer.batch_max_wait_ms": "200",
        "trainer.publish_interval_s": "3600", "trainer.publish_every_steps": "2",
        "trainer.holdout_share": "0"})  # every example trained: exact counts below
    topic, root = settings.topics.examples, Path(settings.trainer.checkpoint_dir)
    produce_examples(settings, 1000)
    train(settings, "--max-steps", "4")
    first = read_manifest(version_dir(root, list_versions(root)[-1]))
    old = KafkaAdmin(settings).identity([topic])
    assert first.kafka_cluster_id == old.cluster_id
    assert first.topic_ids == {topic: old.topic_ids[topic]}
    assert sum(first.offsets.values()) == first.examples_seen == 400

    recreate(settings, topic)
    new = KafkaAdmin(settings).identity([topic])
    assert new.cluster_id == old.cluster_id and new.topic_ids[topic] != old.topic_ids[topic]
    # More examples than the old offsets point to: seeking there would skip the first ones.
    produce_examples(settings, 1000, seed=2)
    out = train(settings, "--max-steps", str(first.step + 3))

    assert f"not seeking to the offsets of checkpoint v{first.version}" in out, out[-3000:]
    assert "another instance of topic" in out
    last = read_manifest(version_dir(root, list_versions(root)[-1]))
    assert last.topic_ids == {topic: new.topic_ids[topic]}
    trained_now = last.examples_seen - first.examples_seen
    assert trained_now == 300  # the model went on from the checkpoint ...
    assert sum(last.offsets.values()) == trained_now  # ... reading the new topic from offset 0


def test_a_changed_model_starts_fresh_after_the_versions_of_the_old_one(
        stack: Settings, tmp_path: Path) -> None:
    """A model setting that changes the spec (here the interaction) makes the old checkpoints
    unusable: the trainer says so, trains from scratch and numbers its versions after theirs,
    instead of failing on the first publish because v1 exists."""
    settings = stack.with_values({
        "trainer.batch_size": "100", "trainer.batch_max_wait_ms": "200",
        "trainer.publish_interval_s": "3600", "trainer.publish_every_steps": "2",
        "trainer.holdout_share": "0"})
    root = Path(settings.trainer.checkpoint_dir)
    produce_examples(settings, 1000)
    train(settings, "--max-steps", "4")
    old = list_versions(root)
    assert old and read_manifest(version_dir(root, old[-1])).spec_digest

    out = train(settings.with_values({"model.interaction": "dcn"}), "--max-steps", "2")
    assert "no checkpoint of this model" in out, out[-3000:]
    new = [v for v in list_versions(root) if v > old[-1]]
    assert new, out[-3000:]
    first_new = read_manifest(version_dir(root, new[0]))
    assert first_new.step == 2 and first_new.spec_digest != read_manifest(
        version_dir(root, old[-1])).spec_digest
