"""One typed settings object, loaded from the environment and CLI overrides.

Every field has an environment variable ``STREAMREC_<SECTION>_<FIELD>`` (upper case) and a dotted
override key ``<section>.<field>`` for ``--set``. Two conventional variables are honoured as well:
``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL``. An empty bootstrap server / Redis URL means "use the
embedded broker / Redis" (started by ``streamrec up`` and the test fixtures).

Settings are plain frozen dataclasses: build them once at the entry point and pass them down.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streaming.errors import ConfigError

log = logging.getLogger(__name__)

ENV_PREFIX = "STREAMREC_"
ENV_ALIASES = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka.bootstrap_servers",
    "REDIS_URL": "redis.url",
}
# STREAMREC_* variables that belong to tooling (bootstrap, test fixtures), not to Settings.
_NON_SETTING_ENV = {"STREAMREC_VARIANT", "STREAMREC_TEST_BACKEND"}


def _f(default: Any, doc: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"doc": doc, "secret": secret}, repr=not secret)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Kafka connection (``kafka.*``): brokers, SASL/TLS security, client id, group session timeout."""

    bootstrap_servers: str = _f("", "host:port list; empty = the embedded broker "
                                "(runtime.broker)")
    security_protocol: str = _f("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: str = _f("", "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (with SASL_*)")
    sasl_username: str = _f("", "SASL user name")
    sasl_password: str = _f("", "SASL password", secret=True)
    ssl_ca_location: str = _f("", "CA bundle (PEM) to verify the brokers")
    ssl_certificate_location: str = _f("", "client certificate (PEM) for mTLS")
    ssl_key_location: str = _f("", "client private key (PEM) for mTLS")
    session_timeout_ms: int = _f(6000, "consumer group session timeout (ms); joins wait ~half")
    client_id: str = _f("streamrec", "client.id prefix sent to the brokers")

    def __post_init__(self) -> None:
        protocols = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
        if self.security_protocol.upper() not in protocols:
            raise ConfigError(
                f"kafka.security_protocol={self.security_protocol!r}: expected one of "
                f"{sorted(protocols)}"
            )
        if self.security_protocol.upper().startswith("SASL") and not self.sasl_mechanism:
            raise ConfigError("kafka.sasl_mechanism is required with a SASL security protocol")
        _positive("kafka.session_timeout_ms", self.session_timeout_ms)


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Redis connection (``redis.*``): URL, credentials, TLS, key prefix, socket timeout."""

    url: str = _f("", "redis:// or rediss:// URL; empty = embedded redis-server")
    key_prefix: str = _f("sr:", "prefix of every key streamrec writes")
    password: str = _f("", "AUTH password (overrides one in the URL)", secret=True)
    username: str = _f("", "ACL user name (Redis 6+)")
    ssl_ca_certs: str = _f("", "CA bundle (PEM) for rediss:// URLs")
    socket_timeout_s: float = _f(5.0, "per-command socket timeout (s)")

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"redis.url={self.url!r}: expected redis://, rediss:// or unix://")
        _positive("redis.socket_timeout_s", self.socket_timeout_s)


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """Names, partition counts and replication (``topics.*``) of the topics streamrec creates."""

    events: str = _f("events", "raw user events from apps (key = user_id)")
    dlq: str = _f("events.dlq", "rejected input with its reason in headers")
    examples: str = _f("training-examples", "labelled examples (key = user_id)")
    model_updates: str = _f("model-updates", "checkpoint announcements (compacted)")
    events_partitions: int = _f(4, "partitions of the events topic (= max parallel workers)")
    dlq_partitions: int = _f(1, "partitions of the DLQ topic")
    examples_partitions: int = _f(4, "partitions of the examples topic")
    replication_factor: int = _f(1, "replication factor for created topics (3 on real clusters)")

    def __post_init__(self) -> None:
        for name in ("events_partitions", "dlq_partitions", "examples_partitions",
                     "replication_factor"):
            _positive(f"topics.{name}", getattr(self, name))
        names = [self.events, self.dlq, self.examples, self.model_updates]
        if len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"topic names must be distinct and non-empty: {names}")


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Stream processing (``stream.*``): labelling, de-duplication, feature rules, batching."""

    label_mode: str = _f("exposure", "exposure (views labelled by later clicks) or implicit")
    attribution_window_ms: int = _f(30 * 60 * 1000, "click/purchase must follow the view within (ms)")
    allowed_lateness_ms: int = _f(10_000, "event-time watermark = max event time - this (ms)")
    negatives: int = _f(4, "implicit mode: sampled negatives per positive")
    negative_sampling: str = _f("uniform", "implicit mode: uniform over the pool (ranks by "
                                "interaction probability) or popularity (discounts popular items)")
    negative_pool: int = _f(2000, "implicit mode: negatives come from the N items trending now")
    dedup_window: int = _f(100_000, "event ids remembered per partition for de-duplication")
    recent_items: int = _f(20, "recent item ids kept per user")
    affinity_half_life_ms: int = _f(86_400_000, "half-life of a user's category affinity (ms): "
                                    "match it to how fast interests change")
    short_affinity_half_life_ms: int = _f(3_600_000, "half-life of the short-term (session) "
                                          "category affinity (ms): reacts to a change of "
                                          "interest that the long one averages away")
    trending_half_life_ms: int = _f(3_600_000, "half-life of the trending-items list (ms), a "
                                    "candidate source and the implicit-mode negative pool: "
                                    "match it to how fast hits come and go")
    covisit_window_ms: int = _f(30 * 60 * 1000, "two items co-visited if seen this close (ms)")
    covisit_top_k: int = _f(50, "co-visited items kept per item (trimmed at 2K back to K)")
    covisit_recent: int = _f(5, "an event is paired with this many of the user's latest items")
    user_items_kept: int = _f(200, "items kept per user in the user x item state (the most "
                              "interacted, by decayed weight; trimmed at 2K back to K)")
    user_item_half_life_ms: int = _f(7 * 86_400_000, "half-life of a user's decayed interest in "
                                     "an item (ms): orders the 'again' candidates")
    hard_negatives: str = _f("proportional", "implicit mode: how many negatives come from the "
                             "user's own items (user x item state, recent items) rather than "
                             "the trending pool: proportional (every own or trending item "
                             "equally likely, so scores rank the scorer's candidates without "
                             "a correction) or a fixed share in [0, 1]")
    negative_sources: str = _f("trending", "implicit mode: where negatives come from besides "
                               "the user's own items: trending (the trending pool only) or "
                               "candidates (also the scorer's list-backed candidate sources for "
                               "the user: co-visitation of the recent items, top categories, "
                               "new and popular, with the serving.* sizes; not the retriever's "
                               "or serving.covisit_own_seeds' items)")
    example_format: str = _f("msgpack", "wire form of the training examples the worker writes: "
                             "msgpack (a third of the size, ~2x faster for the trainer to "
                             "decode) or json (readable with any Kafka tool); readers take both")
    min_event_ts_ms: int = _f(946_684_800_000, "events with an earlier time are rejected "
                              "(ts_out_of_range); lower it to replay historical logs")
    batch_size: int = _f(500, "max events per processing batch")
    batch_wait_ms: int = _f(50, "max wait to fill a processing batch (ms)")
    fetch_partition_bytes: int = _f(262_144, "bytes the ingest worker fetches per partition "
                                    "at a time (a larger message still comes whole); bounds "
                                    "what a worker with a backlog holds in memory")
    dlq_max_value_bytes: int = _f(65_536, "DLQ records keep at most this many bytes of a "
                                  "rejected message (headers give its size and SHA-256); "
                                  "keep it well below the broker's message.max.bytes")
    parked_kept: int = _f(1_000, "outbox records the broker refuses for good are moved aside "
                          "(P obp:<partition>); the newest N are kept per partition")
    item_changes_kept: int = _f(100_000, "items kept in the item change log (P ichg) that "
                                "scorers follow to re-read only changed item state (trimmed "
                                "at 2N back to N); a scorer that falls further behind re-reads "
                                "every item once")

    def __post_init__(self) -> None:
        if self.label_mode not in ("exposure", "implicit"):
            raise ConfigError(f"stream.label_mode={self.label_mode!r}: exposure or implicit")
        for name in ("attribution_window_ms", "dedup_window", "batch_size", "batch_wait_ms",
                     "recent_items", "covisit_window_ms", "covisit_top_k", "covisit_recent",
                     "affinity_half_life_ms", "short_affinity_half_life_ms",
                     "trending_half_life_ms", "user_items_kept", "user_item_half_life_ms",
                     "dlq_max_value_bytes", "parked_kept", "fetch_partition_bytes",
                     "item_changes_kept"):
            _positive(f"stream.{name}", getattr(self, name))
        if self.hard_negatives != "proportional":
            try:
                share = float(self.hard_negatives)
            except ValueError:
                share = -1.0
            if not 0.0 <= share <= 1.0:
                raise ConfigError(f"stream.hard_negatives={self.hard_negatives!r}: proportional "
                                  "or a share in [0, 1]")
        if self.negative_sampling not in ("uniform", "popularity"):
            raise ConfigError(f"stream.negative_sampling={self.negative_sampling!r}: "
                              "uniform or popularity")
        _positive("stream.negative_pool", self.negative_pool)
        if self.example_format not in ("msgpack", "json"):
            raise ConfigError(f"stream.example_format={self.example_format!r}: expected msgpack "
                              "or json")
        if self.negative_sources not in ("trending", "candidates"):
            raise ConfigError(f"stream.negative_sources={self.negative_sources!r}: "
                              "trending or candidates")
        if self.negative_sources == "candidates" and self.negative_sampling != "uniform":
            raise ConfigError("stream.negative_sources=candidates samples uniformly: the other "
                              "sources' items have no trending weight (stream.negative_sampling"
                              "=uniform)")
        if self.allowed_lateness_ms < 0 or self.negatives < 0:
            raise ConfigError("stream.allowed_lateness_ms and stream.negatives must be >= 0")


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """The ranking model's architecture choices (trainer and scorers must agree)."""

    interaction: str = _f("dot", "feature interaction: dot (DLRM) or dcn (DLRM_DCN cross "
                          "network)")
    listwise_weight: float = _f(0.0, "weight of a sampled softmax (each positive against the "
                                "negatives sampled with it) added to the BCE; 0 = BCE only")
    retrieval_dim: int = _f(0, "output size of the two-tower retriever trained beside the "
                            "ranker; its item vectors are published with each checkpoint and "
                            "give the 'retrieval' candidates; 0 = no retriever")
    retrieval_weight: float = _f(1.0, "weight of the retriever's in-batch softmax loss")
    sequence: str = _f("bag", "how the ranker sees the user's recent items: bag (one pooled "
                       "vector) or attention (DIN: each of the newest sequence_len items "
                       "weighted against the candidate item)")
    sequence_len: int = _f(10, "recent items the attention looks at (model.sequence=attention)")
    id_maps: str = _f("", "comma-separated tables whose ids get rows of their own "
                      "(collision-free, evicted by model.id_map_policy when full) instead of "
                      "hashed rows: t_user, t_item; empty = all hashed")
    id_map_policy: str = _f("lfu", "which ids give up their rows when a mapped table is full: "
                            "lru (used least recently) or lfu (used least often for their "
                            "age: keeps returning users and items through one-off ids)")

    def __post_init__(self) -> None:
        unknown = set(self.mapped_tables()) - {"t_user", "t_item"}
        if unknown:
            raise ConfigError(f"model.id_maps: unknown table(s) {sorted(unknown)}; "
                              "t_user and/or t_item")
        if self.id_map_policy not in ("lru", "lfu"):  # models.id_map.POLICIES
            raise ConfigError(f"model.id_map_policy={self.id_map_policy!r}: lru or lfu")
        if self.sequence not in ("bag", "attention"):  # models.spec.SEQUENCES
            raise ConfigError(f"model.sequence={self.sequence!r}: bag or attention")
        if self.sequence_len < 1:
            raise ConfigError("model.sequence_len must be >= 1")
        if self.interaction not in ("dot", "dcn"):  # models.spec.INTERACTIONS
            raise ConfigError(f"model.interaction={self.interaction!r}: dot or dcn")
        if self.listwise_weight < 0:
            raise ConfigError("model.listwise_weight must be >= 0")
        if self.retrieval_dim < 0 or self.retrieval_weight < 0:
            raise ConfigError("model.retrieval_dim and model.retrieval_weight must be >= 0")

    def spec_args(self) -> dict[str, Any]:
        """Keyword arguments of ``models.spec.spec_for``: every process (trainer, scorer,
        evaluation, announcements) builds the model's spec from these, so they agree."""
        return {"interaction": self.interaction, "listwise_weight": self.listwise_weight,
                "retrieval_dim": self.retrieval_dim, "retrieval_weight": self.retrieval_weight,
                "mapped_tables": self.mapped_tables(), "sequence": self.sequence,
                "sequence_len": self.sequence_len}

    def mapped_tables(self) -> tuple[str, ...]:
        """``id_maps`` as sorted table names."""
        return tuple(sorted({t.strip() for t in self.id_maps.split(",") if t.strip()}))


@dataclass(frozen=True, slots=True)
class TrainerSettings:
    """The online trainer (``trainer.*``): micro-batches, checkpoint publishing and retention."""

    checkpoint_dir: str = _f(".streamrec/checkpoints", "where versioned checkpoints are written")
    batch_size: int = _f(1024, "examples per micro-batch")
    batch_max_wait_ms: int = _f(500, "max wait to fill a micro-batch (ms)")
    publish_interval_s: float = _f(30.0, "publish a checkpoint at least this often (s)")
    publish_every_steps: int = _f(0, "also publish every N steps (0 = time only)")
    agree_every_steps: int = _f(8, "steps the ranks train per agreement (one all-reduce of "
                                "buffer sizes and stop/publish flags); a stop or a time-due "
                                "publish waits at most this many steps; 1 = agree every step")
    keep_checkpoints: int = _f(5, "number of checkpoint versions kept on disk (plus the older "
                               "versions their delta chains need)")
    full_every: int = _f(1, "publish a full snapshot every N publishes and deltas between them "
                         "(the embedding rows trained since the last publish, their optimizer "
                         "rows, the dense parameters whole); 1 = every publish full")
    seed: int = _f(0, "seed of the model's initial weights (same seed and examples, same model)")
    embedding_lr: float = _f(0.1, "learning rate of the embedding tables' fused RowWiseAdagrad")
    dense_lr: float = _f(0.03, "learning rate of the dense layers' Adagrad")
    holdout_share: float = _f(0.02, "share of examples (by a hash of example_id) never trained "
                              "on, kept to judge new checkpoints before they are served "
                              "(0 = serve every checkpoint unchecked)")
    dedup_window: int = _f(100_000, "example ids remembered to drop the outbox's duplicates "
                           "(at least this many of the newest, at most twice as many)")
    catalogue_items: int = _f(1_000_000, "items the retriever's published index holds at most "
                              "(the most recently seen; with model.retrieval_dim > 0)")
    holdout_kept: int = _f(5000, "newest held-out examples a new checkpoint is judged on")
    promotion_min_examples: int = _f(1000, "with fewer held-out examples (a new deployment) a "
                                     "checkpoint is served unchecked")
    promotion_logloss_margin: float = _f(0.01, "a checkpoint is held back if its held-out "
                                         "log-loss exceeds the served model's by more")
    promotion_auc_margin: float = _f(0.01, "a checkpoint is held back if its held-out AUC is "
                                     "below the served model's by more")

    def __post_init__(self) -> None:
        _positive("trainer.batch_size", self.batch_size)
        _positive("trainer.batch_max_wait_ms", self.batch_max_wait_ms)
        _positive("trainer.publish_interval_s", self.publish_interval_s)
        _positive("trainer.keep_checkpoints", self.keep_checkpoints)
        _positive("trainer.embedding_lr", self.embedding_lr)
        _positive("trainer.dense_lr", self.dense_lr)
        _positive("trainer.full_every", self.full_every)
        _positive("trainer.agree_every_steps", self.agree_every_steps)
        if self.publish_every_steps < 0:
            raise ConfigError("trainer.publish_every_steps must be >= 0")
        if not 0 <= self.holdout_share < 1:
            raise ConfigError(f"trainer.holdout_share={self.holdout_share}: expected 0 <= x < 1")
        _positive("trainer.holdout_kept", self.holdout_kept)
        _positive("trainer.dedup_window", self.dedup_window)
        _positive("trainer.catalogue_items", self.catalogue_items)
        if self.promotion_min_examples < 0 or self.promotion_logloss_margin < 0 \
                or self.promotion_auc_margin < 0:
            raise ConfigError("trainer.promotion_min_examples and the promotion margins must "
                              "be >= 0")


@dataclass(frozen=True, slots=True)
class ServingSettings:
    """Scorer workers and the feed ranker (``streamrec score``)."""

    feed_size: int = _f(50, "items kept in each user's feed")
    repeat: str = _f("allow", "items the user already has: allow (the model ranks them), "
                     "exclude_purchased, or exclude_interacted")
    candidates: int = _f(500, "candidates scored per user (the ranker's budget)")
    batch_users: int = _f(32, "users scored per forward pass")
    debounce_ms: int = _f(200, "coalesce a user's events for this long before re-scoring (ms)")
    max_wait_ms: int = _f(10_000, "score a user this long after an event even if ingest has not "
                          "applied it yet (ms)")
    active_window_s: float = _f(900.0, "after a model update, re-score users active this "
                                "recently (s)")
    popular_every_s: float = _f(10.0, "refresh the fallback (trending) feed this often (s)")
    feed_ttl_s: float = _f(86_400.0, "a feed expires this long after its last refresh (s)")
    cache_s: float = _f(1.0, "shared candidate lists are cached this long (s): a feed may "
                        "miss this much of other users' activity in them; item state is cached "
                        "until ingest changes it (0: nothing is cached)")
    again_candidates: int = _f(100, "candidates taken from the user's own items ('again', by "
                               "decayed interaction)")
    trending_candidates: int = _f(100, "candidates taken from the trending list")
    covisit_seeds: int = _f(5, "recent items whose co-visitation lists give candidates")
    covisit_per_item: int = _f(50, "candidates read per co-visitation list")
    covisit_own_seeds: int = _f(0, "the user's own items (most interacted first, as 'again') "
                                "whose co-visitation lists also give candidates: past baskets' "
                                "companions, not only the last few items' (0 = none)")
    covisit_candidates: int = _f(250, "candidates taken from co-visitation lists in all")
    retrieval_candidates: int = _f(100, "candidates taken from the retriever's nearest items "
                                   "(with model.retrieval_dim > 0)")
    retrieval_exact_max_items: int = _f(200_000, "catalogues up to this size are searched "
                                        "exactly; larger ones through a FAISS IVF index")
    retrieval_nprobe: int = _f(64, "IVF lists searched per user in a large catalogue (recall "
                               "against time)")
    top_categories: int = _f(3, "user's top categories that give candidates")
    category_candidates: int = _f(100, "candidates read per category")
    new_candidates: int = _f(50, "candidates taken from the newest items")
    popular_candidates: int = _f(200, "candidates taken from all-time popularity")
    neighbour_interval_s: float = _f(
        600.0, "how often one scorer (under a Redis lock) rebuilds every user's neighbour list: "
        "the items of users who interact alike (0 = never: no 'neighbours' candidates, and the "
        "nb_score feature stays 0)")
    neighbour_items: int = _f(100, "items kept in each user's neighbour list: each has an "
                              "nb_score feature value, the rest 0")
    neighbour_candidates: int = _f(100, "candidates taken from the top of the neighbour list "
                                   "(the 'neighbours' source)")
    neighbour_users: int = _f(100, "most similar users whose items a neighbour list averages")
    neighbour_own_weight: float = _f(0.3, "weight of the user's own items in their neighbour "
                                     "list's scores, in [0, 1] (the rest: the similar users')")
    neighbour_half_life_ms: int = _f(120 * 86_400_000, "half-life of the interaction counts "
                                     "that users are compared by (ms): long, since users who "
                                     "buy alike are found from a long history")

    def __post_init__(self) -> None:
        policies = ("allow", "exclude_purchased", "exclude_interacted")  # features.candidates
        if self.repeat not in policies:
            raise ConfigError(f"serving.repeat={self.repeat!r}: one of {list(policies)}")
        for f in dataclasses.fields(self):
            if f.name not in ("cache_s", "repeat", "covisit_own_seeds", "neighbour_interval_s",
                              "neighbour_own_weight"):
                _positive(f"serving.{f.name}", getattr(self, f.name))
        if self.cache_s < 0 or self.covisit_own_seeds < 0 or self.neighbour_interval_s < 0:
            raise ConfigError("serving.cache_s, serving.covisit_own_seeds and "
                              "serving.neighbour_interval_s must be >= 0")
        if not 0.0 <= self.neighbour_own_weight <= 1.0:
            raise ConfigError("serving.neighbour_own_weight must be in [0, 1]")


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """The local runtime (``runtime.*``): run directory, bind address, log level, HTTP ports."""

    run_dir: str = _f(".streamrec", "state of the embedded runtime: logs, endpoints, and its "
                      "data directory (runtime.data_dir)")
    broker: str = _f("kafka", "embedded broker when kafka.bootstrap_servers is empty: kafka "
                     "(Apache Kafka, KRaft, from Maven Central; needs a JDK) or tansu (in-memory, "
                     "no Java)")
    data_dir: str = _f("", "where the embedded broker and Redis keep their data across runs "
                       "(empty: <run_dir>/data)")
    fresh: bool = _f(False, "start the embedded services from an empty data directory")
    kafka_heap_mb: int = _f(512, "heap of the embedded Kafka JVM (MB)")
    redis_appendfsync: str = _f("always", "fsync policy of the embedded Redis' append-only "
                                "file: always (a kill -9 or power loss loses no acknowledged "
                                "write) or everysec (up to 1 s of feature state lost; faster)")
    trainer_nice: int = _f(10, "niceness added to the trainer processes streamrec up starts "
                           "(0-19): on a small machine ingest and scoring get the CPU first "
                           "and the trainer catches up in the gaps")
    trainer_threads: int = _f(1, "torch/OpenMP threads per trainer rank streamrec up starts "
                              "(0 = torch's default, one per core)")
    malloc_arena_max: int = _f(2, "glibc MALLOC_ARENA_MAX of the components streamrec up "
                               "starts (0 = glibc's default, 8 per core): fewer malloc arenas "
                               "keep RSS from creeping with threads (bench soak)")
    malloc_mmap_threshold_bytes: int = _f(
        131_072, "glibc MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ of the components "
        "streamrec up starts (0 = glibc's dynamic default): fixed, so that blocks this large "
        "(tensors of a reloaded checkpoint, Kafka batches) are always mapped and given back "
        "when freed; by default glibc raises both after the first large free and RSS creeps")
    malloc_trim_interval_s: float = _f(
        1.0, "the ingest worker and the scorer give freed heap pages back to the OS this "
        "often (glibc malloc_trim; 0 = never): without it the worker's RSS rose a step "
        "after every lag spike")
    restart_backoff_s: float = _f(1.0, "streamrec up restarts a component that exits after "
                                  "this delay (s), doubled per recent restart")
    restart_backoff_max_s: float = _f(30.0, "longest delay before a restart (s)")
    restart_max: int = _f(5, "a component that exits more often than this within "
                          "runtime.restart_window_s is in a crash loop: up gives up and stops")
    restart_window_s: float = _f(300.0, "window (s) of runtime.restart_max")
    bind_host: str = _f("127.0.0.1", "address embedded services and HTTP endpoints bind to")
    log_level: str = _f("INFO", "DEBUG, INFO, WARNING or ERROR")
    metrics_port: int = _f(0, "port of this component's Prometheus /metrics (0 = not served)")
    dashboard_port: int = _f(8050, "port of `streamrec dashboard` (bound to runtime.bind_host)")

    def __post_init__(self) -> None:
        if self.broker not in ("kafka", "tansu"):
            raise ConfigError(f"runtime.broker={self.broker!r}: kafka or tansu")
        _positive("runtime.kafka_heap_mb", self.kafka_heap_mb)
        if not 0 <= self.trainer_nice <= 19 or self.trainer_threads < 0 \
                or self.malloc_arena_max < 0 or self.malloc_mmap_threshold_bytes < 0 \
                or self.malloc_trim_interval_s < 0:
            raise ConfigError("runtime.trainer_nice must be in 0..19, runtime.trainer_threads, "
                              "malloc_arena_max, malloc_mmap_threshold_bytes and "
                              "malloc_trim_interval_s >= 0")
        for name in ("restart_backoff_s", "restart_backoff_max_s", "restart_max",
                     "restart_window_s"):
            _positive(f"runtime.{name}", getattr(self, name))
        if self.redis_appendfsync not in ("always", "everysec"):
            raise ConfigError(f"runtime.redis_appendfsync={self.redis_appendfsync!r}: "
                              "always or everysec")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"runtime.log_level={self.log_level!r} is not a log level")

    @property
    def run_path(self) -> Path:
        """``run_dir`` as a :class:`~pathlib.Path`."""
        return Path(self.run_dir)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, one section per concern; build it once with :meth:`load` and pass it down."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    @classmethod
    def load(
        cls,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> Settings:
        """Defaults < environment < ``overrides`` (``{"section.field": "value"}``, from the CLI)."""
        env = os.environ if env is None else env
        values: dict[str, str] = {}
        known_env = {env_name(key): key for key in _all_keys()}
        for name, raw in env.items():
            if name in ENV_ALIASES:
                values[ENV_ALIASES[name]] = raw
            elif name in known_env:
                values[known_env[name]] = raw
            elif name.startswith(ENV_PREFIX) and name not in _NON_SETTING_ENV:
                log.warning("ignoring unknown setting %s", name)
        # The specific STREAMREC_* name wins over the generic alias when both are set.
        for name, key in known_env.items():
            if name in env:
                values[key] = env[name]
        for key, raw in (overrides or {}).items():
            if key not in _all_keys():
                raise ConfigError(f"unknown setting {key!r}; see `streamrec config`")
            values[key] = raw
        return cls.default().with_values(values)

    @classmethod
    def default(cls) -> Settings:
        """The built-in defaults (no environment, no overrides)."""
        return cls()

    def with_values(self, values: Mapping[str, Any]) -> Settings:
        """A copy with dotted keys replaced; string values are parsed to the field's type."""
        sections: dict[str, dict[str, Any]] = {}
        for key, raw in values.items():
            section, name = _split_key(key)
            hint = _field_types(type(getattr(self, section)))[name]
            sections.setdefault(section, {})[name] = _coerce(key, raw, hint)
        replaced = {s: dataclasses.replace(getattr(self, s), **kv) for s, kv in sections.items()}
        return dataclasses.replace(self, **replaced)

    def items(self) -> Iterator[tuple[str, Any, dataclasses.Field[Any]]]:
        """(dotted key, value, dataclass field) for every setting, in declaration order."""
        for section in dataclasses.fields(self):
            obj = getattr(self, section.name)
            for f in dataclasses.fields(obj):
                yield f"{section.name}.{f.name}", getattr(obj, f.name), f

    def to_env(self) -> dict[str, str]:
        """Every setting as ``STREAMREC_*`` variables, to hand the exact settings to a child."""
        return {env_name(key): _format(value) for key, value, _ in self.items()}

    def child_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The environment for a child process that must see exactly these settings: ``base``
        (usually ``os.environ``) without its ``STREAMREC_*`` variables, plus :meth:`to_env`."""
        env = {k: v for k, v in base.items() if not k.startswith(ENV_PREFIX)}
        env.update(self.to_env())
        return env

    def redacted(self) -> dict[str, Any]:
        """Flat mapping for display and logs: secrets shown as ``***`` when set."""
        return {
            key: ("***" if f.metadata.get("secret") and value else value)
            for key, value, f in self.items()
        }


def env_name(key: str) -> str:
    """``kafka.bootstrap_servers`` -> ``STREAMREC_KAFKA_BOOTSTRAP_SERVERS``."""
    return ENV_PREFIX + key.replace(".", "_").upper()


def _all_keys() -> set[str]:
    return {key for key, _, _ in Settings().items()}


def _split_key(key: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    if key not in _all_keys():
        raise ConfigError(f"unknown setting {key!r}")
    return section, name


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, raw: Any, hint: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if hint is bool:
            low = raw.strip().lower()
            if low in {"1", "true", "yes", "on"}:
                return True
            if low in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r}: expected {hint.__name__}") from None
    return raw


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}")


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """``["kafka.client_id=x", ...]`` (from ``--set``) -> ``{"kafka.client_id": "x"}``."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: expected section.field=value")
        out[key.strip()] = value
    return out
