"""The ranking model: TorchRec's DLRM behind a dense normalisation, built from the feature spec.

``StreamRecModel(dense: B x D, sparse: KJT) -> logits: B``. ``DenseNormArch`` standardises
the dense inputs with running statistics (BatchNorm without affine), so counts, rates and times
of different scales enter the DenseArch comparably. ``RankingTrain`` adds the loss for training,
in the shape TorchRec's ``DLRMTrain`` has.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.models.dlrm import DLRM
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from models.spec import FeatureSpec


def embedding_configs(spec: FeatureSpec) -> list[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(name=t.name, embedding_dim=spec.embedding_dim,
                           num_embeddings=t.num_embeddings, feature_names=list(t.features))
        for t in spec.tables
    ]


class DenseNormArch(nn.Module):
    """``B x D -> B x D``: per-feature standardisation with running mean/variance."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features, affine=False, momentum=0.01)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.norm(dense)


class StreamRecModel(nn.Module):
    def __init__(self, spec: FeatureSpec, device: torch.device | None = None) -> None:
        super().__init__()
        if spec.dense_arch[-1] != spec.embedding_dim:
            raise ValueError("the last dense_arch layer must equal embedding_dim (DLRM)")
        self.dense_norm = DenseNormArch(len(spec.dense))
        self.dlrm = DLRM(
            embedding_bag_collection=EmbeddingBagCollection(
                tables=embedding_configs(spec), device=device),
            dense_in_features=len(spec.dense),
            dense_arch_layer_sizes=list(spec.dense_arch),
            over_arch_layer_sizes=list(spec.over_arch),
            dense_device=device if device is None or device.type != "meta" else None,
        )

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return self.dlrm(self.dense_norm(dense), sparse).squeeze(-1)


class RankingTrain(nn.Module):
    """``(dense, sparse, labels) -> (loss, logits)``; the module DMP wraps for training."""

    def __init__(self, model: StreamRecModel) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(dense, sparse)
        return self.loss_fn(logits, labels), logits.detach()
