"""The two-tower retriever: shapes, tower inputs, the log-Q correction, and that it learns."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from models.batch import BatchBuilder
from models.spec import DEFAULT_SPEC, TableSpec
from models.two_tower import (
    InBatchSoftmax,
    ItemFrequency,
    TowerSpec,
    TwoTower,
    history_without_target,
    tower_columns,
)

# Small tables keep the unit test fast; the towers take their sizes from the spec.
SPEC = dataclasses.replace(DEFAULT_SPEC, tables=(
    TableSpec("t_user", 101, ("user_id",)), TableSpec("t_item", 1_009, ("item_id", "recent_items")),
    TableSpec("t_category", 11, ("category",))))
SMALL = TowerSpec(embedding_dim=8, output_dim=8, hidden=(16,), temperature=0.1)


def _examples(pairs: list[tuple[str, str]]) -> list[dict]:
    d = len(DEFAULT_SPEC.dense)
    return [{"example_id": f"e{n}", "user_id": u, "item_id": i, "category": f"c{hash(i) % 3}",
             "recent_items": [], "dense": [0.1 * (n % 7)] * d, "dense_schema":
             DEFAULT_SPEC.dense_schema(), "labels": {"click": 1, "purchase": 0}}
            for n, (u, i) in enumerate(pairs)]


def test_the_towers_take_only_their_side_and_return_unit_vectors() -> None:
    user_cols, item_cols = tower_columns(DEFAULT_SPEC.dense)
    names = DEFAULT_SPEC.dense
    assert user_cols and all(names[i].startswith("user_") for i in user_cols)
    assert "price" in [names[i] for i in item_cols]
    assert not any(names[i].startswith("ui_") for i in user_cols + item_cols)
    # The affinity to the row's item category is a pair feature: it would leak the target.
    assert not any("category" in names[i] for i in user_cols)
    batch = BatchBuilder(DEFAULT_SPEC).build(_examples([("u1", "a"), ("u2", "b"), ("u3", "c")]))
    model = TwoTower(DEFAULT_SPEC, SMALL)
    users, items = model(batch.dense, batch.sparse)
    assert users.shape == items.shape == (3, 8)
    assert torch.allclose(users.norm(dim=1), torch.ones(3), atol=1e-5)
    # A user's vector does not depend on the item of its row (indexable ahead of time).
    other = BatchBuilder(DEFAULT_SPEC).build(_examples([("u1", "z"), ("u2", "y"), ("u3", "x")]))
    model.eval()
    assert torch.allclose(model.users(batch.dense, batch.sparse),
                          model.users(other.dense, other.sparse))


def test_log_q_follows_the_positives_and_lowers_popular_items() -> None:
    freq = ItemFrequency(rows=10, half_life_batches=1e9)
    freq.update(torch.tensor([1, 1, 1, 2]))
    lq = freq.log_q(torch.tensor([1, 2, 3]))
    assert math.isclose(float(lq[0]), math.log(3 / 4), rel_tol=1e-5)
    assert math.isclose(float(lq[1]), math.log(1 / 4), rel_tol=1e-5)
    assert math.isclose(float(lq[2]), math.log(0.5 / 4), rel_tol=1e-5)  # unseen: half a sighting


def test_accidental_hits_are_masked_and_the_loss_is_finite() -> None:
    loss_fn = InBatchSoftmax(0.1, ItemFrequency(10))
    u = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    v = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    rows = torch.tensor([1, 1, 2, 3])  # rows 0 and 1 share an item
    loss = loss_fn(u, v, rows)
    assert torch.isfinite(loss)
    assert loss_fn.frequency.total.item() == 4


def test_in_batch_training_learns_which_items_each_user_picks() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    taste = {f"u{k}": [f"i{k}-{j}" for j in range(3)] for k in range(20)}
    model = TwoTower(SPEC, SMALL)
    rows = SPEC.table_of("item_id").num_embeddings
    loss_fn = InBatchSoftmax(SMALL.temperature, ItemFrequency(rows))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    builder = BatchBuilder(SPEC)
    losses = []
    for _ in range(60):
        users = rng.choice(list(taste), size=32)
        batch = builder.build(_examples([(u, str(rng.choice(taste[u]))) for u in users]))
        u, v = model(batch.dense, batch.sparse)
        item_rows = batch.sparse.to_dict()["item_id"].values()
        loss = loss_fn(u, v, item_rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Chance is log(32) = 3.47 (32 in-batch items); each user picks among 3 items: >= log 3.
    assert losses[0] > 3.0 and np.mean(losses[-10:]) < 0.6 * math.log(32)


def test_the_user_side_is_trained_on_the_history_before_the_target() -> None:
    examples = _examples([("u1", "a"), ("u2", "b"), ("u3", "c")])
    examples[0]["recent_items"] = ["a", "x", "a"]  # the target, viewed before its click
    examples[1]["recent_items"] = ["x", "y"]
    batch = BatchBuilder(SPEC).build(examples)
    stripped = history_without_target(batch.sparse)
    before, after = batch.sparse.to_dict(), stripped.to_dict()
    assert stripped.keys() == batch.sparse.keys()
    assert after["recent_items"].lengths().tolist() == [1, 2, 0]
    rows = before["recent_items"].values().tolist()
    assert after["recent_items"].values().tolist() == [rows[1], *rows[3:5]]
    for key in before:
        if key != "recent_items":
            assert torch.equal(after[key].values(), before[key].values())
            assert torch.equal(after[key].lengths(), before[key].lengths())
