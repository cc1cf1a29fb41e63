"""Turning scraped Prometheus samples into the dashboard's time series. Pure (no I/O).

The dashboard scrapes every component's ``/metrics`` every few seconds; a chart point is the
change between two scrapes: counters become rates, histograms become quantiles of the
observations made in between (PromQL's ``histogram_quantile`` over ``rate(...[interval])``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass(slots=True)
class Scrape:
    """What the dashboard keeps of one scrape of all components, summed over processes."""

    t: float  # s
    counters: dict[str, float] = field(default_factory=dict)  # "name" / "name{label}" -> total
    gauges: dict[str, float] = field(default_factory=dict)  # "name{label}" -> value (max)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # stage -> le -> count


def parse_scrape(texts: Iterable[str], t: float) -> Scrape:
    """Prometheus text exposition (one text per component) -> :class:`Scrape`."""
    out = Scrape(t)
    for text in texts:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if family.type == "counter" and s.name.endswith("_total"):
                    label = next(iter(s.labels.values()), "")
                    keys = [family.name] + ([f"{family.name}{{{label}}}"] if label else [])
                    for key in keys:  # the total, and per label value ({outcome}, ...)
                        out.counters[key] = out.counters.get(key, 0.0) + s.value
                elif family.type == "gauge" and not math.isnan(s.value):
                    label = next(iter(s.labels.values()), "")
                    key = f"{s.name}{{{label}}}" if label else s.name
                    out.gauges[key] = max(out.gauges.get(key, -math.inf), s.value)
                elif family.type == "histogram" and s.name.endswith("_bucket"):
                    stage = s.labels.get("stage", family.name)
                    le = math.inf if s.labels["le"] == "+Inf" else float(s.labels["le"])
                    per = out.buckets.setdefault(stage, {})
                    per[le] = per.get(le, 0.0) + s.value
    return out


def rate(prev: Scrape, cur: Scrape, name: str) -> float | None:
    """Per-second increase of counter ``name`` between two scrapes (a reset counts from 0)."""
    if name not in cur.counters or cur.t <= prev.t:
        return None
    before = prev.counters.get(name, 0.0)
    now = cur.counters[name]
    delta = now - before if now >= before else now
    return delta / (cur.t - prev.t)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """PromQL's ``histogram_quantile`` on cumulative bucket counts ``le -> count``: linear
    interpolation inside the bucket holding the q-th observation; ``None`` without
    observations; the highest finite bound when it falls in ``+Inf``."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def bucket_delta(prev: Scrape, cur: Scrape, stage: str) -> dict[float, float]:
    """Histogram bucket counts of ``now`` minus those of ``before`` (per ``le``)."""
    now = cur.buckets.get(stage, {})
    before = prev.buckets.get(stage, {})
    delta = {le: c - before.get(le, 0.0) for le, c in now.items()}
    if any(v < 0 for v in delta.values()):  # a process restarted: count its buckets afresh
        return dict(now)
    return delta
