"""Time scales of ``streamrec eval``: durations, inferred profiles, flags, and loading logs."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from streaming.contract.events import Event
from streaming.errors import ConfigError, SourceError
from trainer.evaluation.profiles import (
    OTTO,
    SYNTHETIC,
    TimeScales,
    apply_scales,
    format_duration_ms,
    infer_profile,
    load_stream,
    parse_duration_ms,
    readable_ms,
)

S, MIN, H, D = 1_000, 60_000, 3_600_000, 86_400_000
OLD_TS = 631_152_000_000  # 1990-01-01T00:00:00Z


def test_durations_parse_with_a_unit_and_round_trip() -> None:
    assert parse_duration_ms("30s") == 30 * S
    assert parse_duration_ms("5min") == parse_duration_ms("5m") == 5 * MIN
    assert parse_duration_ms("1h") == H and parse_duration_ms("1.5h") == 90 * MIN
    assert parse_duration_ms("7d") == parse_duration_ms("1w") == 7 * D
    assert parse_duration_ms(" 250ms ") == 250
    for bad in ("10", "h", "5 parsecs", "-1h", "0s", ""):
        with pytest.raises(ConfigError, match="--tick"):
            parse_duration_ms(bad, "--tick")
    for ms in (1, 999, 30 * S, 90 * S, 5 * MIN, H, 36 * H, 7 * D):
        assert parse_duration_ms(format_duration_ms(ms)) == ms
    assert format_duration_ms(D) == "1d" and format_duration_ms(90 * S) == "90s"


def test_readable_durations_are_nearest_on_a_log_scale() -> None:
    assert readable_ms(0) == 1
    assert readable_ms(18.6 * D) == 14 * D
    assert readable_ms(4 * H) == 3 * H  # log distance to 3 h < to 6 h
    assert readable_ms(70 * S) == MIN
    assert readable_ms(1.2 * 365 * D) == 365 * D


def events_over(span_ms: int, types: tuple[str, ...] = ("click",)) -> list[Event]:
    return [Event(f"e{n}", "u1", "i1", types[n % len(types)], OLD_TS + n * span_ms // 10)
            for n in range(11)]


def test_a_log_profile_is_inferred_from_its_span() -> None:
    p = infer_profile("mine", events_over(100 * D, ("click", "purchase")))
    assert p.window_ms == 7 * D  # 100 d / 20 = 5 d, nearest readable: 7 d
    assert p.tick_ms == 2 * H  # 7 d / 100 = 1.68 h -> 2 h
    assert p.popularity_half_life_ms == p.lgbm_every_ms == 7 * D
    assert p.sweep_ms == (2 * H, 12 * H, 7 * D, 35 * D)  # tick, ~window / 10, window, 5 windows
    assert p.label_mode == "implicit" and p.relevant == ("click", "purchase")
    with_views = infer_profile("mine", events_over(10 * MIN, ("view", "click")))
    assert with_views.label_mode == "exposure" and with_views.relevant == ("click",)
    assert with_views.window_ms == 30 * S and with_views.tick_ms == 200  # 0.3 s -> 200 ms
    assert min(with_views.sweep_ms) == with_views.tick_ms


def test_flags_win_and_the_rest_derives_from_them() -> None:
    p = infer_profile("mine", events_over(100 * D), TimeScales(window_ms=D, label_mode="exposure"))
    assert (p.window_ms, p.tick_ms, p.popularity_half_life_ms) == (D, 15 * MIN, D)
    assert p.label_mode == "exposure" and "flags" in p.scales_from
    q = apply_scales(SYNTHETIC, TimeScales(tick_ms=10 * S, half_life_ms=H))
    assert q.tick_ms == 10 * S and q.sweep_ms == (10 * S, 30 * S, 5 * MIN, 30 * MIN)
    assert q.popularity_half_life_ms == H and q.window_ms == SYNTHETIC.window_ms
    assert apply_scales(OTTO, TimeScales()) is OTTO
    with pytest.raises(ConfigError, match="longer than the window"):
        apply_scales(OTTO, TimeScales(tick_ms=2 * D))


def test_a_users_own_log_loads_with_old_times_and_its_rejects_counted(tmp_path: Path) -> None:
    rows = [{"event_id": f"e{n}", "user_id": f"u{n % 3}", "item_id": f"i{n % 5}",
             "event_type": "click", "ts": OLD_TS + n * H} for n in range(40)]
    rows += [{"event_id": "bad", "user_id": "u1"}, {**rows[0], "ts": 1.5},
             {**rows[1], "event_type": "like", "event_id": "x"}]
    path = tmp_path / "shop.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    loaded = load_stream(str(path), seed=1)
    assert len(loaded.events) == 40 and loaded.events[0].ts == OLD_TS
    assert loaded.profile.name == "shop" and loaded.profile.label_mode == "implicit"
    assert loaded.profile.window_ms == 2 * H  # 39 h / 20 ~ 1.95 h
    assert loaded.rejected == {"missing_field": 1, "wrong_type": 1, "unknown_event_type": 1}
    assert loaded.description["format"] == "events-jsonl" and loaded.problems


def test_a_log_without_valid_events_fails_with_the_reasons(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"event_id": "a"}\n{"event_id": "b", "ts": 1}\nnope\n'))
    with pytest.raises(SourceError, match=r"no valid event.*missing_field 2, not_json 1"):
        load_stream(str(path), seed=1)
    with pytest.raises(ConfigError, match="no such file"):
        load_stream(str(tmp_path / "absent.jsonl"), seed=1)
