"""``streamrec eval`` end to end: real Redis (and, with --via kafka, the broker and a worker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from streaming.settings import Settings
from tests.integration.helpers import cli_env, run_cli

pytestmark = pytest.mark.integration
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
OTTO = SHARED / "otto-sample" / "train.jsonl"
UCI = SHARED / "uci-online-retail" / "online_retail.csv.gz"
MODELS = {"auc": ("continuous", "frozen", "lightgbm"),
          "recall_at_20": ("continuous", "frozen", "popularity", "covisit", "lightgbm")}


def evaluate(services: Settings, out: Path, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the last stdout line, the written result file)."""
    result = run_cli(["eval", *args, "--out", str(out), "--rank-users", "50"], cli_env(services),
                     timeout_s=280)
    assert result.returncode == 0, result.stderr[-3000:]
    line = orjson.loads(result.stdout.strip().splitlines()[-1])
    files = list(out.glob("prequential-*.json"))
    assert len(files) == 1
    return line, orjson.loads(files[0].read_bytes())


def assert_same_numbers(a: dict[str, Any], b: dict[str, Any]) -> None:
    for metric, names in MODELS.items():
        for name in names:
            assert a[metric][name] == pytest.approx(b[metric][name], abs=1e-4), (metric, name)
    for sa, sb in zip(a["sweep"], b["sweep"], strict=True):
        assert sa["auc"] == pytest.approx(sb["auc"], abs=1e-4)


def test_synthetic_eval_reports_every_model_and_repeats_with_the_same_seed(
        services: Settings, tmp_path: Path) -> None:
    args = ["--stream", "synthetic", "--events", "8000", "--seed", "7"]
    line, full = evaluate(services, tmp_path / "a", *args)
    again, _ = evaluate(services, tmp_path / "b", *args, "--no-plots")
    assert line["name"] == "prequential" and line["stream"] == "synthetic"
    assert line["mode"] == "in-process"
    for metric, names in MODELS.items():
        assert all(0.0 <= line[metric][n] <= 1.0 for n in names), line[metric]
    assert [s["label"] for s in line["sweep"]][-1] == "never (frozen)"
    assert full["windows"] and full["examples"] > 1000 and full["dead_lettered"] == 0
    assert (tmp_path / "a" / "prequential-synthetic.png").stat().st_size > 10_000
    assert_same_numbers(line, again)


@pytest.mark.skipif(not OTTO.is_file(), reason="../shared/data not present")
def test_otto_replay_gives_the_same_results_through_kafka_as_in_process(
        services: Settings, tmp_path: Path) -> None:
    """Exposure labels do not depend on how events are batched, so the broker and the real
    worker must produce exactly the examples (and so the metrics) of the in-process run."""
    local, local_full = evaluate(services, tmp_path / "local", "--stream", str(OTTO),
                                 "--no-plots", "--set", "topics.events_partitions=1")
    kafka, kafka_full = evaluate(services, tmp_path / "kafka", "--stream", str(OTTO),
                                 "--no-plots", "--via", "kafka",
                                 "--set", "topics.events_partitions=1")
    assert (local["mode"], kafka["mode"]) == ("in-process", "kafka")
    assert local["events"] == kafka["events"] == 862
    assert local_full["examples"] == kafka_full["examples"] > 0
    assert_same_numbers(local, kafka)


@pytest.mark.skipif(not UCI.is_file(), reason="../shared/data not present")
def test_uci_replay_reports_every_model(services: Settings, tmp_path: Path) -> None:
    line, full = evaluate(services, tmp_path, "--stream", str(UCI), "--events", "30000",
                          "--no-plots")
    assert line["stream"] == "uci-online-retail" and line["events"] == 30000
    assert full["source"]["skipped"]["cancellation"] > 0
    for metric, names in MODELS.items():
        assert all(line[metric][n] is not None for n in names), line[metric]


def test_a_missing_log_is_a_clear_error(services: Settings, tmp_path: Path) -> None:
    result = run_cli(["eval", "--stream", str(tmp_path / "absent.csv.gz")], cli_env(services))
    assert result.returncode != 0
    assert "no such file" in result.stderr and "Traceback" not in result.stderr
