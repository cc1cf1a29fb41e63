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
          "recall_at_20": ("continuous", "frozen", "popularity", "popularity_repeat_policy",
                           "buy_again", "user_knn", "covisit", "lightgbm")}
OLD_TS = 788_918_400_000  # 1995-01-01T00:00:00Z: before the contract's 2000 floor


def evaluate(services: Settings, out: Path, *args: str, stderr: list[str] | None = None
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the last stdout line, the written result file); ``stderr`` gets the progress lines."""
    result = run_cli(["eval", *args, "--out", str(out), "--rank-users", "50"], cli_env(services),
                     timeout_s=280)
    assert result.returncode == 0, result.stderr[-3000:]
    if stderr is not None:
        stderr.extend(result.stderr.splitlines())
    line = orjson.loads(result.stdout.strip().splitlines()[-1])
    files = list(out.glob("prequential-*.json"))
    assert len(files) == 1
    return line, orjson.loads(files[0].read_bytes())


def assert_ranking_report(line: dict[str, Any], full: dict[str, Any]) -> None:
    """Candidate recall, intervals and the ranked users, in the last line and per window."""
    cand = line["candidate_recall"]
    assert 0.0 <= cand["total"] <= 1.0 and cand["relevant_items"] > 0
    assert sum(cand["by_source"].values()) == pytest.approx(cand["total"], abs=1e-4)
    assert {"recent", "trending", "popular"} <= set(cand["by_source"])
    for name in MODELS["recall_at_20"]:
        lo, hi = line["recall_at_20_ci95"][name]
        assert 0.0 <= lo <= line["recall_at_20"][name] <= hi <= 1.0, name
    assert line["ranked"]["user_windows"] >= line["ranked"]["users"] > 0
    ranked = [w for w in full["windows"] if w["ranked_users"]]
    assert ranked and all(w["ranked_users"] <= min(50, w["active_users"]) for w in ranked)
    assert all(0.0 <= w["candidate_recall"]["total"] <= 1.0 for w in ranked)


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
    assert line["rejected"] == {"total": 0, "by_reason": {}, "first": []}
    assert_ranking_report(line, full)
    assert_same_numbers(line, again)
    assert line["candidate_recall"] == again["candidate_recall"]
    assert line["recall_at_20_ci95"] == again["recall_at_20_ci95"]
    # The hidden model's top items: the ceiling of any candidate set of the same size.
    truth = line["candidate_recall"]["ground_truth"]
    assert 0.0 < truth["retrieval_candidates"] <= truth["candidates"] <= 1.0
    assert truth["candidates"] > line["candidate_recall"]["by_source"]["popular"]


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
    assert line["rejected"]["by_reason"]["cancellation"] > 0
    for metric, names in MODELS.items():
        assert all(line[metric][n] is not None for n in names), line[metric]
    assert line["candidate_recall"]["total"] is not None


def write_old_log(path: Path, events: int = 3000) -> int:
    """A synthetic stream moved to 1995 and stretched 30x in time (~1 h), as contract JSON lines, plus
    four broken records; returns the number of valid events."""
    from streaming.sources.synthetic import SyntheticConfig, SyntheticStream

    evs = list(SyntheticStream(3, SyntheticConfig(n_users=300, n_items=400)).events(
        1_735_689_600_000, 20.0, limit=events))
    t0 = evs[0].ts
    rows = [{**e.to_dict(), "ts": OLD_TS + (e.ts - t0) * 30} for e in evs]
    lines = [orjson.dumps(r) for r in rows]
    lines += [orjson.dumps({"event_id": "no-item", "user_id": "u1", "event_type": "click",
                            "ts": OLD_TS}),
              orjson.dumps({**rows[5], "event_type": "like", "event_id": "liked"}),
              orjson.dumps(rows[7]),  # the same event_id twice
              b"{not json"]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return len(rows)


def test_a_users_own_log_from_1995_evaluates_with_its_rejects_reported(
        services: Settings, tmp_path: Path) -> None:
    log = tmp_path / "shop-1995.jsonl"
    valid = write_old_log(log)
    progress: list[str] = []
    line, full = evaluate(services, tmp_path / "out", "--stream", str(log), "--no-plots",
                          "--window", "5min", "--tick", "30s", stderr=progress)
    assert line["stream"] == "shop-1995" and line["events"] == valid
    assert line["rejected"]["total"] == 4 and line["rejected"]["by_reason"] == {
        "duplicate": 1, "missing_field": 1, "not_json": 1, "unknown_event_type": 1}
    assert len(line["rejected"]["first"]) == 4 and all(
        f.startswith("shop-1995.jsonl:") for f in line["rejected"]["first"])
    assert any("4 records not loaded" in p for p in progress)
    assert any("shop-1995.jsonl:" in p and "missing_field" in p for p in progress)
    assert line["dead_lettered"] == 0 and full["examples"] > 500  # 1995 events were accepted
    assert full["first_event_ms"] == OLD_TS
    assert line["label_mode"] == "exposure"  # the log has views
    assert line["time_scales"]["window"] == "5min" and line["time_scales"]["tick"] == "30s"
    assert line["time_scales"]["half_life"] == "5min"  # derived from the window
    assert full["relevant_types"] == ["click", "purchase"]
    assert_ranking_report(line, full)
    for metric, names in MODELS.items():
        assert all(line[metric][n] is not None for n in names), line[metric]


def test_a_log_without_valid_events_is_a_clear_error(services: Settings, tmp_path: Path) -> None:
    log = tmp_path / "bad.jsonl"
    log.write_text('{"event_id": "a"}\n{"event_id": "b", "user_id": "u", "item_id": "i", '
                   '"event_type": "click", "ts": -1}\n')
    result = run_cli(["eval", "--stream", str(log), "--out", str(tmp_path)], cli_env(services))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no valid event" in result.stderr
    assert "missing_field 1" in result.stderr and "ts_out_of_range 1" in result.stderr
    bad_flag = run_cli(["eval", "--stream", "synthetic", "--tick", "10"], cli_env(services))
    assert bad_flag.returncode == 2 and "--tick '10'" in bad_flag.stderr


def test_a_missing_log_is_a_clear_error(services: Settings, tmp_path: Path) -> None:
    result = run_cli(["eval", "--stream", str(tmp_path / "absent.csv.gz")], cli_env(services))
    assert result.returncode != 0
    assert "no such file" in result.stderr and "Traceback" not in result.stderr
