"""bench ids: collision-free ids (:class:`models.id_map.IdMap`) against hashing, 1 M x 1 M.

Issue 19's measurement of managed ids. The scale fixture (``SyntheticConfig(n_users=1 M,
n_items=1 M, lazy_users=True)``: Zipf item popularity and user activity, seeded, memory-bounded)
generates ``--events`` events; each view becomes an example labelled by whether the user clicked
that item (the generator's own click, joined by user and item), with the view's category and the
user's 5 previous items. Two copies of the ranker (:class:`models.dlrm.StreamRecModel`, the
default spec but ``--rows`` rows per id table, the same initial weights) train on the same
batches in event order with the trainer's learning rates:

- ``hashed``: user and item ids hashed into the rows (:func:`models.batch.hash_ids`, today's
  default);
- ``mapped``: the user and item tables behind an :class:`IdMap` of the same rows (LRU): each
  batch's ids are admitted before it is trained on, and the rows given to new ids are reset as
  the trainer resets them (to the unknown row's vector, which the id was scored and trained on
  until then, so that it never inherits an evicted id's vector; and the mean optimizer state of
  the held rows);
- ``mapped_lfu``: the same with LFU eviction (``model.id_map_policy=lfu``).

Prequential: each batch is scored before it is trained on (in ``mapped``, ids not admitted yet
score on the shared unknown row, as at a scorer); AUC over the second half of the batches. The
dense features are zeros: ids and category are the only inputs, so the comparison is of what the
rows hold. Also reported: the share of the ids seen that share a hashed row with another id, the
same for the id map (counted over its rows: 0 when within capacity), the share of scored ids on
the unknown row, and the time per admission (the map's, per table and batch; the row reset is
the trainer's optimizer's business, not measured here). Target (issue 19): AUC mapped >= hashed + 0.01.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from typing import Any

import numpy as np
import torch

from benchmarks.common import report
from models.batch import BatchBuilder, collision_rate
from models.dlrm import RankingTrain, StreamRecModel
from models.id_map import POLICIES, UNKNOWN_ROW, IdMap
from models.spec import DEFAULT_SPEC, FeatureSpec, TableSpec
from streaming.sources.synthetic import SyntheticConfig, SyntheticStream
from trainer.metrics import auc

MAPPED_TABLES = ("t_user", "t_item")
ROWS = DEFAULT_SPEC.table_of("user_id").num_embeddings  # the default tables' rows
EVENTS = 600_000


def examples(n_events: int, n_ids: int, seed: int, spec: FeatureSpec) -> list[dict[str, Any]]:
    """Views of the scale stream as labelled examples (click or not), in event order."""
    stream = SyntheticStream(seed, SyntheticConfig(n_users=n_ids, n_items=n_ids,
                                                   lazy_users=True))
    events = list(stream.events(0, rate=50.0, limit=n_events))
    clicked = {(e.user_id, e.item_id) for e in events if e.event_type == "click"}
    recent: dict[str, deque[str]] = {}
    zeros = [0.0] * len(spec.dense)
    out = []
    for e in events:
        if e.event_type != "view":
            continue
        seen = recent.setdefault(e.user_id, deque(maxlen=5))
        out.append({"example_id": e.event_id, "user_id": e.user_id, "item_id": e.item_id,
                    "category": e.category, "recent_items": list(reversed(seen)),
                    "labels": {"click": int((e.user_id, e.item_id) in clicked), "purchase": 0},
                    "dense_schema": spec.dense_schema(), "dense": zeros})
        seen.append(e.item_id)
    return out


class Arm:
    """One model, its optimizers (Adagrad at the trainer's learning rates ``lr_sparse`` /
    ``lr_dense``) and its batch builder (hashed, or behind id maps)."""

    def __init__(self, spec: FeatureSpec, seed: int, maps: dict[str, IdMap] | None,
                 lr_sparse: float, lr_dense: float) -> None:
        torch.manual_seed(seed)
        self.train = RankingTrain(StreamRecModel(spec))
        ebc = self.train.model.dlrm.sparse_arch.embedding_bag_collection
        self.tables = dict(ebc.embedding_bags.items())
        sparse = [p for bag in self.tables.values() for p in bag.parameters()]
        ids = {id(p) for p in sparse}
        self.opt_sparse = torch.optim.Adagrad(sparse, lr=lr_sparse)
        self.opt_dense = torch.optim.Adagrad(
            [p for p in self.train.parameters() if id(p) not in ids], lr=lr_dense)
        self.maps = maps or {}
        self.builder = BatchBuilder(spec, self.maps)
        self.admit_s: list[float] = []

    def reset(self, table: str, given: np.ndarray) -> None:
        """Rows given to new ids: the unknown row's vector, and the mean optimizer state of the
        rows other ids hold (what :func:`trainer.distributed.reset_rows` does; from zero,
        Adagrad's first step moves a new row by the full learning rate)."""
        rows = torch.from_numpy(given)
        held = torch.from_numpy(np.setdiff1d(self.maps[table].held_rows(), given))
        weight = self.tables[table].weight
        with torch.no_grad():
            weight[rows] = weight[UNKNOWN_ROW].clone()
        state = self.opt_sparse.state[weight]["sum"]
        state[rows] = state[held].mean(0) if len(held) else 0.0

    def score(self, batch_examples: list[dict[str, Any]]) -> tuple[np.ndarray, float]:
        """Logits of a batch before training on it, and the share of ids on the unknown row."""
        b = self.builder.build(batch_examples)
        with torch.no_grad():
            self.train.eval()
            logits = self.train.model(b.dense, b.sparse).numpy()
        unknown = 0.0
        if self.maps:
            d = b.sparse.to_dict()
            values = torch.cat([d[f].values() for f in ("user_id", "item_id")])
            unknown = float((values == UNKNOWN_ROW).float().mean())
        return logits, unknown

    def step(self, batch_examples: list[dict[str, Any]]) -> None:
        """Admit the batch's ids (mapped), reset the rows given to new ids, train one step."""
        if self.maps:
            for table, keys in self.builder.mapped_keys(batch_examples).items():
                t0 = time.perf_counter()
                given = self.maps[table].admit(keys)
                self.admit_s.append(time.perf_counter() - t0)
                if len(given):
                    self.reset(table, given)
        b = self.builder.build(batch_examples)
        self.train.train()
        loss, _ = self.train(b.dense, b.sparse, b.labels)
        self.opt_sparse.zero_grad()
        self.opt_dense.zero_grad()
        loss.backward()
        self.opt_sparse.step()
        self.opt_dense.step()


def main(argv: list[str], settings: Any) -> None:
    """``streamrec bench ids [--events N] [--ids N] [--rows R] [--seed S]``."""
    p = argparse.ArgumentParser(prog="streamrec bench ids")
    p.add_argument("--events", type=int, default=EVENTS,
                   help="(other than the default: results in ids-events<N>.json)")
    p.add_argument("--ids", type=int, default=1_000_000, help="users and items in the world")
    p.add_argument("--rows", type=int, default=ROWS, help="rows of the user and item tables "
                   "(other than the default: results in ids-rows<R>.json)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    spec = FeatureSpec(tables=(TableSpec("t_user", args.rows, ("user_id",)),
                               TableSpec("t_item", args.rows, ("item_id", "recent_items")),
                               DEFAULT_SPEC.tables[2]))
    batch_size = settings.trainer.batch_size
    t0 = time.perf_counter()
    exs = examples(args.events, args.ids, args.seed, spec)
    generate_s = time.perf_counter() - t0
    lrs = settings.trainer.embedding_lr, settings.trainer.dense_lr
    arms = {"hashed": Arm(spec, args.seed, None, *lrs)}
    for policy in POLICIES:  # "mapped" (LRU, the first policy), "mapped_lfu"
        arms["mapped" if policy == "lru" else f"mapped_{policy}"] = Arm(
            spec, args.seed, {t: IdMap(args.rows, policy=policy) for t in MAPPED_TABLES}, *lrs)
    batches = [exs[i:i + batch_size] for i in range(0, len(exs), batch_size)]
    scored: dict[str, list[np.ndarray]] = {name: [] for name in arms}
    unknown: dict[str, list[float]] = {name: [] for name in arms if name != "hashed"}
    labels: list[np.ndarray] = []
    t0 = time.perf_counter()
    for k, batch in enumerate(batches):
        for name, arm in arms.items():
            logits, miss = arm.score(batch)
            if k >= len(batches) // 2:
                scored[name].append(logits)
                if name in unknown:
                    unknown[name].append(miss)
            arm.step(batch)
        if k >= len(batches) // 2:
            labels.append(np.array([ex["labels"]["click"] for ex in batch], np.float32))
    train_s = time.perf_counter() - t0
    y = np.concatenate(labels)
    aucs = {name: round(auc(np.concatenate(s), y), 5) for name, s in scored.items()}
    users = sorted({ex["user_id"] for ex in exs})
    items = sorted({ex["item_id"] for ex in exs} | {i for ex in exs for i in ex["recent_items"]})
    mapped = [name for name in arms if name != "hashed"]
    mapped_collisions = {name: {t: 1.0 - len(np.unique(r)) / max(1, len(r)) for t, r in (
        (t, m.lookup(m.held())) for t, m in arms[name].maps.items())} for name in mapped}
    admit_ms = {name: np.array(arms[name].admit_s) * 1000 for name in mapped}
    gain = {name: round(aucs[name] - aucs["hashed"], 5) for name in mapped}
    name = "ids" + (f"-rows{args.rows}" if args.rows != ROWS else "") + (
        f"-events{args.events}" if args.events != EVENTS else "")
    report(name, {
        "events": args.events, "ids_in_world": args.ids, "rows_per_table": args.rows,
        "examples": len(exs), "batches": len(batches), "batch_size": batch_size,
        "distinct": {"users": len(users), "items": len(items)},
        "auc": aucs, "auc_mapped_minus_hashed": gain["mapped"],
        "auc_minus_hashed": gain, "target_met": max(gain.values()) >= 0.01,
        "collision_rate": {
            "hashed": {"users": round(collision_rate(users, args.rows), 4),
                       "items": round(collision_rate(items, args.rows), 4)},
            **{name: {t: round(v, 6) for t, v in c.items()}
               for name, c in mapped_collisions.items()}},
        "mapped_held": {name: {t: len(m) for t, m in arms[name].maps.items()} for name in mapped},
        "mapped_evicted": {name: {t: m.evicted for t, m in arms[name].maps.items()}
                           for name in mapped},
        "unknown_row_share_scored": {name: round(float(np.mean(u)), 4)
                                     for name, u in unknown.items()},
        "admit_ms": {name: {"p50": round(float(np.percentile(a, 50)), 2),
                            "p99": round(float(np.percentile(a, 99)), 2)}
                     for name, a in admit_ms.items()},
        "generate_s": round(generate_s, 1), "train_s": round(train_s, 1),
        "positives_share": round(float(y.mean()), 4),
    })
