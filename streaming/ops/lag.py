"""Consumer lag per group / topic / partition, and a Burrow-style status per group. Pure logic.

Lag is ``log-end offset - committed offset`` (kafka-exporter's ``kafka_consumergroup_lag``);
lag in seconds is the age of the oldest message not yet consumed (the one at the committed
offset), 0 when there is none.

Odd watermarks. Some brokers misreport a partition's log-end offset: Tansu (the Java-free
embedded broker, ``runtime.broker=tansu``) reports the base offset of its last record batch + 1,
which can lie *below* a consumer's committed offset. Such a lag is never shown as negative and
never hidden: :class:`PartitionLag` keeps the raw offsets, clamps ``lag`` at 0 and sets
``anomaly`` (``"log_end_below_committed"``). Apache Kafka reports exact log-end offsets, so on it
the flag stays 0.

Status (after Burrow's evaluator, adapted to polling: we see committed offsets each time we
sample, not each commit). Over the samples of the last ``window_s`` seconds, per partition:

- ``OK``: lag was 0 in some sample, or the committed offset moved and lag is not growing;
- ``WARNING``: the committed offset moves but lag grew across every sample of the window;
- ``STALLED``: lag > 0 and the committed offset did not move for the whole window;
- ``STOPPED``: lag > 0 and the committed offset has not moved for ``stopped_after_s`` (the
  consumer is gone, not just slow).

A group's status is its worst partition's. Fewer than ``min_samples`` samples: ``OK`` unless
lag is growing, since a just-started monitor cannot tell more.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise

STATUSES = ("OK", "WARNING", "STALLED", "STOPPED")
ANOMALY_LOG_END_BELOW_COMMITTED = "log_end_below_committed"


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition's lag for one group at one sample: offsets as read, ``lag`` (messages, >= 0),
    ``lag_seconds`` (s) and ``anomaly`` (see the module docstring)."""

    group: str
    topic: str
    partition: int
    log_end: int  # as the broker reports it (-1: unknown)
    committed: int  # -1: the group has committed nothing for this partition
    lag: int  # >= 0
    lag_seconds: float
    anomaly: str = ""

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (``lag_seconds`` rounded to ms)."""
        return {"group": self.group, "topic": self.topic, "partition": self.partition,
                "log_end": self.log_end, "committed": self.committed, "lag": self.lag,
                "lag_seconds": round(self.lag_seconds, 3), "anomaly": self.anomaly}


def partition_lag(group: str, topic: str, partition: int, log_end: int, committed: int,
                  oldest_unconsumed_ts_ms: int | None, now_ms: int,
                  log_start: int = 0) -> PartitionLag:
    """One partition's lag. ``committed`` < 0 means nothing committed: everything from
    ``log_start`` is unconsumed (what a new group with ``auto.offset.reset=earliest`` reads)."""
    committed = committed if committed >= 0 else -1  # librdkafka says -1001 (OFFSET_INVALID)
    start = committed if committed >= 0 else log_start
    raw = log_end - start
    anomaly = ANOMALY_LOG_END_BELOW_COMMITTED if raw < 0 else ""
    lag = max(0, raw)
    seconds = 0.0
    if lag > 0 and oldest_unconsumed_ts_ms is not None:
        seconds = max(0.0, (now_ms - oldest_unconsumed_ts_ms) / 1000)
    return PartitionLag(group, topic, partition, log_end, committed, lag, seconds, anomaly)


@dataclass(slots=True)
class _Sample:
    t: float  # s
    committed: int
    lag: int


@dataclass(slots=True)
class _History:
    samples: deque[_Sample] = field(default_factory=deque)
    last_move_t: float | None = None  # when the committed offset was last seen to change


class StatusEvaluator:
    """Keeps a sliding window of samples per (group, topic, partition) and rates groups."""

    def __init__(self, window_s: float = 60.0, stopped_after_s: float = 300.0,
                 min_samples: int = 3) -> None:
        self.window_s = window_s
        self.stopped_after_s = stopped_after_s
        self.min_samples = min_samples
        self._hist: dict[tuple[str, str, int], _History] = {}

    def add(self, lags: list[PartitionLag], t: float) -> None:
        """Record one sample of ``lags`` taken at ``t`` (monotonic s); samples older than
        ``window_s`` drop out."""
        for p in lags:
            h = self._hist.setdefault((p.group, p.topic, p.partition), _History())
            if h.last_move_t is None or (h.samples and h.samples[-1].committed != p.committed):
                h.last_move_t = t
            h.samples.append(_Sample(t, p.committed, p.lag))
            while h.samples and h.samples[0].t < t - self.window_s:
                h.samples.popleft()

    def partition_status(self, group: str, topic: str, partition: int, now: float) -> str:
        """One partition's status at ``now`` (monotonic s), one of :data:`STATUSES` (rules in the
        module docstring); ``OK`` when it was never sampled."""
        h = self._hist.get((group, topic, partition))
        if h is None or not h.samples:
            return "OK"
        s = list(h.samples)
        if any(x.lag == 0 for x in s):
            return "OK"
        covered = s[-1].t - s[0].t >= self.window_s * 0.9 and len(s) >= self.min_samples
        if h.last_move_t is not None and now - h.last_move_t >= self.stopped_after_s:
            return "STOPPED"
        if covered and all(x.committed == s[0].committed for x in s):
            return "STALLED"
        growing = len(s) >= 2 and all(b.lag > a.lag for a, b in pairwise(s))
        if growing and (covered or len(s) >= self.min_samples):
            return "WARNING"
        return "OK"

    def group_status(self, group: str, now: float) -> str:
        """A group's status: its worst partition's (``OK`` for a group never sampled)."""
        worst = 0
        for g, topic, partition in self._hist:
            if g == group:
                worst = max(worst, STATUSES.index(self.partition_status(g, topic, partition, now)))
        return STATUSES[worst]

    def groups(self) -> list[str]:
        """The groups sampled so far, sorted."""
        return sorted({g for g, _, _ in self._hist})
