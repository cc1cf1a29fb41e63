from __future__ import annotations

import pytest

from trainer.dedup import RecentIds


def test_a_repeated_id_is_seen_and_a_new_one_is_not() -> None:
    ids = RecentIds(window=10)
    assert not ids.seen("a")
    assert ids.seen("a")
    assert not ids.seen("b")


def test_the_newest_window_ids_are_always_remembered() -> None:
    window = 100
    ids = RecentIds(window)
    for n in range(1_000):
        assert not ids.seen(f"e{n}")
        # Every one of the newest `window` ids is still known, whatever the generation state.
        assert all(ids.seen(f"e{k}") for k in range(max(0, n - window + 1), n + 1))
        assert len(ids) <= 2 * window


def test_old_ids_are_forgotten_so_memory_stays_bounded() -> None:
    ids = RecentIds(window=50)
    for n in range(500):
        ids.seen(n)
    assert len(ids) <= 100
    assert not ids.seen(0)  # long gone: treated as new


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RecentIds(0)
