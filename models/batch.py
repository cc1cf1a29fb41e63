"""Examples (as produced by the label joiner) -> model batches: ``B x D`` dense + KJT + labels.

Columnar: ids of a whole batch are hashed with vectorised 64-bit FNV-1a over a ``B x L`` byte
matrix (numpy), then mixed with murmur3's 64-bit finaliser (FNV alone spreads short, similar
ids such as ``u1``..``u2000`` poorly), never one id at a time in Python. Every id maps into its
table's range; there is no "unknown id = row 0": collisions are the price, and
:func:`collision_rate` measures them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from models.spec import FeatureSpec, position_of
from streaming.contract.examples import ExampleRow
from streaming.errors import StreamrecError

if TYPE_CHECKING:
    from models.id_map import IdMap

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def hash64(ids: Sequence[str]) -> np.ndarray:
    """Stable 64-bit hashes (uint64) of string ids; the same on every host."""
    if not ids:
        return np.zeros(0, dtype=np.uint64)
    try:  # fixed-width S<L>, zero padded; numpy encodes ASCII in C, the rest as UTF-8 below
        raw = np.array(ids, dtype=bytes)
    except UnicodeEncodeError:
        raw = np.array([s.encode() for s in ids], dtype=bytes)
    width = raw.dtype.itemsize
    mat = raw.view(np.uint8).reshape(len(ids), width)
    lengths = np.char.str_len(raw)
    h = np.full(len(ids), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in range(width):
            live = lengths > col  # padding bytes are not part of the id
            hc = (h ^ mat[:, col].astype(np.uint64)) * _FNV_PRIME
            h = np.where(live, hc, h)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return h


def id_keys(ids: Sequence[str]) -> np.ndarray:
    """Non-negative 63-bit keys (int64) of string ids, what a :class:`models.id_map.IdMap`
    maps to rows: :func:`hash64` without its lowest bit. Two distinct ids share a key with
    probability about ``n^2 / 2^64``: none in practice."""
    return keys_of_hashes(hash64(ids))


def keys_of_hashes(hashes: np.ndarray) -> np.ndarray:
    """:func:`id_keys` of ids given as their :func:`hash64` values."""
    return (hashes >> np.uint64(1)).astype(np.int64)


def rows_of_hashes(hashes: np.ndarray, num_embeddings: int) -> np.ndarray:
    """:func:`hash_ids` of ids given as their :func:`hash64` values."""
    return (hashes % np.uint64(num_embeddings)).astype(np.int64)


def hash_ids(ids: Sequence[str], num_embeddings: int) -> np.ndarray:
    """Stable row indices (int64, ``[0, num_embeddings)``) for string ids; same on every host."""
    return rows_of_hashes(hash64(ids), num_embeddings)


def hash_optional_ids(ids: Sequence[str | None], num_embeddings: int) -> np.ndarray:
    """:func:`hash_ids` of ids that may be absent (``None`` -> -1), e.g. an item's category."""
    rows = np.full(len(ids), -1, dtype=np.int64)
    present = [k for k, i in enumerate(ids) if i is not None]
    rows[present] = hash_ids([ids[k] for k in present], num_embeddings)  # type: ignore[misc]
    return rows


def collision_rate(ids: Sequence[str], num_embeddings: int) -> float:
    """Share of distinct ids that share a row with another distinct id."""
    distinct = sorted(set(ids))
    if not distinct:
        return 0.0
    rows = hash_ids(distinct, num_embeddings)
    _, counts = np.unique(rows, return_counts=True)
    return float(counts[counts > 1].sum()) / len(distinct)


_FIELD = {name: k for k, name in enumerate(ExampleRow._fields)}


def as_rows(examples: Sequence[Mapping[str, Any] | ExampleRow]) -> Sequence[ExampleRow]:
    """``examples`` as :class:`~streaming.contract.examples.ExampleRow` s (documents converted)."""
    if all(type(e) is ExampleRow for e in examples):
        return examples  # type: ignore[return-value]
    return [e if type(e) is ExampleRow else ExampleRow.from_doc(e) for e in examples]


def dense_matrix(dense: Sequence[bytes | Sequence[float]], d: int) -> np.ndarray:
    """``B x d`` float32 of ``B`` dense values: each ``d`` little-endian float64 (an
    :class:`~streaming.contract.examples.ExampleRow`'s bytes) or ``d`` floats. Both round the
    same float64 values to float32, so a batch is the same whichever form its examples came in."""
    if all(type(x) is bytes for x in dense):
        flat = np.frombuffer(b"".join(dense), dtype="<f8")  # type: ignore[arg-type]
    else:
        flat = np.array([np.frombuffer(x, dtype="<f8") if type(x) is bytes else x
                         for x in dense], dtype=np.float64)
    return flat.astype(np.float32).reshape(len(dense), d)


@dataclass(slots=True)
class ScoringRows:
    """One user against ``N`` candidate items, for :meth:`BatchBuilder.build_for_scoring`."""

    dense: np.ndarray  # N x D (streaming.features.feature_matrix)
    user_id: str
    items: Sequence[str]  # N
    categories: Sequence[str | None]  # N
    recent: Sequence[str]  # the user's recent items, newest first
    item_rows: np.ndarray | None = None  # N, hash_ids(items) when the caller has them
    category_rows: np.ndarray | None = None  # N, hash_ids(category) or -1 where absent


@dataclass(slots=True)
class ExampleBatch:
    """One model batch of ``B`` rows, as :class:`BatchBuilder` makes it.

    ``dense: B x D float32``; ``sparse``: KeyedJaggedTensor with keys ``spec.sparse`` (by default
    user_id, item_id, recent_items, category), int64 row indices with one length per key and
    row (1 for user_id and item_id, 0 or 1 for category, the list's length for recent_items);
    ``labels`` (click), ``purchase``: ``B`` float32, zeros in a scoring batch; ``example_ids``:
    ``B`` ids (the candidate item ids in a scoring batch).
    """

    dense: torch.Tensor  # B x D float32
    sparse: KeyedJaggedTensor  # keys = spec.sparse, batch size B
    labels: torch.Tensor  # B float32 (click)
    purchase: torch.Tensor  # B float32
    example_ids: list[str]

    def __len__(self) -> int:
        return int(self.dense.shape[0])


class BatchBuilder:
    """Examples (training) or candidate rows (scoring) -> one :class:`ExampleBatch` for ``spec``;
    every id is hashed with :func:`hash_ids` into its table's range, or, for the tables in
    ``id_maps``, looked up in that table's collision-free map (:class:`models.id_map.IdMap`).

    Args:
        spec (FeatureSpec): the dense names (their order and schema digest) and the tables.
        id_maps (Optional[Mapping[str, IdMap]]): table name -> its id map; a trainer admits a
            batch's ids (:meth:`mapped_keys`) before building the batch.
    """

    def __init__(self, spec: FeatureSpec, id_maps: Mapping[str, IdMap] | None = None) -> None:
        self.spec = spec
        self.schema = spec.dense_schema()
        self.id_maps = dict(id_maps or {})
        for table, m in self.id_maps.items():
            if m.capacity != next(t.num_embeddings for t in spec.tables if t.name == table):
                raise ValueError(f"id map of {table} has {m.capacity} rows, the table has "
                                 "a different number")

    def rows(self, feature: str, ids: Sequence[str]) -> np.ndarray:
        """Row indices of ``ids`` in the table of ``feature``: its id map's rows, else hashed."""
        return self._hashed_rows(feature, hash64(ids))

    def _hashed_rows(self, feature: str, hashes: np.ndarray) -> np.ndarray:
        """:meth:`rows` of ids given as their :func:`hash64` values."""
        table = self.spec.table_of(feature)
        m = self.id_maps.get(table.name)
        return rows_of_hashes(hashes, table.num_embeddings) if m is None \
            else m.lookup(keys_of_hashes(hashes))

    def mapped_keys(self, examples: Sequence[Mapping[str, Any] | ExampleRow]
                    ) -> dict[str, np.ndarray]:
        """Per mapped table, the keys of every id ``examples`` look it up with (what a trainer
        admits, all-gathered across ranks, before :meth:`build`)."""
        rows = as_rows(examples)
        by_feature = {
            "user_id": lambda: [r.user_id for r in rows],
            "item_id": lambda: [r.item_id for r in rows],
            "category": lambda: [r.category for r in rows if r.category is not None],
            "recent_items": lambda: [i for r in rows for i in r.recent_items],
        }
        # Positional recent_i keys look up ids that recent_items already holds.
        return {t.name: id_keys([i for f in t.features if position_of(f) is None
                                 for i in by_feature[f]()])
                for t in self.spec.tables if t.name in self.id_maps}

    def build(self, examples: Sequence[Mapping[str, Any] | ExampleRow]) -> ExampleBatch:
        """``examples`` are decoded ``training-examples`` messages: documents or
        :class:`~streaming.contract.examples.ExampleRow` s (the trainer's, faster: their
        ``dense`` bytes become the ``B x D`` matrix in one conversion).

        Returns a batch of ``B = len(examples)`` rows, in order, labels from ``labels.click``.
        Raises :class:`StreamrecError` if an example's ``dense_schema`` is not the spec's.
        """
        rows = as_rows(examples)
        n = len(rows)
        if not n:
            cols: list[tuple[Any, ...]] = [()] * len(ExampleRow._fields)
        else:
            cols = list(zip(*rows, strict=True))  # one tuple per field, at C speed
        f = _FIELD
        schemas = set(cols[f["dense_schema"]])
        if n and schemas != {self.schema}:
            raise StreamrecError(
                f"examples carry dense schema(s) {sorted(schemas)}, the model expects "
                f"{self.schema}: producer and trainer disagree on the feature list")
        return self._assemble(
            dense_matrix(cols[f["dense"]], len(self.spec.dense)),
            users=cols[f["user_id"]],
            items=cols[f["item_id"]],
            categories=cols[f["category"]],
            recent=cols[f["recent_items"]],
            clicks=np.array(cols[f["click"]], np.float32).reshape(n),
            purchases=np.array(cols[f["purchase"]], np.float32).reshape(n),
            example_ids=list(cols[f["example_id"]]),
        )

    def build_for_scoring(self, parts: Sequence[ScoringRows]) -> ExampleBatch:
        """Several users, each against their candidate items (the scorer's shape), as one batch:
        rows of ``parts[0]`` first. The KJT is what :meth:`build` makes of examples with the
        same ids; ids are hashed with the same :func:`hash_ids` (once per user and recent
        list here, and by the caller's item cache when it passes ``item_rows``)."""
        spec = self.spec
        ns = np.fromiter((len(p.items) for p in parts), np.int64, len(parts))
        n = int(ns.sum())
        dense = np.concatenate([np.asarray(p.dense, dtype=np.float32).reshape(
            len(p.items), len(spec.dense)) for p in parts]) if parts else np.zeros(
            (0, len(spec.dense)), np.float32)
        user_rows = np.repeat(self.rows("user_id", [p.user_id for p in parts]), ns)
        # Every part's recent items in one hashing call (row by row, as each part alone would).
        recent_rows = self.rows("recent_items", [i for p in parts for i in p.recent])
        recent_ends = np.cumsum([len(p.recent) for p in parts]).tolist()
        item_rows, cat_values, cat_lengths, recent_values, recent_lengths = [], [], [], [], []
        recent_by_part: list[tuple[np.ndarray, int]] = []  # (the part's recent rows, k rows)
        for p, end in zip(parts, recent_ends, strict=True):
            k = len(p.items)
            item_rows.append(p.item_rows if p.item_rows is not None and not self.id_maps
                             else self.rows("item_id", list(p.items)))
            if p.category_rows is not None:
                present = p.category_rows >= 0
                cat_values.append(p.category_rows[present])
            else:
                present = np.fromiter((c is not None for c in p.categories), bool, k)
                cat_values.append(self.rows("category",
                                            [c for c in p.categories if c is not None]))
            cat_lengths.append(present.astype(np.int32))
            recent = recent_rows[end - len(p.recent):end]
            recent_values.append(np.tile(recent, k))
            recent_lengths.append(np.full(k, len(recent), np.int32))
            recent_by_part.append((recent, k))

        def cat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)

        by_feature = {
            "user_id": (user_rows, np.ones(n, np.int32)),
            "item_id": (cat(item_rows, np.int64), np.ones(n, np.int32)),
            "category": (cat(cat_values, np.int64), cat(cat_lengths, np.int32)),
            "recent_items": (cat(recent_values, np.int64), cat(recent_lengths, np.int32)),
        }
        for f in spec.sparse:  # recent_i: the part's i-th newest item on each of its k rows
            if (pos := position_of(f)) is not None:
                by_feature[f] = (
                    cat([np.full(k, r[pos], np.int64) for r, k in recent_by_part if len(r) > pos],
                        np.int64),
                    cat([np.full(k, int(len(r) > pos), np.int32) for r, k in recent_by_part],
                        np.int32))
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=list(spec.sparse),
            values=torch.from_numpy(np.concatenate([by_feature[f][0] for f in spec.sparse])),
            lengths=torch.from_numpy(np.concatenate([by_feature[f][1] for f in spec.sparse])),
        )
        zeros = torch.zeros(n)
        return ExampleBatch(torch.from_numpy(np.ascontiguousarray(dense)), kjt, zeros, zeros,
                            list(itertools.chain.from_iterable(p.items for p in parts)))

    def _assemble(self, dense: np.ndarray, users: Sequence[str], items: Sequence[str],
                  categories: Sequence[str | None], recent: Sequence[Sequence[str]],
                  clicks: np.ndarray,
                  purchases: np.ndarray, example_ids: list[str]) -> ExampleBatch:
        n = len(users)
        present = [c is not None for c in categories]
        by_feature = {
            "user_id": (users, np.ones(n, np.int32)),
            "item_id": (items, np.ones(n, np.int32)),
            "category": ([c for c in categories if c is not None], np.array(present, np.int32)),
            "recent_items": ([i for r in recent for i in r],
                             np.fromiter(map(len, recent), np.int32, n)),
        }
        id_lists, lengths = [], []
        for feature in self.spec.sparse:
            if (pos := position_of(feature)) is not None:  # recent_i: the i-th newest item
                id_lists.append([r[pos] for r in recent if len(r) > pos])
                lengths.append(np.array([len(r) > pos for r in recent], np.int32))
                continue
            ids, lens = by_feature[feature]
            id_lists.append(ids)
            lengths.append(lens)
        # Every feature's ids in one hashing call (hash64 is per id, so the same values as one
        # call per feature), then each feature's share to its table's rows.
        hashes = hash64(list(itertools.chain.from_iterable(id_lists)))
        ends = np.cumsum([len(ids) for ids in id_lists]).tolist()
        values = [self._hashed_rows(feature, hashes[end - len(ids):end])
                  for feature, ids, end in zip(self.spec.sparse, id_lists, ends, strict=True)]
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=list(self.spec.sparse),
            values=torch.from_numpy(np.concatenate(values)),
            lengths=torch.from_numpy(np.concatenate(lengths)),
        )
        return ExampleBatch(torch.from_numpy(np.ascontiguousarray(dense)), kjt,
                            torch.from_numpy(clicks), torch.from_numpy(purchases), example_ids)
