"""``streamrec train``: one process, or N ranks under torchrun (``--nproc N`` launches them)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import orjson

from streaming.io.kafka import KafkaAdmin, topic_specs
from streaming.settings import Settings

log = logging.getLogger(__name__)


def launch(settings: Settings, nproc: int, extra_args: list[str]) -> int:
    """Start ``nproc`` ranks with torchrun on this machine, the settings passed by environment."""
    import subprocess

    from streaming.ops.process import die_with_parent, free_port

    env = settings.child_env(os.environ)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", "-m", "deploy.cli", "train", *extra_args]
    # torchrun dies with this launcher, and a SIGTERM or SIGINT to the launcher (what streamrec
    # up and Kubernetes send) goes on to torchrun, which stops its ranks: without this a
    # stopped launcher left torchrun and both ranks running.
    proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    return proc.wait()


def run_trainer(settings: Settings, *, max_steps: int | None = None,
                duration_s: float | None = None) -> dict[str, Any]:
    """Run this rank's :class:`~trainer.loop.ContinuousTrainer` until SIGINT/SIGTERM,
    ``duration_s`` (s) or ``max_steps``, then shut the group down. Returns the run's summary
    (steps, examples, throughput, prequential metrics), which rank 0 also prints as JSON."""
    from trainer import distributed as D
    from trainer.loop import WARMUP_STEPS, ContinuousTrainer

    if "TORCHELASTIC_RUN_ID" in os.environ:
        # A torchrun rank runs in a session of its own: make sure it never outlives torchrun
        # (killed with SIGKILL, say). Checkpoints are written atomically, so SIGKILL is safe.
        from streaming.ops.process import die_with_parent

        die_with_parent(signal.SIGKILL)
    info = D.init()
    if info.rank == 0:
        KafkaAdmin(settings).ensure_topics(topic_specs(settings))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if duration_s:
        threading.Timer(duration_s, stop.set).start()
    trainer = ContinuousTrainer(settings, info=info)
    started = time.monotonic()
    try:
        trainer.run(stop, max_steps=max_steps)
    finally:
        trainer.close()
        D.shutdown()
    elapsed = time.monotonic() - started
    # Every rank trains the same number of examples per step (see ContinuousTrainer._agree).
    # Throughput after the warm-up steps (trainer.loop.WARMUP_STEPS), over all of a short run.
    start_at, start_examples = trainer.warm_at \
        if trainer.warm_at is not None and trainer.state.step > WARMUP_STEPS \
        else (trainer.first_step_at or 0.0, 0)
    span = (trainer.last_step_at or 0) - start_at
    trained = (trainer.state.examples_seen - start_examples) * info.world
    summary = {
        "rank": info.rank, "ranks": info.world, "steps": trainer.state.step,
        "examples_seen": trainer.state.examples_seen, "held_out": trainer.state.held_out,
        "model_version": trainer.state.version,
        "duplicates_dropped": trainer.duplicates, "elapsed_s": round(elapsed, 2),
        "publish_s_max": round(max(trainer.publish_seconds, default=0.0), 3),
        "publish_s_median": round(sorted(trainer.publish_seconds)[len(trainer.publish_seconds) // 2]
                                  if trainer.publish_seconds else 0.0, 3),
        "examples_per_s": round(trained / span, 1) if span > 0 else 0.0,
        # This rank's ms per step in each phase of the loop, after the warm-up steps.
        "phase_ms_per_step": trainer.phase_ms_per_step(),
        "metrics": trainer.metrics.summary(),
    }
    if info.rank == 0:
        print(orjson.dumps(summary, option=orjson.OPT_SERIALIZE_NUMPY).decode(), flush=True)
    return summary
