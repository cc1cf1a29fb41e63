from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import (
    OPTIMIZER_FILE,
    Manifest,
    apply_delta,
    chain,
    latest_resumable,
    latest_valid,
    list_versions,
    load_checkpoint,
    load_optimizer_state,
    prune,
    version_dir,
    write_checkpoint,
)
from streaming.errors import CheckpointError, CorruptCheckpoint


def manifest(v: int) -> Manifest:
    return Manifest(version=v, created_at_ms=1, step=v * 10, examples_seen=v * 100,
                    offsets={"training-examples:0": v}, metrics={"prequential_auc": 0.7},
                    spec_digest="abc")


def test_write_load_roundtrip_and_keep_last_k(tmp_path: Path) -> None:
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    for v in range(1, 5):
        write_checkpoint(tmp_path, state, manifest(v), keep=2)
    assert list_versions(tmp_path) == [3, 4]
    loaded_manifest, loaded = load_checkpoint(version_dir(tmp_path, 4), "abc")
    assert loaded_manifest.step == 40 and loaded_manifest.files["model.pt"]
    assert torch.equal(loaded["w"], state["w"])
    assert not list(tmp_path.glob(".tmp-*"))


def test_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, {"w": torch.zeros(1)}, manifest(1), keep=3)
    with pytest.raises(CheckpointError, match="already exists"):
        write_checkpoint(tmp_path, {"w": torch.ones(1)}, manifest(1), keep=3)


def test_corruption_is_rejected_with_a_clear_error(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, {"w": torch.zeros(4)}, manifest(1), keep=3)
    data = bytearray((path / "model.pt").read_bytes())
    data[-20] ^= 0xFF
    (path / "model.pt").write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match="sha256"):
        load_checkpoint(path)
    (path / "model.pt").unlink()
    with pytest.raises(CorruptCheckpoint, match="missing"):
        load_checkpoint(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptCheckpoint, match="manifest"):
        load_checkpoint(path)


def test_spec_mismatch_is_rejected(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, {"w": torch.zeros(1)}, manifest(1), keep=3)
    with pytest.raises(CorruptCheckpoint, match="feature spec"):
        load_checkpoint(path, "other")


def test_latest_valid_skips_a_corrupt_newest_version(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, {"w": torch.zeros(1)}, manifest(1), keep=3)
    newest = write_checkpoint(tmp_path, {"w": torch.ones(1)}, manifest(2), keep=3)
    (newest / "model.pt").write_bytes(b"garbage")
    found = latest_valid(tmp_path, "abc")
    assert found is not None and found[0].version == 1


def test_pickled_code_is_not_executed(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    path = write_checkpoint(tmp_path, {"w": torch.zeros(1)}, manifest(1), keep=3)
    # A forged checkpoint whose sha256 matches its (malicious) content.
    (path / "model.pt").write_bytes(pickle.dumps(Evil()))
    import hashlib

    import orjson
    doc = orjson.loads((path / "manifest.json").read_bytes())
    doc["files"]["model.pt"] = hashlib.sha256((path / "model.pt").read_bytes()).hexdigest()
    (path / "manifest.json").write_bytes(orjson.dumps(doc))
    with pytest.raises(CorruptCheckpoint, match="does not load"):
        load_checkpoint(path)


def test_manifest_records_the_kafka_identity_and_old_manifests_still_load(tmp_path: Path) -> None:
    import dataclasses

    import orjson

    m = dataclasses.replace(manifest(1), kafka_cluster_id="c1",
                            topic_ids={"training-examples": "t1"})
    write_checkpoint(tmp_path, {"w": torch.zeros(1)}, m, keep=3)
    loaded, _ = load_checkpoint(version_dir(tmp_path, 1), "abc")
    assert (loaded.kafka_cluster_id, loaded.topic_ids) == ("c1", {"training-examples": "t1"})
    # A manifest written before the identity was recorded: defaults, no error.
    doc = orjson.loads(manifest(2).to_json())
    del doc["kafka_cluster_id"], doc["topic_ids"]
    old = Manifest.from_json(orjson.dumps(doc))
    assert (old.kafka_cluster_id, old.topic_ids, old.offsets) == ("", {}, {"training-examples:0": 2})


def test_optimizer_state_is_verified_for_resume_and_not_read_by_scorers(tmp_path: Path) -> None:
    opt = {"t.weight::t.momentum1": torch.arange(5.0)}
    write_checkpoint(tmp_path, {"w": torch.zeros(1)}, manifest(1), keep=3, optimizer_state=opt)
    newest = write_checkpoint(tmp_path, {"w": torch.ones(1)}, manifest(2), keep=3,
                              optimizer_state=opt)
    m, _ = load_checkpoint(newest, "abc")
    assert set(m.files) == {"model.pt", OPTIMIZER_FILE}
    loaded = load_optimizer_state(newest, m)
    assert loaded is not None and torch.equal(loaded["t.weight::t.momentum1"], opt["t.weight::t.momentum1"])
    found = latest_resumable(tmp_path, "abc")
    assert found is not None and found.manifest.version == 2 and found.optimizer is not None

    (newest / OPTIMIZER_FILE).write_bytes(b"garbage")
    # A scorer needs the weights only: a damaged optimizer file does not stop it.
    assert load_checkpoint(newest, "abc")[0].version == 2
    with pytest.raises(CorruptCheckpoint, match=r"optimizer\.pt sha256"):
        load_optimizer_state(newest, m)
    # A resume must be exact: the trainer falls back to the newest complete version.
    found = latest_resumable(tmp_path, "abc")
    assert found is not None and found.manifest.version == 1


def test_a_checkpoint_without_optimizer_state_still_resumes(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, {"w": torch.zeros(1)}, manifest(1), keep=3)
    found = latest_resumable(tmp_path, "abc")
    assert found is not None and found.optimizer is None and "w" in found.model


def delta_manifest(v: int, of: int) -> Manifest:
    return Manifest(
        version=v, created_at_ms=1, step=v * 10, examples_seen=v * 100,
        offsets={"training-examples:0": v}, metrics={}, spec_digest="abc", delta_of=of)


def rows_delta(key: str, rows: list[int], values: torch.Tensor) -> dict[str, torch.Tensor]:
    return {key: values, key + "@rows": torch.tensor(rows, dtype=torch.int64)}


def test_deltas_rebuild_the_full_state_through_their_chain(tmp_path: Path) -> None:
    table = torch.zeros(6, 2)
    write_checkpoint(tmp_path, {"t": table, "b": torch.zeros(1)}, manifest(1), keep=10,
                     optimizer_state={"t::m": torch.zeros(6)})
    expected = table.clone()
    for v, rows in ((2, [0, 4]), (3, [4, 5])):
        values = torch.full((len(rows), 2), float(v))
        expected[rows] = values
        write_checkpoint(tmp_path, {**rows_delta("t", rows, values), "b": torch.full((1,), v)},
                         delta_manifest(v, v - 1), keep=10,
                         optimizer_state=rows_delta("t::m", rows, torch.full((len(rows),), v)))
    path = version_dir(tmp_path, 3)
    assert sorted(p.name for p in path.iterdir()) == \
        ["manifest.json", "model-delta.pt", "optimizer-delta.pt"]
    assert [m.version for _, m in chain(path)] == [1, 2, 3]
    m, state = load_checkpoint(path, "abc")
    assert m.version == 3 and m.delta_of == 2
    assert torch.equal(state["t"], expected) and float(state["b"]) == 3
    opt = load_optimizer_state(path, m)
    assert opt is not None and opt["t::m"].tolist() == [2, 0, 0, 0, 3, 3]
    found = latest_resumable(tmp_path, "abc")
    assert found is not None and found.manifest.version == 3
    assert torch.equal(found.model["t"], expected)


def test_pruning_keeps_what_the_kept_deltas_need(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, {"t": torch.zeros(3, 1)}, manifest(1), keep=2)
    for v in (2, 3, 4):
        write_checkpoint(tmp_path, rows_delta("t", [v % 3], torch.ones(1, 1)),
                         delta_manifest(v, v - 1), keep=2)
    assert list_versions(tmp_path) == [1, 2, 3, 4]  # 3 and 4 kept: their chain starts at 1
    write_checkpoint(tmp_path, {"t": torch.ones(3, 1)}, manifest(5), keep=2)
    assert list_versions(tmp_path) == [1, 2, 3, 4, 5]  # 4 is still among the newest 2
    write_checkpoint(tmp_path, rows_delta("t", [0], torch.ones(1, 1)), delta_manifest(6, 5),
                     keep=2)
    assert list_versions(tmp_path) == [5, 6]
    write_checkpoint(tmp_path, {"t": torch.ones(3, 1)}, manifest(7), keep=1, protect=[6])
    assert list_versions(tmp_path) == [5, 6, 7]  # 6 protected (served): its base 5 stays too
    assert prune(tmp_path, keep=1) == [5, 6]
    assert list_versions(tmp_path) == [7]


def test_a_broken_chain_or_delta_is_rejected(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, {"t": torch.zeros(3, 2)}, manifest(1), keep=10)
    write_checkpoint(tmp_path, rows_delta("t", [5], torch.ones(1, 2)), delta_manifest(2, 1),
                     keep=10)
    with pytest.raises(CorruptCheckpoint, match="rows"):  # row 5 of a 3-row table
        load_checkpoint(version_dir(tmp_path, 2))
    write_checkpoint(tmp_path, {"other": torch.ones(1)}, delta_manifest(3, 1), keep=10)
    with pytest.raises(CorruptCheckpoint, match="does not have"):
        load_checkpoint(version_dir(tmp_path, 3))
    write_checkpoint(tmp_path, rows_delta("t", [0], torch.ones(1, 2)), delta_manifest(5, 4),
                     keep=10)
    with pytest.raises(CorruptCheckpoint, match="gone"):
        load_checkpoint(version_dir(tmp_path, 5))
    assert latest_valid(tmp_path).__getitem__(0).version == 1  # type: ignore[union-attr]


def test_apply_delta_changes_the_listed_rows_only() -> None:
    state = {"t": torch.zeros(4, 2), "d": torch.zeros(3)}
    apply_delta(state, {**rows_delta("t", [1, 3], torch.tensor([[1.0, 2], [3, 4]])),
                        "d": torch.ones(3)})
    assert state["t"].tolist() == [[0, 0], [1, 2], [0, 0], [3, 4]]
    assert state["d"].tolist() == [1, 1, 1]
    with pytest.raises(CorruptCheckpoint, match="shape"):
        apply_delta(state, {"d": torch.ones(2)})


def test_reading_manifests_does_not_import_torch() -> None:
    """`streamrec model list` and the promotion bookkeeping read manifests only; torch's import
    (4-8 s on a small machine) waits for the first tensor."""
    code = ("import sys, models.checkpoint, trainer.announcements\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torchrec')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout
