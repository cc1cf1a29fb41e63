"""Nearest-neighbour candidates: the published item vectors indexed, queried with the user tower.

A checkpoint with a retriever carries the catalogue's item-tower vectors (``retrieval.npz``,
:func:`models.checkpoint.pack_item_vectors`). The scorer indexes them when it loads the
checkpoint and swaps index and model in together (:class:`Retrieval`). Up to
``exact_max_items`` items the index is an exact inner product (a matrix product); above it, a
FAISS IVF-Flat index with ``sqrt(N)`` lists, ``nprobe`` of them searched: the choice
``benchmarks/retrieval.py`` measured (at 1 M items, 1,000 lists and nprobe 64 answer in under
1 ms at p99 with 98% recall of the exact top 100; a full build takes about 2 s).

:func:`user_rows` builds the user tower's inputs from the reads the ranker already has, with
the functions that build training examples (no training/serving skew).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.batch import BatchBuilder, ScoringRows
from models.two_tower import TwoTower

__all__ = ["Retrieval", "RetrievalIndex", "user_rows"]


class RetrievalIndex:
    """Inner-product search over ``N x K`` item vectors.

    Args:
        ids (Sequence[str]): the ``N`` item ids, in vector order.
        vectors (np.ndarray): ``N x K`` float32 (unit rows from the item tower).
        exact_max_items (int): up to this many items, exact search; above, FAISS IVF.
        nprobe (int): IVF lists searched per query (recall against speed).
    """

    def __init__(self, ids: Sequence[str], vectors: np.ndarray, exact_max_items: int = 200_000,
                 nprobe: int = 64) -> None:
        self.ids = list(ids)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._vectors: np.ndarray | None = vectors  # exact search only: IVF keeps its own copy
        self.kind = "exact"
        self._faiss = None
        n = len(self.ids)
        if n > exact_max_items:
            import faiss  # only for large catalogues: a heavy import

            dim = vectors.shape[1]
            nlist = max(1, min(n // 39, int(math.sqrt(n))))  # FAISS wants >= 39 points a list
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            # 40 training points per list, as benchmarked (FAISS's minimum; all N would only
            # slow the build down)
            sample = np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False)
            index.train(vectors[np.sort(sample)])
            index.add(vectors)
            index.nprobe = nprobe
            self._faiss, self.kind, self._vectors = index, f"ivf{nlist}", None

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """For each of the ``Q x K`` queries its ``k`` best items as ``(id, inner product)``,
        best first (fewer when the index holds fewer)."""
        k = min(k, len(self.ids))
        if k <= 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self._faiss is not None:
            scores, idx = self._faiss.search(q, k)
        else:
            assert self._vectors is not None
            sims = q @ self._vectors.T  # Q x N
            idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            scores = np.take_along_axis(sims, idx, axis=1)
            order = np.argsort(-scores, axis=1, kind="stable")
            idx = np.take_along_axis(idx, order, axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
        ids = self.ids
        return [[(ids[j], float(s)) for j, s in zip(row_i, row_s, strict=True) if j >= 0]
                for row_i, row_s in zip(idx.tolist(), scores.tolist(), strict=True)]


@dataclass(frozen=True, slots=True)
class Retrieval:
    """A model's retriever with the index of its item vectors: what the ranker queries."""

    tower: TwoTower
    index: RetrievalIndex

    def query(self, builder: BatchBuilder, users: Sequence[ScoringRows], k: int
              ) -> list[list[tuple[str, float]]]:
        """Each user's ``k`` nearest items. ``users``: one row per user (:func:`user_rows`;
        only the user's columns and ids matter to the user tower)."""
        if not users:
            return []
        batch = builder.build_for_scoring(users)
        with torch.inference_mode():
            vecs = self.tower.users(batch.dense, batch.sparse).numpy()
        return self.index.search(vecs, k)


def user_rows(user_id: str, dense_row: np.ndarray, recent: Sequence[str]) -> ScoringRows:
    """One user's input row for the user tower: ``dense_row`` ``D`` (its ``user_*`` columns are
    what the tower reads; the rest may be anything), the user's recent items newest first. The
    item slot holds a placeholder the user tower never reads."""
    return ScoringRows(dense=np.asarray(dense_row, dtype=np.float64).reshape(1, -1),
                       user_id=user_id, items=[""], categories=[None], recent=list(recent),
                       item_rows=np.zeros(1, np.int64), category_rows=np.full(1, -1, np.int64))
