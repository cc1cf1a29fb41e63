"""The batch rival: a LightGBM classifier retrained from scratch at a fixed cadence.

Inputs are the DLRM's dense features (``N x D``, the same rows) plus the item's category as a
categorical column; it sees no user or item ids, which is what a simple batch model usually
gets. Deterministic for a given seed (``deterministic``, one thread).
"""

from __future__ import annotations

from collections import deque

import numpy as np


def lgbm_matrix(dense: np.ndarray, category_rows: np.ndarray) -> np.ndarray:
    """``N x (D + 1)`` float64: dense features, then the category row (NaN when absent)."""
    cats = np.where(category_rows >= 0, category_rows, np.nan).astype(np.float64)
    return np.column_stack([np.asarray(dense, dtype=np.float64), cats])


class BatchRetrained:
    """Keeps the last ``max_rows`` labelled rows; :meth:`retrain` fits a new model on them."""

    def __init__(self, seed: int, max_rows: int = 200_000, rounds: int = 100) -> None:
        self.seed = seed
        self.rounds = rounds
        self.max_rows = max_rows
        self._x: deque[np.ndarray] = deque()
        self._y: deque[np.ndarray] = deque()
        self._rows = 0
        self.model = None
        self.fits = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Keep labelled rows (``x``: ``N x (D + 1)`` from :func:`lgbm_matrix`, ``y``: ``N`` 0/1);
        whole oldest batches go once the rest still hold ``max_rows``. Nothing is fitted here."""
        self._x.append(x)
        self._y.append(y)
        self._rows += len(y)
        while self._rows - len(self._y[0]) >= self.max_rows:
            self._rows -= len(self._y.popleft())
            self._x.popleft()

    def retrain(self) -> bool:
        """Fit on what is kept; False (keeps the old model) while one class is missing."""
        import lightgbm

        if not self._y:
            return False
        y = np.concatenate(self._y)
        if y.min() == y.max():
            return False
        x = np.concatenate(self._x)
        params = {
            "objective": "binary", "learning_rate": 0.1, "num_leaves": 31,
            "min_data_in_leaf": 50, "feature_fraction": 1.0, "bagging_fraction": 1.0,
            "seed": self.seed, "deterministic": True, "force_col_wise": True,
            "num_threads": 1, "verbosity": -1,
        }
        data = lightgbm.Dataset(x, label=y, categorical_feature=[x.shape[1] - 1],
                                free_raw_data=True)
        self.model = lightgbm.train(params, data, num_boost_round=self.rounds)
        self.fits += 1
        return True

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(click) per row; 0.5 everywhere before the first fit (no information)."""
        if self.model is None:
            return np.full(len(x), 0.5)
        return np.asarray(self.model.predict(x), dtype=np.float64)
