from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streaming.settings import Settings
from tests.integration.helpers import cli_env, consume_all, run_cli

pytestmark = pytest.mark.integration
NOW = 1_732_000_000_000


def write_jsonl(path: Path) -> None:
    good = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "view", "ts": NOW}
    lines = [
        orjson.dumps(good),
        b'{"event_id": "e2", "user_id": "u1"',  # truncated JSON
        orjson.dumps({**good, "event_id": "e3", "event_type": "like"}),
        orjson.dumps({**good, "event_id": "e4", "event_type": "click"}),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_emit_file_reports_malformed_lines_without_traceback(stack: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_jsonl(path)
    env = cli_env(stack)
    result = run_cli(["emit", "--file", str(path)], env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "events.jsonl:2: not_json" in result.stderr
    assert "events.jsonl:3: unknown_event_type" in result.stderr
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert summary["emitted"] == 2 and summary["invalid"] == 2 and summary["delivered"] == 2
    ids = [orjson.loads(m.value())["event_id"] for m in consume_all(stack, stack.topics.events, 2)]
    assert sorted(ids) == ["e1", "e4"]

    strict = run_cli(["emit", "--file", str(path), "--strict"], env)
    assert strict.returncode == 1 and "Traceback" not in strict.stderr


def test_emit_synthetic_at_a_rate_and_count(stack: Settings) -> None:
    result = run_cli(["emit", "--synthetic", "--count", "500", "--rate", "2000", "--seed", "3"],
                     cli_env(stack))
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert summary["emitted"] == 500 and summary["delivered"] == 500
    assert summary["elapsed_s"] >= 0.2  # paced, not a burst
    assert len(consume_all(stack, stack.topics.events, 500)) == 500


def test_emit_missing_file_and_bad_setting_are_one_line_errors(stack: Settings) -> None:
    env = cli_env(stack)
    missing = run_cli(["emit", "--file", "/no/such/file.jsonl"], env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "streamrec: error: input file not found: /no/such/file.jsonl"
    bad = run_cli(["emit", "--synthetic", "--set", "topics.events_partitions=zero"], env)
    assert bad.returncode == 2 and "expected int" in bad.stderr and "Traceback" not in bad.stderr
