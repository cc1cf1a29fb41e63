"""Dead-letter records that always fit on the broker. Pure: no I/O.

A rejected message goes to the DLQ with its original key and bytes and the reason in headers.
The broker refuses records above its ``message.max.bytes`` (about 1 MiB by default), and a
refused DLQ record would stay at the head of the partition's outbox and block it for good, so:

1. :func:`dead_letter` keeps at most ``max_value_bytes`` of the value (and at most
   ``min(1024, max_value_bytes)`` of the key); the headers always carry the original sizes and
   the SHA-256 of the original value, so a truncated record can still be matched to its source
   (``streamrec.source`` = topic/partition/offset);
2. if the broker still refuses it, :func:`metadata_only` is the replacement: no key, no value,
   only the headers;
3. a record refused even then is moved aside (``StateStore.park``) with the broker's error.
"""

from __future__ import annotations

import hashlib

from streaming.ingest.types import OutMessage, RawMessage

__all__ = ["DETAIL_MAX_CHARS", "dead_letter", "is_metadata_only", "metadata_only"]

DETAIL_MAX_CHARS = 500  # headers stay small whatever the validator said
_KEY_MAX_BYTES = 1024  # keys are user ids: anything longer is garbage worth only its hash

H_REASON = "streamrec.reason"
H_DETAIL = "streamrec.detail"
H_SOURCE = "streamrec.source"
H_SIZE = "streamrec.original_size"
H_SHA256 = "streamrec.original_sha256"
H_KEY_SIZE = "streamrec.original_key_size"
H_TRUNCATED = "streamrec.truncated"
H_METADATA_ONLY = "streamrec.metadata_only"


def dead_letter(dlq_topic: str, source: str, msg: RawMessage, code: str, detail: str,
                max_value_bytes: int) -> tuple[OutMessage, bool]:
    """The DLQ record of a rejected message and whether it was truncated.

    ``source`` is ``topic/partition`` of the message; ``code`` and ``detail`` the reason.
    The value is cut to ``max_value_bytes`` and the key to ``min(1024, max_value_bytes)``;
    the headers give the original value's size and SHA-256 either way."""
    key_max = min(_KEY_MAX_BYTES, max_value_bytes)
    value, key = msg.value, msg.key
    truncated = len(value) > max_value_bytes or (key is not None and len(key) > key_max)
    headers = [
        (H_REASON, code.encode()),
        (H_DETAIL, detail[:DETAIL_MAX_CHARS].encode()),
        (H_SOURCE, f"{source}/{msg.offset}".encode()),
        (H_SIZE, str(len(value)).encode()),
        (H_SHA256, hashlib.sha256(value).hexdigest().encode()),
    ]
    if truncated:
        headers.append((H_TRUNCATED, b"1"))
        if key is not None and len(key) > key_max:
            headers.append((H_KEY_SIZE, str(len(key)).encode()))
            key = key[:key_max]
        value = value[:max_value_bytes]
    return OutMessage(dlq_topic, key, value, tuple(headers)), truncated


def metadata_only(record: OutMessage, error: str) -> OutMessage:
    """``record`` without key and value: its headers plus the broker's ``error`` for the full
    record. The replacement for a DLQ record the broker refused."""
    headers = [(k, v) for k, v in record.headers if k != H_METADATA_ONLY]
    headers.append((H_METADATA_ONLY, error[:DETAIL_MAX_CHARS].encode()))
    return OutMessage(record.topic, None, b"", tuple(headers))


def is_metadata_only(record: OutMessage) -> bool:
    """True for a record made by :func:`metadata_only` (nothing smaller can replace it)."""
    return any(k == H_METADATA_ONLY for k, _ in record.headers)
