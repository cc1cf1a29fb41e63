"""The declared feature spec: which model inputs exist and how ids map to embedding rows.

Dense inputs are the values of :func:`streaming.features.state.feature_values` in the order of
:func:`streaming.contract.examples.dense_feature_names`. Sparse inputs are id lists hashed into tables;
``recent_items`` shares the item table (a multi-hot bag of the user's last items).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import orjson

from streaming.contract.examples import dense_feature_names, dense_schema


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One embedding table: ``num_embeddings x embedding_dim`` rows shared by ``features``."""

    name: str
    num_embeddings: int  # rows; ids are hashed into [0, num_embeddings)
    features: tuple[str, ...]  # KJT keys that look up this table


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Every model input and the model's sizes; its :meth:`digest` is stamped on checkpoints.

    ``dense``: the ``D`` dense names in input order; ``tables``: the embedding tables (their
    features, in order, are the ``F`` KJT keys); ``dense_arch`` / ``over_arch``: DLRM layer sizes.
    """

    dense: tuple[str, ...] = field(default_factory=lambda: tuple(dense_feature_names()))
    tables: tuple[TableSpec, ...] = (
        TableSpec("t_user", 100_003, ("user_id",)),
        TableSpec("t_item", 100_003, ("item_id", "recent_items")),
        TableSpec("t_category", 1_009, ("category",)),
    )
    embedding_dim: int = 16
    dense_arch: tuple[int, ...] = (64, 16)  # last size must equal embedding_dim (DLRM)
    over_arch: tuple[int, ...] = (64, 32, 1)
    # Feature interaction: "dot" (DLRM's pairwise dot products) or "dcn" (TorchRec's DLRM_DCN:
    # a low-rank cross network over the concatenated embeddings, dcn_layers deep).
    interaction: str = "dot"
    dcn_layers: int = 2
    dcn_low_rank_dim: int = 16
    # Training objective (not in the digest: it does not change the tensors' meaning): the
    # pointwise BCE plus this weight times a sampled softmax of each positive against the
    # negatives sampled with it (models.dlrm.group_softmax_loss); 0 = BCE only.
    listwise_weight: float = 0.0
    # The two-tower retriever trained beside the ranker (models.two_tower): its output size
    # ``K``; 0 = none. Its tables mirror the ranker's rows (ids hashed the same way).
    retrieval_dim: int = 0
    # Weight of the retriever's in-batch softmax in the training loss (not in the digest).
    retrieval_weight: float = 1.0
    # Tables whose ids map to rows of their own (models.id_map.IdMap) instead of hashed rows;
    # the maps travel with each checkpoint.
    mapped: tuple[str, ...] = ()
    # How the ranker sees the user's recent items: "bag" (the pooled recent_items bag, one
    # E-vector) or "attention" (DIN: each of the newest sequence_len items looked up alone as
    # the positional features recent_0.., weighted by an attention unit against the candidate
    # item; models.dlrm.TargetAttentionArch). Tables are then given those features by
    # with_sequence().
    sequence: str = "bag"
    sequence_len: int = 10

    @property
    def sparse(self) -> tuple[str, ...]:
        """KJT keys in batch order."""
        return tuple(f for t in self.tables for f in t.features)

    def table_of(self, feature: str) -> TableSpec:
        """The table ``feature`` (a KJT key) looks up; raises ``KeyError`` for an unknown one."""
        for t in self.tables:
            if feature in t.features:
                return t
        raise KeyError(feature)

    def dense_schema(self) -> str:
        """Digest of the dense names and order, as the examples carry it."""
        return dense_schema(self.dense)

    def digest(self) -> str:
        """Stable hash of everything that changes the meaning of a checkpoint's tensors."""
        doc = {
            "dense": self.dense, "embedding_dim": self.embedding_dim,
            "tables": [[t.name, t.num_embeddings, list(t.features)] for t in self.tables],
            "dense_arch": self.dense_arch, "over_arch": self.over_arch, "hash": "fnv1a64",
        }
        if self.interaction != "dot":  # digests of dot-interaction specs stay what they were
            doc["interaction"] = [self.interaction, self.dcn_layers, self.dcn_low_rank_dim]
        if self.retrieval_dim:  # digests of specs without a retriever stay what they were
            doc["retrieval_dim"] = self.retrieval_dim
        if self.mapped:  # the rows' meaning: an id map's, not a hash's
            doc["mapped"] = sorted(self.mapped)
        if self.sequence != "bag":  # digests of bag specs stay what they were
            doc["sequence"] = [self.sequence, self.sequence_len]
        return hashlib.sha256(orjson.dumps(doc)).hexdigest()[:16]


DEFAULT_SPEC = FeatureSpec()
INTERACTIONS = ("dot", "dcn")
SEQUENCES = ("bag", "attention")


def sequence_features(n: int) -> tuple[str, ...]:
    """The positional KJT keys of the ``n`` newest recent items: ``recent_0`` (the newest).."""
    return tuple(f"recent_{i}" for i in range(n))


def position_of(feature: str) -> int | None:
    """``i`` for a positional key ``recent_i`` (:func:`sequence_features`), else None."""
    head, _, tail = feature.rpartition("_")
    return int(tail) if head == "recent" and tail.isdigit() else None


def spec_for(interaction: str = "dot", listwise_weight: float = 0.0, retrieval_dim: int = 0,
             retrieval_weight: float = 1.0, mapped_tables: tuple[str, ...] = (),
             sequence: str = "bag", sequence_len: int = 10) -> FeatureSpec:
    """The default spec with the given feature interaction (``model.interaction``), objective
    (``model.listwise_weight``), retriever (``model.retrieval_dim``, ``retrieval_weight``) and
    id-mapped tables (``model.id_maps``): every process builds its spec here, from
    ``settings.model.spec_args()``, and the view of the recent items (``model.sequence``,
    ``model.sequence_len``). Raises ``ValueError`` for an unknown interaction, sequence or
    table or a bad size."""
    if interaction not in INTERACTIONS:
        raise ValueError(f"unknown interaction {interaction!r}; one of {INTERACTIONS}")
    if retrieval_dim < 0:
        raise ValueError("retrieval_dim must be >= 0")
    names = {t.name for t in DEFAULT_SPEC.tables}
    if set(mapped_tables) - names:
        raise ValueError(f"unknown tables {sorted(set(mapped_tables) - names)}")
    if sequence not in SEQUENCES:
        raise ValueError(f"unknown sequence {sequence!r}; one of {SEQUENCES}")
    if sequence_len < 1:
        raise ValueError("sequence_len must be >= 1")
    tables = DEFAULT_SPEC.tables
    if sequence == "attention":  # the item table also serves the positional lookups
        tables = tuple(dataclasses.replace(t, features=(*t.features, *sequence_features(
            sequence_len))) if "recent_items" in t.features else t for t in tables)
    return dataclasses.replace(DEFAULT_SPEC, interaction=interaction,
                               listwise_weight=listwise_weight, retrieval_dim=retrieval_dim,
                               retrieval_weight=retrieval_weight,
                               mapped=tuple(sorted(mapped_tables)), tables=tables,
                               sequence=sequence, sequence_len=sequence_len)
