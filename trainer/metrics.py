"""Prequential evaluation: every batch is scored before the model trains on it. Pure numpy."""

from __future__ import annotations

from collections import deque

import numpy as np


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged; NaN if one class only."""
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(probs, eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


class Prequential:
    """Running metrics over a sliding window of the last ``window`` scored examples."""

    def __init__(self, window: int = 50_000) -> None:
        self._probs: deque[np.ndarray] = deque()
        self._labels: deque[np.ndarray] = deque()
        self._n = 0
        self.window = window
        self.total = 0

    def add(self, probs: np.ndarray, labels: np.ndarray) -> None:
        self._probs.append(probs.astype(np.float64))
        self._labels.append(labels.astype(np.float64))
        self._n += len(probs)
        self.total += len(probs)
        while self._n - len(self._probs[0]) >= self.window:
            self._n -= len(self._probs.popleft())
            self._labels.popleft()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._probs:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(self._probs), np.concatenate(self._labels)

    def summary(self) -> dict[str, float]:
        p, y = self.arrays()
        if not len(p):
            return {"auc": float("nan"), "logloss": float("nan"), "n": 0}
        return {"auc": auc(p, y), "logloss": log_loss(p, y), "n": len(p),
                "ctr": float(y.mean())}
