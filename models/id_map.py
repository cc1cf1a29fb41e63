"""Collision-free embedding rows: each id in use gets a row of its own (managed collisions).

Hashing every id into a table's ``N`` rows (:func:`models.batch.hash_ids`) makes distinct ids
share rows: 2.5-5% of a few thousand ids, most of them at a million. An :class:`IdMap` gives
each admitted id its own row of a bounded table and, when the table is full, takes back the
rows of the ids used least recently (LRU) or least often for their age (LFU), so the rows
follow the active users and items.
Row 0 is kept for ids the map does not hold (e.g. a user the trainer has not admitted yet).

Why not TorchRec's ``MCHManagedCollisionModule`` (LRU policy), which was tried first: on this
CPU it took about 450 ms per admission at 1 M rows (it re-sorts the whole table each time), and
its history buffer is sized by the first batch it sees, so ids beyond that count in later,
larger batches are not admitted. Here admission is a dict update plus, when the table is full,
one ``argpartition`` over the rows' last-use steps that frees ``evict_share`` of the table at
once, so that the next admissions take free rows.

The same sequence of :meth:`IdMap.admit` calls gives the same rows on every host: trainer ranks
that admit the same (all-gathered) ids keep identical maps, and :meth:`IdMap.state` /
:meth:`IdMap.from_state` carry a map through a checkpoint to scorers and resumed trainers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from models.batch import id_keys

__all__ = ["POLICIES", "UNKNOWN_ROW", "IdMap", "id_keys"]

UNKNOWN_ROW = 0  # the row shared by ids a map does not hold
POLICIES = ("lru", "lfu")  # eviction policies (IdMap's ``policy``)


class IdMap:
    """Keys (:func:`id_keys`) -> rows ``[1, capacity)`` of one embedding table, evicted by
    ``policy`` (LRU or LFU) when full.

    Args:
        capacity (int): the table's rows; ``capacity - 1`` ids can hold a row at once.
        evict_share (float): share of the table freed at once when it is full (the rows the
            policy ranks last), so that an eviction scan is not paid at every admission.
        policy (str): which ids give up their rows: ``"lru"`` (used least recently) or
            ``"lfu"`` (used least often for their age: TorchRec's distance-LFU, the number of
            :meth:`admit` calls that used the id since it got its row over the calls since its
            last use; ties go to the least recently used). LFU keeps the rows of ids that come
            back (heavy users, popular items) through a stream of ids seen once.
    """

    def __init__(self, capacity: int, evict_share: float = 0.01, policy: str = "lru") -> None:
        if capacity < 2:
            raise ValueError("an IdMap needs at least 2 rows (row 0 is the unknown-id row)")
        if not 0 < evict_share <= 1:
            raise ValueError("evict_share must be in (0, 1]")
        if policy not in POLICIES:
            raise ValueError(f"unknown eviction policy {policy!r}; one of {POLICIES}")
        self.capacity = capacity
        self.evict_share = evict_share
        self.policy = policy
        self._uses = np.zeros(capacity, np.int64)  # admit() calls that used the row's id
        self._row_of: dict[int, int] = {}
        self._owner = np.full(capacity, -1, np.int64)  # key held by each row, -1 = free
        self._last_used = np.zeros(capacity, np.int64)  # admit() call that last used the row
        self._free = np.arange(capacity - 1, 0, -1, dtype=np.int64)  # a stack: row 1 on top
        self._n_free = capacity - 1
        self._step = 0
        self.evicted = 0  # ids that lost their row since the map was made

    def __len__(self) -> int:
        """Ids holding a row."""
        return len(self._row_of)

    @property
    def step(self) -> int:
        """:meth:`admit` calls so far (restored with the state)."""
        return self._step

    def held(self) -> np.ndarray:
        """Keys of the ids holding a row (int64, in no particular order)."""
        return np.fromiter(self._row_of, np.int64, len(self._row_of))

    def held_rows(self) -> np.ndarray:
        """Rows (int64, ascending) that an id holds."""
        return np.flatnonzero(self._owner >= 0)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Rows (int64) of ``keys``; :data:`UNKNOWN_ROW` for keys the map does not hold."""
        get = self._row_of.get
        return np.fromiter((get(k, UNKNOWN_ROW) for k in keys.tolist()), np.int64, len(keys))

    def admit(self, keys: np.ndarray) -> np.ndarray:
        """Mark ``keys`` used now and give each key without a row a row of its own, evicting
        the ids the policy ranks last when the table is full. If more new keys arrive at once
        than there are rows not used in this call, the smallest keys get rows and the rest stay
        unknown. Returns the rows given to new keys (their embeddings are another id's or
        untrained: a trainer resets them)."""
        self._step += 1
        uniq = np.unique(keys)
        rows = self.lookup(uniq)
        known = rows != UNKNOWN_ROW
        self._last_used[rows[known]] = self._step
        self._uses[rows[known]] += 1
        new = uniq[~known]
        if len(new) > self._n_free:
            self._evict(len(new) - self._n_free)
        new = new[:self._n_free]
        if len(new) == 0:
            return np.zeros(0, np.int64)
        given = self._free[self._n_free - len(new):self._n_free][::-1].copy()
        self._n_free -= len(new)
        self._owner[given] = new
        self._last_used[given] = self._step
        self._uses[given] = 1
        self._row_of.update(zip(new.tolist(), given.tolist(), strict=True))
        return given

    def _evict(self, at_least: int) -> None:
        """Free the ``max(at_least, evict_share x capacity)`` rows the policy ranks last among
        those not used in the current call."""
        held = np.flatnonzero((self._owner >= 0) & (self._last_used < self._step))
        k = min(len(held), max(at_least, int(self.capacity * self.evict_share)))
        if k == 0:
            return
        if k < len(held):
            if self.policy == "lru":
                held = held[np.argpartition(self._last_used[held], k - 1)[:k]]
            else:  # uses per call since the last use; ties go to the least recently used
                last = self._last_used[held]
                held = held[np.lexsort((last, self._uses[held] / (self._step - last)))[:k]]
        held = np.sort(held)[::-1]  # the stack hands out the lowest freed row first
        for key in self._owner[held].tolist():
            del self._row_of[key]
        self._owner[held] = -1
        self._free[self._n_free:self._n_free + k] = held
        self._n_free += k
        self.evicted += k

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that :meth:`from_state` restores exactly (checkpoint blob contents)."""
        return {"owner": self._owner.copy(), "last_used": self._last_used.copy(),
                "free": self._free[:self._n_free].copy(),
                "meta": np.array([self._step, self.evicted], np.int64),
                "evict_share": np.array([self.evict_share], np.float64),
                "uses": self._uses.copy(),
                "policy": np.array([POLICIES.index(self.policy)], np.int64)}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> IdMap:
        """The map :meth:`state` saved; further admissions give the rows the saved map would."""
        owner = np.asarray(state["owner"], np.int64)
        # Maps saved before the policy existed were LRU and kept no use counts.
        policy = POLICIES[int(state["policy"][0])] if "policy" in state else "lru"
        m = cls(len(owner), float(state["evict_share"][0]), policy)
        if "uses" in state:
            m._uses = np.asarray(state["uses"], np.int64).copy()
            if len(m._uses) != len(owner):
                raise ValueError("IdMap state is inconsistent: use counts != capacity")
        m._owner = owner.copy()
        m._last_used = np.asarray(state["last_used"], np.int64).copy()
        free = np.asarray(state["free"], np.int64)
        m._free[:len(free)] = free
        m._n_free = len(free)
        m._step, m.evicted = (int(v) for v in state["meta"])
        held = np.flatnonzero(owner >= 0)
        m._row_of = dict(zip(owner[held].tolist(), held.tolist(), strict=True))
        if len(m._row_of) + m._n_free != len(owner) - 1:
            raise ValueError("IdMap state is inconsistent: held + free rows != capacity - 1")
        return m
