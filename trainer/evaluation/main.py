"""``streamrec eval``: on running services, run one prequential evaluation, write
``<out>/prequential-<stream>.json`` and ``.png``; the result's summary is returned.

The services (Kafka, Redis) come from the caller: ``services(settings)`` is a context manager
whose value has the ``settings`` to use (endpoints filled in) and a ``run_dir`` for logs, such
as ``deploy.embedded.EmbeddedRuntime``; the evaluation itself never starts a broker.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from models.spec import spec_for
from streaming.errors import ConfigError
from streaming.io.kafka import KafkaAdmin, topic_specs
from streaming.settings import Settings
from trainer.evaluation.harness import BASELINES, EvalOptions, PrequentialRun, cleanup, run_tag
from trainer.evaluation.ingest import Ingest, InProcessIngest, KafkaIngest
from trainer.evaluation.profiles import TimeScales, load_stream
from trainer.evaluation.profiles import format_duration_ms as fmt
from trainer.evaluation.report import plot, write_json

SUMMARY_KEYS = ("name", "stream", "mode", "seed", "auc", "logloss", "recall_at_20", "ndcg_at_20",
                "recall_at_20_ci95", *(f"recall_at_20_minus_{b}_ci95" for b in BASELINES),
                "candidate_recall",
                "ranked", "sweep", "time_scales", "label_mode", "events", "rejected",
                "dead_lettered", "examples", "elapsed_s")


class Services(Protocol):
    """Running Kafka and Redis: the settings that reach them, and a directory for logs."""

    settings: Settings
    run_dir: Path


def run_eval(settings: Settings, stream: str, *,
             services: Callable[[Settings], AbstractContextManager[Services]], seed: int = 7,
             via: str = "in-process", events: int | None = None, out_dir: Path | None = None,
             plots: bool = True, opts: EvalOptions | None = None, say: Any = print,
             scales: TimeScales | None = None) -> dict[str, Any]:
    """Run one prequential evaluation of ``stream`` (``synthetic``, a UCI / OTTO log or any event
    file in the contract's format) on the services ``services(settings)`` provides, at the
    time scales of ``scales`` where given; returns the full result (see :func:`summary`)."""
    opts = opts or EvalOptions()
    if settings.model.id_maps:  # bench ids measures them; the harness's models hash their ids
        raise ConfigError("streamrec eval does not support model.id_maps yet (its models hash "
                          "ids); see `streamrec bench ids` for collision-free ids measured")
    loaded = load_stream(stream, seed, events, scales)
    prof = loaded.profile
    say(f"eval {prof.name}: {len(loaded.events)} events, {via}, seed {seed}")
    rejected = {"total": sum(loaded.rejected.values()), "by_reason": loaded.rejected,
                "first": loaded.problems[:5]}  # records not turned into events, by reason code
    if rejected["total"]:
        say(f"  {rejected['total']} records not loaded: " + ", ".join(
            f"{code} {n}" for code, n in loaded.rejected.items()))
        for line in loaded.problems[:5]:
            say(f"    {line}")
    say(f"  tick {fmt(prof.tick_ms)}, window {fmt(prof.window_ms)}, half-life "
        f"{fmt(prof.popularity_half_life_ms)}, {prof.label_mode} labels (from {prof.scales_from})")
    tag = run_tag()
    settings = settings.with_values({
        # The trending candidate list decays like the popularity baseline: one time scale.
        "stream.trending_half_life_ms": str(prof.popularity_half_life_ms),
        # The neighbour lists count as the user_knn baseline does: one time scale for both.
        "serving.neighbour_half_life_ms": str(opts.knn_half_life_ms or 16 * prof.window_ms),
        # Historical logs: the ingest worker must accept the log's oldest event.
        "stream.min_event_ts_ms": str(min(settings.stream.min_event_ts_ms, loaded.events[0].ts)),
        **prof.settings, "redis.key_prefix": f"eval{tag}:",
        "topics.events": f"eval-events-{tag}", "topics.dlq": f"eval-dlq-{tag}",
        "topics.examples": f"eval-examples-{tag}", "topics.model_updates": f"eval-mu-{tag}",
    })
    with services(settings) as runtime:
        settings = runtime.settings
        ingest: Ingest
        if via == "kafka":
            KafkaAdmin(settings).ensure_topics(topic_specs(settings))
            ingest = KafkaIngest(settings, runtime.run_dir)
        else:
            ingest = InProcessIngest(settings)
        run = None
        try:
            spec = spec_for(**settings.model.spec_args())
            run = PrequentialRun(settings, loaded, ingest, seed, opts, spec=spec, say=say)
            result = run.run()
        finally:
            if run is not None:
                run.close()
            ingest.close()
            cleanup(settings)
    result = {"name": "prequential", "stream": prof.name, "mode": ingest.mode, "seed": seed,
              "k": opts.k, "source": loaded.description, "rejected": rejected, **result}
    if out_dir is not None:
        suffix = "" if via == "in-process" else f"-{via}"
        write_json(result, out_dir / f"prequential-{prof.name}{suffix}.json")
        if plots:
            plot(result, out_dir / f"prequential-{prof.name}{suffix}.png")
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The last JSON line: the headline numbers, without the per-window series (with a ``k``
    other than 20, its ``recall_at_<k>...`` keys instead of the ``_20`` ones)."""
    k = result.get("k", 20)
    return {key.replace("_at_20", f"_at_{k}"): result[key.replace("_at_20", f"_at_{k}")]
            for key in SUMMARY_KEYS if key.replace("_at_20", f"_at_{k}") in result}
