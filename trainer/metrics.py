"""Prequential evaluation (every batch is scored before the model trains on it; pure numpy) and
the promotion check's Prometheus metrics."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge


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
    """Mean binary cross-entropy of ``probs`` (clipped to ``[eps, 1 - eps]``) against 0/1 labels."""
    p = np.clip(probs, eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


class Prequential:
    """Running metrics over a sliding window of the last ``window`` scored examples.

    The window holds whole batches: the fewest newest ones with at least ``window`` examples
    (all of them until then). ``total`` counts every example ever added."""

    def __init__(self, window: int = 50_000) -> None:
        self._probs: deque[np.ndarray] = deque()
        self._labels: deque[np.ndarray] = deque()
        self._n = 0
        self.window = window
        self.total = 0

    def add(self, probs: np.ndarray, labels: np.ndarray) -> None:
        """Append one scored batch (``probs``, ``labels``: ``B``); drop the oldest batches the
        window no longer needs."""
        self._probs.append(probs.astype(np.float64))
        self._labels.append(labels.astype(np.float64))
        self._n += len(probs)
        self.total += len(probs)
        while self._n - len(self._probs[0]) >= self.window:
            self._n -= len(self._probs.popleft())
            self._labels.popleft()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(probs, labels)`` of the window, oldest first, float64 (both empty before any add)."""
        if not self._probs:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(self._probs), np.concatenate(self._labels)

    def summary(self) -> dict[str, float]:
        """``auc``, ``logloss``, ``n`` and ``ctr`` (the positive rate) of the window; NaNs and
        ``n = 0`` (no ``ctr``) while it is empty."""
        p, y = self.arrays()
        if not len(p):
            return {"auc": float("nan"), "logloss": float("nan"), "n": 0}
        return {"auc": auc(p, y), "logloss": log_loss(p, y), "n": len(p),
                "ctr": float(y.mean())}


class PromotionMetrics:
    """The promotion check's metrics (trainer rank 0), on the trainer's registry:

    - ``streamrec_model_promotions_total{result}``: checkpoints ``promoted`` or ``held_back``;
    - ``streamrec_model_served_version``: the version scorers are told to serve;
    - ``streamrec_model_candidate_held_back``: 1 while the newest checkpoint is held back;
    - ``streamrec_model_holdout_logloss{model}``, ``streamrec_model_holdout_auc{model}``
      (``model`` = ``candidate`` | ``served``; NaN when unknown) and
      ``streamrec_model_holdout_examples``: the numbers of the last verdict."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.results = Counter("streamrec_model_promotions_total",
                               "Checkpoints promoted or held back by the promotion check",
                               ["result"], registry=registry)
        self.served_version = Gauge("streamrec_model_served_version",
                                    "Checkpoint version scorers serve", registry=registry)
        self.held_back = Gauge("streamrec_model_candidate_held_back",
                               "1 while the newest checkpoint is held back", registry=registry)
        self.logloss = Gauge("streamrec_model_holdout_logloss", "Held-out log-loss of the last "
                             "verdict", ["model"], registry=registry)
        self.auc = Gauge("streamrec_model_holdout_auc", "Held-out AUC of the last verdict",
                         ["model"], registry=registry)
        self.examples = Gauge("streamrec_model_holdout_examples",
                              "Held-out examples the last verdict used", registry=registry)
        for model in ("candidate", "served"):
            self.logloss.labels(model).set(float("nan"))
            self.auc.labels(model).set(float("nan"))
        self.served_version.set(float("nan"))

    def record(self, verdict: Mapping[str, Any], served_version: int | None) -> None:
        """Count one verdict (:meth:`trainer.promotion.Verdict.as_dict`) and show its numbers."""
        self.results.labels("promoted" if verdict["promoted"] else "held_back").inc()
        self.held_back.set(0 if verdict["promoted"] else 1)
        self.examples.set(verdict["n"])
        for model in ("candidate", "served"):
            for gauge, name in ((self.logloss, "logloss"), (self.auc, "auc")):
                value = verdict.get(f"{model}_{name}")
                gauge.labels(model).set(float("nan") if value is None else value)
        self.served_version.set(float("nan") if served_version is None else served_version)
