from __future__ import annotations

import math

import numpy as np

from trainer.metrics import Prequential, auc, log_loss


def test_auc_matches_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    s = rng.random(200).round(1)  # many ties
    y = (rng.random(200) < 0.3).astype(float)
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
    assert math.isclose(auc(s, y), pairwise / (len(pos) * len(neg)))
    assert auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert math.isnan(auc(np.array([0.5]), np.array([1])))


def test_log_loss_and_window() -> None:
    assert math.isclose(log_loss(np.array([0.5, 0.5]), np.array([0, 1])), math.log(2))
    pre = Prequential(window=100)
    for _ in range(5):
        pre.add(np.full(40, 0.5), np.array([0, 1] * 20))
    summary = pre.summary()
    assert 100 <= summary["n"] < 140 and pre.total == 200
    assert math.isclose(summary["logloss"], math.log(2))


def test_ingest_retries_a_batch_with_backoff_while_redis_is_away() -> None:
    import asyncio

    from streaming.errors import StoreError
    from streaming.ingest import agent as ingest
    from streaming.ops.metrics import IngestMetrics

    class Flaky:
        calls = 0

        async def process(self, partition: int, msgs: list) -> str:
            Flaky.calls += 1
            if Flaky.calls <= 2:
                raise StoreError("Redis is loading the dataset in memory")
            return f"p{partition}:{len(msgs)}"

    metrics = IngestMetrics()
    out = asyncio.run(ingest._process_until_stored(Flaky(), {0: [1, 2]}, metrics,  # type: ignore[arg-type]
                                                   max_backoff_s=0.01))
    assert out == ["p0:2"] and Flaky.calls == 3
    assert metrics.redis_errors.labels("ingest")._value.get() == 2
