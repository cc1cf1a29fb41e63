"""Supervision of ``streamrec up``'s components: a component that exits is started again.

The workers, the trainer (all its ranks: torchrun ends the group when one rank dies) and the
scorers are restarted with exponential backoff (``runtime.restart_backoff_s``, doubling per
restart still inside ``runtime.restart_window_s``, at most ``runtime.restart_backoff_max_s``).
A component that exits more than ``runtime.restart_max`` times within the window is in a crash
loop: the supervisor gives up with :class:`~streaming.errors.EmbeddedServiceError` naming it and
showing the end of its log, and ``up`` stops. The embedded broker and Redis are not restarted:
their failure ends the run (clients cannot ride out a lost data directory).

In production the same job falls to the orchestrator: ``deploy/k8s/`` sets restart policies
and a crash-looping pod backs off the same way (``CrashLoopBackOff``).

:meth:`Supervisor.poll` must be called from the thread that started the processes: children
die with the thread that forked them (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from streaming.errors import EmbeddedServiceError
from streaming.ops.metrics import SupervisorMetrics
from streaming.ops.process import ManagedProcess
from streaming.settings import RuntimeSettings

__all__ = ["RestartPolicy", "Supervisor"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to restart an exited component and when to give up (times in s)."""

    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    max_restarts: int = 5
    window_s: float = 300.0

    @classmethod
    def from_settings(cls, runtime: RuntimeSettings) -> RestartPolicy:
        """The policy of the ``runtime.restart_*`` settings."""
        return cls(runtime.restart_backoff_s, runtime.restart_backoff_max_s,
                   runtime.restart_max, runtime.restart_window_s)

    def delay_s(self, recent_restarts: int) -> float:
        """Backoff before the next restart, given the restarts inside the window."""
        return min(self.backoff_s * 2 ** recent_restarts, self.backoff_max_s)


@dataclass(slots=True)
class _Watch:
    proc: ManagedProcess
    restarts: deque[float] = field(default_factory=deque)  # monotonic times, inside the window
    total: int = 0
    due: float | None = None  # when the pending restart happens
    exit_code: int | None = None


class Supervisor:
    """Watches ``processes`` (started elsewhere) and restarts those that exit.

    Args:
        processes: the components, already started.
        policy: backoff and crash-loop limits.
        metrics: restart counters and running gauges (served by ``up``).
        say: where restart notices go (``up`` prints them).
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, processes: list[ManagedProcess], policy: RestartPolicy,
                 metrics: SupervisorMetrics | None = None,
                 say: Callable[[str], None] = log.warning,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.metrics = metrics or SupervisorMetrics()
        self._say = say
        self._clock = clock
        self._watches = {p.name: _Watch(p) for p in processes}
        for name in self._watches:
            self.metrics.restarts.labels(name)
            self.metrics.running.labels(name).set(1)

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts so far per component."""
        return {name: w.total for name, w in self._watches.items()}

    def poll(self) -> None:
        """Notice exits and perform due restarts. Raises :class:`EmbeddedServiceError` when a
        component exceeds ``policy.max_restarts`` within ``policy.window_s``."""
        now = self._clock()
        for name, w in self._watches.items():
            if w.due is None and not w.proc.alive():
                self._exited(name, w, now)
            if w.due is not None and now >= w.due:
                w.due = None
                w.proc.stop(1.0)  # reaps it and closes its log handle
                w.proc.start()
                self.metrics.running.labels(name).set(1)

    def _exited(self, name: str, w: _Watch, now: float) -> None:
        w.exit_code = w.proc.proc.returncode if w.proc.proc is not None else None
        self.metrics.running.labels(name).set(0)
        while w.restarts and now - w.restarts[0] > self.policy.window_s:
            w.restarts.popleft()
        if len(w.restarts) >= self.policy.max_restarts:
            raise EmbeddedServiceError(
                f"{name} exited (code {w.exit_code}) {len(w.restarts) + 1} times within "
                f"{self.policy.window_s:.0f} s: a crash loop, not restarting it again "
                f"(runtime.restart_max={self.policy.max_restarts}). Last log lines of "
                f"{w.proc.log_path}:\n{w.proc.tail()}")
        delay = self.policy.delay_s(len(w.restarts))
        w.restarts.append(now)
        w.total += 1
        w.due = now + delay
        self.metrics.restarts.labels(name).inc()
        self._say(f"{name} exited (code {w.exit_code}); restarting it in {delay:.1f} s "
                  f"(restart {w.total})")
