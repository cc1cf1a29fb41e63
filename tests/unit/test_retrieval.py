"""Retrieval: the trainer's item catalogue, the published vectors, the scorer's index, and that
the publish path embeds an item exactly as training does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.batch import BatchBuilder
from models.checkpoint import pack_item_vectors, unpack_item_vectors
from models.spec import DEFAULT_SPEC, TableSpec
from models.two_tower import TowerSpec, TwoTower, tower_columns
from streaming.errors import CorruptCheckpoint
from streaming.serving.retrieval import Retrieval, RetrievalIndex, user_rows
from trainer.catalogue import ItemCatalogue

SPEC = dataclasses.replace(DEFAULT_SPEC, retrieval_dim=8, tables=(
    TableSpec("t_user", 101, ("user_id",)), TableSpec("t_item", 1_009, ("item_id", "recent_items")),
    TableSpec("t_category", 11, ("category",))))
SMALL = TowerSpec(embedding_dim=8, output_dim=8, hidden=(16,))


def _examples(pairs: list[tuple[str, str, str | None]], scale: float = 0.1) -> list[dict]:
    d = len(SPEC.dense)
    return [{"example_id": f"e{n}", "user_id": u, "item_id": i, "category": c,
             "recent_items": ["x", "y"][: n % 3], "dense": [scale * ((n * 7 + k) % 11)
                                                           for k in range(d)],
             "dense_schema": SPEC.dense_schema(), "labels": {"click": 1, "purchase": 0}}
            for n, (u, i, c) in enumerate(pairs)]


def _tower() -> TwoTower:
    torch.manual_seed(0)
    tower = TwoTower(SPEC, SMALL)
    tower.train()  # move the dense normalisation's running statistics off their start
    for _ in range(3):
        batch = BatchBuilder(SPEC).build(_examples([("u", f"i{k}", "c") for k in range(8)], 1.0))
        tower(batch.dense, batch.sparse)
    return tower.eval()


def test_the_publish_path_embeds_an_item_exactly_as_training_does() -> None:
    tower = _tower()
    examples = _examples([("u1", "a", "shoes"), ("u2", "b", None), ("u3", "a", "hats")])
    batch = BatchBuilder(SPEC).build(examples)
    catalogue = ItemCatalogue(SPEC.dense, capacity=10)
    catalogue.observe([ex["item_id"] for ex in examples], batch)
    ids, vectors = catalogue.vectors(tower)
    assert ids == ["a", "b"]  # one entry per item, the newest example's inputs
    trained = tower.items(batch.dense, batch.sparse).detach().numpy()
    np.testing.assert_allclose(vectors[0], trained[2], rtol=0, atol=1e-6)  # a: 3rd example
    np.testing.assert_allclose(vectors[1], trained[1], rtol=0, atol=1e-6)  # b: no category


def test_the_scorer_query_embeds_a_user_exactly_as_training_does() -> None:
    tower = _tower()
    examples = _examples([("u1", "a", "shoes"), ("u1", "b", None), ("u2", "c", None)])
    batch = BatchBuilder(SPEC).build(examples)
    trained_users = tower.users(batch.dense, batch.sparse).detach().numpy()
    trained_items = tower.items(batch.dense, batch.sparse).detach().numpy()
    index = RetrievalIndex(["a", "b", "c"], trained_items)
    # The scorer's row: the user's dense vector (any item's row: only user_* columns matter).
    rows = [user_rows(ex["user_id"], np.asarray(ex["dense"]), ex["recent_items"])
            for ex in examples]
    found = Retrieval(tower, index).query(BatchBuilder(SPEC), rows, k=3)
    for j, hits in enumerate(found):
        expect = trained_items @ trained_users[j]
        assert [i for i, _ in hits] == [["a", "b", "c"][k] for k in np.argsort(-expect)]
        np.testing.assert_allclose([s for _, s in hits], np.sort(expect)[::-1], atol=1e-5)


def test_the_catalogue_is_bounded_and_keeps_the_items_seen_last() -> None:
    catalogue = ItemCatalogue(SPEC.dense, capacity=4)
    for k in range(6):
        examples = _examples([("u", f"i{k}", None)])
        catalogue.observe([f"i{k}"], BatchBuilder(SPEC).build(examples))
    assert len(catalogue) <= 4
    held = catalogue.rows().ids
    assert "i5" in held and "i4" in held and "i0" not in held


def test_other_ranks_items_and_a_resume_rebuild_the_same_catalogue() -> None:
    examples = _examples([("u1", "a", "shoes"), ("u2", "b", None)])
    batch = BatchBuilder(SPEC).build(examples)
    rank1 = ItemCatalogue(SPEC.dense, 10)
    rank1.observe(["a", "b"], batch)
    rank0 = ItemCatalogue(SPEC.dense, 10)
    rank0.merge(rank1.take_new())
    assert rank1.take_new().ids == []  # handed over once
    held = rank0.rows()
    assert held.ids == ["a", "b"]
    raw = pack_item_vectors(held.ids, np.zeros((2, 8), np.float32), ItemCatalogue.inputs(held))
    ids, vectors, inputs = unpack_item_vectors(raw, ("item_rows", "category_rows", "dense"))
    resumed = ItemCatalogue(SPEC.dense, 10)
    resumed.restore(ids, inputs)
    again = resumed.rows()
    assert again.ids == held.ids and vectors.shape == (2, 8)
    assert np.array_equal(again.item_rows, held.item_rows)
    assert np.array_equal(again.category_rows, held.category_rows)  # -1: no category
    assert np.array_equal(again.dense, held.dense)
    assert again.dense.shape[1] == len(tower_columns(SPEC.dense)[1])


def test_damaged_vectors_are_a_corrupt_checkpoint() -> None:
    with pytest.raises(CorruptCheckpoint):
        unpack_item_vectors(b"not an npz")
    raw = pack_item_vectors(["a", "b"], np.zeros((2, 4), np.float32))
    with pytest.raises(CorruptCheckpoint):
        unpack_item_vectors(raw, ("dense",))  # asked for inputs it does not hold


def test_exact_and_ivf_indexes_find_the_nearest_items() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(5000, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"i{k}" for k in range(len(vecs))]
    queries = vecs[:20] + 0.01 * rng.normal(size=(20, 16)).astype(np.float32)
    exact = RetrievalIndex(ids, vecs)
    assert exact.kind == "exact"
    hits = exact.search(queries, 10)
    assert [h[0][0] for h in hits] == ids[:20]  # each query's own item first
    scores = [s for _, s in hits[0]]
    assert scores == sorted(scores, reverse=True)
    ivf = RetrievalIndex(ids, vecs, exact_max_items=1000, nprobe=32)
    assert ivf.kind.startswith("ivf")
    approx = ivf.search(queries, 10)
    overlap = np.mean([len({i for i, _ in a} & {i for i, _ in b}) / 10
                       for a, b in zip(hits, approx, strict=True)])
    assert overlap >= 0.85  # 70 lists, 32 searched, on random (hard) vectors
    assert RetrievalIndex(ids[:3], vecs[:3]).search(queries[:2], 10)[0].__len__() == 3
