"""Writing an evaluation's results: the JSON file and the PNG plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def write_json(result: dict[str, Any], path: Path) -> None:
    """``result`` as indented JSON at ``path`` (parent directories created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")


def plot(result: dict[str, Any], path: Path) -> None:
    """Per-window AUC and Recall@K (with candidate recall) over event time (hours since the
    first event), drift points as dashed red lines, the warm-up shaded; and AUC against the
    publish interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = result["first_event_ms"]
    hours = [(w["start_ms"] - t0) / 3.6e6 for w in result["windows"]]
    fig, (ax_auc, ax_rec, ax_sweep) = plt.subplots(3, 1, figsize=(9, 11))
    for name in ("continuous", "frozen", "lightgbm"):
        ax_auc.plot(hours, [w.get(f"auc_{name}") for w in result["windows"]], marker=".",
                    label=name)
    k = result["k"]
    for name in ("continuous", "frozen", "lightgbm", "popularity", "popularity_repeat_policy",
                 "buy_again", "user_knn", "covisit"):
        ax_rec.plot(hours, [w.get(f"recall_{name}") for w in result["windows"]], marker=".",
                    label=name)
    ax_rec.plot(hours, [(w.get("candidate_recall") or {}).get("total")
                        for w in result["windows"]],
                color="0.4", linestyle=":", label="candidate recall (ceiling of the learned)")
    warm = (result["warmup_end_ms"] - t0) / 3.6e6
    for ax, title in ((ax_auc, "click AUC per window (prequential)"),
                      (ax_rec, f"Recall@{k} of the feed against next interactions")):
        ax.axvspan(0, warm, color="0.9", label="warm-up (frozen = continuous)")
        for n, d in enumerate(result["drifts_ms"]):
            ax.axvline((d - t0) / 3.6e6, color="red", linestyle="--",
                       label="concept drift" if n == 0 else None)
        ax.set_title(f"{result['stream']}: {title}")
        ax.set_xlabel("event time (hours since the first event)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    sweep = result["sweep"]
    labels = [s["label"] for s in sweep]
    ax_sweep.bar(labels, [s["auc"] or 0 for s in sweep], color="tab:blue")
    lo = min((s["auc"] for s in sweep if s["auc"]), default=0.5)
    ax_sweep.set_ylim(max(0.0, lo - 0.05), None)
    for x, s in enumerate(sweep):
        ax_sweep.annotate(f"{s['auc']}\nage {s['mean_model_age_s']} s", (x, s["auc"] or 0),
                          ha="center", va="bottom", fontsize=8)
    ax_sweep.set_title("AUC after warm-up by publish interval (model freshness)")
    ax_sweep.set_ylabel("AUC")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
