"""torch.distributed plumbing: process group, DMP wrapping, full-state gather and load (model
weights and optimizer state).

Runs as one process (a 1-rank gloo group on loopback) or as N ranks under ``torchrun``
(``gloo`` on CPU, ``nccl`` on GPU). Embedding tables are sharded table-wise with TorchRec's
planner and fused kernels; the embedding optimizer (RowWiseAdagrad) runs inside backward, dense
parameters use Adagrad.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import EmbeddingBagCollection
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingType
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from models.checkpoint import ROWS_SUFFIX
from models.dlrm import RankingTrain, StreamRecModel
from models.id_map import UNKNOWN_ROW
from models.spec import FeatureSpec
from streaming.errors import CheckpointError
from streaming.settings import TrainerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DistInfo:
    """This process's place in the group: ``rank`` of ``world``, its device and the backend
    (``gloo`` on CPU, ``nccl`` on GPU)."""

    rank: int
    world: int
    device: torch.device
    backend: str


def init(local_port: int | None = None) -> DistInfo:
    """Join the torchrun group if launched by torchrun, else create a 1-rank group."""
    if "WORLD_SIZE" not in os.environ:
        from streaming.ops.process import free_port

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(local_port or free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), device, backend)


def shutdown(timeout_s: float = 30.0) -> None:
    """Tear the process group down once every rank got here: a rank destroying its transport
    while a peer still finishes its last collective can make gloo abort the process. Bounded,
    so a dead peer delays exit by ``timeout_s`` at most instead of hanging it."""
    if not dist.is_initialized():
        return
    if dist.get_backend() == "gloo":  # NCCL has no bounded barrier; it tears down cleanly
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=timeout_s))
        except RuntimeError as exc:
            log.warning("ranks did not all reach shutdown: %s", exc)
    dist.destroy_process_group()


def build_sharded(spec: FeatureSpec, info: DistInfo, lr_sparse: float | None = None,
                  lr_dense: float | None = None) -> tuple[nn.Module, Any]:
    """``(DMP-wrapped RankingTrain, combined optimizer)``. Tables are created on the meta device
    and materialised shard by shard on their owner rank. ``lr_sparse`` / ``lr_dense``: the
    learning rates of the tables' RowWiseAdagrad and the dense layers' Adagrad (None:
    ``trainer.embedding_lr`` / ``trainer.dense_lr``'s defaults)."""
    defaults = TrainerSettings()
    lr_sparse = defaults.embedding_lr if lr_sparse is None else lr_sparse
    lr_dense = defaults.dense_lr if lr_dense is None else lr_dense
    train = RankingTrain(StreamRecModel(spec, device=torch.device("meta")))
    # Every embedding table (the ranker's and, with one, the retriever's) is sharded table-wise
    # and updated by the fused RowWiseAdagrad inside backward.
    ebcs = [m for m in train.modules() if isinstance(m, EmbeddingBagCollection)]
    apply_optimizer_in_backward(
        RowWiseAdagrad, [p for ebc in ebcs for p in ebc.parameters()], {"lr": lr_sparse})
    constraints = {c.name: ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value])
                   for ebc in ebcs for c in ebc.embedding_bag_configs()}
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=info.world, compute_device=info.device.type),
        constraints=constraints)
    sharders = [EmbeddingBagCollectionSharder()]
    plan = planner.collective_plan(train, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=train, device=info.device, plan=plan, sharders=sharders)
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.Adagrad(params, lr=lr_dense))
    return dmp, CombinedOptimizer([dmp.fused_optimizer, dense])


def _export_key(key: str) -> str | None:
    """DMP state key -> StreamRecModel key (``model.`` prefix of RankingTrain removed)."""
    key = key.replace("_dmp_wrapped_module.", "").replace("module.", "", 1) \
        if key.startswith(("_dmp_wrapped_module.", "module.")) else key
    return key[len("model."):] if key.startswith("model.") else None


def _broadcast_buffers(dmp: nn.Module) -> None:
    """Collective: rank 0's replicated buffers (the dense normalisation's running statistics)
    to every rank. DDP syncs them only at the start of each training forward, after which
    every rank updates them with its own batch."""
    with torch.no_grad():
        for _, buf in dmp.named_buffers():
            if not isinstance(buf, ShardedTensor):
                dist.broadcast(buf, src=0)


def gather_full_state(dmp: nn.Module, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """Collective: every rank calls it; rank 0 gets the unsharded StreamRecModel state_dict.

    Replicated buffers (the dense normalisation's running statistics) are first broadcast from
    rank 0: DDP syncs them only at the start of each training forward, after which every rank
    updates them with its own batch. After this call every rank holds exactly the exported model.
    """
    _broadcast_buffers(dmp)
    out: dict[str, torch.Tensor] = {}
    for key, value in dmp.state_dict().items():
        name = _export_key(key)
        if isinstance(value, ShardedTensor):
            full = torch.empty(value.size(), dtype=value.dtype) if info.rank == 0 else None
            value.gather(dst=0, out=full)
            if name is not None and full is not None:
                out[name] = full
        elif name is not None:
            out[name] = value.detach().cpu().clone()
    return out if info.rank == 0 else None


def _copy_into(value: torch.Tensor, src: torch.Tensor) -> None:
    """Copy the full tensor ``src`` into ``value``: its local shards if sharded, else all of it."""
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            offs, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            shard.tensor.copy_(src[tuple(slice(o, o + s) for o, s in zip(offs, sizes, strict=True))])
    else:
        value.copy_(src)


def load_full_state(dmp: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy an unsharded StreamRecModel state into this rank's shards and replicas."""
    with torch.no_grad():
        for key, value in dmp.state_dict().items():
            name = _export_key(key)
            if name is None or name not in state:
                continue
            _copy_into(value, state[name])


def _optimizer_tensors(optimizer: Any) -> dict[str, torch.Tensor]:
    """The optimizer's state tensors (live, not copies) by flat key ``param::state``, sorted.

    ``optimizer`` is the :class:`~torchrec.optim.keyed.CombinedOptimizer` of
    :func:`build_sharded`: the fused RowWiseAdagrad's per-row ``momentum1`` (a ShardedTensor
    per table, ``rows``) and dense Adagrad's ``sum`` (parameter-shaped) and ``step`` (scalar).
    Its :meth:`state_dict` returns the tensors the kernels update, so copying into them is what
    ``load_state_dict`` does. Keys do not depend on the world size."""
    out: dict[str, torch.Tensor] = {}
    for param, entries in optimizer.state_dict()["state"].items():
        for name, value in entries.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"optimizer state {param}/{name}: {type(value).__name__}, "
                                      "expected a tensor")
            out[f"{_strip_wrappers(param)}::{name}"] = value
    return dict(sorted(out.items()))


def _strip_wrappers(key: str) -> str:
    """A parameter key without DMP / DDP wrapper prefixes."""
    for prefix in ("_dmp_wrapped_module.", "module."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def gather_optimizer_state(optimizer: Any, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """Collective: rank 0 gets the full optimizer state, ``param::state`` -> CPU tensor.

    Each rank's optimizer holds the accumulators of the tables (shards) it owns only, so the
    sharded entries cannot go through ``ShardedTensor.gather`` (a collective per tensor every
    rank would have to call): every rank sends its local shards (offsets and values) to rank 0
    in one ``gather_object``, and rank 0 assembles full tensors. Replicated entries (dense
    Adagrad, identical on every rank since DDP all-reduces gradients) are rank 0's copies.
    :func:`load_optimizer_state` puts the result back, on any world size."""
    mine: list[tuple[str, tuple[int, ...], torch.dtype, list[tuple[list[int], torch.Tensor]]]] = []
    replicated: dict[str, torch.Tensor] = {}
    for key, value in _optimizer_tensors(optimizer).items():
        if isinstance(value, ShardedTensor):
            mine.append((key, tuple(value.size()), value.dtype,
                         [(list(s.metadata.shard_offsets), s.tensor.detach().cpu().clone())
                          for s in value.local_shards()]))
        elif info.rank == 0:
            replicated[key] = value.detach().cpu().clone()
    parts: list[Any] | None = [None] * info.world if info.rank == 0 else None
    dist.gather_object(mine, parts, dst=0)
    if parts is None:
        return None
    out = dict(replicated)
    for rank_part in parts:
        for key, size, dtype, shards in rank_part:
            full = out.setdefault(key, torch.zeros(size, dtype=dtype))
            for offsets, tensor in shards:
                full[tuple(slice(o, o + n) for o, n in zip(offsets, tensor.shape, strict=True))] \
                    = tensor
    return dict(sorted(out.items()))


def load_optimizer_state(optimizer: Any, state: dict[str, torch.Tensor]) -> None:
    """Collective: copy a full optimizer state (from :func:`gather_optimizer_state`) into this
    rank's shards and replicas. Raises :class:`CheckpointError` (on every rank) when it does
    not describe this optimizer: entries missing or left over over all ranks, other shapes."""
    live = _optimizer_tensors(optimizer)
    held: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(held, sorted(live))
    known = set().union(*held)
    if known != set(state):
        missing, extra = sorted(known - set(state)), sorted(set(state) - known)
        raise CheckpointError(f"optimizer state does not match this model: missing {missing[:3]}"
                              f" ({len(missing)}), unexpected {extra[:3]} ({len(extra)})")
    with torch.no_grad():
        for key, value in live.items():
            src = state[key]
            if tuple(src.shape) != tuple(value.size()):
                raise CheckpointError(f"optimizer state {key}: shape {tuple(src.shape)}, this "
                                      f"model has {tuple(value.size())}")
            _copy_into(value, src.to(value.dtype))


_TABLE_KEY = re.compile(r"embedding_bags\.([^.]+)\.weight(?:::|$)")


def table_of_key(key: str) -> str | None:
    """The embedding table a state key (model ``...embedding_bags.t_item.weight`` or optimizer
    ``...embedding_bags.t_item.weight::momentum1``) belongs to, else None."""
    m = _TABLE_KEY.search(key)
    return m.group(1) if m else None


def _local_rows(key: str, value: ShardedTensor, rows: np.ndarray
                ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(key, global row indices, values)`` of this rank's shards of ``value`` at ``rows``
    (sorted unique global row indices). Tables are sharded table-wise or row-wise: a shard
    spanning only some columns would need its columns stitched, which no plan here makes."""
    out = []
    for shard in value.local_shards():
        offs, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
        if any(o != 0 or s != full for o, s, full in
               zip(offs[1:], sizes[1:], value.size()[1:], strict=True)):
            raise CheckpointError(f"{key}: a column-wise shard; deltas need whole rows")
        lo, hi = np.searchsorted(rows, [offs[0], offs[0] + sizes[0]])
        sel = torch.from_numpy(rows[lo:hi].astype(np.int64))
        out.append((key, sel, shard.tensor.detach().cpu()[sel - offs[0]].clone()))
    return out


def gather_delta_state(dmp: nn.Module, optimizer: Any, info: DistInfo,
                       rows: dict[str, np.ndarray]
                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """Collective: rank 0 gets ``(model delta, optimizer delta)`` in the checkpoint's delta
    form (:mod:`models.checkpoint`): of every embedding table, the rows in ``rows[table]``
    (sorted unique indices, the same on every rank) as ``K`` / ``K@rows``, for the weights and
    for the row-wise optimizer state; every other tensor (dense layers, buffers, dense Adagrad)
    whole. Rows not listed must not have changed since the previous publish: the fused
    RowWiseAdagrad only updates rows a batch looked up, so the rows the batches held are those.

    Like :func:`gather_full_state`, replicated buffers are broadcast from rank 0 first."""
    _broadcast_buffers(dmp)
    empty = np.zeros(0, dtype=np.int64)
    mine: list[tuple[str, str, torch.Tensor, torch.Tensor]] = []
    model_out: dict[str, torch.Tensor] = {}
    for key, value in dmp.state_dict().items():
        name = _export_key(key)
        if isinstance(value, ShardedTensor):
            table = table_of_key(key)
            if name is None or table is None:
                raise CheckpointError(f"{key}: a sharded tensor outside the embedding tables")
            mine += [("model", *r) for r in _local_rows(name, value, rows.get(table, empty))]
        elif name is not None and info.rank == 0:
            model_out[name] = value.detach().cpu().clone()
    opt_out: dict[str, torch.Tensor] = {}
    for key, value in _optimizer_tensors(optimizer).items():
        if isinstance(value, ShardedTensor):
            table = table_of_key(key)
            if table is None:
                raise CheckpointError(f"optimizer state {key}: sharded outside the tables")
            mine += [("optimizer", *r) for r in _local_rows(key, value, rows.get(table, empty))]
        elif info.rank == 0:
            opt_out[key] = value.detach().cpu().clone()
    parts: list[Any] | None = [None] * info.world if info.rank == 0 else None
    dist.gather_object(mine, parts, dst=0)
    if parts is None:
        return None
    pieces: dict[tuple[str, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for rank_part in parts:
        for kind, key, idx, values in rank_part:
            pieces.setdefault((kind, key), []).append((idx, values))
    for (kind, key), found in sorted(pieces.items()):
        out = model_out if kind == "model" else opt_out
        out[key] = torch.cat([v for _, v in found])
        out[key + ROWS_SUFFIX] = torch.cat([i for i, _ in found])
    return model_out, opt_out


def reset_rows(dmp: nn.Module, optimizer: Any, table: str, rows: np.ndarray,
               held: np.ndarray | None = None) -> None:
    """Rows ``rows`` of embedding table ``table`` restart from the table's unknown row
    (:data:`models.id_map.UNKNOWN_ROW`) as it is now: what an id given a row of its own
    (:class:`models.id_map.IdMap`) starts from instead of the row's previous id's vector. The
    id was scored and trained on the unknown row until then, so its own row continues from
    what the model learned of ids it had not seen, not from a random vector (``bench ids``:
    +0.0014 to +0.0016 AUC over fresh initial values, LRU and LFU).

    Their optimizer state starts from the mean state of the ``held`` rows (the rows other ids
    hold) of the same shard, or from zero without any: from zero, Adagrad's first step moves
    every weight of a new row by the full learning rate on one example's gradient, while a
    hashed row shared with older ids takes damped steps (measured in ``bench ids``). Each rank
    writes the rows of the shards it owns; no collective: id-mapped tables are sharded table
    by table (:func:`build_sharded`), so the shard that holds a row holds the unknown row too.
    Raises :class:`CheckpointError` for a table that is not sharded that way."""
    idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    others = torch.from_numpy(np.setdiff1d(np.asarray([] if held is None else held, np.int64),
                                           idx.numpy()))
    with torch.no_grad():
        targets = [(k, v, True) for k, v in dmp.state_dict().items()
                   if table_of_key(k) == table and _export_key(k) is not None]
        targets += [(k, v, False) for k, v in _optimizer_tensors(optimizer).items()
                    if table_of_key(k) == table]
        for key, value, weights in targets:
            if not isinstance(value, ShardedTensor):
                raise CheckpointError(f"{key}: not sharded; id-mapped tables are sharded")
            for shard in value.local_shards():
                lo, n = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
                mine = (idx >= lo) & (idx < lo + n)
                local = idx[mine] - lo
                if not weights:
                    peers = others[(others >= lo) & (others < lo + n)] - lo
                    shard.tensor[local] = shard.tensor[peers].mean(0) if len(peers) else 0
                elif len(local):
                    if lo != UNKNOWN_ROW or tuple(shard.tensor.shape) != tuple(value.size()):
                        raise CheckpointError(f"{key}: id-mapped tables must be sharded whole "
                                              f"(table-wise), not split into {shard.metadata}")
                    shard.tensor[local] = shard.tensor[UNKNOWN_ROW].clone()
