"""What ``streamrec eval`` replays, and at which time scales each stream is evaluated.

Event time drives everything (ticks, windows, publish intervals), so a year of retail log and
two hours of synthetic clicks are evaluated with the same loop at their own scales.

Time scales come, per scale, from the command line (:class:`TimeScales`: ``--tick``,
``--window``, ``--half-life``, ``--label-mode``), else from the stream's profile (synthetic, UCI,
OTTO), else, for any other event log, from its time span (:func:`infer_profile`):

- window = span / 20, rounded to the nearest readable duration on a log scale (1, 2, 5, 10,
  15, 30 of s and min; 1, 2, 3, 6, 12 h; 1, 2, 7, 14, 30, 90, 365 d; ms below a second);
- tick = window / 100, rounded the same way (so ~2,000 ticks: one trainer step each);
- popularity / trending / buy-again half-life = the window; LightGBM retrained every window;
- publish intervals swept: the tick, window / 10, the window, 5 windows;
- label mode: ``implicit`` if the log has no views, else ``exposure``;
- relevant ("next interaction") types: clicks and purchases, whichever the log has.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streaming.contract.events import Event
from streaming.errors import ConfigError, SourceError
from streaming.sources.replay import read_log
from streaming.sources.synthetic import GroundTruth, SyntheticConfig, SyntheticStream

S, MIN, H, D = 1_000, 60_000, 3_600_000, 86_400_000
LABEL_MODES = ("implicit", "exposure")


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
    scales_from: str = "profile"  # "profile" | "inferred from the log's span" | with "flags"

    @property
    def label_mode(self) -> str:
        """The label mode this profile runs the joiner in (``stream.label_mode``)."""
        return self.settings.get("stream.label_mode", "exposure")


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

# Readable durations (ms), ascending: what inferred time scales are rounded to.
READABLE_MS: tuple[int, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 500,
    S, 2 * S, 5 * S, 10 * S, 15 * S, 30 * S,
    MIN, 2 * MIN, 5 * MIN, 10 * MIN, 15 * MIN, 30 * MIN,
    H, 2 * H, 3 * H, 6 * H, 12 * H,
    D, 2 * D, 7 * D, 14 * D, 30 * D, 90 * D, 365 * D)
_UNITS_MS = {"ms": 1, "s": S, "sec": S, "m": MIN, "min": MIN, "h": H, "d": D, "w": 7 * D}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$")


def parse_duration_ms(text: str, what: str = "duration") -> int:
    """``"30s"``, ``"5min"`` (or ``"5m"``), ``"1h"``, ``"7d"``, ``"2w"``, ``"250ms"``, ``"1.5h"``
    -> milliseconds. Raises :class:`ConfigError` (naming ``what``) for anything else, a bare
    number included (the unit is never guessed), and for durations under 1 ms."""
    m = _DURATION.match(text.lower())
    if m is None or m.group(2) not in _UNITS_MS:
        raise ConfigError(f"{what} {text!r}: expected a number and a unit "
                          f"({', '.join(_UNITS_MS)}), e.g. 30s, 5min, 1h, 7d")
    ms = round(float(m.group(1)) * _UNITS_MS[m.group(2)])
    if ms < 1:
        raise ConfigError(f"{what} {text!r}: must be at least 1 ms")
    return ms


def format_duration_ms(ms: int) -> str:
    """The shortest exact form in the largest unit (``86400000`` -> ``"1d"``, ``90000`` ->
    ``"90s"``); :func:`parse_duration_ms` reads it back."""
    for unit, size in (("d", D), ("h", H), ("min", MIN), ("s", S)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def readable_ms(ms: float) -> int:
    """The readable duration (:data:`READABLE_MS`) nearest to ``ms`` on a log scale (ties go to
    the shorter one); 1 ms for anything at or below 1 ms."""
    if ms <= 1:
        return 1
    return min(READABLE_MS, key=lambda r: (abs(math.log(r / ms)), r))


@dataclass(frozen=True, slots=True)
class TimeScales:
    """Time scales and label mode asked for on the command line; ``None`` = from the profile, or
    inferred from the log's span (see the module docstring)."""

    tick_ms: int | None = None
    window_ms: int | None = None
    half_life_ms: int | None = None
    label_mode: str | None = None

    def given(self) -> bool:
        """Whether any scale or the label mode was given."""
        return any(v is not None for v in (self.tick_ms, self.window_ms, self.half_life_ms,
                                           self.label_mode))


def infer_profile(name: str, events: Sequence[Event], scales: TimeScales | None = None
                  ) -> StreamProfile:
    """The profile of an arbitrary event log (sorted by time, non-empty) by the rules of the
    module docstring; scales given in ``scales`` win, and the others derive from them (a given
    window sets the tick and the half-life)."""
    scales = scales or TimeScales()
    span_ms = events[-1].ts - events[0].ts
    window = scales.window_ms or (readable_ms(span_ms / 20) if span_ms > 0 else S)
    tick = scales.tick_ms or min(window, readable_ms(window / 100))
    types = Counter(e.event_type for e in events)
    relevant = tuple(t for t in ("click", "purchase") if types[t]) or ("view",)
    mode = scales.label_mode or ("exposure" if types["view"] else "implicit")
    sweep = tuple(sorted({tick, *(x for x in (readable_ms(window / 10), window, 5 * window)
                                  if x > tick)}))
    return _checked(StreamProfile(
        name, tick_ms=tick, window_ms=window, sweep_ms=sweep,
        popularity_half_life_ms=scales.half_life_ms or window, lgbm_every_ms=window,
        relevant=relevant, settings={"stream.label_mode": mode},
        scales_from="flags + the log's span" if scales.given() else "the log's span"))


def apply_scales(profile: StreamProfile, scales: TimeScales) -> StreamProfile:
    """``profile`` with the scales given in ``scales``: a new tick replaces the sweep's smallest
    interval (intervals below it go); the window and half-life replace the profile's."""
    if not scales.given():
        return profile
    tick = scales.tick_ms or profile.tick_ms
    sweep = tuple(sorted({tick, *(x for x in profile.sweep_ms if x > tick)}))
    settings = dict(profile.settings)
    if scales.label_mode:
        settings["stream.label_mode"] = scales.label_mode
    return _checked(dataclasses.replace(
        profile, tick_ms=tick, sweep_ms=sweep, window_ms=scales.window_ms or profile.window_ms,
        popularity_half_life_ms=scales.half_life_ms or profile.popularity_half_life_ms,
        settings=settings, scales_from="flags + profile"))


def _checked(p: StreamProfile) -> StreamProfile:
    if p.tick_ms > p.window_ms:
        raise ConfigError(f"tick {format_duration_ms(p.tick_ms)} is longer than the window "
                          f"{format_duration_ms(p.window_ms)}: give a shorter --tick or a "
                          "longer --window")
    if p.label_mode not in LABEL_MODES:
        raise ConfigError(f"label mode {p.label_mode!r}: one of {list(LABEL_MODES)}")
    return p


@dataclass(slots=True)
class LoadedStream:
    """A stream ready to replay: its profile, its events in order, known drifts and where it
    came from (for the result); ``rejected`` counts the records not loaded, by reason."""

    profile: StreamProfile
    events: list[Event]
    drifts_ms: list[int]  # event times of known concept drifts (synthetic only)
    description: dict[str, object]
    rejected: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the first rejected records, with where
    # Synthetic only: the hidden model's regime at an event time (the candidates' ceiling).
    truth_at: Callable[[int], GroundTruth] | None = None


def load_stream(stream: str, seed: int, events: int | None = None,
                scales: TimeScales | None = None) -> LoadedStream:
    """``synthetic``, the path of a UCI Online Retail / OTTO / MovieLens 100K log (the last at
    the time scales its span gives), or of any event file in the contract's format (see
    :func:`streaming.sources.replay.read_log`), with its profile.

    Raises :class:`ConfigError` for a missing file or bad scales, :class:`SourceError` for an
    unreadable file or one in which no record is a valid event."""
    scales = scales or TimeScales()
    if stream == "synthetic":
        n = events or SYNTHETIC_EVENTS
        gen = SyntheticStream(seed, SyntheticConfig(drift_every=SYNTHETIC_DRIFT_EVERY),
                              record_truth=True)
        evs = list(gen.events(SYNTHETIC_START_MS, SYNTHETIC_RATE, limit=n))
        return LoadedStream(apply_scales(SYNTHETIC, scales), evs, [ts for _, ts in gen.drifts], {
            "generator": "streaming.sources.synthetic", "seed": seed, "rate_views_per_s": SYNTHETIC_RATE,
            "drift_every_views": SYNTHETIC_DRIFT_EVERY}, truth_at=gen.truth_at)
    path = Path(stream)
    if not path.exists():
        raise ConfigError(f"--stream {stream}: no such file (give `synthetic`, the path of a "
                          "log from ../shared/data, e.g. "
                          "../shared/data/uci-online-retail/online_retail.csv.gz, or an event "
                          "file in the contract's format: JSONL/CSV, .gz ok)")
    log = read_log(path, limit=events)
    rejected = dict(log.skipped.most_common())
    if not log.events:
        reasons = ", ".join(f"{code} {n}" for code, n in rejected.items()) or "the file is empty"
        first = "; first: " + " | ".join(log.messages[:3]) if log.messages else ""
        raise SourceError(f"{path}: no valid event to evaluate ({log.rows} records read, "
                          f"{sum(rejected.values())} rejected: {reasons}){first}")
    known = {"uci": UCI, "otto": OTTO}.get(log.format)
    if known is not None:
        profile = apply_scales(known, scales)
    else:
        profile = infer_profile(log.name, log.events, scales)
    return LoadedStream(profile, log.events, [], {
        "path": str(path), "format": log.format, "rows": log.rows, "skipped": dict(log.skipped)},
        rejected, list(log.messages))
