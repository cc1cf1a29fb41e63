"""The CPU accounting of ``bench resources`` (issue 17's resource plan)."""

from __future__ import annotations

import os

import pytest

from benchmarks.resources import PARTS, _proc_stats, fit, machine_busy_s, summarize, tree_cpu_s


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


def _row(rate: float, worker: float, kept: bool = True) -> dict[str, object]:
    return {"source_rate_per_s": rate, "processed_per_s": rate, "kept_up": kept,
            "ingest_kept_up": kept, "machine_saturated": not kept, "cores": {p: worker if p == "worker" else
                                              (None if p == "redis" else 0.0) for p in PARTS}}


def test_the_plan_is_fitted_where_ingest_kept_up_on_an_unsaturated_machine() -> None:
    feeds_behind = {**_row(200, 0.4), "kept_up": False}  # the scorer's backlog: still fitted
    rows = [_row(0, 0.0), _row(100, 0.3), feeds_behind, _row(400, 0.9, kept=False)]
    plan = summarize(rows, cores=2.0)
    assert plan["fitted_on_rates"] == [100, 200]
    assert plan["parts"]["worker"] == {"fixed_cores": 0.2, "cores_per_1000_events_s": 1.0}
    assert "redis" not in plan["parts"]  # not measured (an external Redis): not guessed
    assert plan["loop_cores_for_1000_events_s"] == 1.2
    assert plan["loop_sustainable_events_s"] == 1800
    assert plan["max_rate_kept_up"] == 100
    assert plan["max_rate_ingest_kept_up"] == 200


def test_a_plan_with_no_rate_kept_up_or_no_cost_per_event_says_so() -> None:
    none = summarize([_row(100, 0.5, kept=False)], cores=2.0)
    assert none["parts"] is None and none["max_rate_kept_up"] is None
    flat = summarize([_row(100, 0.5), _row(200, 0.5)], cores=2.0)
    assert flat["loop_sustainable_events_s"] is None
