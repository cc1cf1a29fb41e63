"""The two-tower retriever: a user tower and an item tower matched by inner product.

Built from the same :class:`~models.batch.ExampleBatch` as the ranker (``dense: B x D`` and the
KJT with ``user_id``, ``item_id``, ``recent_items``, ``category``), with tables of its own:

- the **user tower** pools ``user_id`` and the ``recent_items`` bag (``B x 2 x E``), appends
  the user's dense features (``user_*``, ``B x Du``) and maps them through an MLP to ``B x K``;
- the **item tower** pools ``item_id`` and ``category`` (``B x 2 x E``), appends the item's
  dense features (``item_*`` and ``price``, ``B x Di``) and maps them to ``B x K``.

Pair features (``ui_*``, ``user_category_affinity*``, ``nb_score``) belong to neither: a tower must be
computable for one side alone, so that item vectors can be indexed ahead of time and a user's
vector queried against them. Both outputs are L2-normalised; the score is ``u . v / temperature``.

Training (:class:`InBatchSoftmax`) treats every positive example's item as the target and
the other positives' items in the batch as negatives, with the **log-Q correction** (Yi et
al., RecSys 2019): popular items appear as in-batch negatives more often than uniform
sampling would, so each logit is lowered by the log of the item's sampling probability,
estimated in a stream by :class:`ItemFrequency`. The user tower is trained on the history
*before* the target (:func:`history_without_target`): an example's recent items hold the item it
labels (viewed just before its click), and a tower taught to find items in the bag spends its
candidates on what the "recent" source already gives.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from models.norm import Standardise
from models.spec import FeatureSpec

__all__ = ["InBatchSoftmax", "ItemFrequency", "TowerSpec", "TwoTower", "history_without_target",
           "tower_columns"]

USER_SPARSE = ("user_id", "recent_items")
ITEM_SPARSE = ("item_id", "category")


@dataclass(frozen=True, slots=True)
class TowerSpec:
    """Sizes of the retriever: ``E`` embedding dim, ``K`` output dim, tower MLPs, temperature.
    Table rows are the ranker spec's (the batch's ids are hashed into those ranges)."""

    embedding_dim: int = 32  # E
    output_dim: int = 32  # K
    hidden: tuple[int, ...] = (64,)
    temperature: float = 0.05


def tower_columns(dense_names: Sequence[str]) -> tuple[list[int], list[int]]:
    """Indices into the dense vector of the user tower's (``user_*``) and the item tower's
    (``item_*``, ``price``) features. Pair features go to neither: ``ui_*``, ``nb_score`` and
    the user's affinity to the row's item category (``user_category_*``), which would tell the
    user tower about the target item in training and be missing when the scorer queries."""
    user = [i for i, n in enumerate(dense_names)
            if n.startswith("user_") and not n.startswith("user_category_")]
    item = [i for i, n in enumerate(dense_names) if n.startswith("item_") or n == "price"]
    return user, item


def history_without_target(sparse: KeyedJaggedTensor) -> KeyedJaggedTensor:
    """``sparse`` (batch ``B``, one ``item_id`` per row) with each row's ``recent_items`` bag
    stripped of that row's ``item_id`` (every occurrence); other keys unchanged, in order. Rows
    are compared as table rows: ``item_id`` and ``recent_items`` share the item table."""
    jts = dict(sparse.to_dict())  # a copy: the KJT caches its dict, which must not change
    bag = jts["recent_items"]
    lengths = bag.lengths()
    row_of = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device),
                                     lengths.long())
    keep = bag.values() != jts["item_id"].values()[row_of]
    kept = torch.zeros_like(lengths).index_add_(0, row_of, keep.to(lengths.dtype))
    jts["recent_items"] = JaggedTensor(values=bag.values()[keep], lengths=kept)
    return KeyedJaggedTensor.from_jt_dict(jts)


class _Tower(nn.Module):
    """``(KJT of its 2 features, dense B x Dt) -> B x K``: pooled embeddings ``B x 2E``
    concatenated with the standardised dense features, an MLP, L2 normalisation."""

    def __init__(self, tables: list[EmbeddingBagConfig], features: tuple[str, ...],
                 dense_in: int, spec: TowerSpec, device: torch.device | None) -> None:
        super().__init__()
        self.features = list(features)
        self.ebc = EmbeddingBagCollection(tables=tables, device=device)
        self.norm = Standardise(dense_in) if dense_in else None
        sizes = [len(features) * spec.embedding_dim + dense_in, *spec.hidden, spec.output_dim]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers[:-1])  # no ReLU on the output

    def forward(self, sparse: KeyedJaggedTensor, dense: torch.Tensor) -> torch.Tensor:
        """``sparse``: KJT holding (at least) this tower's features, batch ``B``; ``dense``:
        ``B x Dt``. Returns ``B x K``, unit length."""
        pooled = self.ebc(sparse).to_dict()
        parts = [pooled[f] for f in self.features]
        if self.norm is not None:
            parts.append(self.norm(dense))
        return nn.functional.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)


class TwoTower(nn.Module):
    """``(dense: B x D, sparse: KJT) -> (users: B x K, items: B x K)``.

    Args:
        spec (FeatureSpec): the ranker's spec; gives the dense names (split by
            :func:`tower_columns`) and the KJT keys.
        tower (TowerSpec): the retriever's sizes.
        device (Optional[torch.device]): where the tables are created (``meta`` for sharding).

    Example::

        model = TwoTower(DEFAULT_SPEC)
        users, items = model(batch.dense, batch.sparse)  # B x K each
        scores = users @ items.T / model.tower.temperature  # B x B
    """

    def __init__(self, spec: FeatureSpec, tower: TowerSpec | None = None,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.tower = t = tower or TowerSpec()
        user_cols, item_cols = tower_columns(spec.dense)
        self.register_buffer("user_cols", torch.tensor(user_cols, dtype=torch.long),
                             persistent=False)
        self.register_buffer("item_cols", torch.tensor(item_cols, dtype=torch.long),
                             persistent=False)
        e = t.embedding_dim

        def table(name: str, feature: str) -> EmbeddingBagConfig:
            return EmbeddingBagConfig(name=name, embedding_dim=e, feature_names=[feature],
                                      num_embeddings=spec.table_of(feature).num_embeddings)

        self.user_tower = _Tower([table("tt_user", "user_id"),
                                  table("tt_item_hist", "recent_items")],
                                 USER_SPARSE, len(user_cols), t, device)
        self.item_tower = _Tower([table("tt_item", "item_id"), table("tt_category", "category")],
                                 ITEM_SPARSE, len(item_cols), t, device)

    @classmethod
    def for_spec(cls, spec: FeatureSpec, device: torch.device | None = None) -> TwoTower:
        """The retriever a model of ``spec`` holds (``spec.retrieval_dim`` outputs, the other
        sizes :class:`TowerSpec`'s defaults); raises ``ValueError`` if the spec has none."""
        if not spec.retrieval_dim:
            raise ValueError("the spec has no retriever (retrieval_dim = 0)")
        return cls(spec, TowerSpec(output_dim=spec.retrieval_dim), device)

    def users(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """The user tower alone: ``B x K`` (what the scorer queries the index with)."""
        return self.user_tower(sparse, dense.index_select(1, self.user_cols))

    def items(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """The item tower alone: ``B x K`` (what a publish indexes)."""
        return self.item_tower(sparse, dense.index_select(1, self.item_cols))

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``dense: B x D float32``, ``sparse``: KJT with the spec's keys. Returns the user and
        item vectors of each row, ``B x K`` each."""
        return self.users(dense, sparse), self.items(dense, sparse)

    @torch.inference_mode()
    def item_vectors(self, item_rows: torch.Tensor, category_rows: torch.Tensor,
                     item_dense: torch.Tensor, chunk: int = 65_536) -> torch.Tensor:
        """The item tower over a catalogue (what a publish indexes), in eval mode: ``item_rows``
        ``N`` int64, ``category_rows`` ``N`` int64 (``-1``: no category), ``item_dense``
        ``N x Di`` (the dense columns :func:`tower_columns` gives the item tower). Returns
        ``N x K`` float32, unit rows; computed ``chunk`` rows at a time to bound memory."""
        was = self.training
        self.eval()
        out = []
        try:
            for start in range(0, len(item_rows), chunk):
                rows = item_rows[start:start + chunk]
                cats = category_rows[start:start + chunk]
                present = cats >= 0
                kjt = KeyedJaggedTensor.from_lengths_sync(
                    keys=list(ITEM_SPARSE), values=torch.cat([rows, cats[present]]),
                    lengths=torch.cat([torch.ones_like(rows, dtype=torch.int32),
                                       present.to(torch.int32)]))
                out.append(self.item_tower(kjt, item_dense[start:start + chunk]))
        finally:
            self.train(was)
        k = self.tower.output_dim
        return torch.cat(out) if out else torch.zeros((0, k))


class ItemFrequency(nn.Module):
    """Streaming estimate of each item row's share of the positives (the in-batch sampling
    probability ``q``), decayed so that it follows what is popular now.

    Args:
        rows (int): item table rows (ids are hashed like the tables').
        half_life_batches (float): a batch's weight halves after this many batches.
    """

    def __init__(self, rows: int, half_life_batches: float = 1_000.0) -> None:
        super().__init__()
        self.decay = 0.5 ** (1.0 / half_life_batches)
        self.register_buffer("counts", torch.zeros(rows, dtype=torch.float64))
        self.register_buffer("total", torch.zeros((), dtype=torch.float64))

    def update(self, item_rows: torch.Tensor) -> None:
        """Count one batch of positives' item rows (``P`` int64)."""
        self.counts.mul_(self.decay)
        self.total.mul_(self.decay)
        self.counts.index_add_(0, item_rows, torch.ones_like(item_rows, dtype=torch.float64))
        self.total.add_(float(len(item_rows)))

    def log_q(self, item_rows: torch.Tensor) -> torch.Tensor:
        """``log q`` of ``item_rows`` (``P``), float32; unseen rows count as half a sighting."""
        q = self.counts[item_rows].clamp_min(0.5) / self.total.clamp_min(1.0)
        return q.log().float()


class InBatchSoftmax(nn.Module):
    """``(users: P x K, items: P x K, item_rows: P) -> loss``: softmax over the batch's items
    for each user, the diagonal being the target; logits ``u . v / T - log q(item)``; other rows
    with the same item as the target (accidental hits) are masked out.

    Args:
        temperature (float): ``T``; small sharpens the softmax over unit vectors.
        frequency (ItemFrequency): the ``q`` estimate (updated by :meth:`forward` after use).
    """

    def __init__(self, temperature: float, frequency: ItemFrequency) -> None:
        super().__init__()
        self.temperature = temperature
        self.frequency = frequency

    def forward(self, users: torch.Tensor, items: torch.Tensor,
                item_rows: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the ``P`` positives (a scalar); needs ``P >= 2``."""
        logits = users @ items.T / self.temperature  # P x P
        logits = logits - self.frequency.log_q(item_rows).unsqueeze(0)
        same = item_rows.unsqueeze(0) == item_rows.unsqueeze(1)
        target = torch.arange(len(item_rows), device=logits.device)
        logits = logits.masked_fill(same & ~torch.eye(len(item_rows), dtype=torch.bool,
                                                      device=logits.device), float("-inf"))
        loss = nn.functional.cross_entropy(logits, target)
        with torch.no_grad():
            self.frequency.update(item_rows)
        return loss
