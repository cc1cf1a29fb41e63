"""Delta publishing without a trainer: the rows a batch marks, and a scorer applying deltas to
the model it serves (the trainer's side runs in tests/distributed/test_exact_resume.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchrec import KeyedJaggedTensor

from models.checkpoint import Manifest, load_checkpoint, version_dir, write_checkpoint
from models.dlrm import StreamRecModel
from models.spec import DEFAULT_SPEC
from streaming.serving.ranker import ModelHolder
from trainer.deltas import Published, TouchedRows, table_features

ITEM = "dlrm.sparse_arch.embedding_bag_collection.embedding_bags.t_item.weight"


def test_touched_rows_follow_the_tables_features() -> None:
    assert table_features(DEFAULT_SPEC)["t_item"] == (("item_id", "recent_items"), 100_003)
    touched = TouchedRows(DEFAULT_SPEC)
    touched.observe(KeyedJaggedTensor.from_lengths_sync(
        keys=["user_id", "item_id", "recent_items", "category"],
        values=torch.tensor([7, 9, 3, 4, 5, 8, 8, 2, 6]),
        lengths=torch.tensor([1, 1, 1, 1, 2, 1, 1, 1])))  # B = 2
    rows = touched.reduce()
    assert rows["t_user"].tolist() == [7, 9]
    assert rows["t_item"].tolist() == [3, 4, 5, 8]  # item_id and recent_items share the table
    assert rows["t_category"].tolist() == [2, 6]
    touched.clear()
    assert all(len(r) == 0 for r in touched.reduce().values())


def manifest(v: int, delta_of: int = 0) -> Manifest:
    return Manifest(version=v, created_at_ms=1, step=v, examples_seen=v, offsets={}, metrics={},
                    spec_digest=DEFAULT_SPEC.digest(), delta_of=delta_of)


def test_a_scorer_applies_deltas_to_the_model_it_serves(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = StreamRecModel(DEFAULT_SPEC).state_dict()
    write_checkpoint(tmp_path, base, manifest(1), keep=10)
    published = Published({k: v.clone() for k, v in base.items()}, None)
    dense = {k: v for k, v in base.items() if "embedding_bags" not in k}
    for v in (2, 3):
        delta = {ITEM: torch.full((2, 16), float(v)),
                 ITEM + "@rows": torch.tensor([v, 100_000]),
                 **{k: t + v for k, t in dense.items()}}
        published.apply(delta, None)
        write_checkpoint(tmp_path, delta, manifest(v, v - 1), keep=10)

    holder = ModelHolder(DEFAULT_SPEC)
    assert holder.load(version_dir(tmp_path, 1), 1)
    served_v1 = holder.current
    (version_dir(tmp_path, 1) / "model.pt").unlink()  # the served copy is all a delta needs
    assert holder.load(version_dir(tmp_path, 3), 3), holder.last_error
    assert holder.current is not None and holder.current.version == 3
    got = holder.current.model.state_dict()
    assert all(torch.equal(got[k], published.model[k]) for k in got)
    assert served_v1 is not None and torch.equal(served_v1.model.state_dict()[ITEM], base[ITEM])

    fresh = ModelHolder(DEFAULT_SPEC)  # nothing served: the chain is needed, and v1 is damaged
    assert not fresh.load(version_dir(tmp_path, 3), 3)
    assert "model.pt missing" in fresh.last_error


def test_a_delta_chain_loads_whole_like_a_full_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = StreamRecModel(DEFAULT_SPEC).state_dict()
    write_checkpoint(tmp_path, base, manifest(1), keep=10)
    delta = {ITEM: torch.ones(1, 16), ITEM + "@rows": torch.tensor([42])}
    write_checkpoint(tmp_path, delta, manifest(2, 1), keep=10)
    holder = ModelHolder(DEFAULT_SPEC)
    assert holder.load(version_dir(tmp_path, 2), 2), holder.last_error
    _, state = load_checkpoint(version_dir(tmp_path, 2))
    assert holder.current is not None
    assert torch.equal(holder.current.model.state_dict()[ITEM], state[ITEM])
    assert state[ITEM][42].tolist() == [1.0] * 16
