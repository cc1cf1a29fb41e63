"""The CPU accounting of ``bench resources`` (issue 17's resource plan)."""

from __future__ import annotations

import os

import pytest

from benchmarks.resources import _proc_stats, fit, machine_busy_s, tree_cpu_s


def test_a_process_tree_counts_its_descendants_and_nothing_else() -> None:
    stats = {1: (0, 5.0), 10: (1, 1.0), 11: (10, 2.0), 12: (11, 0.5), 20: (1, 7.0)}
    assert tree_cpu_s({"trainer": 10, "redis": 20, "gone": None}, stats) == {
        "trainer": 3.5, "redis": 7.0, "gone": 0.0}


def test_this_process_is_found_in_proc_with_its_cpu_time() -> None:
    stats = _proc_stats()
    assert stats[os.getpid()][0] == os.getppid()
    assert stats[os.getpid()][1] >= 0.0
    assert machine_busy_s() > 0.0


def test_the_fit_separates_a_fixed_cost_from_the_cost_per_1000_events() -> None:
    fixed, per_1000 = fit([250.0, 500.0, 1000.0], [0.3 + 0.4 * r / 1000 for r in (250, 500, 1000)])
    assert fixed == pytest.approx(0.3)
    assert per_1000 == pytest.approx(0.4)
    assert fit([500.0], [0.2]) == (0.0, pytest.approx(0.4))
