"""Exact resume: 2 ranks trained to step M with a ``kill -9`` on the way end with the same
parameters and optimizer state, bit for bit, as 2 ranks trained to M without interruption.

Both runs read the same examples from a real topic (one partition per rank, so each rank's
batches are the same examples in the same order), start from the same seeded weights and
checkpoint every ``N`` steps. The uninterrupted run publishes full checkpoints only; the
interrupted one publishes deltas between full snapshots (``trainer.full_every``), so the test
also shows that a delta chain rebuilds the exact state. Both map user and item ids to rows of
their own (``model.id_maps``): the maps travel through the checkpoint, and a resumed trainer
must admit and reset rows exactly as the uninterrupted one did. It is killed (launcher and ranks,
SIGKILL) after its first delta and restarted with ``--max-steps M``: it resumes from the delta.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.examples_gen import produce_examples
from models.checkpoint import (
    ID_MAPS_FILE,
    OPTIMIZER_DELTA_FILE,
    list_versions,
    load_checkpoint,
    load_optimizer_state,
    read_blob,
    unpack_id_maps,
    version_dir,
)
from models.id_map import IdMap
from streaming.settings import Settings
from tests.conftest import make_stack
from tests.distributed.test_trainer import finish, kill_tree, start_trainer

pytestmark = [pytest.mark.distributed, pytest.mark.integration]

EVERY_N = 4
FINAL_M = 14


def stack_for(services: Settings, tmp_path: Path) -> Settings:
    """Fresh topics with 2 examples partitions (one per rank), the same examples in each run."""
    settings = make_stack(services.with_values({"topics.examples_partitions": "2"}), tmp_path)
    settings = settings.with_values({
        "trainer.batch_size": "256", "trainer.publish_interval_s": "3600",
        "trainer.publish_every_steps": str(EVERY_N), "trainer.keep_checkpoints": "20",
        # Long enough that every batch is full: batch composition must not depend on timing.
        "trainer.batch_max_wait_ms": "20000", "trainer.seed": "7",
        "model.id_maps": "t_user,t_item"})
    produce_examples(settings, 6000, seed=3)
    return settings


def final_state(settings: Settings) -> tuple[int, dict[str, torch.Tensor],
                                             dict[str, torch.Tensor], dict[str, IdMap]]:
    root = Path(settings.trainer.checkpoint_dir)
    path = version_dir(root, list_versions(root)[-1])
    manifest, model = load_checkpoint(path)
    optimizer = load_optimizer_state(path, manifest)
    assert optimizer is not None
    raw = read_blob(path, manifest, ID_MAPS_FILE)
    assert raw is not None
    return manifest.step, model, optimizer, unpack_id_maps(raw)


def same_maps(a: dict[str, IdMap], b: dict[str, IdMap]) -> bool:
    return set(a) == set(b) and all(
        all(np.array_equal(x, y) for x, y in zip(a[t].state().values(), b[t].state().values(),
                                                  strict=True)) for t in a)


def differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    assert set(a) == set(b)
    return {k: float((a[k].double() - b[k].double()).abs().max()) for k in a
            if not torch.equal(a[k], b[k])}


def test_resume_after_kill_is_bitwise_exact(services: Settings, tmp_path: Path) -> None:
    straight = stack_for(services, tmp_path / "straight")
    finish(start_trainer(straight, "--max-steps", str(FINAL_M)))
    step, model, optimizer, maps = final_state(straight)
    assert step == FINAL_M
    assert len(maps["t_user"]) > 1000 and len(maps["t_item"]) > 1000  # every id its own row
    assert any(k.endswith("momentum1") and float(v.abs().sum()) > 0 for k, v in optimizer.items())

    crashed = stack_for(services, tmp_path / "crashed").with_values({"trainer.full_every": "3"})
    root = Path(crashed.trainer.checkpoint_dir)
    proc = start_trainer(crashed)  # no step limit: it is killed
    deadline = time.monotonic() + 180
    while len(list_versions(root)) < 2:  # v1 full, v2 a delta of it
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.05)
    kill_tree(proc.pid)
    proc.communicate(timeout=30)
    resumed_from = load_checkpoint(version_dir(root, list_versions(root)[-1]))[0]
    assert resumed_from.delta_of == resumed_from.version - 1
    assert OPTIMIZER_DELTA_FILE in resumed_from.files
    assert resumed_from.step < FINAL_M, "killed too late to test a resume"

    out = finish(start_trainer(crashed, "--max-steps", str(FINAL_M)))
    assert f"resumed from checkpoint v{resumed_from.version}" in out
    step2, model2, optimizer2, maps2 = final_state(crashed)
    assert step2 == FINAL_M
    assert same_maps(maps, maps2)
    assert differences(model, model2) == {}
    assert differences(optimizer, optimizer2) == {}
