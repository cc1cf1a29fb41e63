"""`streamrec up` as a user runs it: a real subprocess, real signals, real embedded services."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from streaming.settings import Settings
from tests.integration.helpers import cli_env, start_up

pytestmark = pytest.mark.integration


def _pids_matching(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo.extend(children - found)
            found |= children
    return found


def _start_up(tmp_path: Path) -> tuple[subprocess.Popen[str], list[str]]:
    proc, lines, _ = start_up(tmp_path, "--rate", "300")
    return proc, lines


def _service_markers(lines: list[str]) -> list[str]:
    text = "".join(lines)
    kafka = re.search(r"kafka\s+(\S+)", text)
    redis_addr = re.search(r"redis\s+redis://([^/\s]+)", text)
    assert kafka and redis_addr, text
    # redis-server rewrites its process title to "redis-server HOST:PORT".
    return [f"tcp://{kafka.group(1)}", f"redis-server {redis_addr.group(1)}"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_up_stops_cleanly_on_signal_leaving_no_process(tmp_path: Path, sig: signal.Signals) -> None:
    proc, lines = _start_up(tmp_path)
    markers = _service_markers(lines)
    assert all(_pids_matching(m) for m in markers), "embedded services should be running"
    # This run's worker (other test sessions on the machine may run workers of their own).
    workers = [pid for pid in _descendants(proc.pid) if pid in _pids_matching("deploy.cli worker")]
    assert workers, "up should have started a worker"
    time.sleep(2)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    summary = orjson.loads(out.strip().splitlines()[-1])
    assert summary["emitted"] > 0 and summary["arrived"] == summary["delivered"] == summary["emitted"]
    assert not any(_pids_matching(m) for m in markers)
    assert not set(workers) & set(_pids_matching("deploy.cli worker")), "worker left running"
    assert not (tmp_path / "current.json").exists()


def test_services_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    proc, lines = _start_up(tmp_path)
    markers = _service_markers(lines)
    proc.kill()
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    deadline = time.monotonic() + 10
    while any(_pids_matching(m) for m in markers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_pids_matching(m) for m in markers), "orphaned broker or Redis"


def test_up_with_duration_prints_a_summary_and_other_commands_find_it(
    stack: Settings, tmp_path: Path
) -> None:
    env = cli_env(stack)
    result = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "up", "--duration", "12", "--rate", "400",
         "--set", "stream.attribution_window_ms=2000", "--set", "stream.allowed_lateness_ms=500"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert summary["emitted"] >= 400
    assert summary["arrived"] == summary["delivered"] == summary["emitted"]
    assert summary["processed"] == summary["emitted"]  # the Faust worker kept up
    assert summary["invalid_input"] == summary["dead_lettered"] == 0
    assert summary["examples"] > 0  # 2 s windows closed during the run
