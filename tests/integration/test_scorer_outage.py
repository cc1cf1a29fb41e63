"""A scorer rides out a Redis outage: nothing it does in the background may end the process.

Found by `make chaos`: a `kill -9` of Redis (its restart loads the append-only file) made the
scorer's periodic fallback-feed refresh raise, and the scorer exited. Here a private
redis-server is killed and started again under a real scorer's Redis-facing work.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest
import redis

from streaming.ops.process import ManagedProcess, free_port
from streaming.serving.worker import ScorerWorker
from streaming.settings import Settings

pytestmark = pytest.mark.integration


def _redis_server(tmp_path: Path, port: int) -> ManagedProcess:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is installed by make test (deploy/ensure-redis.sh)"
    proc = ManagedProcess("redis", [binary, "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--dir", str(tmp_path)], tmp_path / "redis.log")
    proc.start()
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            assert time.monotonic() < deadline, proc.tail()
            time.sleep(0.05)
    client.close()
    return proc


def test_the_scorer_keeps_going_while_redis_is_down(stack: Settings, tmp_path: Path) -> None:
    port = free_port()
    server = _redis_server(tmp_path, port)
    scorer = ScorerWorker(stack.with_values({"redis.url": f"redis://127.0.0.1:{port}/0",
                                             "redis.socket_timeout_s": "1"}))
    try:
        scorer._refresh_popular()  # Redis up: works (no trending items yet: nothing written)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        errors = scorer.metrics.redis_errors.labels("scorer")._value.get()
        scorer._refresh_popular()  # must not raise
        scorer._record({"model_version": 3})  # the model loader's bookkeeping: must not raise
        assert scorer.metrics.redis_errors.labels("scorer")._value.get() == errors + 2
        server.stop()
        server = _redis_server(tmp_path, port)
        scorer._record({"model_version": 4})
        assert redis.Redis(port=port).hget(scorer.keys.scorer_stats, "model_version") == b"4"
    finally:
        scorer.client.close()
        server.stop()
