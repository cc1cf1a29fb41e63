"""The training example's two wire forms: the same example, whichever form it travels in."""

from __future__ import annotations

import random

import msgpack
import numpy as np
import orjson
import pytest

from models.batch import BatchBuilder
from models.spec import DEFAULT_SPEC
from streaming.contract.examples import (
    Example,
    ExampleRow,
    decode_example,
    decode_row,
    dense_feature_names,
    encode_example,
)
from streaming.errors import InvalidExample


def _example(k: int, rng: random.Random) -> Example:
    # Values with all 17 significant digits, and awkward ones: the forms must agree bit for bit.
    features = {n: rng.uniform(-1e6, 1e6) for n in dense_feature_names()}
    features["price"] = 0.1
    features["item_age_s"] = 1e-300
    return Example(f"x{k}", f"u{k % 7}", f"i{k}", None if k % 3 == 0 else f"c{k % 4}",
                   1_732_000_000_000 + k, k % 2, int(k % 5 == 0), k % 4 == 1, features,
                   [f"i{k + j}" for j in range(k % 4)], {"event_ts": k, "closed_ms": k + 1})


def test_both_forms_decode_to_the_same_document() -> None:
    rng = random.Random(1)
    for k in range(20):
        ex = _example(k, rng)
        packed, text = decode_example(ex.encode("msgpack")), decode_example(ex.encode("json"))
        assert isinstance(packed["dense"], np.ndarray) and isinstance(text["dense"], list)
        assert packed["dense"].tobytes() == np.array(text["dense"], dtype="<f8").tobytes()
        assert {k: v for k, v in packed.items() if k != "dense"} == \
            {k: v for k, v in text.items() if k != "dense"}
        assert len(ex.encode("msgpack")) < len(ex.encode("json")) / 2
        # A document (as tools make them) encodes back to the same message.
        assert encode_example(text) == ex.encode("msgpack")


def test_a_batch_is_the_same_from_either_form() -> None:
    rng = random.Random(2)
    examples = [_example(k, rng) for k in range(64)]
    builder = BatchBuilder(DEFAULT_SPEC)
    rows = builder.build([decode_row(ex.encode("msgpack")) for ex in examples])
    docs = builder.build([orjson.loads(ex.encode("json")) for ex in examples])
    mixed = builder.build([decode_row(ex.encode("msgpack")) if k % 2 else
                           decode_example(ex.encode("json")) for k, ex in enumerate(examples)])
    for other in (docs, mixed):
        assert torch_equal(rows.dense, other.dense) and rows.example_ids == other.example_ids
        assert torch_equal(rows.labels, other.labels)
        assert torch_equal(rows.purchase, other.purchase)
        assert torch_equal(rows.sparse.values(), other.sparse.values())
        assert torch_equal(rows.sparse.lengths(), other.sparse.lengths())


def torch_equal(a: object, b: object) -> bool:
    """Same shape, dtype and bits."""
    x, y = np.asarray(a), np.asarray(b)
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


@pytest.mark.parametrize("raw, why", [
    (b"", "MessagePack"),
    (b"\x01", "neither"),
    (b"{not json", "not JSON"),
    (b'{"example_id": "x"}', "labels"),
    (b"[1, 2]", "MessagePack"),
    (b"\x93\x01\x02\x03", "neither"),
])
def test_a_broken_message_is_refused_with_a_reason(raw: bytes, why: str) -> None:
    with pytest.raises(InvalidExample, match=why):
        decode_row(raw)


def test_a_truncated_or_foreign_layout_is_refused() -> None:
    raw = _example(1, random.Random(3)).encode("msgpack")
    with pytest.raises(InvalidExample):
        decode_row(raw[:-5])
    fields = msgpack.unpackb(raw)
    fields[10] = b"\x00" * 7  # not a whole number of float64 values
    with pytest.raises(InvalidExample, match="layout-1"):
        decode_row(msgpack.packb(fields))
    relabelled = bytearray(raw)
    relabelled[1] = 2  # a layout this reader does not know
    with pytest.raises(InvalidExample, match="layout-1"):
        decode_row(bytes(relabelled))


def test_rows_carry_the_fields_by_name() -> None:
    row = decode_row(_example(5, random.Random(4)).encode("msgpack"))
    assert isinstance(row, ExampleRow) and row.example_id == "x5" and row.user_id == "u5"
    assert (row.click, row.purchase, row.sampled) == (1, 1, True)
    assert row.to_doc()["labels"] == {"click": 1, "purchase": 1}


def test_the_trace_keeps_what_it_had() -> None:
    rng = random.Random(5)
    ex = _example(3, rng)
    for trace in ({}, {"closed_ms": 7}, {"event_ts": 1, "closed_ms": 2, "offset": 3}):
        e = Example(**{**{f: getattr(ex, f) for f in Example.__slots__}, "trace": trace})
        assert decode_example(e.encode("msgpack"))["trace"] == trace
        assert decode_example(e.encode("json"))["trace"] == trace


def test_dense_values_of_the_wrong_count_or_type_are_refused() -> None:
    doc = decode_example(_example(2, random.Random(6)).encode("json"))
    short = {**doc, "dense": doc["dense"][:-1]}
    for fmt in ("msgpack", "json"):
        with pytest.raises(InvalidExample, match="dense values"):
            decode_row(encode_example(short, fmt))
    with pytest.raises(InvalidExample, match="not a list of numbers"):
        decode_row(orjson.dumps({**doc, "dense": ["1"] * len(doc["dense"])}))
    # Another feature list (another schema) decodes: the trainer refuses it by its schema.
    other = {**short, "dense_schema": "00000000"}
    assert decode_row(encode_example(other)).dense_schema == "00000000"
