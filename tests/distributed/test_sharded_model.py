from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streaming.ops.process import free_port

pytestmark = pytest.mark.distributed


def torchrun(args: list[str], timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={free_port()}", *args],
        capture_output=True, text=True, timeout=timeout_s,
    )


def failure(result: subprocess.CompletedProcess[str]) -> str:
    """What a failed torchrun printed that says why: every error-looking line (a rank's
    ``terminate called ...`` comes long before the launcher's summary), then the tail."""
    needles = ("error", "terminate", "what()", "exception", "abort", "traceback", "enforce")
    lines = [ln for ln in (result.stdout + result.stderr).splitlines()
             if any(n in ln.lower() for n in needles)]
    return "\n".join(lines[-60:]) + "\n--- tail ---\n" + result.stderr[-2000:]


@pytest.mark.parametrize("interaction", ["dot", "dcn", "dot+attention"])
def test_export_scores_like_the_sharded_model(tmp_path: Path, interaction: str) -> None:
    result = torchrun(["tests/distributed/export_check.py", str(tmp_path), interaction])
    assert result.returncode == 0, failure(result)
    rows = orjson.loads((tmp_path / "result.json").read_bytes())
    assert [r["rank"] for r in rows] == [0, 1]
    for r in rows:
        assert r["export_vs_sharded"] < 1e-6, r
        assert r["reloaded_vs_sharded"] < 1e-6, r


def test_reset_rows_start_new_ids_from_the_unknown_row_and_the_mean_optimizer_state(
        tmp_path: Path) -> None:
    result = torchrun(["tests/distributed/reset_check.py", str(tmp_path)])
    assert result.returncode == 0, failure(result)
    rows = [orjson.loads((tmp_path / f"reset-{r}.json").read_bytes()) for r in (0, 1)]
    assert sum(r["checked"] for r in rows) == 3  # every given row is on some rank's shard
    assert any(r["nonzero_state"] for r in rows)  # training left a state to average
    # The table is whole on one rank: there the new rows now equal the unknown row (they did
    # not before), and the other rank holds none of it.
    assert sorted(r["weight_rows_checked"] for r in rows) == [0, 3]
    for r in rows:
        assert r["max_error"] < 1e-6 and r["zeroed"], r
        assert r["weight_max_error"] == 0.0 and r["weights_differed_before"], r
