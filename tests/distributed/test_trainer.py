"""The continuous trainer on 2 gloo ranks, reading a real topic: publish, and kill -9 + resume."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import confluent_kafka
import orjson
import pytest

from benchmarks.examples_gen import example_record, produce_examples
from models.checkpoint import (
    RETRIEVAL_FILE,
    list_versions,
    read_blob,
    read_manifest,
    unpack_item_vectors,
    version_dir,
)
from streaming.contract.examples import decode_example
from streaming.io.kafka import client_config
from streaming.settings import Settings
from tests.integration.helpers import consume_all
from trainer.promotion import held_out

pytestmark = [pytest.mark.distributed, pytest.mark.integration]


def start_trainer(settings: Settings, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "deploy.cli", "train", "--nproc", "2", *args],
                            env=settings.child_env(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen[str], timeout_s: float = 180) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, _ = proc.communicate()
        raise AssertionError("trainer did not finish:\n" + out[-3000:]) from None
    assert proc.returncode == 0, out[-3000:]
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun's ranks are not in its group)."""
    pids, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                kids = []
            pids.extend(kids)
            frontier.extend(kids)
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def offsets_total(manifest_offsets: dict[str, int]) -> int:
    return sum(manifest_offsets.values())


@pytest.fixture
def train_settings(stack: Settings) -> Settings:
    return stack.with_values({
        "trainer.batch_size": "256", "trainer.batch_max_wait_ms": "200",
        "trainer.publish_interval_s": "3600", "trainer.keep_checkpoints": "10",
    })


def test_two_ranks_train_from_a_topic_and_publish(train_settings: Settings) -> None:
    # With the retriever: its tables are sharded too, and rank 0 publishes both ranks' items.
    settings = train_settings.with_values({"trainer.publish_every_steps": "5",
                                           "model.retrieval_dim": "8"})
    produce_examples(settings, 6000)
    out = finish(start_trainer(settings, "--max-steps", "20"))
    summary = orjson.loads([ln for ln in out.splitlines() if ln.startswith('{"rank"')][-1])
    assert summary["ranks"] == 2 and summary["steps"] == 20
    # Where the 15 steps after the 5 warm-up steps spent their time, per phase of the loop.
    phases = summary["phase_ms_per_step"]
    assert {"input", "build", "step", "agree"} <= set(phases) and phases["step"] > 0
    root = Path(settings.trainer.checkpoint_dir)
    versions = list_versions(root)
    assert versions[-1] >= 4
    m = read_manifest(version_dir(root, versions[-1]))
    # examples_seen counts the examples consumed: trained, or held out for the promotion check
    # (trainer.holdout_share, 2%); a step trains 128 per rank (a full batch of examples to
    # train while every rank holds one).
    trained = m.examples_seen - m.examples_held_out
    assert m.step == 20 and 0.9 * 20 * 256 < trained <= 20 * 256
    assert 0 < m.examples_held_out < 0.05 * m.examples_seen
    # Offsets are exactly the examples consumed: nothing skipped, nothing counted twice.
    assert offsets_total(m.offsets) == m.examples_seen
    assert set(m.offsets) == {f"{settings.topics.examples}:{p}" for p in range(4)}
    assert m.metrics["prequential_auc"] > 0.6
    updates = consume_all(settings, settings.topics.model_updates, len(versions))
    announced = [orjson.loads(u.value()) for u in updates]
    assert [a["version"] for a in announced] == versions
    assert all(u.key() == b"default" for u in updates)
    assert announced[-1]["path"] == str(version_dir(root, versions[-1]).resolve())
    # The published catalogue: every item trained on, by either rank, and nothing else.
    trained_items = {ex["item_id"] for msg in consume_all(settings, settings.topics.examples, 6000)
                     if msg.offset() < m.offsets[f"{msg.topic()}:{msg.partition()}"]
                     and not held_out((ex := decode_example(msg.value()))["example_id"],
                                      settings.trainer.holdout_share)}
    path = version_dir(root, versions[-1])
    ids, vectors, _ = unpack_item_vectors(read_blob(path, m, RETRIEVAL_FILE) or b"")
    assert set(ids) == trained_items and vectors.shape == (len(ids), 8)


def test_killed_trainer_resumes_from_its_checkpoint(train_settings: Settings) -> None:
    settings = train_settings.with_values({"trainer.publish_every_steps": "3"})
    produce_examples(settings, 8000, seed=1)
    root = Path(settings.trainer.checkpoint_dir)
    proc = start_trainer(settings)
    deadline = time.monotonic() + 120
    while len(list_versions(root)) < 2:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoints"
        time.sleep(0.2)
    kill_tree(proc.pid)  # the launcher and both ranks, no shutdown hooks
    proc.communicate(timeout=30)
    before = read_manifest(version_dir(root, list_versions(root)[-1]))
    assert offsets_total(before.offsets) == before.examples_seen

    # Six more steps: two more publishes (every 3 steps), well within the 8,000 examples.
    finish(start_trainer(settings, "--max-steps", str(before.step + 6)))
    after = read_manifest(version_dir(root, list_versions(root)[-1]))
    assert after.version > before.version
    assert after.examples_seen > before.examples_seen
    # Resumed at the checkpoint's offsets: every example counted once, none skipped.
    assert offsets_total(after.offsets) == after.examples_seen <= 8000
    for key, off in before.offsets.items():
        assert after.offsets[key] >= off


def test_examples_on_one_ranks_partitions_only_are_all_trained(train_settings: Settings) -> None:
    """The tail of a stream may reach only some partitions: rank 1 (partitions 1 and 3) holds
    nothing while rank 0 holds every example. Rank 1 stands in for each step (with a row that
    learns nothing; it borrows one, having never polled any), so every example is trained and
    the offsets, hence the group's lag, reach the end."""
    settings = train_settings
    rng = random.Random(3)
    producer = confluent_kafka.Producer(client_config(settings.kafka))
    for k in range(300):
        key, value = example_record(rng, k)
        producer.produce(settings.topics.examples, value, key, partition=2 * (k % 2))
    assert producer.flush(30) == 0
    # A step trains at most 128 per rank: 300 examples (a few held out) take three.
    out = finish(start_trainer(settings, "--max-steps", "3"), timeout_s=150)
    summary = orjson.loads([ln for ln in out.splitlines() if ln.startswith('{"rank"')][-1])
    assert summary["steps"] == 3
    root = Path(settings.trainer.checkpoint_dir)
    m = read_manifest(version_dir(root, list_versions(root)[-1]))
    assert m.examples_seen == offsets_total(m.offsets) == 300
    assert {k: v for k, v in m.offsets.items() if v} == {
        f"{settings.topics.examples}:{p}": 150 for p in (0, 2)}
    assert 300 - m.examples_held_out > 256  # trained: more than two full steps' worth
