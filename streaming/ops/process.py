"""Child processes: started in their own session, dying with their parent, stopped with
SIGTERM then SIGKILL. Used by ``streamrec up`` (the embedded runtime and the components), the
evaluation's real ingest worker, the trainer's launcher and the benchmarks.

Children are started with ``PR_SET_PDEATHSIG`` so that they die with the process that started
them even if it is killed with SIGKILL: no orphan keeps a port or memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from streaming.errors import EmbeddedServiceError
from streaming.settings import Settings

__all__ = ["ManagedProcess", "component_env", "component_process", "die_with_parent", "free_port",
           "terminate"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``sig`` (SIGTERM) when its
    parent dies, even when the parent is killed with SIGKILL (``PR_SET_PDEATHSIG``). Also
    callable in a process for itself (a torchrun rank, whose launcher starts it in a session
    of its own).

    Runs in the child between fork and exec. The signal fires when the *thread* that forked
    exits, not the process: start long-lived children from the main thread (or from a thread
    that lives as long as they should).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def terminate(proc: subprocess.Popen[Any], timeout_s: float = 10.0, name: str = "process") -> int:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", name, timeout_s)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    return proc.returncode


class ManagedProcess:
    """A child process with its output in a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(
        self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
        nice: int = 0,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.nice = nice  # added to the child's niceness (lower CPU priority)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        """Start the child in its own session (it dies with this process), appending its output
        to ``log_path``. Raises :class:`EmbeddedServiceError` when it cannot be started."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Own process group: a terminal Ctrl-C reaches only the supervisor, which then
                # stops children in order instead of all of them dying at once.
                start_new_session=True,
                preexec_fn=functools.partial(_child_setup, self.nice),
            )
        except OSError as exc:
            self._log.close()
            raise EmbeddedServiceError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from None

    @property
    def pid(self) -> int | None:
        """The child's pid; None before :meth:`start`."""
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        """Whether the child was started and is still running."""
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise :class:`EmbeddedServiceError` (with the end of the log) if the child exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise EmbeddedServiceError(
                f"{self.name} exited with code {self.proc.returncode}; "
                f"last log lines:\n{self.tail()}"
            )

    def tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the child's log (``"(no log)"`` when it cannot be read)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        terminate(self.proc, timeout_s, self.name)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


def _child_setup(nice: int) -> None:
    """In the forked child: die with the parent, then lower the priority by ``nice``."""
    die_with_parent()
    if nice:
        os.nice(nice)


def component_env(settings: Settings) -> dict[str, str]:
    """The environment of a streamrec component process: exactly ``settings`` (see
    :meth:`Settings.child_env`), unbuffered output, and ``MALLOC_ARENA_MAX`` from
    ``runtime.malloc_arena_max`` (unless the environment sets it): glibc gives every thread
    its own arena by default, and the memory they fragment made RSS creep in the soak.
    ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` from
    ``runtime.malloc_mmap_threshold_bytes``: glibc raises both to the size of the largest block
    freed so far, after which reloaded checkpoints' tensors come from the heap and stay there
    (a process reloading a checkpoint 60 times grew 714 -> 756 MB; with fixed thresholds it
    stayed at 715 MB)."""
    env = settings.child_env(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if settings.runtime.malloc_arena_max and "MALLOC_ARENA_MAX" not in env:
        env["MALLOC_ARENA_MAX"] = str(settings.runtime.malloc_arena_max)
    threshold = settings.runtime.malloc_mmap_threshold_bytes
    if threshold:
        for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
            env.setdefault(name, str(threshold))
    return env


def component_process(settings: Settings, run_dir: Path, name: str, *args: str) -> ManagedProcess:
    """A ``streamrec`` subcommand (``worker``, ``score``, ``train``, ...) as a child process that
    sees exactly ``settings``, logging to ``run_dir/<name>.log``. Not started yet. The trainer
    gets ``runtime.trainer_nice`` and ``runtime.trainer_threads`` (the resource plan of a small
    machine: ingest and scoring first)."""
    env = component_env(settings)
    nice = 0
    if args and args[0] == "train":
        nice = settings.runtime.trainer_nice
        if settings.runtime.trainer_threads:
            threads = str(settings.runtime.trainer_threads)
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    # ``-m deploy.cli`` is the ``streamrec`` console script, without depending on PATH.
    return ManagedProcess(name, [sys.executable, "-m", "deploy.cli", *args],
                          run_dir / f"{name}.log", env=env, nice=nice)
