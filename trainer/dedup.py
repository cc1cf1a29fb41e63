"""Duplicate examples: the ingest outbox delivers at least once, so an example can reach the
trainer twice (a worker crash between produce and outbox trim re-produces it). The copies
arrive close together, so remembering the newest ids is enough.

:class:`RecentIds` keeps them as two generations of 64-bit hashes rather than an ordered
dict of strings: about a third of the memory, and filled within minutes of a start instead
of growing for the first 20 (a slowly filling window was part of the trainer's RSS creep in
the soak).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

__all__ = ["RecentIds"]


class RecentIds:
    """Remembers at least the newest ``window`` ids seen and at most ``2 * window``.

    Args:
        window (int): ids per generation (> 0). When the current generation is full it becomes
            the previous one and the old previous generation is dropped.

    Ids are kept as Python's 64-bit hash: two different ids collide with chance about
    ``2 * window / 2**64`` per lookup (an example dropped as a duplicate; never a
    duplicate kept).
    """

    def __init__(self, window: int) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0, got {window}")
        self.window = window
        self._current: set[int] = set()
        self._previous: set[int] = set()

    def seen(self, key: Hashable) -> bool:
        """True if ``key`` is among the remembered ids; otherwise remember it and return False."""
        h = hash(key)
        if h in self._current or h in self._previous:
            return True
        if len(self._current) >= self.window:
            self._previous, self._current = self._current, set()
        self._current.add(h)
        return False

    def seen_many(self, keys: Iterable[Hashable]) -> list[bool]:
        """:meth:`seen` of each key in order (a repeat within ``keys`` is seen too)."""
        return list(map(self.seen, keys))

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)
