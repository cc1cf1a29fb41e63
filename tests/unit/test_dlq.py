"""DLQ records always fit: cut values and keys, size and hash headers, the metadata-only form."""

from __future__ import annotations

import hashlib

from streaming.ingest.dlq import dead_letter, is_metadata_only, metadata_only
from streaming.ingest.types import RawMessage


def _headers(record: object) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}  # type: ignore[attr-defined]


def test_a_small_message_is_kept_whole_with_its_size_and_hash() -> None:
    msg = RawMessage(7, b"u1", b"not json")
    record, truncated = dead_letter("dlq", "events/2", msg, "not_json", "x" * 900, 64)
    h = _headers(record)
    assert not truncated and record.value == b"not json" and record.key == b"u1"
    assert h["streamrec.source"] == "events/2/7" and h["streamrec.reason"] == "not_json"
    assert len(h["streamrec.detail"]) == 500
    assert h["streamrec.original_size"] == "8"
    assert h["streamrec.original_sha256"] == hashlib.sha256(b"not json").hexdigest()
    assert "streamrec.truncated" not in h


def test_a_large_value_and_key_are_cut_and_the_headers_keep_the_original() -> None:
    value, key = bytes(range(256)) * 100, b"k" * 5000
    record, truncated = dead_letter("dlq", "events/0", RawMessage(1, key, value), "too_large",
                                    "big", 2048)
    h = _headers(record)
    assert truncated and record.value == value[:2048] and record.key == key[:1024]
    assert h["streamrec.truncated"] == "1" and h["streamrec.original_key_size"] == "5000"
    assert h["streamrec.original_size"] == str(len(value))
    assert h["streamrec.original_sha256"] == hashlib.sha256(value).hexdigest()


def test_the_metadata_only_form_has_no_key_or_value_and_says_why() -> None:
    record, _ = dead_letter("dlq", "events/0", RawMessage(1, b"u", b"x" * 10), "too_large", "d",
                            64)
    meta = metadata_only(record, "Broker: Message size too large")
    assert meta.key is None and meta.value == b"" and meta.topic == "dlq"
    assert is_metadata_only(meta) and not is_metadata_only(record)
    h = _headers(meta)
    assert h["streamrec.metadata_only"] == "Broker: Message size too large"
    assert h["streamrec.original_sha256"] == _headers(record)["streamrec.original_sha256"]
    assert len(metadata_only(meta, "again").headers) == len(meta.headers)  # not stacked
