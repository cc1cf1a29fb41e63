"""bench train: the full continuous trainer (Kafka -> batch -> sharded step) against a plain
TorchRec loop with the same model, ranks and batch size on in-memory batches, in the same run;
plus the checkpoint publish time of the default model."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile

import orjson

from benchmarks.common import fresh_topics, report, services
from streaming.ops.process import free_port
from streaming.settings import Settings


def _json_line(out: str, prefix: str) -> dict:
    for line in reversed(out.splitlines()):
        if line.startswith(prefix):
            return orjson.loads(line)
    raise SystemExit(f"no result line in output:\n{out[-3000:]}")


def main(argv: list[str] | None = None, settings: Settings | None = None) -> None:
    ap = argparse.ArgumentParser(prog="streamrec bench train")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args(argv)
    base = settings or Settings.load()
    # The trainer holds out trainer.holdout_share of the examples (never trained), so enough are
    # produced for every step to fill after the hold-out, plus 10 batches of slack.
    n = math.ceil(args.batch_size * args.steps / (1 - base.trainer.holdout_share)) \
        + 10 * args.batch_size
    with services(base) as running, tempfile.TemporaryDirectory() as ckpt:
        s = fresh_topics(running, **{
            "trainer.batch_size": str(args.batch_size), "trainer.batch_max_wait_ms": "1000",
            # Throughput without mid-run publishes (in production one every publish_interval_s);
            # the publish at exit gives publish_s for the default model.
            "trainer.publish_interval_s": "3600", "trainer.publish_every_steps": "0",
            "trainer.checkpoint_dir": ckpt,
        })
        from benchmarks.examples_gen import produce_examples

        produce_examples(s, n)
        env = s.child_env(os.environ)
        env["PYTHONWARNINGS"] = "ignore"
        plain = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.ranks}",
             f"--master_port={free_port()}", "-m", "benchmarks.plain_torchrec",
             str(args.batch_size), str(args.steps)],
            env=env, capture_output=True, text=True, timeout=900)
        plain_rate = _json_line(plain.stdout, "{")["examples_per_s"]
        full = subprocess.run(
            [sys.executable, "-m", "deploy.cli", "train", "--nproc", str(args.ranks),
             "--max-steps", str(args.steps)],
            env=env, capture_output=True, text=True, timeout=900)
        summary = _json_line(full.stdout, '{"rank"')
    report("train-idmaps" if settings.model.id_maps else "train", {  # id maps: own file
        "examples_per_s": summary["examples_per_s"],
        "plain_torchrec_examples_per_s": round(plain_rate, 1),
        "ratio": round(summary["examples_per_s"] / plain_rate, 3),
        "ranks": args.ranks,
        "batch_size": args.batch_size,
        "publish_s": summary["publish_s_max"],
        "publish_s_median": summary["publish_s_median"],
        "steps": summary["steps"],
        "prequential_auc": summary["metrics"]["auc"],
        # Rank 0's ms per step by phase (input, build, step, agree, publish): where time goes.
        "phase_ms_per_step": summary["phase_ms_per_step"],
        "targets": {"ratio": 0.8, "examples_per_s": 20000, "publish_s": 2.0},
    })


if __name__ == "__main__":
    main()
