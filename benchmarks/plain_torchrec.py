"""Baseline for bench train, run under torchrun: the same sharded model (DMP, same plan and
optimizers) trained on prebuilt in-memory batches. Rank 0 prints one JSON line."""

from __future__ import annotations

import sys
import time

import orjson
import torch
import torch.distributed as dist

from models.batch import BatchBuilder
from models.spec import DEFAULT_SPEC
from trainer import distributed as D
from trainer.loop import WARMUP_STEPS


def main() -> None:
    batch_size, steps = int(sys.argv[1]), int(sys.argv[2])
    info = D.init()
    per_rank = batch_size // info.world
    g = torch.Generator().manual_seed(info.rank)
    builder = BatchBuilder(DEFAULT_SPEC)
    batches = []
    for s in range(8):
        exs = []
        for k in range(per_rank):
            dense = torch.randn(len(DEFAULT_SPEC.dense), generator=g).tolist()
            exs.append({"example_id": f"{s}-{k}", "user_id": f"u{(s * per_rank + k) % 5000}",
                        "item_id": f"i{(k * 7 + s) % 8000}", "category": f"c{k % 20}",
                        "recent_items": [f"i{(k + d) % 8000}" for d in range(3)],
                        "labels": {"click": int(dense[0] > 1), "purchase": 0},
                        "dense_schema": DEFAULT_SPEC.dense_schema(), "dense": dense})
        batches.append(builder.build(exs))
    dmp, opt = D.build_sharded(DEFAULT_SPEC, info)
    dmp.train()
    for step in range(steps + WARMUP_STEPS):
        if step == WARMUP_STEPS:  # excluded, as the trainer's summary excludes them
            dist.barrier()
            t0 = time.perf_counter()
        b = batches[step % len(batches)]
        loss, _ = dmp(b.dense, b.sparse, b.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist.barrier()
    elapsed = time.perf_counter() - t0
    if info.rank == 0:
        print(orjson.dumps({"examples_per_s": steps * per_rank * info.world / elapsed}).decode(),
              flush=True)
    D.shutdown()


if __name__ == "__main__":
    main()
