from __future__ import annotations

import math
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.contract.examples import dense_feature_names
from streaming.features.state import (
    EntityState,
    FeatureConfig,
    decay,
    decayed_add,
    decayed_value,
    feature_rows,
    feature_values,
    indexed_feature_rows,
    item_columns,
    item_fields,
    price_values,
)

H = 3_600_000
T0 = 1_732_000_000_000


def test_decay_halves_per_half_life() -> None:
    assert decay(8.0, T0, T0 + 3 * H, H) == 1.0
    assert decay(8.0, T0, T0 - H, H) == 8.0  # never grows into the past


def test_two_events_one_half_life_apart() -> None:
    v, t = decayed_add(0.0, T0, T0, 1.0, H)
    v, t = decayed_add(v, t, T0 + H, 1.0, H)
    assert (v, t) == (1.5, T0 + H)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 48 * H), min_size=1, max_size=30), st.randoms())
def test_counter_does_not_depend_on_arrival_order(offsets: list[int], rnd: random.Random) -> None:
    def fold(order: list[int]) -> float:
        s = EntityState()
        for off in order:
            s.add_decayed("view", T0 + off, 1.0, (("1h", H),))
        return decayed_value(s.fields, "view", "1h", H, T0 + 50 * H)

    shuffled = offsets[:]
    rnd.shuffle(shuffled)
    expected = sum(2.0 ** (-(50 * H - off) / H) for off in offsets)
    assert math.isclose(fold(offsets), expected, rel_tol=1e-9, abs_tol=1e-300)
    assert math.isclose(fold(shuffled), fold(offsets), rel_tol=1e-9, abs_tol=1e-300)


def test_feature_values_cover_the_declared_names_and_are_finite() -> None:
    user, item = EntityState(), EntityState()
    for kind in ("view", "click"):
        user.add_decayed(kind, T0, 1.0, (("1h", H), ("1d", 24 * H)))
        item.add_decayed(kind, T0, 1.0, (("1h", H), ("1d", 24 * H)))
    user.add_decayed("c.shoes", T0, 3.0, (("a", 24 * H), ("s", H)))
    user.set_max("last", T0)
    item.incr("n.view")
    item.set_min("first", T0 - 10_000)
    values = feature_values(user.fields, [("i1", T0)], item.fields, "shoes", 9.0, T0 + H)
    assert list(values) == dense_feature_names()
    assert all(math.isfinite(v) for v in values.values())
    assert math.isclose(values["user_view_1h"], math.log1p(0.5))
    assert math.isclose(values["user_category_affinity"], math.log1p(3.0 * 2 ** (-1 / 24)))
    assert math.isclose(values["user_category_affinity_short"], math.log1p(1.5))  # 1 h later
    assert math.isclose(values["item_age_s"], math.log1p(3610.0))
    assert values["item_ctr"] == (0 + 20 * 0.05) / (1 + 20)
    empty = feature_values({}, [], {}, None, None, T0)
    assert empty["user_recency_s"] == -1.0 and empty["price"] == -1.0


def test_user_item_entries_count_touches_and_decay_their_weight() -> None:
    from streaming.features.state import touch_user_item

    e1 = touch_user_item(None, "view", T0, 1.0, H)
    e2 = touch_user_item(e1, "purchase", T0 + H, 10.0, H)
    assert e2 == (1.0, 0.0, 1.0, float(T0 + H), 10.5)
    # An older event adds its decayed weight and keeps the last touch.
    assert touch_user_item(e2, "click", T0, 3.0, H) == (1.0, 1.0, 1.0, float(T0 + H), 12.0)
    values = feature_values({}, [], {}, None, None, T0 + 2 * H,
                            cfg=FeatureConfig(user_item_half_life_ms=H), user_item=e2)
    assert values["ui_purchase_count"] == math.log1p(1.0)
    assert values["ui_recency_s"] == math.log1p(3600.0)
    assert values["ui_weight"] == math.log1p(10.5 / 2)
    untouched = feature_values({}, [], {}, None, None, T0)
    assert (untouched["ui_view_count"], untouched["ui_recency_s"], untouched["ui_weight"]) == (
        0.0, -1.0, 0.0)


def _grouping_case(seed: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Users and items with some fields absent, categories shared, missing or empty."""
    rnd = random.Random(seed)
    users: list[dict[str, object]] = []
    for _ in range(4):
        u: dict[str, object] = {}
        for t in ("view", "click", "purchase"):
            if rnd.random() < 0.7:
                u[f"{t}.t"] = float(T0 - rnd.randrange(48 * H))
                u.update({f"{t}.{label}": rnd.random() * 9 for label, _ in FeatureConfig().half_lives_ms})
        for c in ("shoes", "hats"):
            if rnd.random() < 0.7:
                u.update({f"c.{c}.a": rnd.random() * 5, f"c.{c}.s": rnd.random(),
                          f"c.{c}.t": float(T0 - rnd.randrange(H))})
        users.append(u)
    items: list[dict[str, object]] = []
    for _ in range(9):
        it: dict[str, object] = {name: rnd.random() * 50 for name, _ in item_fields()
                                 if rnd.random() < 0.7}
        cat = rnd.choice(["shoes", "hats", "", None])
        if cat is not None:
            it["cat"] = cat
        items.append(it)
    return users, items


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.booleans())
def test_grouped_rows_equal_rows_computed_alone(seed: int, one_time: bool) -> None:
    """The scorer's shape (users against shared items, one time: each user, pair and item
    computed once) gives, bit for bit, what each row computed on its own gives (training)."""
    users, items = _grouping_case(seed)
    rnd = random.Random(seed)
    n = 40
    user_index = np.array([rnd.randrange(len(users)) for _ in range(n)])
    item_index = np.array([rnd.randrange(len(items)) for _ in range(n)])
    counts = np.array([float(rnd.randrange(20)) for _ in range(n)])
    prices = [rnd.choice([None, -1.0, 0.0, 12.5]) for _ in items]
    times = T0 if one_time else [T0 - rnd.randrange(H) for _ in range(n)]
    own = [rnd.choice([None, (1.0, 2.0, 0.0, float(T0 - H), 3.0)]) for _ in range(n)]
    grouped = indexed_feature_rows(users, user_index, counts, item_columns(items),
                                   [it.get("cat") for it in items],  # type: ignore[misc]
                                   price_values(prices, len(prices)), item_index, times,
                                   user_items=own)
    for k in range(n):
        alone = feature_rows([users[user_index[k]]], [int(counts[k])], [items[item_index[k]]],
                             [None], [prices[item_index[k]]],
                             times if one_time else [times[k]],  # type: ignore[index]
                             user_items=[own[k]])
        assert alone[0].tobytes() == grouped[k].tobytes()


def test_a_batch_of_state_hashes_parses_as_each_hash_does() -> None:
    """parse_state_hashes (one orjson parse for every number of a batch) gives what
    parse_state_hash gives hash by hash: the same floats to the bit, ``cat`` as text, and the
    slow path when a value is not JSON (inf)."""
    from streaming.features.state import parse_state_hash, parse_state_hashes

    rng = random.Random(5)
    replies = []
    for n in range(30):
        flat = [b"last", b"1796650220520", b"n.view", b"7"]
        for k in range(n % 7):
            flat += [f"c.k{k}.a".encode(), (b"%.17g" % (rng.random() * 10 ** rng.randint(-9, 9)))]
        if n % 3:
            flat += [b"cat", f"c{n}".encode()]
        replies.append(flat)
    replies.append([])
    expected = [parse_state_hash(zip(f[::2], f[1::2], strict=True)) for f in replies]
    got = parse_state_hashes(replies)
    assert got == expected
    assert all(type(v) is float for h in got for k, v in h.items() if k != "cat")
    assert parse_state_hashes([[b"price", b"inf"], [b"cat", b"x"]]) == [
        {"price": math.inf}, {"cat": "x"}]
