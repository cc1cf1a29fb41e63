"""torch.distributed plumbing: process group, DMP wrapping, full-state gather and load.

Runs as one process (a 1-rank gloo group on loopback) or as N ranks under ``torchrun``
(``gloo`` on CPU, ``nccl`` on GPU). Embedding tables are sharded table-wise with TorchRec's
planner and fused kernels; the embedding optimizer (RowWiseAdagrad) runs inside backward, dense
parameters use Adagrad.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingType
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from models.dlrm import RankingTrain, StreamRecModel
from models.spec import FeatureSpec

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


def build_sharded(spec: FeatureSpec, info: DistInfo, lr_sparse: float = 0.05,
                  lr_dense: float = 0.01) -> tuple[nn.Module, Any]:
    """``(DMP-wrapped RankingTrain, combined optimizer)``. Tables are created on the meta device
    and materialised shard by shard on their owner rank."""
    train = RankingTrain(StreamRecModel(spec, device=torch.device("meta")))
    apply_optimizer_in_backward(
        RowWiseAdagrad, train.model.dlrm.sparse_arch.parameters(), {"lr": lr_sparse})
    constraints = {t.name: ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value])
                   for t in spec.tables}
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


def gather_full_state(dmp: nn.Module, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """Collective: every rank calls it; rank 0 gets the unsharded StreamRecModel state_dict.

    Replicated buffers (the dense normalisation's running statistics) are first broadcast from
    rank 0: DDP syncs them only at the start of each training forward, after which every rank
    updates them with its own batch. After this call every rank holds exactly the exported model.
    """
    with torch.no_grad():
        for _, buf in dmp.named_buffers():
            if not isinstance(buf, ShardedTensor):
                dist.broadcast(buf, src=0)
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


def load_full_state(dmp: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy an unsharded StreamRecModel state into this rank's shards and replicas."""
    with torch.no_grad():
        for key, value in dmp.state_dict().items():
            name = _export_key(key)
            if name is None or name not in state:
                continue
            src = state[name]
            if isinstance(value, ShardedTensor):
                for shard in value.local_shards():
                    offs, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    region = src[tuple(slice(o, o + s) for o, s in zip(offs, sizes, strict=True))]
                    shard.tensor.copy_(region)
            else:
                value.copy_(src)
