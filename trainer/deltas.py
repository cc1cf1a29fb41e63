"""Delta publishing: which embedding rows changed since the last publish, and rank 0's copy of
the published state that deltas are applied to.

A full checkpoint writes every row of every table; at a million rows per table that is
hundreds of MB per publish, most of it unchanged. Between full snapshots
(``trainer.full_every``) the trainer publishes only the rows its batches looked up since the
last publish (the fused RowWiseAdagrad changes no other row), with their optimizer rows, plus
the dense parameters whole (:func:`trainer.distributed.gather_delta_state`). Rank 0 applies
each delta to :class:`Published`, its copy of the full published state, which is what the
promotion check judges and what the next full snapshot would contain.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.distributed as dist
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor

from models.checkpoint import apply_delta
from models.dlrm import StreamRecModel
from models.spec import FeatureSpec


def table_features(spec: FeatureSpec) -> dict[str, tuple[tuple[str, ...], int]]:
    """Every embedding table of the model of ``spec`` (the ranker's and, with one, the
    retriever's): table name -> (the KJT keys it looks up, its rows)."""
    model = StreamRecModel(spec, device=torch.device("meta"))
    return {c.name: (tuple(c.feature_names), c.num_embeddings)
            for m in model.modules() if isinstance(m, EmbeddingBagCollection)
            for c in m.embedding_bag_configs()}


class TouchedRows:
    """Per table, a mask of the rows the batches trained since :meth:`clear` looked up.

    One byte per row and table (1 MB per million rows): marking is a vectorised store per
    batch, and the union over ranks is one all-reduce of the masks.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.tables = table_features(spec)
        self.masks = {name: np.zeros(rows, dtype=np.uint8)
                      for name, (_, rows) in self.tables.items()}
        self._by_key: dict[str, list[str]] = {}
        for name, (keys, _) in self.tables.items():
            for key in keys:
                self._by_key.setdefault(key, []).append(name)

    def observe(self, sparse: KeyedJaggedTensor) -> None:
        """Mark the rows of one batch (``sparse``: the KJT the step trains on)."""
        values = sparse.values().numpy()
        start = 0
        for key, n in zip(sparse.keys(), sparse.length_per_key(), strict=True):
            for table in self._by_key.get(key, ()):
                self.masks[table][values[start:start + n]] = 1
            start += n

    def reduce(self) -> dict[str, np.ndarray]:
        """Collective: table -> sorted row indices touched on any rank (the same on every rank)."""
        out = {}
        for name, mask in self.masks.items():
            t = torch.from_numpy(mask)
            if dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
            out[name] = np.flatnonzero(t.numpy()).astype(np.int64)
        return out

    def clear(self) -> None:
        """Forget the marks (after a publish)."""
        for mask in self.masks.values():
            mask[:] = 0


class Published:
    """Rank 0's copy of the last published full state (model and optimizer), kept current by
    applying each delta: the state a delta version stands for, without gathering every row."""

    def __init__(self, model: Mapping[str, torch.Tensor],
                 optimizer: Mapping[str, torch.Tensor] | None) -> None:
        self.model = dict(model)
        self.optimizer = dict(optimizer) if optimizer is not None else None

    def apply(self, model_delta: Mapping[str, torch.Tensor],
              optimizer_delta: Mapping[str, torch.Tensor] | None) -> None:
        """Apply one publish's deltas (in place: the tensors are this object's own)."""
        apply_delta(self.model, model_delta)
        if self.optimizer is not None and optimizer_delta is not None:
            apply_delta(self.optimizer, optimizer_delta)
