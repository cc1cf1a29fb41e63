from __future__ import annotations

from collections import Counter

import orjson

from streaming.contract.events import Event
from streaming.features.labels import (
    Exposure,
    JoinState,
    LabelConfig,
    close_due,
    observe,
    on_followup,
    on_view,
    sample_negatives,
)

W = 60_000
CFG = LabelConfig(window_ms=W, allowed_lateness_ms=1_000)
T0 = 1_732_000_000_000


def ev(n: int, kind: str, ts: int, user: str = "u", item: str = "i") -> Event:
    return Event(f"e{n}", user, item, kind, ts)


def run(events: list[Event]) -> tuple[list, Counter[str], JoinState]:
    state = JoinState(max_ts=None)
    counts: Counter[str] = Counter()
    out = []
    for n, e in enumerate(events):
        observe(state, e, CFG, counts)
        if e.event_type == "view":
            on_view(state, Exposure(e.event_id, e.user_id, e.item_id, e.ts, None, "{}", [], n), CFG)
        else:
            on_followup(state, e, CFG, counts)
        out.extend(close_due(state, CFG, 0))
    return out, counts, state


def labels(examples: list) -> dict[str, tuple[int, int]]:
    return {x.example_id: (x.click, x.purchase) for x in examples}


def test_click_just_inside_and_just_outside_the_window() -> None:
    inside, _, _ = run([ev(1, "view", T0), ev(2, "click", T0 + W - 1),
                        ev(3, "view", T0 + 10 * W)])  # advances the watermark
    assert labels(inside)["e1"] == (1, 0)
    outside, counts, _ = run([ev(1, "view", T0), ev(2, "click", T0 + W + 1),
                              ev(3, "view", T0 + 10 * W)])
    assert labels(outside)["e1"] == (0, 0)
    assert counts["unmatched_followups"] == 1


def test_window_end_is_inclusive_and_purchase_implies_click() -> None:
    out, _, _ = run([ev(1, "view", T0), ev(2, "purchase", T0 + W), ev(3, "view", T0 + 10 * W)])
    assert labels(out)["e1"] == (1, 1)


def test_exposure_stays_pending_until_the_watermark_passes_the_window() -> None:
    out, _, state = run([ev(1, "view", T0), ev(2, "view", T0 + W + 999, item="j")])
    assert out == []  # watermark = T0 + W - 1: not yet closed
    out2, _, _ = run([ev(1, "view", T0), ev(2, "view", T0 + W + 1_000, item="j")])
    assert labels(out2) == {"e1": (0, 0)}
    assert "u\x1fi" in state.pending


def test_click_arriving_before_its_view_still_labels_it() -> None:
    out, counts, _ = run([ev(2, "click", T0 + 500), ev(1, "view", T0), ev(3, "view", T0 + 10 * W)])
    assert labels(out)["e1"] == (1, 0)
    assert counts["out_of_order"] == 1 and counts["late"] == 0


def test_late_events_are_counted() -> None:
    _, counts, _ = run([ev(1, "view", T0 + 5_000), ev(2, "view", T0, item="j")])
    assert counts["late"] == 1 and counts["out_of_order"] == 1


def test_other_users_and_items_do_not_label_an_exposure() -> None:
    out, counts, _ = run([ev(1, "view", T0), ev(2, "click", T0 + 1, user="v"),
                          ev(3, "click", T0 + 1, item="j"), ev(4, "view", T0 + 10 * W)])
    assert labels(out)["e1"] == (0, 0)
    assert counts["unmatched_followups"] == 2


def test_each_view_is_a_separate_exposure() -> None:
    out, _, _ = run([ev(1, "view", T0), ev(2, "view", T0 + 2 * W), ev(3, "click", T0 + 2 * W + 5),
                     ev(4, "view", T0 + 10 * W, item="z")])
    assert labels(out) == {"e1": (0, 0), "e2": (1, 0)}


def test_negative_sampling_is_deterministic_and_excludes_the_positive() -> None:
    popular = [(f"i{n}", float(100 - n)) for n in range(50)]
    a = sample_negatives("evt-1", "i0", popular, 4)
    assert a == sample_negatives("evt-1", "i0", popular, 4)
    assert len(set(a)) == 4 and "i0" not in a
    assert sample_negatives("evt-1", "i0", [("i0", 5.0)], 4) == []


def test_negatives_are_uniform_over_the_pool_unless_weighted_by_popularity() -> None:
    # One item holds 99% of the counts: weighted sampling nearly always picks it first.
    pool = [("head", 9900.0)] + [(f"t{n}", 1.0) for n in range(99)]
    first_uniform = [sample_negatives(f"e{n}", "x", pool, 1)[0] for n in range(2000)]
    first_weighted = [sample_negatives(f"e{n}", "x", pool, 1, weighted=True)[0]
                      for n in range(2000)]
    assert first_uniform.count("head") < 60  # ~1% of 2000
    assert first_weighted.count("head") > 1900
    assert len(set(first_uniform)) > 90


def test_mixed_negatives_take_a_share_from_the_users_own_items() -> None:
    from streaming.features.labels import sample_mixed_negatives

    own = ["o1", "o2", "o3", "pos"]
    pool = [(f"t{n}", 1.0) for n in range(50)] + [("o1", 1.0)]
    neg = sample_mixed_negatives("ev-1", "pos", own, pool, 4, 0.5)
    assert len(neg) == 4 and len(set(neg)) == 4 and "pos" not in neg
    assert sum(n.startswith("o") for n in neg) == 2  # round(4 * 0.5) own items
    assert neg == sample_mixed_negatives("ev-1", "pos", own, pool, 4, 0.5)  # seeded by the id
    # Fewer own items than the share asks for: topped up from the pool.
    short = sample_mixed_negatives("ev-2", "pos", ["o1"], pool, 4, 1.0)
    assert short[0] == "o1" and len(set(short)) == 4
    assert all(n.startswith("t") for n in sample_mixed_negatives("ev-3", "pos", own, pool, 3, 0.0))


def test_proportional_negatives_sample_own_and_trending_items_at_one_rate() -> None:
    from streaming.features.labels import sample_mixed_negatives

    own = ["o1", "o2", "o3"]
    pool = [(f"t{n}", 1.0) for n in range(47)]
    drawn = [n for ev in range(2000)
             for n in sample_mixed_negatives(f"ev-{ev}", "pos", own, pool, 4, None)]
    assert len(drawn) == 8000
    share = sum(n.startswith("o") for n in drawn) / len(drawn)
    assert 0.045 < share < 0.075  # 3 of 50 items: 0.06


def test_a_pending_exposure_keeps_its_features_as_text_and_reads_the_older_form() -> None:
    """The stored exposure carries its features as JSON text (decoded only when it closes);
    one stored before that change (features as an object) reads back to the same text, and both
    close into the same example."""
    features = {"user_view_1h": 0.5, "item_price": 12.25, "user_recency_s": 3.0}
    new = Exposure("v1", "u1", "i1", 1_000, "c1", orjson.dumps(features).decode(), ["i9"], 7)
    stored = orjson.loads(orjson.dumps(new.to_dict()))
    assert Exposure.from_dict(stored) == new
    older = {**stored, "f": features}
    assert Exposure.from_dict(older) == new
    state = JoinState(max_ts=None)
    on_view(state, Exposure.from_dict(older), CFG)
    state.max_ts = 1_000 + CFG.window_ms + CFG.allowed_lateness_ms
    (example,) = close_due(state, CFG, 0)
    assert example.features == features and example.recent == ["i9"] and example.click == 0
