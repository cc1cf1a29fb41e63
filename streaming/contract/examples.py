"""The training-example record: what the label joiner writes to ``training-examples`` and the
trainer (and the evaluation) read.

One message per example, keyed by ``user_id``. Decoded (:func:`decode_example`), every example
is this document::

    {"example_id", "user_id", "item_id", "category", "ts",
     "labels": {"click": 0|1, "purchase": 0|1}, "sampled": bool,
     "dense_schema": "<8 hex>", "dense": [D floats], "recent_items": [item ids],
     "trace": {"event_ts", "closed_ms", "offset"}}

``dense`` holds the ``D`` dense model inputs in :func:`dense_feature_names` order; ``dense_schema``
is :func:`dense_schema` of that order, so a reader with another feature list refuses the record
instead of mixing up columns.

Two wire forms (``stream.example_format``); readers take both, told apart by the first byte:

- ``msgpack`` (the default): a MessagePack array, the fields in a fixed order,
  ``[1, example_id, user_id, item_id, category, ts, click, purchase, sampled, dense_schema,
  dense, recent_items, trace]``, with ``dense`` as ``D`` little-endian float64 (``8 x D``
  bytes; the values are the JSON form's, bit for bit) and ``trace`` as the array of its
  :data:`TRACE_FIELDS` (nil where absent). The leading 1 is the layout's version.
  About a third of the JSON form's size, and the trainer decodes it about twice as fast: no
  float is parsed from text and no dictionary is built (:class:`ExampleRow`); ``dense`` stays
  one buffer per example (a float64 array in a document).
- ``json``: the document above as one JSON object (readable with any Kafka tool).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack
import numpy as np
import orjson

from streaming.contract.events import EVENT_TYPES
from streaming.errors import InvalidExample

__all__ = [
    "EXAMPLE_FORMATS",
    "HALF_LIVES_MS",
    "TRACE_FIELDS",
    "Example",
    "ExampleRow",
    "decode_example",
    "decode_row",
    "dense_feature_names",
    "dense_schema",
    "encode_example",
    "example_features",
]

EXAMPLE_FORMATS = ("msgpack", "json")
_LAYOUT = 1  # the MessagePack array's version (its first element)
# The trace's fields, in the MessagePack form's order: an array, since a map's keys would be
# decoded again for every example (a third of the decode time).
TRACE_FIELDS = ("event_ts", "closed_ms", "offset")
_FIELDS = 13  # elements of a layout-1 array

# Half-lives of the per-type decayed counters, (label, ms). The labels are part of the feature
# names, so they belong to the record's schema.
HALF_LIVES_MS: tuple[tuple[str, int], ...] = (("1h", 3_600_000), ("1d", 86_400_000))


def dense_feature_names(half_lives_ms: Sequence[tuple[str, int]] = HALF_LIVES_MS) -> list[str]:
    """Names of the ``D`` dense model inputs, in record order."""
    names = [f"user_{t}_{label}" for t in EVENT_TYPES for label, _ in half_lives_ms]
    names += ["user_recency_s", "user_category_affinity", "user_category_affinity_short",
              "user_recent_count"]
    names += [f"item_{t}_{label}" for t in EVENT_TYPES for label, _ in half_lives_ms]
    names += ["item_ctr", "item_cvr", "item_age_s", "price"]
    # The user's own history with this item (user x item state): repeat behaviour.
    names += ["ui_view_count", "ui_click_count", "ui_purchase_count", "ui_recency_s", "ui_weight"]
    # The item's score in the user's neighbour list (users who interact alike; 0 = not in it).
    names += ["nb_score"]
    return names


def dense_schema(names: Sequence[str] | None = None) -> str:
    """Short digest of the dense feature names and order; travels with every example."""
    names = dense_feature_names() if names is None else names
    return hashlib.sha256(",".join(names).encode()).hexdigest()[:8]


_DENSE_NAMES = tuple(dense_feature_names())
_DENSE_SCHEMA = dense_schema(_DENSE_NAMES)
_PACK_DENSE = struct.Struct(f"<{len(_DENSE_NAMES)}d").pack


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled (user, item) example with the model inputs as of its event time."""

    example_id: str
    user_id: str
    item_id: str
    category: str | None
    ts: int  # event time of the exposure / interaction (ms)
    click: int
    purchase: int
    sampled: bool  # a sampled negative (implicit mode), not an observed exposure
    features: dict[str, float]  # dense inputs by name
    recent: list[str]  # the user's recent items, newest first
    trace: dict[str, int]

    def to_json(self) -> bytes:
        """The JSON wire form (see the module docstring)."""
        # Dense values as a list in dense_feature_names() order: an 8x faster decode for the
        # trainer than a dict; ``dense_schema`` names that order so readers can check it.
        return orjson.dumps({
            "example_id": self.example_id, "user_id": self.user_id, "item_id": self.item_id,
            "category": self.category, "ts": self.ts,
            "labels": {"click": self.click, "purchase": self.purchase},
            "sampled": self.sampled, "dense_schema": _DENSE_SCHEMA,
            "dense": [self.features[n] for n in _DENSE_NAMES], "recent_items": self.recent,
            "trace": self.trace,
        })

    def to_msgpack(self) -> bytes:
        """The MessagePack wire form (see the module docstring)."""
        f = self.features
        return _pack(ExampleRow(
            _LAYOUT, self.example_id, self.user_id, self.item_id, self.category, self.ts,
            self.click, self.purchase, self.sampled, _DENSE_SCHEMA,
            _PACK_DENSE(*[f[n] for n in _DENSE_NAMES]), self.recent, _trace_values(self.trace)))

    def encode(self, fmt: str = "msgpack") -> bytes:
        """The wire form ``fmt`` (one of :data:`EXAMPLE_FORMATS`)."""
        return self.to_msgpack() if fmt == "msgpack" else self.to_json()


class ExampleRow(NamedTuple):
    """One decoded example in the MessagePack layout's field order: what the trainer reads and
    :class:`models.batch.BatchBuilder` builds batches from, with no per-example dictionary and
    ``dense`` left as the message's bytes (one buffer per batch, not ``D`` floats per row)."""

    layout: int  # the layout's version (1)
    example_id: str
    user_id: str
    item_id: str
    category: str | None
    ts: int  # event time (ms)
    click: int
    purchase: int
    sampled: bool
    dense_schema: str
    dense: bytes | Sequence[float]  # D little-endian float64 (MessagePack), or D floats (JSON)
    recent_items: list[str]  # newest first
    trace: Sequence[int | None]  # the values of TRACE_FIELDS (None where absent)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ExampleRow:
        """The row of an example document (the module docstring's shape; ``category``,
        ``ts``, ``sampled``, ``recent_items`` and ``trace`` may be absent). Raises
        ``KeyError`` if a required field is missing."""
        labels = doc["labels"]
        return cls(_LAYOUT, doc["example_id"], doc["user_id"], doc["item_id"],
                   doc.get("category"), doc.get("ts", 0), labels["click"], labels["purchase"],
                   doc.get("sampled", False), doc["dense_schema"], doc["dense"],
                   doc.get("recent_items") or [], _trace_values(doc.get("trace") or {}))

    def to_doc(self) -> dict[str, Any]:
        """The example document; ``dense`` a float64 array (from bytes) or the list it was."""
        dense = self.dense
        return {"example_id": self.example_id, "user_id": self.user_id,
                "item_id": self.item_id, "category": self.category, "ts": self.ts,
                "labels": {"click": self.click, "purchase": self.purchase},
                "sampled": self.sampled, "dense_schema": self.dense_schema,
                "dense": np.frombuffer(dense, "<f8") if isinstance(dense, bytes) else dense,
                "recent_items": self.recent_items,
                "trace": {k: v for k, v in zip(TRACE_FIELDS, self.trace, strict=True)
                          if v is not None}}


_new_row = tuple.__new__


def _check_dense_length(schema: str, n: int) -> None:
    """A record of this build's feature list must hold its ``D`` values (a batch would fail to
    build otherwise); a record of another list is the trainer's to refuse by its schema."""
    if schema == _DENSE_SCHEMA and n != len(_DENSE_NAMES):
        raise InvalidExample(f"{n} dense values, schema {schema} names {len(_DENSE_NAMES)}")


def _trace_values(trace: Mapping[str, int]) -> list[int | None]:
    return [trace.get(k) for k in TRACE_FIELDS]


def _pack(row: ExampleRow) -> bytes:
    """The MessagePack form of ``row`` (the one encoder of the layout)."""
    if not isinstance(row.dense, bytes):
        row = row._replace(dense=np.asarray(row.dense, dtype="<f8").tobytes())
    return msgpack.packb(row)  # a tuple: packed as the layout's array


def encode_example(doc: Mapping[str, Any], fmt: str = "msgpack") -> bytes:
    """A decoded example document (the module docstring's shape) in wire form ``fmt``: what
    tools and benchmarks that make examples without the label joiner send."""
    if fmt == "json":
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return _pack(ExampleRow.from_doc(doc))


def decode_row(raw: bytes) -> ExampleRow:
    """The :class:`ExampleRow` of a ``training-examples`` message in either wire form. Raises
    :class:`InvalidExample` if it is neither form or a field is missing or malformed."""
    if raw[:1] == b"{":
        try:
            row = ExampleRow.from_doc(orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            raise InvalidExample(f"not JSON: {exc}") from exc
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidExample(f"JSON example without a valid {exc}") from exc
        dense = row.dense
        if not isinstance(dense, list) or not all(type(x) in (int, float) for x in dense):
            raise InvalidExample("JSON example whose dense values are not a list of numbers")
        _check_dense_length(row.dense_schema, len(dense))
        return row
    try:
        a = msgpack.unpackb(raw)
    except ValueError as exc:  # msgpack's errors are ValueErrors
        raise InvalidExample(f"undecodable MessagePack example: {exc}") from exc
    if not (isinstance(a, list) and len(a) == _FIELDS and a[0] == _LAYOUT
            and isinstance(a[10], bytes) and len(a[10]) % 8 == 0
            and isinstance(a[12], list) and len(a[12]) == len(TRACE_FIELDS)):
        raise InvalidExample("neither a JSON object nor a layout-1 MessagePack example array")
    _check_dense_length(a[9], len(a[10]) // 8)
    return _new_row(ExampleRow, a)  # _make without its length check (done above): 30% faster


def decode_example(raw: bytes) -> dict[str, Any]:
    """The example document of a ``training-examples`` message in either wire form; ``dense``
    is a list (JSON) or a float64 array (MessagePack), both ``D`` values in record order.
    Raises :class:`InvalidExample` as :func:`decode_row` does."""
    return decode_row(raw).to_doc()


def example_features(doc: Mapping[str, Any]) -> dict[str, float]:
    """The dense values of a decoded example, by name."""
    return dict(zip(_DENSE_NAMES, doc["dense"], strict=True))
