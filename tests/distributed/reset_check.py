"""Run under torchrun (2 ranks): :func:`trainer.distributed.reset_rows` gives the rows of new
ids the unknown row's weights and, as optimizer state, the mean state of the rows other ids
hold (zero when none is given). Writes ``reset-<rank>.json`` into the directory given as
argv[1]."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import orjson
import torch
from export_check import trained  # this script's directory is on sys.path

from models.id_map import UNKNOWN_ROW
from trainer import distributed as D


def momentum(opt: object, table: str) -> list[tuple[int, torch.Tensor]]:
    """(first row, a copy of the rows) of each local shard of ``table``'s row-wise state."""
    out = []
    for key, value in D._optimizer_tensors(opt).items():
        if D.table_of_key(key) == table:
            for shard in value.local_shards():
                out.append((shard.metadata.shard_offsets[0], shard.tensor.detach().clone()))
    return out


def weights(dmp: object, table: str) -> list[tuple[int, torch.Tensor]]:
    """(first row, a copy of the rows) of each local shard of ``table``'s weights."""
    return [(shard.metadata.shard_offsets[0], shard.tensor.detach().clone())
            for key, value in dmp.state_dict().items()
            if D.table_of_key(key) == table and D._export_key(key) is not None
            for shard in value.local_shards()]


def main() -> None:
    out_dir = Path(sys.argv[1])
    info = D.init()
    _, dmp, opt = trained(info, 5)
    given, held = np.array([3, 5, 700]), np.arange(1, 800)
    before = momentum(opt, "t_user")
    weights_before = weights(dmp, "t_user")
    D.reset_rows(dmp, opt, "t_user", given, held=held)
    weight_errors = [float((w[row] - w[UNKNOWN_ROW]).abs().max())
                     for lo, w in weights(dmp, "t_user") for row in given - lo]
    distinct_before = all(float((w[3] - w[UNKNOWN_ROW]).abs().max()) > 0
                          for _, w in weights_before)
    errors, checked = [], 0
    for (lo, old), (_, new) in zip(before, momentum(opt, "t_user"), strict=True):
        peers = np.setdiff1d(held, given)
        peers = peers[(peers >= lo) & (peers < lo + len(old))] - lo
        for row in given[(given >= lo) & (given < lo + len(old))] - lo:
            errors.append(float((new[row] - old[peers].mean(0)).abs().max()))
            checked += 1
    D.reset_rows(dmp, opt, "t_user", given)
    zeroed = all(float(new[row].abs().max()) == 0.0 for lo, new in momentum(opt, "t_user")
                 for row in given[(given >= lo) & (given < lo + len(new))] - lo)
    nonzero_state = any(float(old.abs().sum()) > 0 for _, old in before)
    (out_dir / f"reset-{info.rank}.json").write_bytes(orjson.dumps({
        "rank": info.rank, "checked": checked, "max_error": max(errors, default=0.0),
        "zeroed": zeroed, "nonzero_state": nonzero_state,
        "weight_rows_checked": len(weight_errors),
        "weight_max_error": max(weight_errors, default=0.0),
        "weights_differed_before": distinct_before}))
    D.shutdown()


if __name__ == "__main__":
    main()
