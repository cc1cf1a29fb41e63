"""Poison messages on the real broker: records at the broker's size limit never stop ingestion.

One real worker. Messages just under the events topic's ``max.message.bytes`` reach it and are
dead-lettered, cut to ``stream.dlq_max_value_bytes`` with their size and SHA-256 in headers;
messages at and above the limit are refused to the producer with a clear error. Then the DLQ
topic's own limit is lowered until even a cut record is refused (its metadata-only form goes
instead), and until that is refused too (the record is parked). After each step the worker is
alive, later events are still processed, and every message is counted.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from streaming.contract.names import Keys
from streaming.ingest.processor import dlq_reason
from streaming.ingest.state_store import read_stats
from streaming.io.kafka import KafkaAdmin, client_config
from streaming.io.producer import RecordProducer
from streaming.settings import Settings
from tests.conftest import make_stack
from tests.integration.helpers import consume_all, running_worker

pytestmark = pytest.mark.integration
DLQ_MAX = 4096  # stream.dlq_max_value_bytes for this worker: small, so cuts are visible


class Sent:
    """Messages that reached the events topic so far, by the outcome the worker must report."""

    valid = 0
    invalid = 0


@pytest.fixture(scope="module")
def worker(services: Settings, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Settings, subprocess.Popen[bytes], Path]]:
    tmp = tmp_path_factory.mktemp("poison")
    stack = make_stack(services, tmp).with_values({"stream.dlq_max_value_bytes": DLQ_MAX})
    with running_worker(stack, tmp) as running:
        yield running


def _producer(stack: Settings) -> RecordProducer:
    # The client's own limit above the broker's: the broker is the one that refuses.
    return RecordProducer(stack, extra_config={"message.max.bytes": 8_000_000,
                                               "compression.type": "none"})


def _valid(n: int) -> list[tuple[str, bytes, bytes, tuple]]:
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        Sent.valid += 1
        event = {"event_id": f"ok-{Sent.valid}-{os.urandom(4).hex()}", "user_id": f"u{i % 7}",
                 "item_id": f"i{i % 11}", "event_type": "view", "ts": now}
        out.append(("", f"u{i % 7}".encode(), orjson.dumps(event), ()))
    return out


def _wait_processed(stack: Settings, proc: subprocess.Popen[bytes], log: Path) -> dict[str, int]:
    client = redis.Redis.from_url(stack.redis.url)
    total = Sent.valid + Sent.invalid
    deadline = time.monotonic() + 90
    try:
        while (stats := read_stats(client, stack.redis.key_prefix,
                                   range(stack.topics.events_partitions))).get("processed", 0) < total:
            assert proc.poll() is None, "worker died:\n" + log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"processed {stats} of {total}"
            time.sleep(0.1)
    finally:
        client.close()
    # Conservation: every message that reached the topic is accepted or dead-lettered.
    assert stats["processed"] == total
    assert stats.get("accepted", 0) == Sent.valid
    assert stats.get("invalid", 0) == Sent.invalid
    return stats


def _send(stack: Settings, records: list[tuple[str, bytes, bytes, tuple]]) -> dict[int, str]:
    with _producer(stack) as producer:
        return producer.deliver([(t or stack.topics.events, k, v, h) for t, k, v, h in records])


def _set_dlq_limit(stack: Settings, max_bytes: int) -> None:
    admin = AdminClient(client_config(stack.kafka))
    resource = ConfigResource("topic", stack.topics.dlq, incremental_configs=[
        ConfigEntry("max.message.bytes", str(max_bytes),
                    incremental_operation=AlterConfigOpType.SET)])
    for fut in admin.incremental_alter_configs([resource]).values():
        fut.result(timeout=30)
    deadline = time.monotonic() + 30
    while KafkaAdmin(stack).topic_config(stack.topics.dlq)["max.message.bytes"] != str(max_bytes):
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_messages_at_the_broker_limit_are_refused_or_dead_lettered_and_cut(
        worker: tuple[Settings, subprocess.Popen[bytes], Path]) -> None:
    stack, proc, log = worker
    limit = int(KafkaAdmin(stack).topic_config(stack.topics.events)["max.message.bytes"])
    # A record batch adds ~70 bytes of framing to the value: "just under" leaves room for it.
    sizes = {"under": limit - 200, "at": limit, "above": limit + 10_000}
    records = []
    for size in sizes.values():
        for _ in range(3):  # a burst of each, between valid events
            records += _valid(5)
            records.append(("", b"u-poison", os.urandom(size), ()))
    records += _valid(5)
    refused = _send(stack, records)
    by_size = {len(records[i][2]) for i in refused}
    assert by_size == {sizes["at"], sizes["above"]}, by_size
    assert len(refused) == 6
    assert all("too large" in e.lower() for e in refused.values()), refused
    under = [r[2] for i, r in enumerate(records) if i not in refused and len(r[2]) > DLQ_MAX]
    Sent.invalid += len(under)

    stats = _wait_processed(stack, proc, log)
    assert stats.get("dlq_truncated", 0) == len(under) == 3
    dlq = consume_all(stack, stack.topics.dlq, len(under), timeout_s=60)
    assert len(dlq) == len(under)
    digests = {hashlib.sha256(v).hexdigest(): v for v in under}
    for m in dlq:
        h = dlq_reason(m.headers())
        assert h["streamrec.reason"] == "too_large"
        assert h["streamrec.truncated"] == "1"
        original = digests[h["streamrec.original_sha256"]]
        assert int(h["streamrec.original_size"]) == len(original)
        assert m.value() == original[:DLQ_MAX]
    assert proc.poll() is None


def test_a_dlq_record_the_broker_refuses_goes_as_metadata_then_is_parked(
        worker: tuple[Settings, subprocess.Popen[bytes], Path]) -> None:
    stack, proc, log = worker
    before = len(consume_all(stack, stack.topics.dlq, 10**6, timeout_s=3))
    # 1) The DLQ topic takes 1 KB: a 3 KB rejected message (below the cut) is refused there, so
    #    its metadata-only form (headers, no key or value) is what lands.
    _set_dlq_limit(stack, 1024)
    junk = os.urandom(3000)
    Sent.invalid += 1
    assert _send(stack, [*_valid(3), ("", b"u-poison", junk, ()), *_valid(3)]) == {}
    stats = _wait_processed(stack, proc, log)
    dlq = consume_all(stack, stack.topics.dlq, before + 1, timeout_s=60)
    assert len(dlq) == before + 1
    last = dlq[-1]
    h = dlq_reason(last.headers())
    assert last.value() in (None, b"") and last.key() is None
    assert "too large" in h["streamrec.metadata_only"].lower(), h
    assert h["streamrec.original_sha256"] == hashlib.sha256(junk).hexdigest()
    assert stats.get("parked", 0) == 0

    # 2) The DLQ topic takes 100 bytes: even the headers are refused; the record is parked, and
    #    the partition goes on (the events after it are processed).
    _set_dlq_limit(stack, 100)
    Sent.invalid += 1
    assert _send(stack, [("", b"u-poison", b"not json", ()), *_valid(5)]) == {}
    stats = _wait_processed(stack, proc, log)
    assert stats.get("parked", 0) == 1
    client = redis.Redis.from_url(stack.redis.url)
    try:
        keys = Keys(stack.redis.key_prefix)
        parked = [e for p in range(stack.topics.events_partitions)
                  for e in client.lrange(keys.parked(p), 0, -1)]
        outboxes = sum(client.llen(keys.outbox(p)) for p in range(stack.topics.events_partitions))
    finally:
        client.close()
    assert len(parked) == 1
    meta, _, framed = parked[0].partition(b"\n")
    assert "too large" in orjson.loads(meta)["error"].lower(), meta
    assert b"not json" in framed
    assert outboxes == 0  # nothing waits: the partition is not blocked
    assert proc.poll() is None
    _set_dlq_limit(stack, 1_048_588)
    # The worker keeps serving: a normal invalid message is dead-lettered as before.
    Sent.invalid += 1
    assert _send(stack, [("", b"u1", b"{}", ())]) == {}
    _wait_processed(stack, proc, log)
    assert len(consume_all(stack, stack.topics.dlq, before + 2, timeout_s=60)) == before + 2
