"""What ``streamrec eval`` replays, and at which time scales each stream is evaluated.

Event time drives everything (ticks, windows, publish intervals), so a year of retail log and
two hours of synthetic clicks are evaluated with the same loop at their own scales.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from streaming.contract.events import Event
from streaming.errors import ConfigError
from streaming.sources.replay import read_log
from streaming.sources.synthetic import SyntheticConfig, SyntheticStream

S, MIN, H, D = 1_000, 60_000, 3_600_000, 86_400_000


@dataclass(frozen=True, slots=True)
class StreamProfile:
    """The time scales (ms of event time) at which one stream is evaluated, what counts as
    relevant for ranking, and the settings its labelling needs."""

    name: str
    tick_ms: int  # events are fed, and a trainer step taken, per tick of event time
    window_ms: int  # per-window metrics; feeds are ranked at each window's start
    sweep_ms: tuple[int, ...]  # publish intervals; "never" (the frozen model) is always added
    popularity_half_life_ms: int
    lgbm_every_ms: int  # the batch model is retrained from scratch this often
    relevant: tuple[str, ...]  # event types that count as a user's "next interactions"
    settings: dict[str, str] = field(default_factory=dict)  # labelling for this stream


SYNTHETIC = StreamProfile(
    "synthetic", tick_ms=5 * S, window_ms=5 * MIN, sweep_ms=(5 * S, 30 * S, 5 * MIN, 30 * MIN),
    popularity_half_life_ms=30 * MIN, lgbm_every_ms=10 * MIN, relevant=("click", "purchase"),
    # Implicit labels (clicks and purchases, sampled negatives): the feed ranks by the chance
    # of an interaction; see the README ("Evaluation") for what exposure labels give instead.
    settings={"stream.label_mode": "implicit"})
UCI = StreamProfile(
    "uci-online-retail", tick_ms=H, window_ms=7 * D, sweep_ms=(H, D, 7 * D, 30 * D),
    popularity_half_life_ms=7 * D, lgbm_every_ms=7 * D, relevant=("purchase",),
    settings={"stream.label_mode": "implicit"})
OTTO = StreamProfile(
    "otto", tick_ms=H, window_ms=D, sweep_ms=(H, D, 7 * D),
    popularity_half_life_ms=D, lgbm_every_ms=D, relevant=("click", "purchase"),
    settings={"stream.label_mode": "exposure", "stream.attribution_window_ms": str(30 * MIN)})
PROFILES = {p.name: p for p in (SYNTHETIC, UCI, OTTO)}

# The synthetic stream's defaults: ~100 min of event time with a drift every 25 min.
SYNTHETIC_RATE = 20.0  # views per second of event time
SYNTHETIC_EVENTS = 150_000
SYNTHETIC_DRIFT_EVERY = 30_000  # views
SYNTHETIC_START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z: fixed, so runs repeat


@dataclass(slots=True)
class LoadedStream:
    """A stream ready to replay: its profile, its events in order, known drifts and where it
    came from (for the result)."""

    profile: StreamProfile
    events: list[Event]
    drifts_ms: list[int]  # event times of known concept drifts (synthetic only)
    description: dict[str, object]


def load_stream(stream: str, seed: int, events: int | None = None) -> LoadedStream:
    """``synthetic`` or the path of a UCI Online Retail / OTTO log (see streaming.sources.replay)."""
    if stream == "synthetic":
        n = events or SYNTHETIC_EVENTS
        gen = SyntheticStream(seed, SyntheticConfig(drift_every=SYNTHETIC_DRIFT_EVERY))
        evs = list(gen.events(SYNTHETIC_START_MS, SYNTHETIC_RATE, limit=n))
        return LoadedStream(SYNTHETIC, evs, [ts for _, ts in gen.drifts], {
            "generator": "streaming.sources.synthetic", "seed": seed, "rate_views_per_s": SYNTHETIC_RATE,
            "drift_every_views": SYNTHETIC_DRIFT_EVERY})
    path = Path(stream)
    if not path.exists():
        raise ConfigError(f"--stream {stream}: no such file (give `synthetic` or the path of a "
                          "log from ../shared/data, e.g. "
                          "../shared/data/uci-online-retail/online_retail.csv.gz)")
    log = read_log(path, limit=events)
    profile = UCI if log.name == "uci-online-retail" else OTTO
    return LoadedStream(profile, log.events, [], {
        "path": str(path), "rows": log.rows, "skipped": dict(log.skipped)})
