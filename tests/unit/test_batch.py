from __future__ import annotations

import numpy as np
import torch

from models.batch import BatchBuilder, ScoringRows, collision_rate, hash_ids
from models.dlrm import StreamRecModel
from models.spec import DEFAULT_SPEC, FeatureSpec, TableSpec


def example(n: int, recent: list[str], category: str | None = "c1") -> dict:
    return {"example_id": f"e{n}", "user_id": f"u{n}", "item_id": f"i{n}", "category": category,
            "recent_items": recent, "labels": {"click": n % 2, "purchase": 0},
            "dense_schema": DEFAULT_SPEC.dense_schema(),
            "dense": [float(k + n) for k in range(len(DEFAULT_SPEC.dense))]}


def test_hash_is_stable_in_range_and_ignores_padding() -> None:
    rows = hash_ids(["a", "abc", "a", "ü"], 1000)
    assert rows.dtype == np.int64 and ((rows >= 0) & (rows < 1000)).all()
    assert rows[0] == rows[2]
    # FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c; then murmur3's fmix64; independent of batch width.
    h, m = 0xAF63DC4C8601EC8C, (1 << 64) - 1
    for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h = ((h ^ (h >> 33)) * mult) & m
    h ^= h >> 33
    assert rows[0] == h % 1000
    assert hash_ids(["a"], 1000)[0] == rows[0]


def test_collision_rate_is_measured() -> None:
    assert collision_rate([f"u{i}" for i in range(100)], 10**9) == 0.0
    assert collision_rate(["a", "b", "c"], 1) == 1.0
    rate = collision_rate([f"u{i}" for i in range(5000)], 100_003)
    assert 0.02 < rate < 0.08  # ~ 1 - exp(-5000 / 100003)


def test_batch_layout_matches_the_spec() -> None:
    batch = BatchBuilder(DEFAULT_SPEC).build(
        [example(0, ["i7", "i8"]), example(1, [], None), example(2, ["i9"])])
    assert batch.dense.shape == (3, len(DEFAULT_SPEC.dense))
    assert batch.dense[1, 0].item() == 1.0 and batch.dense[2, 3].item() == 5.0
    kjt = batch.sparse
    assert kjt.keys() == list(DEFAULT_SPEC.sparse)
    per_key = kjt.to_dict()
    assert per_key["recent_items"].lengths().tolist() == [2, 0, 1]
    assert per_key["category"].lengths().tolist() == [1, 0, 1]
    item_rows = hash_ids(["i7", "i8", "i9"], DEFAULT_SPEC.table_of("item_id").num_embeddings)
    assert per_key["recent_items"].values().tolist() == item_rows.tolist()  # shared item table
    assert batch.labels.tolist() == [0.0, 1.0, 0.0]
    assert batch.example_ids == ["e0", "e1", "e2"]


def test_scoring_batch_of_several_users_equals_the_training_batch() -> None:
    """The scorer's layout (users x candidates, ids possibly pre-hashed by its item cache) is
    exactly what training builds from examples with the same ids and dense rows."""
    users = {"ua": (["i1", "i2", "i3"], ["c1", None, "c2"], ["r1", "r2"]),
             "ub": (["i2", "i4"], [None, "c1"], [])}
    examples, parts = [], []
    for user, (items, cats, recent) in users.items():
        dense = np.random.default_rng(len(items)).random((len(items), len(DEFAULT_SPEC.dense)))
        for k, item in enumerate(items):
            examples.append({"example_id": item, "user_id": user, "item_id": item,
                             "category": cats[k], "recent_items": recent,
                             "labels": {"click": 0, "purchase": 0},
                             "dense_schema": DEFAULT_SPEC.dense_schema(),
                             "dense": dense[k].tolist()})
        prehashed = user == "ub"
        cat_rows = np.array([hash_ids([c], DEFAULT_SPEC.table_of("category").num_embeddings)[0]
                             if c else -1 for c in cats])
        parts.append(ScoringRows(
            dense, user, items, cats, recent,
            item_rows=hash_ids(items, DEFAULT_SPEC.table_of("item_id").num_embeddings)
            if prehashed else None,
            category_rows=cat_rows if prehashed else None))
    builder = BatchBuilder(DEFAULT_SPEC)
    training, serving = builder.build(examples), builder.build_for_scoring(parts)
    assert torch.equal(training.dense, serving.dense)
    t, s = training.sparse.to_dict(), serving.sparse.to_dict()
    for key in DEFAULT_SPEC.sparse:
        assert torch.equal(t[key].values(), s[key].values()), key
        assert torch.equal(t[key].lengths(), s[key].lengths()), key
    assert serving.example_ids == ["i1", "i2", "i3", "i2", "i4"]


def test_model_scores_a_built_batch() -> None:
    spec = FeatureSpec(tables=(TableSpec("t_user", 101, ("user_id",)),
                               TableSpec("t_item", 101, ("item_id", "recent_items")),
                               TableSpec("t_category", 11, ("category",))))
    model = StreamRecModel(spec)
    model.eval()
    batch = BatchBuilder(spec).build([example(n, ["i1"]) for n in range(4)])
    with torch.no_grad():
        logits = model(batch.dense, batch.sparse)
    assert logits.shape == (4,) and torch.isfinite(logits).all()


def test_schema_mismatch_is_refused() -> None:
    import pytest

    from streaming.errors import StreamrecError

    bad = {**example(0, []), "dense_schema": "deadbeef"}
    with pytest.raises(StreamrecError, match="dense schema"):
        BatchBuilder(DEFAULT_SPEC).build([bad])


def test_spec_digest_changes_with_meaning() -> None:
    other = FeatureSpec(embedding_dim=8, dense_arch=(64, 8))
    assert DEFAULT_SPEC.digest() == FeatureSpec().digest() != other.digest()


def test_group_softmax_loss_scores_each_positive_against_its_own_negatives() -> None:
    import math

    import torch

    from models.dlrm import group_softmax_loss

    # A cut group tail (9.0), then two groups: positive first, its negatives after it.
    logits = torch.tensor([9.0, 1.0, 2.0, 3.0, 0.5, 0.0, 1.0])
    labels = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    first = -math.log(math.exp(1) / (math.exp(1) + math.exp(2) + math.exp(3)))
    second = -math.log(math.exp(0.5) / (math.exp(0.5) + 1 + math.e))
    assert math.isclose(float(group_softmax_loss(logits, labels)), (first + second) / 2,
                        rel_tol=1e-6)
    assert float(group_softmax_loss(logits, torch.zeros(7))) == 0.0


def test_attention_spec_builds_positional_recent_items_alike_for_training_and_scoring() -> None:
    from models.dlrm import TargetAttentionArch
    from models.spec import spec_for

    spec = spec_for(sequence="attention", sequence_len=3)
    assert spec.sparse == ("user_id", "item_id", "recent_items", "recent_0", "recent_1",
                           "recent_2", "category")
    assert spec.digest() != spec_for().digest()
    builder = BatchBuilder(spec)
    examples = [{"example_id": f"x{k}", "user_id": "u1", "item_id": f"i{k}", "category": "c",
                 "labels": {"click": 1, "purchase": 0}, "dense_schema": spec.dense_schema(),
                 "dense": [0.0] * len(spec.dense), "recent_items": ["a", "b", "c", "d"][:k]}
                for k in range(5)]
    kjt = builder.build(examples).sparse.to_dict()
    assert kjt["recent_0"].lengths().tolist() == [0, 1, 1, 1, 1]
    assert kjt["recent_2"].lengths().tolist() == [0, 0, 0, 1, 1]  # the 4th item is not seen
    assert kjt["recent_1"].values().tolist() == builder.rows("recent_items", ["b"] * 3).tolist()
    for ex in examples:
        scoring = builder.build_for_scoring([ScoringRows(
            np.zeros((1, len(spec.dense)), np.float32), "u1", [ex["item_id"]], ["c"],
            ex["recent_items"])]).sparse.to_dict()
        training = builder.build([ex]).sparse.to_dict()
        for key in spec.sparse:
            assert torch.equal(training[key].values(), scoring[key].values()), key
            assert torch.equal(training[key].lengths(), scoring[key].lengths()), key

    arch = TargetAttentionArch(4)
    keys = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    assert arch(torch.randn(2, 4), keys, mask).shape == (2, 4)  # B x E
    changed = keys.clone()
    changed[0, 1:] = 100.0  # padded positions of row 0 do not count
    again = arch(torch.zeros(2, 4), changed, mask)
    assert torch.allclose(again[0], arch(torch.zeros(2, 4), keys, mask)[0])


def test_a_batch_of_one_trains_and_leaves_the_running_statistics_alone() -> None:
    """The trainer trains a stream's last lone example (it would otherwise hold back its offset):
    a one-row training batch is standardised with the running statistics, which it does not
    move, and still updates the weights; the state dict is BatchNorm's (checkpoints unchanged)."""
    from dataclasses import replace

    from models.dlrm import RankingTrain
    from models.norm import Standardise

    spec = replace(DEFAULT_SPEC, retrieval_dim=8)
    torch.manual_seed(0)
    train = RankingTrain(StreamRecModel(spec))
    train.train()
    norm = train.model.dense_norm.norm
    assert isinstance(norm, Standardise)
    assert set(norm.state_dict()) == set(torch.nn.BatchNorm1d(3, affine=False).state_dict())
    running = norm.running_mean.clone()
    before = [p.detach().clone() for p in train.parameters()]
    batch = BatchBuilder(spec).build([example(1, ["i1"])])
    optimizer = torch.optim.SGD(train.parameters(), lr=0.1)
    loss, logits = train(batch.dense, batch.sparse, batch.labels)
    loss.backward()
    optimizer.step()
    assert logits.shape == (1,) and torch.isfinite(loss)
    assert torch.equal(norm.running_mean, running)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, train.parameters(),
                                                               strict=True))
