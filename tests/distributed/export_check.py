"""Run under torchrun (2 ranks): the exported checkpoint scores exactly like the sharded model,
and loading it back into a fresh sharded model reproduces those scores.

Writes ``result.json`` into the directory given as argv[1].
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import orjson
import torch
import torch.distributed as dist

from models.batch import BatchBuilder
from models.checkpoint import Manifest, load_checkpoint, write_checkpoint
from models.dlrm import StreamRecModel
from models.spec import FeatureSpec, TableSpec, sequence_features
from trainer import distributed as D

SPEC = FeatureSpec(tables=(TableSpec("t_user", 997, ("user_id",)),
                           TableSpec("t_item", 991, ("item_id", "recent_items")),
                           TableSpec("t_category", 31, ("category",))))


if len(sys.argv) > 2:  # the feature interaction to check (dot or dcn), "+attention": DIN
    interaction, _, attention = sys.argv[2].partition("+")
    SPEC = dataclasses.replace(SPEC, interaction=interaction)
    if attention:
        SPEC = dataclasses.replace(
            SPEC, sequence="attention", sequence_len=3,
            tables=tuple(dataclasses.replace(t, features=(*t.features, *sequence_features(3)))
                         if t.name == "t_item" else t for t in SPEC.tables))


def examples(seed: int, n: int = 64) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        u, i = int(torch.randint(0, 300, (1,), generator=g)), int(torch.randint(0, 300, (1,), generator=g))
        dense = torch.randn(len(SPEC.dense), generator=g).tolist()
        out.append({"example_id": f"{seed}-{k}", "user_id": f"u{u}", "item_id": f"i{i}",
                    "category": f"c{i % 7}", "recent_items": [f"i{(i + d) % 300}" for d in range(k % 4)],
                    "labels": {"click": int(dense[0] > 0.5), "purchase": 0},
                    "dense_schema": SPEC.dense_schema(), "dense": dense})
    return out


def trained(info: D.DistInfo, steps: int) -> tuple[BatchBuilder, torch.nn.Module, Any]:
    """A builder and the sharded model with its optimizer after ``steps`` steps on
    :func:`examples` (each rank its own)."""
    builder = BatchBuilder(SPEC)
    dmp, opt = D.build_sharded(SPEC, info)
    for step in range(steps):
        b = builder.build(examples(100 * step + info.rank))
        loss, _ = dmp(b.dense, b.sparse, b.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return builder, dmp, opt


def main() -> None:
    out_dir = Path(sys.argv[1])
    info = D.init()
    builder, dmp, _ = trained(info, 15)
    full = D.gather_full_state(dmp, info)
    probe = builder.build(examples(9999 + info.rank))
    dmp.eval()
    with torch.no_grad():
        _, sharded = dmp(probe.dense, probe.sparse, probe.labels)
    if info.rank == 0:
        write_checkpoint(out_dir, full, Manifest(1, 0, 15, 0, {}, {}, SPEC.digest()), keep=2)
    dist.barrier()
    _, state = load_checkpoint(out_dir / "v00000001", SPEC.digest())
    # A fresh sharded model loaded from the export (what a resumed trainer does).
    dmp2, _ = D.build_sharded(SPEC, info)
    D.load_full_state(dmp2, state)
    dmp2.eval()
    with torch.no_grad():
        _, reloaded = dmp2(probe.dense, probe.sparse, probe.labels)
    # The scorer's view: the plain module, no torch.distributed involved.
    plain = StreamRecModel(SPEC)
    plain.load_state_dict(state)
    plain.eval()
    with torch.no_grad():
        exported = plain(probe.dense, probe.sparse)
    rows: list = [None] * info.world
    dist.all_gather_object(rows, {
        "rank": info.rank,
        "export_vs_sharded": float((exported - sharded).abs().max()),
        "reloaded_vs_sharded": float((reloaded - sharded).abs().max()),
        "batch": len(probe),
    })
    if info.rank == 0:
        (out_dir / "result.json").write_bytes(orjson.dumps(rows))
    D.shutdown()


if __name__ == "__main__":
    main()
