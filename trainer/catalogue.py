"""The item catalogue the retriever's index is built from: each item the trainer saw, with the
item-tower inputs of its newest example.

The item tower (:class:`models.two_tower.TwoTower`) needs an item's hashed id, its category and
its dense item features (``item_*``, ``price``). Training examples carry all three as of the
event, so the trainer keeps the newest of each per item id and, at publish, embeds them all
(:meth:`ItemCatalogue.vectors`): the scorers get the vectors with the checkpoint and only
index them. The catalogue is bounded (``capacity`` items): beyond it the half seen longest ago
is dropped, so a shop's active items stay and its dead ones age out.

With several trainer ranks each rank sees its share of the examples; :meth:`take_new` and
:meth:`merge` carry what the others saw to rank 0, which publishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.batch import ExampleBatch
from models.two_tower import TwoTower, tower_columns

__all__ = ["CatalogueRows", "ItemCatalogue"]


@dataclass(slots=True)
class CatalogueRows:
    """Items with their item-tower inputs: ``ids`` ``N``, ``item_rows`` / ``category_rows``
    ``N`` int64 (``-1``: no category), ``dense`` ``N x Di`` float32."""

    ids: list[str]
    item_rows: np.ndarray
    category_rows: np.ndarray
    dense: np.ndarray

    def remapped(self, rows: np.ndarray) -> CatalogueRows:
        """These items with item rows ``rows`` (``N``, an id map's current rows), without the
        items whose row is the map's unknown row 0 (evicted: their vector would be another's)."""
        keep = rows != 0
        return CatalogueRows([i for i, k in zip(self.ids, keep.tolist(), strict=True) if k],
                             rows[keep], self.category_rows[keep], self.dense[keep])


class ItemCatalogue:
    """Newest item-tower inputs per item id, at most ``capacity`` items.

    Args:
        dense_names (Sequence[str]): the spec's dense names (the item tower's columns are
            taken from them by :func:`models.two_tower.tower_columns`).
        capacity (int): items kept; when exceeded, the half seen longest ago is dropped.
    """

    def __init__(self, dense_names: Sequence[str], capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._cols = np.asarray(tower_columns(dense_names)[1], dtype=np.int64)
        self._slot: dict[str, int] = {}
        n = min(capacity, 1024)
        self._rows = np.zeros(n, np.int64)
        self._cats = np.zeros(n, np.int64)
        self._dense = np.zeros((n, len(self._cols)), np.float32)
        self._seen = np.zeros(n, np.int64)  # a counter value: larger = seen later
        self._clock = 0
        self._new: dict[str, int] = {}  # id -> slot, observed since the last take_new

    def __len__(self) -> int:
        return len(self._slot)

    def observe(self, item_ids: Sequence[str], batch: ExampleBatch) -> None:
        """Record the items of a training batch: ``item_ids`` ``B`` (the examples' item ids,
        in batch order) and the batch they were built into (``dense: B x D``, KJT)."""
        sparse = batch.sparse
        rows = sparse["item_id"].values().numpy()
        cat = sparse["category"]
        lengths = cat.lengths().numpy()
        cats = np.full(len(lengths), -1, np.int64)
        cats[lengths > 0] = cat.values().numpy()
        dense = batch.dense.numpy()[:, self._cols]
        self._put(list(item_ids), rows, cats, dense, track=True)

    def _put(self, ids: list[str], rows: np.ndarray, cats: np.ndarray, dense: np.ndarray,
             track: bool) -> None:
        for k, item in enumerate(ids):  # later rows of the same item overwrite earlier ones
            slot = self._slot.get(item)
            if slot is None:
                if len(self._slot) >= self.capacity:
                    self._evict()
                slot = len(self._slot)
                self._grow(slot + 1)
                self._slot[item] = slot
            self._clock += 1
            self._rows[slot], self._cats[slot] = rows[k], cats[k]
            self._dense[slot] = dense[k]
            self._seen[slot] = self._clock
            if track:
                self._new[item] = slot

    def _grow(self, n: int) -> None:
        if n <= len(self._rows):
            return
        size = min(self.capacity, max(n, 2 * len(self._rows)))
        for name in ("_rows", "_cats", "_seen"):
            old = getattr(self, name)
            new = np.zeros(size, old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)
        dense = np.zeros((size, self._dense.shape[1]), np.float32)
        dense[:len(self._dense)] = self._dense
        self._dense = dense

    def _evict(self) -> None:
        """Keep the newest half (by last sighting), compacted into the first slots."""
        ids = list(self._slot)
        slots = np.fromiter(self._slot.values(), np.int64, len(ids))
        keep = slots[np.argsort(-self._seen[slots], kind="stable")[:max(1, self.capacity // 2)]]
        keep.sort()
        by_slot = {s: i for i, s in zip(ids, slots.tolist(), strict=True)}
        kept_ids = [by_slot[s] for s in keep.tolist()]
        n = len(keep)
        self._rows[:n], self._cats[:n] = self._rows[keep], self._cats[keep]
        self._dense[:n], self._seen[:n] = self._dense[keep], self._seen[keep]
        self._slot = {item: k for k, item in enumerate(kept_ids)}
        self._new = {item: self._slot[item] for item in self._new if item in self._slot}

    def rows(self) -> CatalogueRows:
        """Every item held, in slot order (copies)."""
        n = len(self._slot)
        return CatalogueRows(list(self._slot), self._rows[:n].copy(), self._cats[:n].copy(),
                             self._dense[:n].copy())

    def take_new(self) -> CatalogueRows:
        """The items observed since the last call (newest inputs), and forget that list."""
        ids = list(self._new)
        slots = np.fromiter(self._new.values(), np.int64, len(ids))
        self._new = {}
        return CatalogueRows(ids, self._rows[slots], self._cats[slots], self._dense[slots])

    def merge(self, rows: CatalogueRows) -> None:
        """Add items another rank observed (as :meth:`take_new` returned them there)."""
        self._put(rows.ids, rows.item_rows, rows.category_rows, rows.dense, track=False)

    def restore(self, ids: Sequence[str], inputs: dict[str, np.ndarray]) -> None:
        """Add what :meth:`inputs` saved (a resume), oldest first as saved."""
        self._put(list(ids), inputs["item_rows"], inputs["category_rows"], inputs["dense"],
                  track=False)

    @staticmethod
    def inputs(rows: CatalogueRows) -> dict[str, np.ndarray]:
        """``rows`` as the arrays :meth:`restore` takes (saved beside the vectors)."""
        return {"item_rows": rows.item_rows, "category_rows": rows.category_rows,
                "dense": rows.dense}

    def vectors(self, tower: TwoTower) -> tuple[list[str], np.ndarray]:
        """``(ids N, vectors N x K float32)``: every item through ``tower``'s item tower."""
        held = self.rows()
        return held.ids, self.embed(tower, held)

    @staticmethod
    def embed(tower: TwoTower, held: CatalogueRows) -> np.ndarray:
        """``N x K`` float32: ``held`` through ``tower``'s item tower."""
        vecs = tower.item_vectors(torch.from_numpy(held.item_rows),
                                  torch.from_numpy(held.category_rows),
                                  torch.from_numpy(held.dense))
        return vecs.numpy().astype(np.float32, copy=False)
