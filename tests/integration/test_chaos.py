"""A short `make chaos`: SIGKILL the worker, the trainer and the scorer, restart Redis, restart
the Apache Kafka broker (SIGTERM, then kill -9) under a steady stream; nothing may be lost or
applied twice, and no component may need a restart for the broker's (benchmarks/chaos.py does
the checking)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_kills_and_redis_and_broker_restarts_lose_nothing_and_apply_nothing_twice(
        tmp_path: Path) -> None:
    # Its own embedded stack (it restarts Redis), never the shared test services.
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL") and not k.startswith("STREAMREC_")}
    env["STREAMREC_RUNTIME_RUN_DIR"] = str(tmp_path / "run")
    result = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "bench", "chaos", "--events", "8000", "--rate",
         "250", "--no-save"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    r = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert r["restarts"] == {"worker": 1, "trainer": 1, "scorer": 1, "redis": 2, "kafka": 2}, r
    # The second Redis restart is a kill -9 under the default appendfsync=always.
    assert r["redis_appendfsync"] == "always"
    assert any("kill -9 redis" in line for line in r["timeline"]), r["timeline"]
    assert r["broker"].startswith("Apache Kafka 4.")
    assert [o["how"] for o in r["broker_outages"]] == ["SIGTERM", "kill -9"]
    assert r["events_lost"] == 0 and r["double_applied"] == 0, r["state_differences"]
    assert r["state_differences"] == [] and r["state_keys"]["chaos"] == r["state_keys"]["clean"]
    c = r["conservation"]
    assert c["processed"] == r["events_emitted"] == c["accepted_plus_duplicate_plus_invalid"]
    assert (c["accepted"], c["duplicate"], c["invalid"]) == tuple(
        c["clean_run"][k] for k in ("accepted", "duplicate", "invalid"))
    assert r["unexpected_exits"] == {"worker": 0, "trainer": 0, "scorer": 0}
    assert r["trainer"]["trained_every_example"]
    assert r["scorer_during_trainer_outage"]["feeds_written"] > 0
    assert r["lag_watermark_anomalies"] == 0  # Apache Kafka reports exact log-end offsets
