from __future__ import annotations

from streaming.ops import health


def test_only_recent_beats_with_partitions_count_as_consuming() -> None:
    raw = {
        b"ingest:h:1": health.beat_value("ingest", 4, now_ms=100_000),
        b"scorer:h:2": health.beat_value("scorer", 0, now_ms=100_000),  # joined, nothing yet
        b"trainer:h:3": health.beat_value("trainer", 2, now_ms=80_000),  # stale
        b"junk": b"{not json",
    }
    beats = health.parse(raw)
    assert {b["id"] for b in beats} == {"ingest:h:1", "scorer:h:2", "trainer:h:3"}
    assert health.consuming(beats, now_ms=101_000) == {"ingest"}
    assert health.consuming(beats, now_ms=101_000, stale_ms=30_000) == {"ingest", "trainer"}
    # `up` counts only beats of the processes it started: a run stopped seconds before left
    # beats that are still recent.
    assert health.consuming(beats, now_ms=101_000, stale_ms=30_000, since_ms=90_000) == {"ingest"}
