"""The ranking model: TorchRec's DLRM behind a dense normalisation, built from the feature spec.

``StreamRecModel(dense: B x D, sparse: KJT) -> logits: B``. ``DenseNormArch`` standardises
the dense inputs with running statistics (BatchNorm without affine), so counts, rates and times
of different scales enter the DenseArch comparably. With ``spec.retrieval_dim > 0`` the model
also holds the two-tower retriever (:class:`models.two_tower.TwoTower`) as ``retriever``: one
module, one state_dict, one checkpoint, so ranker and retriever are always of the same step.
``RankingTrain`` adds the loss for training, in the shape TorchRec's ``DLRMTrain`` has.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.models.dlrm import (
    DLRM,
    DLRM_DCN,
    InteractionArch,
    InteractionDCNArch,
    OverArch,
    choose,
)
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from models.norm import Standardise
from models.spec import FeatureSpec, position_of
from models.two_tower import InBatchSoftmax, ItemFrequency, TwoTower, history_without_target


def embedding_configs(spec: FeatureSpec) -> list[EmbeddingBagConfig]:
    """One :class:`EmbeddingBagConfig` per table of ``spec``: ``num_embeddings x embedding_dim``
    rows, looked up by the table's features (sum pooling)."""
    return [
        EmbeddingBagConfig(name=t.name, embedding_dim=spec.embedding_dim,
                           num_embeddings=t.num_embeddings, feature_names=list(t.features))
        for t in spec.tables
    ]


class DenseNormArch(nn.Module):
    """``B x D -> B x D``: per-feature standardisation with running mean/variance.

    Args:
        in_features (int): ``D``, the number of dense features.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.norm = Standardise(in_features)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        """``dense: B x D float32`` -> ``B x D``; training mode uses and updates batch statistics
        (a batch of one uses the running ones), eval mode the running ones."""
        return self.norm(dense)


class TargetAttentionArch(nn.Module):
    """DIN's activation unit: the user's recent items weighted by their relevance to the
    candidate item, ``(query: B x E, keys: B x L x E, mask: B x L) -> B x E``.

    Each weight is an MLP of ``[q, k, q - k, q * k]`` (``B x L x 4E`` -> ``B x L``), not
    normalised by a softmax (as in DIN: the sum keeps how much of the history is relevant,
    not only which part); padded positions (``mask`` False) weigh 0.

    Args:
        embedding_dim (int): ``E``.
        hidden (int): the MLP's hidden width.
    """

    def __init__(self, embedding_dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4 * embedding_dim, hidden), nn.PReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, query: torch.Tensor, keys: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """``query: B x E``, ``keys: B x L x E``, ``mask: B x L`` bool -> ``B x E``."""
        q = query.unsqueeze(1).expand_as(keys)  # B x L x E
        w = self.mlp(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)  # B x L
        w = w * mask.to(w.dtype)
        return (w.unsqueeze(-1) * keys).sum(dim=1)


class StreamRecModel(nn.Module):
    """The ranking model: :class:`DenseNormArch` then TorchRec's :class:`DLRM`, sized by ``spec``.

    Notation: ``B`` batch size, ``D`` ``len(spec.dense)`` dense features, ``F`` ``len(spec.sparse)``
    sparse features, ``E`` ``spec.embedding_dim``. The sparse arch pools one ``E``-vector per
    feature (``B x F x E``), the dense arch maps ``B x D`` to ``B x E``, the interaction arch
    appends the pairwise dot products of those ``F + 1`` vectors (``B x (E + F(F+1)/2)``) and the
    over arch maps that to one logit per row. With ``spec.interaction == "dcn"`` the interaction
    is TorchRec's low-rank cross network over the ``B x (F + 1)E`` concatenation (``DLRM_DCN``).

    Args:
        spec (FeatureSpec): dense names, tables, embedding dim and layer sizes;
            ``spec.dense_arch[-1]`` must equal ``spec.embedding_dim`` (else ``ValueError``).
        device (Optional[torch.device]): where tables and dense layers are created; ``meta``
            creates the tables unmaterialised (for sharding), the dense layers on the default
            device.

    Example::

        model = StreamRecModel(DEFAULT_SPEC)
        logits = model(batch.dense, batch.sparse)  # ExampleBatch from BatchBuilder; B logits
    """

    def __init__(self, spec: FeatureSpec, device: torch.device | None = None) -> None:
        super().__init__()
        if spec.dense_arch[-1] != spec.embedding_dim:
            raise ValueError("the last dense_arch layer must equal embedding_dim (DLRM)")
        self.spec = spec
        self.dense_norm = DenseNormArch(len(spec.dense))
        common = {
            "embedding_bag_collection": EmbeddingBagCollection(
                tables=embedding_configs(spec), device=device),
            "dense_in_features": len(spec.dense),
            "dense_arch_layer_sizes": list(spec.dense_arch),
            "over_arch_layer_sizes": list(spec.over_arch),
            "dense_device": device if device is None or device.type != "meta" else None,
        }
        if spec.interaction == "dcn":
            # Cross network over the (F + 1) x E concatenation instead of pairwise dots.
            self.dlrm: DLRM = DLRM_DCN(dcn_num_layers=spec.dcn_layers,
                                       dcn_low_rank_dim=spec.dcn_low_rank_dim, **common)
        elif spec.interaction == "dot":
            self.dlrm = DLRM(**common)
        else:
            raise ValueError(f"unknown interaction {spec.interaction!r}")
        # Tables on ``device`` like the ranker's (meta for sharding); dense layers on the default.
        self.retriever: TwoTower | None = TwoTower.for_spec(spec, device) \
            if spec.retrieval_dim else None
        self.attention: TargetAttentionArch | None = None
        if spec.sequence == "attention":
            self._attention_arch(spec, common["dense_device"])

    def _attention_arch(self, spec: FeatureSpec, dense_device: torch.device | None) -> None:
        """DIN: the sparse arch pools all ``F + L`` keys (``recent_i`` one item each), the
        attention output takes the recent_items bag's place, so interaction and over arch see
        the ``F`` vectors of the bag model (rebuilt here for ``F``, as DLRM / DLRM_DCN do)."""
        names = list(self.dlrm.sparse_arch.sparse_feature_names)
        self._seq_idx = [i for i, f in enumerate(names) if position_of(f) is not None]
        self._main_idx = [i for i, f in enumerate(names) if position_of(f) is None]
        self._bag_at = [names[i] for i in self._main_idx].index("recent_items")
        self._item_idx = names.index("item_id")
        n, e = len(self._main_idx), spec.embedding_dim
        self.attention = TargetAttentionArch(e)
        if spec.interaction == "dcn":
            self.dlrm.inter_arch = InteractionDCNArch(  # type: ignore[assignment]
                num_sparse_features=n, crossnet=LowRankCrossNet(
                    in_features=(n + 1) * e, num_layers=spec.dcn_layers,
                    low_rank=spec.dcn_low_rank_dim))
            over_in = (n + 1) * e
        else:
            self.dlrm.inter_arch = InteractionArch(num_sparse_features=n)
            over_in = e + choose(n, 2) + n
        self.dlrm.over_arch = OverArch(in_features=over_in, layer_sizes=list(spec.over_arch),
                                       device=dense_device)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """``dense: B x D float32``, ``sparse``: KeyedJaggedTensor with keys ``spec.sparse``
        (user_id, item_id, recent_items, category by default; plus recent_0.. with attention)
        and batch size ``B``. Returns ``B`` logits (apply a sigmoid for P(click))."""
        if self.attention is None:
            return self.dlrm(self.dense_norm(dense), sparse).squeeze(-1)
        d = self.dlrm
        embedded_dense = d.dense_arch(self.dense_norm(dense))  # B x E
        pooled = d.sparse_arch(sparse)  # B x (F + L) x E
        keys = pooled[:, self._seq_idx, :]  # B x L x E
        lengths = sparse.lengths().view(len(sparse.keys()), -1)  # (F + L) x B, key order
        mask = lengths[self._seq_idx, :].t() > 0  # B x L
        history = self.attention(pooled[:, self._item_idx, :], keys, mask)  # B x E
        main = pooled[:, self._main_idx, :].clone()  # B x F x E
        main[:, self._bag_at, :] = history
        concat = d.inter_arch(dense_features=embedded_dense, sparse_features=main)
        return d.over_arch(concat).squeeze(-1)


def group_softmax_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sampled softmax over groups: ``logits, labels: B`` where a group is a positive (label 1)
    followed by the negatives sampled with it (the order the label joiner writes them in).
    Returns the mean over groups of ``-log softmax`` of the positive within its group (a
    scalar; 0 when the batch has no positive). Rows before the batch's first positive (the
    tail of a group cut by the batch boundary) are left out."""
    group = torch.cumsum((labels > 0.5).long(), 0)  # B: 0 = before the first positive
    n_groups = int(group[-1].item()) if len(group) else 0
    if n_groups == 0:
        return logits.sum() * 0.0
    keep = group > 0
    g, x = group[keep] - 1, logits[keep]
    like = {"dtype": x.dtype, "device": x.device}
    peak = torch.full((n_groups,), float("-inf"), **like).scatter_reduce(
        0, g, x.detach(), reduce="amax")
    sums = torch.zeros(n_groups, **like).index_add(0, g, torch.exp(x - peak[g]))
    positive = x[labels[keep] > 0.5]  # one per group, in group order
    return (peak + torch.log(sums) - positive).mean()


class RankingTrain(nn.Module):
    """``(dense, sparse, labels) -> (loss, logits)``; the module DMP wraps for training.

    Args:
        model (StreamRecModel): the model trained; its state_dict is what checkpoints hold.
        listwise_weight (Optional[float]): weight of :func:`group_softmax_loss` added to the
            BCE; default ``spec.listwise_weight`` of the model's spec.

    With a retriever, ``spec.retrieval_weight`` times its in-batch softmax over the batch's
    positives (:class:`models.two_tower.InBatchSoftmax`) is added. The popularity estimate its
    log-Q correction uses (``frequency``) lives here, not in the model: serving does not need
    it, and after a resume it is re-learned within a few hundred batches.
    """

    def __init__(self, model: StreamRecModel, listwise_weight: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.listwise_weight = (model.spec.listwise_weight if listwise_weight is None
                                else listwise_weight)
        self.retrieval_loss: InBatchSoftmax | None = None
        if model.retriever is not None:
            rows = model.spec.table_of("item_id").num_embeddings
            self.retrieval_loss = InBatchSoftmax(model.retriever.tower.temperature,
                                                 ItemFrequency(rows))

    def _retrieval(self, dense: torch.Tensor, sparse: KeyedJaggedTensor,
                   labels: torch.Tensor) -> torch.Tensor:
        """The retriever's loss on the batch's positives (``P`` of ``B`` rows; a scalar), the user
        tower fed each row's history without its target item. Both towers run on all ``B``
        rows (a KJT is not cheaply row-sliced); with ``P < 2`` there is no in-batch negative
        and the loss is 0, still connected to every tower parameter so that DDP sees the same
        parameters used on every rank and step."""
        retriever = self.model.retriever
        assert retriever is not None and self.retrieval_loss is not None
        # The user side sees the history before the target (see history_without_target).
        users = retriever.users(dense, history_without_target(sparse))  # B x K
        items = retriever.items(dense, sparse)  # B x K
        positive = labels > 0.5
        if int(positive.sum()) < 2:
            return (users.sum() + items.sum()) * 0.0
        item_rows = sparse["item_id"].values()  # one id per row: B
        return self.retrieval_loss(users[positive], items[positive], item_rows[positive])

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs as :meth:`StreamRecModel.forward`, ``labels: B float32`` (0/1). Returns the
        mean binary cross-entropy (plus ``listwise_weight`` times the group softmax loss; a
        scalar) and the ``B`` logits, detached."""
        logits = self.model(dense, sparse)
        loss = self.loss_fn(logits, labels)
        if self.listwise_weight > 0:
            loss = loss + self.listwise_weight * group_softmax_loss(logits, labels)
        if self.retrieval_loss is not None:
            loss = loss + self.model.spec.retrieval_weight * self._retrieval(dense, sparse, labels)
        return loss, logits.detach()
