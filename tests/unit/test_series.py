from __future__ import annotations

import math

from prometheus_client import generate_latest

from deploy.series import Scrape, bucket_delta, histogram_quantile, parse_scrape, rate
from streaming.ops.metrics import IngestMetrics, ScorerMetrics


def test_counters_sum_over_processes_and_become_rates() -> None:
    a, b = IngestMetrics(), IngestMetrics()
    a.record_batch({"processed": 10}, [])
    b.record_batch({"processed": 5, "invalid": 2}, [])
    first = parse_scrape([generate_latest(a.registry).decode(),
                          generate_latest(b.registry).decode()], t=100.0)
    assert first.counters["streamrec_dead_lettered"] == 2
    a.record_batch({"processed": 40}, [])
    second = parse_scrape([generate_latest(a.registry).decode(),
                           generate_latest(b.registry).decode()], t=102.0)
    assert rate(first, second, "streamrec_dead_lettered") == 0.0
    assert rate(first, second, "streamrec_events{processed}") == 20.0
    assert first.counters["streamrec_events"] == 17  # all outcomes
    assert rate(first, second, "streamrec_examples") == 0.0
    restarted = Scrape(t=104.0, counters={"streamrec_examples": 6.0})
    assert rate(second, restarted, "streamrec_examples") == 3.0  # reset: counted from 0


def test_histogram_quantile_matches_promql_interpolation() -> None:
    buckets = {0.1: 10.0, 0.5: 60.0, 1.0: 90.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == 0.1 + 0.4 * (50 - 10) / 50
    assert histogram_quantile(0.99, buckets) == 1.0  # in +Inf: the highest finite bound
    assert histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None


def test_stage_latency_quantiles_come_from_the_observations_between_scrapes() -> None:
    m = ScorerMetrics()
    stage = m.stage.labels("event_to_feed")
    for _ in range(100):
        stage.observe(0.02)
    first = parse_scrape([generate_latest(m.registry).decode()], t=0.0)
    for _ in range(100):
        stage.observe(3.0)
    second = parse_scrape([generate_latest(m.registry).decode()], t=2.0)
    delta = bucket_delta(first, second, "event_to_feed")
    p50 = histogram_quantile(0.5, delta)
    assert p50 is not None and 2.0 < p50 <= 5.0  # only the new (slow) observations
    assert second.gauges["streamrec_scorer_pending_users"] == 0.0
