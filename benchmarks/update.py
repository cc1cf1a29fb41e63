"""bench update: model update latency, full checkpoints against deltas, at 100 k and 1 M rows.

Issue 19's measurement of delta publishing. For each ``--rows`` size, a 1-rank sharded ranker
(:func:`trainer.distributed.build_sharded`: the trainer's DMP, fused RowWiseAdagrad and dense
Adagrad; user and item tables of that many rows) trains on examples of the 1 M users x 1 M items
scale fixture (:func:`benchmarks.ids.examples`), ``--examples-per-publish`` between publishes
(default: 1,000 examples/s for the default ``trainer.publish_interval_s`` of 30 s). At every
publish point both ways are measured on the same model state:

- ``full``: what the trainer does with ``trainer.full_every = 1``: gather the full model and
  optimizer state, write the version (fsync, rename); a scorer that serves the previous full
  version loads the new one whole (:class:`streaming.serving.ranker.ModelHolder`);
- ``delta``: the rows trained since the last publish (:class:`trainer.deltas.TouchedRows`), their
  gather (:func:`trainer.distributed.gather_delta_state`), rank 0's published copy updated
  (:class:`trainer.deltas.Published`), the delta version written; a scorer serving the previous
  delta applies it to a copy of its model. The first publish is full in both.

**Update latency** = publish (from the end of the last step before it to the version being
durable) + the scorer's load (from reading the manifest to the swap). Not included: the
announcement on ``model-updates`` (one small Kafka record; the scorer polls it without a batch
wait) and the promotion check (the same in both ways; ``trainer.holdout_kept`` examples).
Target (issue 19): p99 <= 3 s at the default cadence, independent of table size.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import report
from benchmarks.ids import examples
from models.batch import BatchBuilder
from models.checkpoint import Manifest, version_dir, write_checkpoint
from models.spec import DEFAULT_SPEC, FeatureSpec, TableSpec
from streaming.serving.ranker import ModelHolder
from trainer import distributed as D
from trainer.deltas import Published, TouchedRows
from trainer.loop import sgd_step

BATCH = 1024


def spec_with_rows(rows: int) -> FeatureSpec:
    """The default spec with user and item tables of ``rows`` rows."""
    tables = tuple(dataclasses.replace(t, num_embeddings=rows) if t.name in ("t_user", "t_item")
                   else t for t in DEFAULT_SPEC.tables)
    assert all(isinstance(t, TableSpec) for t in tables)
    return dataclasses.replace(DEFAULT_SPEC, tables=tables)


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir()) / 1e6


def _pcts(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs)
    return {"p50": round(float(np.percentile(a, 50)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "max": round(float(a.max()), 3)}


def measure(rows: int, data: list[dict[str, Any]], per_publish: int, publishes: int,
            info: D.DistInfo, work: Path) -> dict[str, Any]:
    """One table size: ``publishes`` publish points, both ways at each (see the module doc)."""
    spec = spec_with_rows(rows)
    torch.manual_seed(0)
    dmp, optimizer = D.build_sharded(spec, info)
    builder, touched = BatchBuilder(spec), TouchedRows(spec)
    roots = {way: work / f"{rows}-{way}" for way in ("full", "delta")}
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)
    holders = {way: ModelHolder(spec) for way in roots}
    published: Published | None = None
    out: dict[str, dict[str, list[float]]] = {
        way: {"publish_s": [], "load_s": [], "latency_s": [], "size_mb": []} for way in roots}
    touched_rows: list[int] = []
    for version in range(1, publishes + 1):
        chunk = data[(version - 1) * per_publish:version * per_publish]
        for k in range(0, len(chunk) - 1, BATCH):
            batch = builder.build(chunk[k:k + BATCH])
            touched.observe(batch.sparse)
            sgd_step(dmp, optimizer, batch, info.device)
        manifest = Manifest(version=version, created_at_ms=0, step=version, examples_seen=0,
                            offsets={}, metrics={}, spec_digest=spec.digest())
        t0 = time.perf_counter()
        full = D.gather_full_state(dmp, info)
        opt = D.gather_optimizer_state(optimizer, info)
        assert full is not None and opt is not None
        path = write_checkpoint(roots["full"], full, manifest, keep=2, optimizer_state=opt)
        timed = {"full": (time.perf_counter() - t0, path)}
        if published is None:  # the first publish is full in both ways
            published = Published(full, opt)
            path = write_checkpoint(roots["delta"], full, manifest, keep=2, optimizer_state=opt)
            touched.clear()
            timed["delta"] = timed["full"][0], path
        else:
            t0 = time.perf_counter()
            rows_now = touched.reduce()
            got = D.gather_delta_state(dmp, optimizer, info, rows_now)
            touched.clear()
            assert got is not None
            published.apply(*got)
            path = write_checkpoint(
                roots["delta"], got[0], dataclasses.replace(manifest, delta_of=version - 1),
                keep=2, optimizer_state=got[1])
            timed["delta"] = time.perf_counter() - t0, path
            touched_rows.append(sum(len(r) for r in rows_now.values()))
        for way, (publish_s, path) in timed.items():
            t0 = time.perf_counter()
            if not holders[way].load(path, version):
                raise RuntimeError(f"{way} v{version} not loaded: {holders[way].last_error}")
            load_s = time.perf_counter() - t0
            if version > 1:  # the first publish (full in both, nothing served before) is setup
                o = out[way]
                o["publish_s"].append(publish_s)
                o["load_s"].append(load_s)
                o["latency_s"].append(publish_s + load_s)
                o["size_mb"].append(_size_mb(version_dir(roots[way], version)))
    served = holders["delta"].current
    reference = holders["full"].current
    assert served is not None and reference is not None
    exact = all(torch.equal(a, b) for a, b in zip(
        served.model.state_dict().values(), reference.model.state_dict().values(), strict=True))
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, Any] = {"rows_per_table": rows, "publishes_measured": publishes - 1,
                              "touched_rows_per_publish": int(np.mean(touched_rows)),
                              "delta_serves_the_same_weights": exact}
    for way, o in out.items():
        result[way] = {"publish_s": _pcts(o["publish_s"]), "load_s": _pcts(o["load_s"]),
                       "update_latency_s": _pcts(o["latency_s"]),
                       "size_mb": round(float(np.mean(o["size_mb"])), 2)}
    result["latency_p99_ratio_full_vs_delta"] = round(
        result["full"]["update_latency_s"]["p99"] / result["delta"]["update_latency_s"]["p99"], 2)
    return result


def main(argv: list[str], settings: Any) -> None:
    """``streamrec bench update [--rows N ...] [--examples-per-publish N] [--publishes N]``."""
    p = argparse.ArgumentParser(prog="streamrec bench update")
    p.add_argument("--rows", type=int, nargs="+", default=[100_003, 1_000_003],
                   help="rows of the user and item tables, one measurement each")
    p.add_argument("--examples-per-publish", type=int,
                   default=int(1000 * settings.trainer.publish_interval_s),
                   help="examples trained between publishes (default: 1,000/s for "
                        "trainer.publish_interval_s)")
    p.add_argument("--publishes", type=int, default=11, help="publish points (the first is "
                   "setup: full in both ways)")
    p.add_argument("--ids", type=int, default=1_000_000, help="users and items in the fixture")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    n = args.examples_per_publish * args.publishes
    t0 = time.perf_counter()
    data = examples(int(n * 1.4), args.ids, args.seed, DEFAULT_SPEC)[:n]  # ~0.75 views/event
    if len(data) < n:
        raise SystemExit(f"the fixture gave {len(data)} examples, {n} needed")
    print(f"{n} examples in {time.perf_counter() - t0:.0f} s", flush=True)
    info = D.init()
    work = Path(settings.runtime.data_dir) / "bench" / "update"
    work.mkdir(parents=True, exist_ok=True)
    sizes = []
    for rows in args.rows:
        sizes.append(measure(rows, data, args.examples_per_publish, args.publishes, info, work))
        print(sizes[-1], flush=True)
    worst = max(s["delta"]["update_latency_s"]["p99"] for s in sizes)
    report("update", {
        "examples_per_publish": args.examples_per_publish,
        "publish_interval_s": settings.trainer.publish_interval_s, "sizes": sizes,
        "delta_update_latency_p99_s": worst,
        "delta_p99_growth_vs_smallest": round(
            worst / sizes[0]["delta"]["update_latency_s"]["p99"], 2),
        "targets": {"update_latency_p99_s": 3.0},
    })
    D.shutdown()
