"""The managed-collision id map: its own row per id within capacity, LRU eviction, exact state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.batch import BatchBuilder, ScoringRows, collision_rate
from models.id_map import POLICIES, UNKNOWN_ROW, IdMap, id_keys
from models.spec import FeatureSpec, TableSpec
from streaming.settings import Settings


def keys(*ids: str) -> np.ndarray:
    return id_keys(list(ids))


def test_keys_are_stable_non_negative_and_distinct() -> None:
    ids = [f"u{i}" for i in range(100_000)]
    k = id_keys(ids)
    assert k.dtype == np.int64 and (k >= 0).all()
    assert len(np.unique(k)) == len(ids)
    assert (id_keys(ids[:10]) == k[:10]).all()


def test_ids_within_capacity_never_share_a_row() -> None:
    ids = [f"item-{i}" for i in range(20_000)]
    m = IdMap(20_001)
    for start in range(0, len(ids), 1_000):
        m.admit(id_keys(ids[start:start + 1_000]))
    rows = m.lookup(id_keys(ids))
    assert len(np.unique(rows)) == len(ids) and UNKNOWN_ROW not in rows
    assert m.evicted == 0
    assert collision_rate(ids, 20_001) > 0.2  # hashing into the same rows: the baseline


def test_least_recently_used_id_gives_up_its_row() -> None:
    m = IdMap(4, evict_share=0.01)  # rows 1..3
    for i in ("a", "b", "c", "a"):
        m.admit(keys(i))
    row_b = int(m.lookup(keys("b"))[0])
    given = m.admit(keys("d"))
    assert given.tolist() == [row_b]
    assert m.lookup(keys("b", "d")).tolist() == [UNKNOWN_ROW, row_b]
    assert m.lookup(keys("a", "c")).tolist() != [UNKNOWN_ROW, UNKNOWN_ROW]
    assert m.evicted == 1 and len(m) == 3


def test_more_new_ids_than_rows_leaves_the_rest_unknown() -> None:
    m = IdMap(4)
    m.admit(keys("x"))
    batch = keys("x", "p", "q", "r", "s")
    m.admit(batch)
    rows = m.lookup(batch)
    assert rows[0] == m.lookup(keys("x"))[0] != UNKNOWN_ROW  # used in this call: kept
    assert (rows != UNKNOWN_ROW).sum() == 3 and len(set(rows[rows != UNKNOWN_ROW])) == 3


def test_same_admissions_same_rows_and_state_round_trip() -> None:
    rng = np.random.default_rng(3)
    batches = [rng.integers(0, 2**62, 50) for _ in range(30)]
    batches = [np.concatenate([b, batches[max(0, i - 3)][:10]]) for i, b in enumerate(batches)]
    a, b = IdMap(300, evict_share=0.1), IdMap(300, evict_share=0.1)
    for batch in batches[:20]:
        assert (a.admit(batch) == b.admit(batch)).all()
    c = IdMap.from_state(a.state())
    for batch in batches[20:]:
        assert (a.admit(batch) == c.admit(batch)).all()
    probe = np.concatenate(batches)
    assert (a.lookup(probe) == c.lookup(probe)).all() and a.evicted == c.evicted > 0


def test_bad_sizes_and_state_are_refused() -> None:
    with pytest.raises(ValueError):
        IdMap(1)
    with pytest.raises(ValueError):
        IdMap(10, evict_share=0)
    state = IdMap(10).state()
    state["free"] = state["free"][:-1]
    with pytest.raises(ValueError, match="inconsistent"):
        IdMap.from_state(state)


def test_training_and_scoring_batches_use_the_same_mapped_rows() -> None:
    """With id maps for the user and item tables, the scorer's batch (maps restored from a
    checkpoint's state) has exactly the training batch's rows, and no row is shared."""
    spec = FeatureSpec(tables=(TableSpec("t_user", 50, ("user_id",)),
                               TableSpec("t_item", 50, ("item_id", "recent_items")),
                               TableSpec("t_category", 11, ("category",))))
    maps = {"t_user": IdMap(50), "t_item": IdMap(50)}
    trainer = BatchBuilder(spec, maps)
    items, cats, recent = ["i1", "i2", "i3"], ["c1", None, "c2"], ["r1", "r2"]
    dense = np.zeros((3, len(spec.dense)))
    examples = [{"example_id": i, "user_id": "ua", "item_id": i, "category": c,
                 "recent_items": recent, "labels": {"click": 0, "purchase": 0},
                 "dense_schema": spec.dense_schema(), "dense": dense[k].tolist()}
                for k, (i, c) in enumerate(zip(items, cats, strict=True))]
    for table, k in trainer.mapped_keys(examples).items():
        maps[table].admit(k)
    training = trainer.build(examples)
    scorer = BatchBuilder(spec, {t: IdMap.from_state(m.state()) for t, m in maps.items()})
    # a stale pre-hashed item cache must not leak into a mapped table
    serving = scorer.build_for_scoring([ScoringRows(dense, "ua", items, cats, recent,
                                                    item_rows=np.zeros(3, np.int64))])
    t, s = training.sparse.to_dict(), serving.sparse.to_dict()
    for key in spec.sparse:
        assert torch.equal(t[key].values(), s[key].values()), key
    item_rows = t["item_id"].values().tolist() + t["recent_items"].values()[:2].tolist()
    assert len(set(item_rows)) == 5 and UNKNOWN_ROW not in item_rows
    with pytest.raises(ValueError, match="rows"):
        BatchBuilder(spec, {"t_user": IdMap(10)})


def test_maps_travel_in_a_checkpoint_blob_and_are_part_of_the_spec() -> None:
    from models.checkpoint import pack_id_maps, unpack_id_maps
    from models.spec import DEFAULT_SPEC, spec_for
    from streaming.errors import ConfigError, CorruptCheckpoint
    from streaming.settings import Settings

    maps = {"t_user": IdMap(50), "t_item": IdMap(70)}
    maps["t_user"].admit(keys("u1", "u2"))
    maps["t_item"].admit(keys("i1"))
    back = unpack_id_maps(pack_id_maps(maps))
    assert set(back) == {"t_user", "t_item"} and back["t_item"].capacity == 70
    assert back["t_user"].lookup(keys("u2", "u9")).tolist() == \
        maps["t_user"].lookup(keys("u2", "u9")).tolist()
    with pytest.raises(CorruptCheckpoint):
        unpack_id_maps(b"not an npz")

    settings = Settings.load(overrides={"model.id_maps": "t_item, t_user"})
    spec = spec_for(**settings.model.spec_args())
    assert spec.mapped == ("t_item", "t_user") and spec.digest() != DEFAULT_SPEC.digest()
    with pytest.raises(ConfigError, match="unknown table"):
        Settings.load(overrides={"model.id_maps": "t_category"})
    both = Settings.load(overrides={"model.id_maps": "t_user", "model.retrieval_dim": "8"})
    assert spec_for(**both.model.spec_args()).mapped == ("t_user",)


def test_catalogue_rows_follow_the_item_map() -> None:
    from trainer.catalogue import CatalogueRows

    rows = CatalogueRows(["a", "b", "c"], np.array([5, 6, 7]), np.array([1, -1, 2]),
                         np.zeros((3, 2), np.float32))
    now = rows.remapped(np.array([9, UNKNOWN_ROW, 4]))  # b was evicted
    assert now.ids == ["a", "c"] and now.item_rows.tolist() == [9, 4]
    assert now.category_rows.tolist() == [1, 2] and now.dense.shape == (2, 2)


def test_lfu_keeps_an_id_that_comes_back_through_a_stream_of_one_off_ids() -> None:
    lru, lfu = IdMap(11, evict_share=0.1), IdMap(11, evict_share=0.1, policy="lfu")  # rows 1..10
    for m in (lru, lfu):
        for _ in range(5):
            m.admit(keys("heavy"))
        for n in range(30):  # 30 one-off ids, 1 per call; "heavy" is not used meanwhile
            m.admit(keys(f"once{n}"))
    assert lru.lookup(keys("heavy"))[0] == UNKNOWN_ROW
    assert lfu.lookup(keys("heavy"))[0] != UNKNOWN_ROW
    assert lfu.evicted == lru.evicted == 21 and len(lfu) == len(lru) == 10


def test_lfu_state_round_trips_and_an_lru_state_without_counts_still_loads() -> None:
    rng = np.random.default_rng(5)
    batches = [rng.integers(0, 400, 60) for _ in range(30)]
    a = IdMap(200, evict_share=0.1, policy="lfu")
    for batch in batches[:15]:
        a.admit(batch)
    c = IdMap.from_state(a.state())
    assert c.policy == "lfu"
    for batch in batches[15:]:
        assert (a.admit(batch) == c.admit(batch)).all()
    old = IdMap(10).state()
    del old["uses"], old["policy"]
    assert IdMap.from_state(old).policy == "lru"
    with pytest.raises(ValueError, match="policy"):
        IdMap(10, policy="fifo")


def test_every_policy_is_a_valid_setting() -> None:
    for policy in POLICIES:
        assert Settings.load(env={}, overrides={"model.id_map_policy": policy}
                             ).model.id_map_policy == policy
