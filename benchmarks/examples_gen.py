"""Synthetic labelled examples (the shape the label joiner writes) for trainer benchmarks."""

from __future__ import annotations

import random

from models.spec import DEFAULT_SPEC
from streaming.contract.examples import encode_example
from streaming.io.producer import RecordProducer
from streaming.settings import Settings


def example_record(rng: random.Random, k: int) -> tuple[bytes, bytes]:
    """``(key, value)`` of example ``x{k}`` in the default wire form (MessagePack, as the
    ingest worker writes it): its click label depends on two dense features."""
    names = DEFAULT_SPEC.dense
    feats = {name: rng.gauss(0, 1) for name in names}
    click = int(feats["item_ctr"] + feats["user_category_affinity"] + rng.gauss(0, .5) > 1)
    user = f"u{rng.randrange(5000)}"
    ts = 1_732_000_000_000 + k
    return user.encode(), encode_example({
        "example_id": f"x{k}", "user_id": user, "item_id": f"i{rng.randrange(8000)}",
        "category": f"c{rng.randrange(20)}", "ts": ts,
        "labels": {"click": click, "purchase": 0}, "sampled": False,
        "dense_schema": DEFAULT_SPEC.dense_schema(), "dense": [feats[n] for n in names],
        "recent_items": [f"i{rng.randrange(8000)}" for _ in range(3)],
        # A trace as the label joiner writes it (the trainer observes stage latencies from it).
        "trace": {"event_ts": ts, "closed_ms": ts + 1_800_000, "offset": k},
    })


def produce_examples(settings: Settings, n: int, seed: int = 0) -> None:
    """``n`` examples whose click label depends on two dense features (a learnable signal)."""
    rng = random.Random(seed)
    with RecordProducer(settings, topic=settings.topics.examples, linger_ms=20) as producer:
        for k in range(n):
            key, value = example_record(rng, k)
            producer.send_raw(key, value, topic=settings.topics.examples)
