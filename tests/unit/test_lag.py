from __future__ import annotations

from streaming.ops.lag import ANOMALY_LOG_END_BELOW_COMMITTED, StatusEvaluator, partition_lag


def lag(committed: int, log_end: int, group: str = "g", partition: int = 0):
    return partition_lag(group, "events", partition, log_end, committed, None, 0)


def test_lag_is_log_end_minus_committed_and_seconds_from_the_oldest_unconsumed() -> None:
    p = partition_lag("g", "events", 1, 120, 100, oldest_unconsumed_ts_ms=7_000, now_ms=10_500)
    assert (p.lag, p.lag_seconds, p.anomaly) == (20, 3.5, "")
    caught_up = partition_lag("g", "events", 1, 120, 120, 7_000, 10_500)
    assert (caught_up.lag, caught_up.lag_seconds) == (0, 0.0)


def test_nothing_committed_counts_from_the_log_start() -> None:
    p = partition_lag("g", "events", 0, 50, -1, None, 0, log_start=10)
    assert p.lag == 40 and p.committed == -1


def test_a_log_end_below_the_commit_is_flagged_not_shown_as_negative() -> None:
    # Tansu reports the last batch's base offset + 1 as the high watermark.
    p = lag(committed=500, log_end=451)
    assert p.lag == 0 and p.anomaly == ANOMALY_LOG_END_BELOW_COMMITTED
    assert (p.log_end, p.committed) == (451, 500)  # raw values kept


def feed(ev: StatusEvaluator, samples: list[tuple[float, int, int]]) -> None:
    for t, committed, log_end in samples:
        ev.add([lag(committed, log_end)], t)


def test_status_ok_when_lag_touches_zero_or_moves_without_growing() -> None:
    ev = StatusEvaluator(window_s=60)
    feed(ev, [(0, 0, 10), (20, 10, 10), (40, 15, 30), (60, 30, 35)])
    assert ev.group_status("g", 60) == "OK"
    ev2 = StatusEvaluator(window_s=60)
    feed(ev2, [(0, 0, 50), (20, 40, 80), (40, 90, 100), (60, 120, 125)])
    assert ev2.group_status("g", 60) == "OK"  # lag 50, 40, 10, 5


def test_status_warning_when_lag_grows_across_the_window() -> None:
    ev = StatusEvaluator(window_s=60)
    feed(ev, [(0, 0, 10), (20, 5, 30), (40, 10, 60), (60, 15, 100)])
    assert ev.group_status("g", 60) == "WARNING"


def test_status_stalled_then_stopped_when_the_commit_does_not_move() -> None:
    ev = StatusEvaluator(window_s=60, stopped_after_s=300)
    feed(ev, [(t, 100, 150) for t in range(0, 70, 10)])
    assert ev.group_status("g", 70) == "STALLED"
    feed(ev, [(t, 100, 150) for t in range(70, 310, 10)])
    assert ev.group_status("g", 310) == "STOPPED"


def test_a_group_is_as_bad_as_its_worst_partition() -> None:
    ev = StatusEvaluator(window_s=60)
    for t in range(0, 70, 10):
        ev.add([lag(t, t, partition=0), lag(7, 20, partition=1)], float(t))
    assert ev.partition_status("g", "events", 0, 70) == "OK"
    assert ev.group_status("g", 70) == "STALLED"
    assert ev.groups() == ["g"]
