"""The supervisor's restart policy: backoff, counts, and giving up on a crash loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deploy.supervisor import RestartPolicy, Supervisor
from streaming.errors import EmbeddedServiceError
from streaming.ops.metrics import SupervisorMetrics
from streaming.ops.process import component_process
from streaming.settings import Settings


class FakeProc:
    """Stands in for a ManagedProcess: ``alive`` until ``die()``; ``start`` revives it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.log_path = Path(f"/nonexistent/{name}.log")
        self.running = True
        self.starts = 0
        self.proc: Any = type("P", (), {"returncode": -9})()

    def alive(self) -> bool:
        return self.running

    def die(self) -> None:
        self.running = False

    def stop(self, timeout_s: float = 10.0) -> None:
        pass

    def start(self) -> None:
        self.running = True
        self.starts += 1

    def tail(self, lines: int = 15) -> str:
        return "Traceback: boom"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _sup(procs: list[FakeProc], clock: Clock, **policy: float) -> tuple[Supervisor, list[str]]:
    said: list[str] = []
    sup = Supervisor(procs, RestartPolicy(**policy), SupervisorMetrics(),  # type: ignore[arg-type]
                     said.append, clock)
    return sup, said


def test_an_exited_component_is_restarted_after_a_doubling_backoff() -> None:
    worker, scorer, clock = FakeProc("worker-0"), FakeProc("scorer-0"), Clock()
    sup, said = _sup([worker, scorer], clock, backoff_s=1.0, backoff_max_s=3.0, max_restarts=10)
    worker.die()
    sup.poll()
    assert worker.starts == 0 and "worker-0 exited (code -9); restarting it in 1.0 s" in said[0]
    clock.t += 1.0
    sup.poll()
    assert worker.starts == 1 and worker.alive()
    delays = []
    for _ in range(3):  # 2 s, then capped at 3 s
        worker.die()
        sup.poll()
        delays.append(float(said[-1].split(" in ")[1].split(" s")[0]))
        clock.t += delays[-1]
        sup.poll()
    assert delays == [2.0, 3.0, 3.0]
    assert sup.restarts == {"worker-0": 4, "scorer-0": 0} and scorer.starts == 0
    assert sup.metrics.restarts.labels("worker-0")._value.get() == 4


def test_a_crash_loop_gives_up_with_the_component_and_its_log() -> None:
    worker, clock = FakeProc("worker-0"), Clock()
    sup, _ = _sup([worker], clock, backoff_s=0.1, max_restarts=2, window_s=60.0)
    for _ in range(2):
        worker.die()
        sup.poll()
        clock.t += 1.0
        sup.poll()
    worker.die()
    with pytest.raises(EmbeddedServiceError, match=r"worker-0 exited .* 3 times within 60 s"
                       r"(.|\n)*Traceback: boom"):
        sup.poll()


def test_restarts_outside_the_window_do_not_count_towards_a_crash_loop() -> None:
    worker, clock = FakeProc("worker-0"), Clock()
    sup, said = _sup([worker], clock, backoff_s=1.0, max_restarts=2, window_s=60.0)
    for _ in range(5):  # one exit every 100 s: never 2 within 60 s
        worker.die()
        sup.poll()
        clock.t += 100.0
        sup.poll()
    assert sup.restarts == {"worker-0": 5} and worker.alive()
    assert all(" in 1.0 s" in line for line in said)  # the backoff resets too


def test_malloc_thresholds_can_be_left_to_glibc(tmp_path: Path) -> None:
    settings = Settings.load(env={}).with_values({"runtime.malloc_mmap_threshold_bytes": "0"})
    env = component_process(settings, tmp_path, "scorer", "score").env
    assert env is not None and "MALLOC_MMAP_THRESHOLD_" not in env


def test_up_starts_the_trainer_niced_with_few_threads_and_the_rest_as_is(tmp_path: Path) -> None:
    """The resource plan of a small machine: ingest and scoring first (runtime.trainer_*)."""
    settings = Settings.load(env={}).with_values({"runtime.trainer_nice": "7",
                                                  "runtime.trainer_threads": "1"})
    trainer = component_process(settings, tmp_path, "trainer", "train")
    worker = component_process(settings, tmp_path, "worker-0", "worker")
    assert trainer.nice == 7 and worker.nice == 0
    assert trainer.env is not None and trainer.env["OMP_NUM_THREADS"] == "1"
    assert worker.env is not None and worker.env["MALLOC_ARENA_MAX"] == "2"
    assert worker.env["MALLOC_MMAP_THRESHOLD_"] == worker.env["MALLOC_TRIM_THRESHOLD_"] == "131072"
    assert worker.env is not None and "OMP_NUM_THREADS" not in worker.env
    # The niceness reaches the child (a stand-in command with the trainer's process settings).
    trainer.argv = [sys.executable, "-c", "import os; print(os.nice(0))"]
    trainer.start()
    assert trainer.proc is not None
    trainer.proc.wait(30)
    trainer.stop()
    base = int(subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"],
                              capture_output=True, text=True).stdout)
    assert int(trainer.log_path.read_text().split()[-1]) == min(19, base + 7)
