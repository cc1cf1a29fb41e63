"""Giving freed heap memory back to the OS: glibc's ``malloc_trim(0)`` on a timer.

glibc returns freed memory to the OS only from the top of a heap (``MALLOC_TRIM_THRESHOLD_``).
Memory freed in the middle of a heap stays resident: after a lag spike the ingest worker's
larger batches leave such holes, and its RSS rose a step after every spike in the soak while
the live Python objects (tracemalloc) stayed flat. ``malloc_trim(0)`` also releases the free
pages inside the heaps (``madvise(MADV_DONTNEED)``), so RSS follows what is in use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

__all__ = ["start_trimmer"]

log = logging.getLogger(__name__)


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def start_trimmer(interval_s: float) -> threading.Event | None:
    """Call ``malloc_trim(0)`` every ``interval_s`` seconds in a daemon thread; set the returned
    event to stop it. None (and nothing started) when ``interval_s <= 0`` or the C library has
    no ``malloc_trim``. A call walks the heaps under their locks: about a millisecond for the
    worker's ~100 MB."""
    if interval_s <= 0:
        return None
    trim = _malloc_trim()
    if trim is None:
        log.info("no malloc_trim in this C library: freed heap memory is not trimmed")
        return None
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            trim(0)

    threading.Thread(target=loop, name="malloc-trim", daemon=True).start()
    return stop
