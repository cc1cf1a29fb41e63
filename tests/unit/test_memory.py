"""The malloc_trim timer: off at 0, runs and stops otherwise."""

from __future__ import annotations

import threading
import time

from streaming.ops.memory import start_trimmer


def test_zero_interval_starts_nothing() -> None:
    before = {t.name for t in threading.enumerate()}
    assert start_trimmer(0) is None
    assert "malloc-trim" not in {t.name for t in threading.enumerate()} - before


def test_trimmer_runs_and_stops() -> None:
    stop = start_trimmer(0.01)
    assert stop is not None  # glibc: this machine's C library has malloc_trim
    threads = [t for t in threading.enumerate() if t.name == "malloc-trim"]
    assert threads and all(t.daemon for t in threads)
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=2)
    assert not any(t.is_alive() for t in threads)
