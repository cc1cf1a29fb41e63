"""Every candidate the evaluation ranked, with its features, scores and label, for offline study
(``streamrec eval --dump-candidates DIR``): which features separate the items a user interacts
with next from the other candidates, and what a ranker trained on the feeds themselves reaches."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from trainer.evaluation.ranking import SOURCE_ORDER

__all__ = ["CandidateDump"]


class CandidateDump:
    """Rows of (user-window, ranking time, user, item, source, label, dense features, per-model
    scores, the buy-again score), one per candidate, and per user-window its number of relevant
    items (candidates or not, the recall's denominator), collected in memory and written once
    by :meth:`write`.

    Args:
        dense_names: the ``D`` dense feature names, in the order of the rows' features.
        path: the ``.npz`` file :meth:`write` writes.
    """

    def __init__(self, dense_names: Sequence[str], path: Path) -> None:
        self.dense_names = tuple(dense_names)
        self.path = path
        self._ts: list[np.ndarray] = []
        self._user: list[np.ndarray] = []
        self._item: list[str] = []
        self._source: list[np.ndarray] = []
        self._label: list[np.ndarray] = []
        self._dense: list[np.ndarray] = []
        self._again: list[np.ndarray] = []
        self._scores: dict[str, list[np.ndarray]] = {}
        self._users: dict[str, int] = {}
        self._group: list[np.ndarray] = []  # per row: its user-window (the add call)
        self.relevant: list[int] = []  # per user-window: relevant items, candidates or not

    def add(self, now_ms: int, user: str, cands: Sequence[tuple[str, str]],
            relevant: Collection[str], dense: np.ndarray, scores: Mapping[str, np.ndarray],
            again: Mapping[str, float]) -> None:
        """One user's ``C`` candidates ((item, source) pairs) ranked at ``now_ms``: ``dense``
        is ``C x D``, ``scores`` one length-``C`` array per model, ``again`` the user's
        buy-again scores by item."""
        n = len(cands)
        items = [i for i, _ in cands]
        uid = self._users.setdefault(user, len(self._users))
        self._group.append(np.full(n, len(self.relevant), np.int32))
        self._ts.append(np.full(n, now_ms, np.int64))
        self._user.append(np.full(n, uid, np.int32))
        self._item.extend(items)
        self._source.append(np.array([SOURCE_ORDER.index(s) for _, s in cands], np.int8))
        self._label.append(np.array([i in relevant for i in items], np.int8))
        self._dense.append(dense.astype(np.float32))
        self._again.append(np.array([again.get(i, 0.0) for i in items], np.float32))
        for name, s in scores.items():
            self._scores.setdefault(name, []).append(np.asarray(s, np.float32))
        self.relevant.append(len(relevant))

    def write(self) -> Path:
        """Write the rows to :attr:`path` and return it. The user ids are in ``users`` (row
        ``user`` indexes it), so rows can be joined back to the log; a run that ranked nobody
        writes empty arrays."""
        d = len(self.dense_names)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(self.path, ts=_cat(self._ts, np.int64), user=_cat(self._user, np.int32),
                 users=np.array(list(self._users), dtype=str),
                 item=np.array(self._item, dtype=str), source=_cat(self._source, np.int8),
                 label=_cat(self._label, np.int8),
                 dense=np.concatenate(self._dense) if self._dense else np.zeros((0, d), np.float32),
                 buy_again=_cat(self._again, np.float32), group=_cat(self._group, np.int32),
                 relevant=np.array(self.relevant, np.int32),
                 dense_names=np.array(self.dense_names), sources=np.array(SOURCE_ORDER),
                 **{f"score_{k}": _cat(v, np.float32) for k, v in self._scores.items()})
        return self.path


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    """``parts`` end to end (an empty array of ``dtype`` when there are none)."""
    return np.concatenate(parts) if parts else np.zeros(0, dtype)
