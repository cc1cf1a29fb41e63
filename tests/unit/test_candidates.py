"""Candidate generation: source order, de-duplication, exclusions and the limit."""

from __future__ import annotations

from streaming.features.candidates import (
    CandidateReads,
    SourceSizes,
    found_before_retrieval,
    generate,
    source_seeds,
    source_sizes,
    top_categories,
)
from streaming.settings import Settings

H = 3_600_000


def reads(**kw: object) -> CandidateReads:
    base: dict[str, object] = {"recent": [], "covisit": {}, "by_category": {}, "new_items": [],
                               "popular": [], "trending": []}
    base.update(kw)
    return CandidateReads(**base)  # type: ignore[arg-type]


def test_sources_in_priority_order_and_each_item_once() -> None:
    r = reads(recent=["a", "b"],
              covisit={"a": [("c", 5.0), ("d", 1.0)], "b": [("e", 3.0), ("c", 2.0)]},
              trending=[("hit", 9.0), ("c", 8.0)],
              by_category={"shoes": [("s1", 4.0)]},
              new_items=[("n1", 1.0)], popular=[("a", 99.0), ("p1", 50.0)])
    assert generate(r, 100, repeat="exclude_purchased") == [
        ("a", "recent"), ("b", "recent"),
        ("c", "covisit"), ("e", "covisit"), ("d", "covisit"),  # interleaved by rank
        ("hit", "trending"), ("s1", "category"), ("n1", "new"), ("p1", "popular")]


def test_purchased_items_are_left_out_unless_asked_and_the_limit_holds() -> None:
    r = reads(recent=["a"], trending=[("b", 2.0), ("c", 1.0)], purchased={"b"})
    assert generate(r, 10, repeat="exclude_purchased") == [("a", "recent"), ("c", "trending")]
    assert generate(r, 10, repeat="allow") == [
        ("a", "recent"), ("b", "trending"), ("c", "trending")]
    assert generate(r, 2, repeat="exclude_purchased") == [("a", "recent"), ("c", "trending")]


def test_top_categories_by_decayed_affinity() -> None:
    user = {"c.shoes.a": 8.0, "c.shoes.s": 8.0, "c.shoes.t": 0.0,
            "c.hats.a": 3.0, "c.hats.t": float(2 * H)}
    # A day's half-life: shoes (8 at t=0) still leads hats (3 at 2 h) at 2 h.
    assert top_categories(user, 2 * H, 24 * H, 2) == ["shoes", "hats"]
    # A 1 h half-life: shoes has decayed to 2 by then.
    assert top_categories(user, 2 * H, H, 1) == ["hats"]


def test_own_items_seed_covisitation_after_the_recent_ones_within_its_cap() -> None:
    r = reads(recent=["a"], again=[("a", 9.0), ("z", 5.0)],
              covisit={"a": [("c", 5.0), ("d", 1.0)], "z": [("y", 3.0), ("x", 1.0)]},
              trending=[("hit", 9.0)])
    assert generate(r, 100) == [
        ("a", "recent"), ("z", "again"),
        ("c", "covisit"), ("y", "covisit"), ("d", "covisit"), ("x", "covisit"),
        ("hit", "trending")]
    # At most 3 from co-visitation: the trending item still gets in.
    assert generate(r, 100, covisit_limit=3) == [
        ("a", "recent"), ("z", "again"),
        ("c", "covisit"), ("y", "covisit"), ("d", "covisit"), ("hit", "trending")]


def test_retrieved_items_follow_covisitation_within_their_own_bound() -> None:
    r = reads(recent=["a"], covisit={"a": [("c", 5.0)]}, trending=[("t", 1.0)],
              retrieved=[("a", 0.9), ("r1", 0.8), ("c", 0.7), ("r2", 0.6), ("r3", 0.5)])
    # "a" and "c" were found earlier (credited to recent / covisit); two retrieved items fit.
    assert generate(r, 100, retrieval_limit=2) == [
        ("a", "recent"), ("c", "covisit"), ("r1", "retrieval"), ("r2", "retrieval"),
        ("t", "trending")]
    assert ("r3", "retrieval") in generate(r, 100)  # no bound of its own: all of them


def test_neighbour_items_follow_covisitation_and_precede_the_retriever() -> None:
    r = reads(recent=["a"], again=[("z", 2.0)], covisit={"a": [("c", 5.0)]},
              neighbours=[("z", 0.9), ("n1", 0.5), ("c", 0.4), ("n2", 0.1)],
              retrieved=[("n1", 0.9), ("r1", 0.8)], trending=[("t", 1.0)], purchased={"n2"})
    # Own ("z") and co-visited ("c") items keep their first source; the rest are "neighbours".
    assert generate(r, 100) == [
        ("a", "recent"), ("z", "again"), ("c", "covisit"), ("n1", "neighbours"),
        ("n2", "neighbours"), ("r1", "retrieval"), ("t", "trending")]
    assert ("n2", "neighbours") not in generate(r, 100, repeat="exclude_purchased")
    assert found_before_retrieval(r) == 1 + 1 + 1 + 4


def test_the_retriever_is_asked_past_what_the_sources_ahead_of_it_find() -> None:
    r = reads(recent=["a", "a", "b"], again=[("z", 1.0)],
              covisit={"a": [("c", 5.0), ("d", 4.0)], "b": [("c", 2.0)]},
              retrieved=[("a", 0.9), ("c", 0.8), ("z", 0.7), ("r1", 0.6), ("r2", 0.5)])
    ahead = found_before_retrieval(r)
    assert ahead == 2 + 1 + 3 and found_before_retrieval(r, covisit_limit=1) == 2 + 1 + 1
    # Asked for its budget (2) plus what is found ahead, the source gets its 2 new items.
    r.retrieved = r.retrieved[:2 + ahead]
    assert [i for i, s in generate(r, 100, retrieval_limit=2) if s == "retrieval"] == ["r1", "r2"]


def test_an_item_listed_twice_is_added_once_and_the_limit_stops_mid_list() -> None:
    r = reads(recent=["a", "b"], again=[("b", 3.0), ("z", 1.0)],
              covisit={"a": [("c", 5.0), ("z", 4.0), ("e", 1.0)], "b": [("c", 2.0), ("d", 1.0)]},
              popular=[("d", 9.0), ("p1", 5.0), ("p2", 4.0)], interacted={"e"})
    # The policy keeps out "e" and the recent items; "c", "z" and "d" come once, first found.
    assert generate(r, 100, repeat="exclude_interacted") == [
        ("z", "again"), ("c", "covisit"), ("d", "covisit"), ("p1", "popular"), ("p2", "popular")]
    assert generate(r, 6) == [("a", "recent"), ("b", "recent"), ("z", "again"),
                              ("c", "covisit"), ("d", "covisit"), ("e", "covisit")]


def test_source_seeds_are_the_newest_distinct_recent_items_and_the_top_categories() -> None:
    user = {"c.a.a": 1.0, "c.a.t": 0, "c.b.a": 5.0, "c.b.t": 0, "c.c.a": 3.0, "c.c.t": 0}
    sizes = SourceSizes(covisit_seeds=2, top_categories=2)
    seeds, cats = source_seeds(user, ["x", "x", "y", "z"], 0, 1000, sizes)
    assert seeds == ["x", "y"] and cats == ["b", "c"]


def test_source_sizes_follow_the_serving_settings() -> None:
    s = Settings.load(env={}, overrides={"serving.covisit_seeds": "7",
                                         "serving.popular_candidates": "9"}).serving
    sizes = source_sizes(s)
    assert (sizes.covisit_seeds, sizes.popular_candidates) == (7, 9)
    assert sizes.category_candidates == s.category_candidates
