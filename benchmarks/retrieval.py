"""bench retrieval: nearest-neighbour candidates over a large catalogue, on one core.

Chooses the index for the scorer's "retrieval" candidate source (issue 19) by measurement:
item embeddings ``N x D`` (float32, clustered like real catalogues: items around 1,000 topic
centres with Zipf-sized clusters), queries drawn like user-tower outputs near a topic. For each
index: build time (what a rebuild after a publish costs), memory, per-query latency p50/p99 with
one thread (the scorer asks one user at a time), and recall@k against exact inner-product
search on the same queries (the baseline, measured in the same run).

Indexes: exact search with numpy (``argpartition`` over ``N`` scores), FAISS ``IndexFlatIP``,
FAISS IVF-Flat (``nlist`` = sqrt(N) and 4 sqrt(N), trained on 40 points per list; ``nprobe``
swept; ``rebuild_s`` re-assigns every item with the trained lists kept) and FAISS HNSW-Flat
(``M`` = 16). Targets at 1 M items: p99 <= 5 ms per query, rebuild <= 10 s (a full build: the scorer
builds a new index from each checkpoint). ``chosen`` is the index with the best recall among
those meeting both, the p99 one with 2x headroom. ``served_retrieval_index`` is
:class:`streaming.serving.retrieval.RetrievalIndex` as the scorer builds it after a load (a
full build: sample-trained lists, every item added) and queries it (item ids out).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import percentile, report
from streaming.serving.retrieval import RetrievalIndex
from streaming.settings import Settings

P99_HEADROOM = 2.0  # chosen indexes answer within half the p99 target


def catalogue(n_items: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(items: N x D, centres: C x D)`` float32; cluster sizes follow a Zipf law."""
    rng = np.random.default_rng(seed)
    n_centres = 1_000
    centres = rng.standard_normal((n_centres, dim)).astype(np.float32)
    weights = 1.0 / np.arange(1, n_centres + 1) ** 1.1
    topic = rng.choice(n_centres, size=n_items, p=weights / weights.sum())
    items = centres[topic] + 0.6 * rng.standard_normal((n_items, dim)).astype(np.float32)
    return items.astype(np.float32), centres


def queries(centres: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n x D`` query vectors near random topic centres (a user's taste plus noise)."""
    rng = np.random.default_rng(seed + 1)
    picks = centres[rng.integers(0, len(centres), size=n)]
    return (picks + 0.5 * rng.standard_normal(picks.shape)).astype(np.float32)


def exact_topk(items: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` items with the largest inner product with ``q`` (``D``), unordered."""
    scores = items @ q
    return np.argpartition(-scores, k)[:k]


def time_queries(search: Callable[[np.ndarray], np.ndarray], qs: np.ndarray
                 ) -> tuple[list[np.ndarray], list[float]]:
    """Run ``search`` on each query alone; returns the results and the latencies (ms)."""
    out, lat = [], []
    for q in qs:
        t0 = time.perf_counter()
        out.append(search(q))
        lat.append((time.perf_counter() - t0) * 1000)
    return out, lat


def recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Mean share of the exact top-k that ``found`` contains."""
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def served_rss_mb(items: np.ndarray, nprobe: int) -> float:
    """What a scorer's RSS grows by when it holds the index (the ids and the IVF lists, which
    keep their own copy of the vectors; the loaded array itself is dropped), measured in a fresh
    process: in this one, memory freed by the other indexes would be reused."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "items.npy"
        np.save(path, items)
        code = (
            "import sys, numpy as np\n"
            "from benchmarks.chaos import rss_mb\n"
            "from streaming.serving.retrieval import RetrievalIndex\n"
            "import faiss; faiss.omp_set_num_threads(1)\n"
            "import os; before = rss_mb(os.getpid())\n"
            "ids = [f'i{n}' for n in range(int(sys.argv[3]))]\n"
            "index = RetrievalIndex(ids, np.load(sys.argv[1]), exact_max_items=0,\n"
            "                       nprobe=int(sys.argv[2]))\n"
            "print(rss_mb(os.getpid()) - before)\n")
        out = subprocess.run([sys.executable, "-c", code, str(path), str(nprobe),
                              str(len(items))], check=True,
                             capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    return round(float(out.stdout.split()[-1]), 1)


def main(argv: list[str] | None = None, settings: Any = None) -> None:
    ap = argparse.ArgumentParser(prog="streamrec bench retrieval")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--k", type=int, default=100, help="candidates per user")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-hnsw", action="store_true", help="skip HNSW (its build is slow)")
    args = ap.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(1)  # one core per scorer
    items, centres = catalogue(args.items, args.dim, args.seed)
    qs = queries(centres, args.queries, args.seed)
    k = args.k
    truth, exact_lat = time_queries(lambda q: exact_topk(items, q, k), qs)
    rows: dict[str, dict[str, Any]] = {
        "exact_numpy": {"build_s": 0.0, "memory_mb": round(items.nbytes / 2**20, 1),
                        "p50_ms": round(percentile(exact_lat, 50), 3),
                        "p99_ms": round(percentile(exact_lat, 99), 3), "recall_at_k": 1.0}}

    def measure(name: str, build: Callable[[], Any], search: Callable[[Any, np.ndarray], np.ndarray],
                **extra: Any) -> Any:
        t0 = time.perf_counter()
        index = build()
        build_s = time.perf_counter() - t0
        found, lat = time_queries(lambda q: search(index, q), qs)
        rows[name] = {"build_s": round(build_s, 2),
                      "memory_mb": round(len(faiss.serialize_index(index)) / 2**20, 1),
                      "p50_ms": round(percentile(lat, 50), 3),
                      "p99_ms": round(percentile(lat, 99), 3),
                      "recall_at_k": round(recall(found, truth), 4), **extra}
        return index

    def faiss_search(index: Any, q: np.ndarray) -> np.ndarray:
        _, ids = index.search(q[None, :], k)
        return ids[0][ids[0] >= 0]

    def flat() -> Any:
        index = faiss.IndexFlatIP(args.dim)
        index.add(items)
        return index

    measure("faiss_flat_ip", flat, faiss_search)
    for factor in (1, 4):
        nlist = int(factor * np.sqrt(args.items))
        name = f"faiss_ivf{nlist}_flat"

        def ivf(nlist: int = nlist) -> Any:
            quantizer = faiss.IndexFlatIP(args.dim)
            index = faiss.IndexIVFFlat(quantizer, args.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = items[np.random.default_rng(args.seed).choice(
                len(items), min(len(items), 40 * nlist), replace=False)]
            index.train(sample)
            index.add(items)
            return index

        index = measure(name, ivf, faiss_search, nlist=nlist, nprobe=1)
        # A publish changes the embeddings, not the topics: the coarse quantizer can stay and
        # only the items are re-assigned (reset + add), the rebuild a scorer does per publish.
        t0 = time.perf_counter()
        index.reset()
        index.add(items)
        rows[name]["rebuild_s"] = round(time.perf_counter() - t0, 2)
        for nprobe in (8, 16, 32, 64):
            index.nprobe = nprobe
            found, lat = time_queries(lambda q, ix=index: faiss_search(ix, q), qs)
            rows[f"{name}_nprobe{nprobe}"] = {
                **{k_: rows[name][k_] for k_ in ("build_s", "rebuild_s", "memory_mb", "nlist")},
                "p50_ms": round(percentile(lat, 50), 3), "p99_ms": round(percentile(lat, 99), 3),
                "recall_at_k": round(recall(found, truth), 4), "nprobe": nprobe}
    # The index as the scorer builds and queries it (streaming.serving.retrieval): the chosen
    # configuration plus the mapping back to item ids, one user per query.
    nprobe = (settings if settings is not None else Settings.load()).serving.retrieval_nprobe
    ids = [f"i{n}" for n in range(len(items))]
    t0 = time.perf_counter()
    served = RetrievalIndex(ids, items, exact_max_items=0, nprobe=nprobe)
    build_s = time.perf_counter() - t0
    position = {item: n for n, item in enumerate(ids)}
    found, lat = time_queries(lambda q: np.array([position[i] for i, _ in
                                                  served.search(q[None, :], k)[0]]), qs)
    rows["served_retrieval_index"] = {
        "build_s": round(build_s, 2), "kind": served.kind, "nprobe": nprobe,
        "memory_mb": round(items.nbytes / 2**20, 1), "rss_added_mb": served_rss_mb(items, nprobe),
        "p50_ms": round(percentile(lat, 50), 3),
        "p99_ms": round(percentile(lat, 99), 3), "recall_at_k": round(recall(found, truth), 4)}
    if not args.no_hnsw:
        def hnsw() -> Any:
            index = faiss.IndexHNSWFlat(args.dim, 16, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 40
            index.add(items)
            index.hnsw.efSearch = 128
            return index

        measure("faiss_hnsw_flat", hnsw, faiss_search, M=16, ef_search=128)
    # Within both targets; a publish costs a full build: the scorer builds a new index from
    # each checkpoint's vectors (rebuild_s, re-assigning items to kept lists, is not used yet).
    # The p99 target with 2x headroom: a scorer shares its cores, and exact FAISS search at
    # 1 M items (p99 4.7 ms on a quiet machine, 7-32 ms beside other jobs) is not a choice
    # that holds under load.
    ok = {n: r for n, r in rows.items() if not n.startswith("served")
          and r["p99_ms"] <= 5.0 / P99_HEADROOM and r["build_s"] <= 10.0}
    best = max(ok, key=lambda n: (rows[n]["recall_at_k"], -rows[n]["p99_ms"]), default=None)
    report("retrieval", {
        "items": args.items, "dim": args.dim, "k": k, "queries": args.queries, "threads": 1,
        "indexes": rows,
        "chosen": best,
        "exact_p99_ms": rows["exact_numpy"]["p99_ms"],
        "targets": {"p99_ms": 5.0, "rebuild_s": 10.0, "p99_headroom": P99_HEADROOM},
    })


if __name__ == "__main__":
    main()
