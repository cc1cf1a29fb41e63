"""The continuous trainer: micro-batches from Kafka -> prequential score -> sharded step ->
periodic checkpoint -> announcement on ``model-updates`` -> offset commit.

Every rank reads its own partitions of ``training-examples`` (``p % world == rank``) and buffers
up to ``trainer.agree_every_steps`` batches. The ranks agree (one all-reduce) on a plan: a common
batch size ``n = min(buffered, batch)``, how many steps ``k`` of it every rank's buffer holds,
and whether to publish or stop afterwards, so collectives always match. A step trains the next
``n`` examples to train in arrival order; examples stay buffered until trained, and the offsets
in a checkpoint are those of the last example *trained* per partition, plus one.

Safe promotion: examples whose id hashes below ``trainer.holdout_share`` are held out, never
trained on; at each publish rank 0 judges the new checkpoint against the served model on the
newest of them (:mod:`trainer.promotion`) and announces it as promoted (served) or held back.

Crash safety: offsets are committed to Kafka only after the checkpoint that contains them is
durable; a restart loads the newest valid checkpoint (weights and optimizer state, so training
continues exactly as without the crash) and seeks every partition to its offsets,
provided they belong to the same Kafka cluster and examples-topic instance (the manifest records
both; see :func:`trainer.source.verified_offsets`).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import math
import operator
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
import torch.distributed as dist

from models.batch import BatchBuilder, ExampleBatch, id_keys
from models.checkpoint import (
    HOLDOUT_FILE,
    ID_MAPS_FILE,
    RETRIEVAL_FILE,
    Manifest,
    latest_resumable,
    list_versions,
    now_ms,
    pack_id_maps,
    pack_item_vectors,
    read_blob,
    remove_stale_tmp,
    unpack_id_maps,
    unpack_item_vectors,
    write_checkpoint,
)
from models.id_map import IdMap
from models.spec import FeatureSpec, spec_for
from models.two_tower import TwoTower
from streaming.contract.examples import ExampleRow
from streaming.contract.updates import ServedVersion
from streaming.errors import BrokerError, CheckpointError
from streaming.io.kafka import ClusterIdentity, KafkaAdmin
from streaming.io.producer import RecordProducer
from streaming.io.redis_client import connect
from streaming.ops import health
from streaming.ops.metrics import TrainerMetrics, serve_configured
from streaming.settings import Settings
from trainer import distributed as D
from trainer.announcements import AnnouncementLog, announcement, protected, send, with_served
from trainer.catalogue import ItemCatalogue
from trainer.dedup import RecentIds
from trainer.deltas import Published, TouchedRows, table_features
from trainer.metrics import Prequential, PromotionMetrics, auc, log_loss
from trainer.promotion import Gate, held_out_mask
from trainer.source import ExampleSource, offset_key, verified_offsets

log = logging.getLogger(__name__)

# Steps left out of the throughput (TorchRec's lazy initialisation, first allocations): the
# reported examples/s is that of the steps after these, like the baseline of bench train.
WARMUP_STEPS = 5

def plan_steps(buffered: int, cap: int, step: int, *, publish: bool, publish_every_steps: int,
               max_steps: int | None, agree_every_steps: int, most: int = 0) -> tuple[int, int]:
    """``(n, k)``: train ``k`` steps of ``n`` examples each until the next agreement.

    ``buffered`` is the smallest number of examples to train any rank holds, ``most`` the
    largest, ``cap`` the examples per rank and step, ``step`` the steps trained so far,
    ``agree_every_steps`` the longest plan (``trainer.agree_every_steps``: agreeing before every
    step cost about a quarter of a step's wall time in bench train). Full batches while every
    rank holds one, else one step of what all hold (even one example: a stream gone quiet trains
    its last one rather than holding it, and its offset, back). One step when a publish follows
    (as every step did before plans), and the plan ends where a ``publish_every_steps`` publish
    falls due or at ``max_steps``, so publishes keep their steps whatever the plan length.

    When some rank holds nothing and another holds examples (the stream's tail reached only
    some partitions), one step of up to ``min(most, cap)``: each rank trains what it holds of
    that, and a rank with none takes part with a row that learns nothing
    (:meth:`ContinuousTrainer.train_step`); TorchRec's all-to-alls take a different batch size
    on every rank."""
    n = min(buffered, cap)
    if n < 1:
        if most < 1:
            return 0, 0
        n, k = min(most, cap), 1
    else:
        k = 1 if publish else min(buffered // n, agree_every_steps)
    if publish_every_steps:
        k = min(k, publish_every_steps - step % publish_every_steps)
    if max_steps is not None:
        k = min(k, max_steps - step)
    return n, max(k, 0)


@dataclass(slots=True)
class TrainerState:
    """This rank's progress: the last published (or resumed) ``version``, optimizer steps,
    examples trained, next offsets, and the loss sum / count since the last publish."""

    version: int = 0
    step: int = 0
    examples_base: int = 0  # global examples_seen (consumed) of the checkpoint resumed from
    held_out_base: int = 0  # global examples_held_out of the checkpoint resumed from
    examples_seen: int = 0  # trained by this rank since start
    held_out: int = 0  # held out (not trained) by this rank since start
    offsets: dict[str, int] = field(default_factory=dict)  # this rank's next offsets
    loss_sum: float = 0.0
    loss_n: int = 0


# Examples per step whose traces feed the stage-latency histograms (see _observe_traces).
TRACES_PER_STEP = 32


def sgd_step(dmp: torch.nn.Module, optimizer: Any, batch: ExampleBatch,
             device: torch.device, learn: bool = True) -> tuple[float, np.ndarray]:
    """One optimizer step on ``batch`` (``B`` examples: ``dense: B x D``, KJT, ``labels: B``);
    returns ``(loss, probs: B float32)``, the loss a mean over the batch. The probabilities come
    from the parameters *before* this update (prequential). ``dmp`` is the DMP-wrapped
    :class:`~models.dlrm.RankingTrain` of :func:`trainer.distributed.build_sharded`; with several
    ranks the step is collective. ``learn=False``: take part in the step's collectives with a
    zero loss: this rank's gradients are 0, so its sparse rows do not move, while the dense
    layers still take DDP's average, the other ranks' gradient over the world size, which
    keeps them in sync; a batch of one leaves the dense normalisation's running statistics
    alone."""
    if not dmp.training:  # Module.train walks every submodule: ~0.1 ms a step when set already
        dmp.train()
    loss, logits = dmp(batch.dense.to(device), batch.sparse.to(device), batch.labels.to(device))
    probs = torch.sigmoid(logits).cpu().numpy()
    if not learn:
        loss = loss * 0.0  # still connected to every parameter, as DDP needs on every rank
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach().item()), probs


class ContinuousTrainer:
    """One rank of the continuous trainer: its partitions of ``training-examples``, its shard of
    the model (:func:`trainer.distributed.build_sharded`), checkpoints and announcements.

    Construction resumes from the newest valid checkpoint under ``trainer.checkpoint_dir`` and
    seeks to its offsets. :meth:`train_step`, :meth:`publish` and :meth:`run` are collective:
    every rank calls them in step (:meth:`run` arranges that).
    """

    def __init__(self, settings: Settings, spec: FeatureSpec | None = None,
                 info: D.DistInfo | None = None) -> None:
        self.settings = settings
        self.spec = spec = spec or spec_for(**settings.model.spec_args())
        self.info = info or D.init()
        # Collision-free ids (model.id_maps): every rank admits the same all-gathered ids in
        # the same order each step, so the maps stay identical without a broadcast.
        self.id_maps = {t.name: IdMap(t.num_embeddings, policy=settings.model.id_map_policy)
                        for t in spec.tables if t.name in spec.mapped}
        self.builder = BatchBuilder(spec, self.id_maps)
        # mapped table -> every table (ranker's and retriever's) whose keys it maps
        keys_of = {name: set(keys) for name, (keys, _) in table_features(spec).items()}
        self._sharing = {t: [o for o, keys in keys_of.items() if keys & keys_of[t]]
                         for t in self.id_maps}
        self.root = Path(settings.trainer.checkpoint_dir)
        torch.manual_seed(settings.trainer.seed)  # reproducible initial weights on every rank
        self.dmp, self.optimizer = D.build_sharded(spec, self.info,
                                                   lr_sparse=settings.trainer.embedding_lr,
                                                   lr_dense=settings.trainer.dense_lr)
        self.state = TrainerState()
        # Delta publishing (trainer.full_every > 1): rows trained since the last publish, and
        # rank 0's copy of the published state. The first publish of a run is always full, so
        # every rank knows the same base (_since_full is None until then).
        self.touched = TouchedRows(spec) if settings.trainer.full_every > 1 else None
        self._published: Published | None = None
        self._since_full: int | None = None
        self.metrics = Prequential()
        # (partition, offset, example, held out?) in arrival order; _n_train: not held out
        self._buffer: deque[tuple[int, int, ExampleRow, bool]] = deque()
        self._n_train = 0
        self._held_new: list[ExampleRow] = []  # held out since the last publish
        # The last example polled: the row this rank steps with when it holds none (a tail).
        self._stand_in: ExampleRow | None = None
        self._polled: dict[int, int] = {}  # partition -> offset after the last polled message
        self._seen_ids = RecentIds(settings.trainer.dedup_window)  # drops outbox duplicates
        self.duplicates = 0
        self.publish_seconds: list[float] = []
        self.first_step_at: float | None = None  # perf_counter of the first step's start
        self.last_step_at: float | None = None
        # (perf_counter, examples trained) at the end of step WARMUP_STEPS: throughput is
        # measured from there, as the plain TorchRec baseline of bench train does.
        self.warm_at: tuple[float, int] | None = None
        # Seconds per phase of the loop over the steps after the first WARMUP_STEPS of this
        # process (input: poll, decode, dedup; build: the batch; step: the sharded SGD step;
        # agree: the plan's all-reduce; publish): where a step's time goes.
        self.phase_s: Counter[str] = Counter()
        self._steps_here = 0  # steps trained by this process (a resumed state.step is not)
        partitions = [p for p in range(settings.topics.examples_partitions)
                      if p % self.info.world == self.info.rank]
        # Which cluster and examples-topic instance this run reads: recorded in each manifest,
        # compared with the one resumed from.
        self.identity: ClusterIdentity | None = self._read_identity()
        # Rank 0 judges each checkpoint (held-out examples, served model) and follows what is
        # served (model-updates, where operators promote and roll back too).
        self.gate = Gate(spec, settings.trainer) if self.info.rank == 0 else None
        # With a retriever: every item trained on, embedded at publish by rank 0's plain copy
        # of the retriever (models.two_tower) into the checkpoint's retrieval.npz.
        self.catalogue = ItemCatalogue(spec.dense, settings.trainer.catalogue_items) \
            if spec.retrieval_dim else None
        self._tower = TwoTower.for_spec(spec) \
            if spec.retrieval_dim and self.info.rank == 0 else None
        start = self._resume()
        self.source = ExampleSource(settings, partitions, start)
        self._last_publish = time.monotonic()
        self._producer = RecordProducer(settings, topic=settings.topics.model_updates) \
            if self.info.rank == 0 else None
        self._announcements = AnnouncementLog(settings) if self.info.rank == 0 else None
        self._partitions = partitions
        self._redis = connect(settings.redis)  # heartbeats only (streaming.ops.health)
        self._heartbeat = health.Heartbeat(self._redis, settings.redis.key_prefix, "trainer",
                                           instance=f"trainer-rank{self.info.rank}")
        self.prom = TrainerMetrics()
        self.promotion_prom = PromotionMetrics(self.prom.registry)
        # Rank 0 serves the metrics (one endpoint per job); other ranks keep theirs unexported.
        self._metrics_server = serve_configured(self.prom.registry, settings.runtime) \
            if self.info.rank == 0 else None

    # -- resume ---------------------------------------------------------------------------
    def _resume(self) -> dict[str, int]:
        if self.info.rank == 0:
            remove_stale_tmp(self.root)
        dist.barrier()
        found = latest_resumable(self.root, self.spec.digest())
        # Versions on disk this run does not resume from (another spec's after a changed model
        # setting, a corrupt newer one) keep their numbers: this run's come after them.
        self.state.version = max(list_versions(self.root), default=0)
        if found is None:
            if self.state.version:
                log.warning("rank %d: no checkpoint of this model (spec %s) under %s; training "
                            "from scratch, publishing from v%d on", self.info.rank,
                            self.spec.digest(), self.root, self.state.version + 1)
            return {}
        manifest = found.manifest
        D.load_full_state(self.dmp, found.model)
        if found.optimizer is not None:
            D.load_optimizer_state(self.optimizer, found.optimizer)
        else:
            log.warning("rank %d: checkpoint v%d has no optimizer state (an older format); the "
                        "optimizer restarts from zero", self.info.rank, manifest.version)
        self.state.step = manifest.step
        self.state.examples_base = manifest.examples_seen
        self.state.held_out_base = manifest.examples_held_out
        if self.gate is not None:
            self._restore_holdout(found.path, manifest)
        if self._tower is not None and self.catalogue is not None:
            self._restore_catalogue(found.path, manifest)
        if self.id_maps:
            self._restore_id_maps(found.path, manifest)
        log.info("rank %d resumed from checkpoint v%d (step %d, %d examples)", self.info.rank,
                 manifest.version, manifest.step, manifest.examples_seen)
        topic = self.settings.topics.examples
        offsets, problem = verified_offsets(manifest.offsets, manifest.kafka_cluster_id,
                                            manifest.topic_ids, self.identity, topic)
        if problem:
            log.warning("rank %d: not seeking to the offsets of checkpoint v%d: %s; reading %s "
                        "from the trainer group's committed offsets, else from the beginning",
                        self.info.rank, manifest.version, problem, topic)
        return offsets

    def _restore_holdout(self, path: Path, manifest: Manifest) -> None:
        """Rank 0: the held-out examples saved with the checkpoint resumed from (they are behind
        its offsets: never read again); a damaged file only costs them."""
        assert self.gate is not None
        try:
            raw = read_blob(path, manifest, HOLDOUT_FILE)
            examples = orjson.loads(raw) if raw else []
            if not isinstance(examples, list):
                raise CheckpointError(f"{HOLDOUT_FILE} holds {type(examples).__name__}, not a list")
            self.gate.add(examples)
        except (CheckpointError, orjson.JSONDecodeError) as exc:
            log.warning("held-out examples of checkpoint v%d not restored: %s", manifest.version,
                        exc)

    def _restore_catalogue(self, path: Path, manifest: Manifest) -> None:
        """Rank 0: the item catalogue saved with the checkpoint resumed from, so that the next
        publish indexes every item, not only those seen since the restart."""
        assert self.catalogue is not None
        try:
            raw = read_blob(path, manifest, RETRIEVAL_FILE)
            if raw:
                ids, _, inputs = unpack_item_vectors(raw, ("item_rows", "category_rows", "dense"))
                self.catalogue.restore(ids, inputs)
        except CheckpointError as exc:
            log.warning("item catalogue of checkpoint v%d not restored: %s", manifest.version,
                        exc)

    def _restore_id_maps(self, path: Path, manifest: Manifest) -> None:
        """Every rank: the id maps saved with the checkpoint resumed from. Without them the
        rows would mean nothing (a checkpoint of a spec with id maps always has them)."""
        raw = read_blob(path, manifest, ID_MAPS_FILE)
        if raw is None:
            raise CheckpointError(f"checkpoint v{manifest.version} has no {ID_MAPS_FILE}")
        maps = unpack_id_maps(raw)
        if set(maps) != set(self.id_maps):
            raise CheckpointError(f"checkpoint v{manifest.version} maps {sorted(maps)}, this "
                                  f"model maps {sorted(self.id_maps)}")
        policy = self.settings.model.id_map_policy
        for table, m in maps.items():
            if m.policy != policy:  # the settings say how to evict from now on
                log.info("id map %s: eviction policy %s -> %s (model.id_map_policy)", table,
                         m.policy, policy)
                m.policy = policy
        self.id_maps.update(maps)
        self.builder = BatchBuilder(self.spec, self.id_maps)

    def _admit(self, examples: list[ExampleRow]) -> None:
        """Collective (with id maps): every rank admits the ids of every rank's batch, in rank
        order, so the maps stay identical; the rows given to new ids restart from the
        unknown row's vector and the held rows' mean optimizer state instead of the evicted
        id's (:func:`trainer.distributed.reset_rows`)."""
        keys = self.builder.mapped_keys(examples)
        gathered: list[Any] = [None] * self.info.world
        dist.all_gather_object(gathered, keys)
        for table, m in self.id_maps.items():
            given = m.admit(np.concatenate([g[table] for g in gathered]))
            if not len(given):
                continue
            held = m.held_rows()
            # Every table looking up the same ids (the retriever's mirror the ranker's rows).
            for other in self._sharing[table]:
                D.reset_rows(self.dmp, self.optimizer, other, given, held)

    def _read_identity(self, retry_s: float = 30.0) -> ClusterIdentity | None:
        """The cluster id and the examples topic's id, or None (logged) if Kafka cannot say
        within ``retry_s`` (a broker restarting meanwhile)."""
        topic = self.settings.topics.examples
        admin = KafkaAdmin(self.settings)
        deadline = time.monotonic() + retry_s
        while True:
            try:
                identity = admin.identity([topic])
                break
            except BrokerError as exc:
                if time.monotonic() >= deadline:
                    log.warning("cannot read the Kafka cluster and topic ids: %s", exc)
                    return None
                time.sleep(1.0)
        if topic not in identity.topic_ids:
            log.warning("topic %s not found while reading its id", topic)
            return None
        return identity

    # -- one step -------------------------------------------------------------------------
    def _cap(self) -> int:
        """Examples per rank and step (``trainer.batch_size`` split over the ranks)."""
        return max(1, self.settings.trainer.batch_size // self.info.world)

    def _fill(self) -> None:
        """Buffer up to ``trainer.agree_every_steps`` batches of examples to train. Waits (up to
        ``trainer.batch_max_wait_ms``) only until one batch is buffered; beyond it takes what
        the consumer already holds, so a trickle of examples waits no longer for its step than
        with one batch per agreement."""
        cap = self._cap()
        target = cap * self.settings.trainer.agree_every_steps
        deadline = time.monotonic() + self.settings.trainer.batch_max_wait_ms / 1000
        while self._n_train < target:
            waiting = self._n_train < cap
            remaining = deadline - time.monotonic()
            if waiting and remaining <= 0:
                break
            # While short of one batch ask for only what completes it, so that poll returns as
            # soon as it is there rather than waiting out the timeout for a whole plan.
            got = self.source.poll(cap - self._n_train if waiting else target - self._n_train,
                                   remaining if waiting else 0.0)
            if not got and not waiting:
                break
            self._accept(got)

    def _accept(self, got: list[tuple[int, int, ExampleRow]]) -> None:
        """Buffer polled examples: drop duplicates, mark the held-out ones (hashed together)."""
        self._polled.update((part, off + 1) for part, off, _ in got)  # the last per partition
        repeated = self._seen_ids.seen_many([ex.example_id for _, _, ex in got])
        fresh = list(itertools.compress(got, map(operator.not_, repeated)))
        self.duplicates += len(got) - len(fresh)
        if fresh:
            self._stand_in = fresh[-1][2]
        held = held_out_mask([ex.example_id for _, _, ex in fresh],
                             self.settings.trainer.holdout_share).tolist()
        self._n_train += len(fresh) - sum(held)
        self._buffer.extend((part, off, ex, h)
                            for (part, off, ex), h in zip(fresh, held, strict=True))
        self._release_held()

    def _agree(self, stop: bool, max_steps: int | None = None) -> tuple[int, int, bool, bool]:
        """``(batch size n, steps k, stop, publish)`` agreed by all ranks: train ``k`` steps of
        ``n`` examples each, then publish if asked. One all-reduce per plan instead of per step:
        every rank holds at least ``k * n`` examples to train, except in a tail plan (one step,
        see :func:`plan_steps`), and every input to ``k`` (the step count, ``max_steps``,
        ``trainer.publish_every_steps``) is the same on all ranks."""
        due = self._publish_due()
        able = self._n_train > 0 or self._stand_in is not None
        # MIN over [n, -n, able, -stop, -publish]: the smallest and the largest buffer, whether
        # every rank can take part in a step, and any rank's stop/publish flag.
        t = torch.tensor([self._n_train, -self._n_train, int(able), -int(stop), -int(due)],
                         dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        halt, publish = bool(t[3] < 0), bool(t[4] < 0)
        if halt:
            return 0, 0, True, publish
        least, most = int(t[0]), -int(t[1])
        if least == 0 and most > 0 and not t[2]:
            self._share_stand_in()  # every rank knows this branch: the collective matches
        n, k = plan_steps(least, self._cap(), self.state.step, publish=publish,
                          publish_every_steps=self.settings.trainer.publish_every_steps,
                          max_steps=max_steps,
                          agree_every_steps=self.settings.trainer.agree_every_steps, most=most)
        return n, k, False, publish

    def _on_any_rank(self, flag: bool) -> bool:
        """Collective: whether ``flag`` is set on any rank."""
        t = torch.tensor([int(flag)], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t[0])

    def _share_stand_in(self) -> None:
        """Collective: a rank that never polled an example (its partitions have been empty
        since it started) borrows another rank's last one to stand in with; see
        :meth:`_stand_in_step`. Happens at most once per process and rank."""
        gathered: list[Any] = [None] * self.info.world
        dist.all_gather_object(gathered, self._stand_in)
        if self._stand_in is None:
            self._stand_in = next(ex for ex in gathered if ex is not None)

    def _publish_due(self) -> bool:
        tc = self.settings.trainer
        interval_over = time.monotonic() - self._last_publish >= tc.publish_interval_s
        if not self.state.loss_n:
            # Nothing trained since the last publish. Examples consumed without training (held
            # out, duplicates) at a quiet stream's tail still get their offsets committed, by a
            # publish of the unchanged model, so that the trainer's lag reaches 0.
            return interval_over and self.next_offsets() != self.state.offsets
        if interval_over:
            return True
        return bool(tc.publish_every_steps and self.state.step
                    and self.state.step % tc.publish_every_steps == 0 and self.state.loss_n)

    def train_step(self, n: int) -> float:
        """Train on the ``n`` oldest buffered examples (one ``B = n`` batch; fewer when the plan
        is a tail step and this rank holds fewer), scoring them first (prequential); returns
        the batch's mean loss. A rank holding none takes part without learning (0.0)."""
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        n = min(n, self._n_train)
        if n == 0:
            self._stand_in_step()
            return 0.0
        t = time.perf_counter()
        taken = self._take(n)
        if self.id_maps:
            self._admit(taken)
        batch = self.builder.build(taken)
        if self.touched is not None:
            self.touched.observe(batch.sparse)
        self._observe_traces(taken)
        if self.catalogue is not None:
            self.catalogue.observe([ex.item_id for ex in taken], batch)
        t = self._clock("build", t)
        loss_value, probs = sgd_step(self.dmp, self.optimizer, batch, self.info.device)
        self._clock("step", t)
        self.metrics.add(probs, batch.labels.numpy())
        self.state.step += 1
        self.state.examples_seen += n
        self.last_step_at = time.perf_counter()
        self._steps_here += 1
        if self.state.step == WARMUP_STEPS:
            self.warm_at = (self.last_step_at, self.state.examples_seen)
        self.state.loss_sum += loss_value * n
        self.state.loss_n += n
        self.prom.steps.inc()
        self.prom.examples.inc(n)
        self.prom.loss.set(loss_value)
        return loss_value

    def _stand_in_step(self) -> None:
        """Collective: this rank's part in a step it has no example for (a tail plan). It runs
        the step on one copy of the last example it polled (or, if it never polled one, another
        rank's: :meth:`_share_stand_in`) with a zero loss, so the others' collectives match;
        nothing is learned, trained or counted but the step."""
        assert self._stand_in is not None  # see _share_stand_in
        if self.id_maps:
            self._admit([])  # collective: the others admit their batches' ids
        batch = self.builder.build([self._stand_in])
        sgd_step(self.dmp, self.optimizer, batch, self.info.device, learn=False)
        self.state.step += 1
        self.prom.steps.inc()

    def _take(self, n: int) -> list[ExampleRow]:
        """The ``n`` oldest buffered examples to train on; held-out ones met on the way leave
        the buffer for the promotion check (counted once: their offsets are now behind)."""
        taken: list[ExampleRow] = []
        while len(taken) < n:
            _, _, ex, held = self._buffer.popleft()
            if held:
                self._held_new.append(ex)
                self.state.held_out += 1
            else:
                taken.append(ex)
        self._n_train -= n
        self._release_held()
        return taken

    def _release_held(self) -> None:
        """Held-out examples at the head of the buffer leave it for the promotion check now,
        not when the next step passes them: at a quiet stream's tail no step may follow, and
        their offsets (hence the group's lag) would wait for one. Keeps the newest
        ``trainer.holdout_kept``."""
        while self._buffer and self._buffer[0][3]:
            self._held_new.append(self._buffer.popleft()[2])
            self.state.held_out += 1
        keep = self.settings.trainer.holdout_kept
        if len(self._held_new) > keep:
            del self._held_new[:-keep]

    def _observe_traces(self, examples: list[ExampleRow]) -> None:
        """Stage latencies from the examples' traces (ms): event -> example (the label window
        closing) and example -> trained (now), of up to :data:`TRACES_PER_STEP` examples spread
        evenly over the batch: two histogram observations per example would cost the step
        about 1 ms per 512 examples, and a systematic sample keeps the quantiles."""
        now = time.time() * 1000
        to_example = self.prom.stage.labels("event_to_example")
        to_trained = self.prom.stage.labels("example_to_trained")
        for ex in examples[::max(1, len(examples) // TRACES_PER_STEP)]:
            event_ts, closed, _ = ex.trace  # TRACE_FIELDS
            if closed is not None:
                to_trained.observe(max(0.0, now - closed) / 1000)
                if event_ts is not None:
                    to_example.observe(max(0.0, closed - event_ts) / 1000)

    def next_offsets(self) -> dict[str, int]:
        """Per partition: the first example not yet trained (still buffered), else the offset
        after the last one polled. Resuming there trains nothing twice and skips nothing."""
        first_buffered: dict[int, int] = {}
        for part, off, _, _ in self._buffer:
            first_buffered.setdefault(part, off)
        offsets = dict(self.state.offsets)
        for part, after in self._polled.items():
            offsets[offset_key(self.source.topic, part)] = first_buffered.get(part, after)
        return offsets

    # -- publishing -----------------------------------------------------------------------
    def publish(self) -> Manifest | None:
        """Collective. Rank 0 judges the new checkpoint (held-out examples vs the served model),
        writes it and announces it, promoted or held back; then all commit offsets."""
        t0 = time.perf_counter()
        self.state.offsets = self.next_offsets()
        full, optimizer_state, deltas = self._gather()
        gathered: list[Any] = [None] * self.info.world
        probs, labels = self.metrics.arrays()
        dist.all_gather_object(gathered, (self.state.offsets, self.state.examples_seen,
                                          probs, labels, self.state.loss_sum, self.state.loss_n))
        held: list[Any] | None = [None] * self.info.world if self.info.rank == 0 else None
        # As documents: the gate keeps them and saves them (JSON) with each checkpoint.
        dist.gather_object([ex.to_doc() for ex in self._held_new], held, dst=0)
        self._held_new = []
        self._gather_catalogue()
        totals = torch.tensor([self.state.examples_seen, self.state.held_out], dtype=torch.int64)
        dist.all_reduce(totals)
        manifest = None
        if self.info.rank == 0:
            assert held is not None and self.gate is not None and full is not None
            for rank_held in held:
                self.gate.add(rank_held)
            offsets: dict[str, int] = {}
            for o, *_ in gathered:
                offsets.update(o)
            all_p = np.concatenate([g[2] for g in gathered])
            all_y = np.concatenate([g[3] for g in gathered])
            loss_n = sum(g[5] for g in gathered)
            metrics = {
                "prequential_auc": auc(all_p, all_y) if len(all_p) else float("nan"),
                "prequential_logloss": log_loss(all_p, all_y) if len(all_p) else float("nan"),
                "train_loss": sum(g[4] for g in gathered) / loss_n if loss_n else float("nan"),
                "window_examples": float(len(all_p)),
            }
            held_total = int(totals[1])
            manifest = Manifest(
                version=self.state.version + 1, created_at_ms=now_ms(), step=self.state.step,
                examples_seen=self.state.examples_base + int(totals[0]) + held_total,
                examples_held_out=self.state.held_out_base + held_total, offsets=offsets,
                metrics={k: (None if isinstance(v, float) and math.isnan(v) else v)
                         for k, v in metrics.items()},  # type: ignore[misc]
                spec_digest=self.spec.digest(),
                delta_of=self.state.version if deltas is not None else 0,
                **self._identity_fields(),
            )
            manifest = self._judge_write_announce(manifest, full, optimizer_state, deltas)
            self.prom.checkpoints.inc()
            self.prom.model_version.labels("trainer").set(manifest.version)
            for gauge, name in ((self.prom.auc, "prequential_auc"),
                                (self.prom.logloss, "prequential_logloss")):
                if not math.isnan(metrics[name]):
                    gauge.set(metrics[name])
            log.info("published v%d (%s, step %d, %d examples, auc %s): %s", manifest.version,
                     f"delta of v{manifest.delta_of}" if manifest.delta_of else "full",
                     manifest.step, manifest.examples_seen, metrics["prequential_auc"],
                     "promoted" if manifest.promotion["promoted"] else "HELD BACK")
        dist.barrier()  # the checkpoint is durable before anyone commits offsets
        self.state.version += 1
        self.source.commit(self.state.offsets)
        self.state.loss_sum = self.state.loss_n = 0
        self._last_publish = time.monotonic()
        self.publish_seconds.append(time.perf_counter() - t0)
        self.prom.stage.labels("checkpoint_publish").observe(self.publish_seconds[-1])
        return manifest

    def _gather(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None,
                               tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None]:
        """Collective: ``(full model state, full optimizer state, deltas or None)`` on rank 0
        (Nones elsewhere). A full snapshot is gathered every ``trainer.full_every``
        publishes (and first in a run); between them only the rows trained since the last
        publish (:mod:`trainer.deltas`), applied to rank 0's copy of the published state."""
        every = self.settings.trainer.full_every
        if self.touched is None or self._since_full is None or self._since_full + 1 >= every:
            full = D.gather_full_state(self.dmp, self.info)
            optimizer_state = D.gather_optimizer_state(self.optimizer, self.info)
            if self.touched is not None:
                self.touched.clear()
                self._since_full = 0
                if full is not None:
                    self._published = Published(full, optimizer_state)
            return full, optimizer_state, None
        got = D.gather_delta_state(self.dmp, self.optimizer, self.info, self.touched.reduce())
        self.touched.clear()
        self._since_full += 1
        if got is None:
            return None, None, None
        assert self._published is not None
        self._published.apply(*got)
        return self._published.model, self._published.optimizer, got

    def _gather_catalogue(self) -> None:
        """Collective (with a retriever): the items other ranks trained on since the last
        publish join rank 0's catalogue (rank 0's own are in it already)."""
        if self.catalogue is None:
            return
        news: list[Any] | None = [None] * self.info.world if self.info.rank == 0 else None
        dist.gather_object(self.catalogue.take_new() if self.info.rank else None, news, dst=0)
        if self.info.rank == 0:
            self.catalogue.take_new()  # its own sightings need no transfer: forget the list
            for rows in (news or [])[1:]:
                self.catalogue.merge(rows)

    def _item_vectors(self, full: dict[str, torch.Tensor]) -> bytes:
        """Rank 0: ``retrieval.npz`` of the catalogue under ``full``'s retriever."""
        assert self._tower is not None and self.catalogue is not None
        prefix = "retriever."
        self._tower.load_state_dict({k[len(prefix):]: v for k, v in full.items()
                                     if k.startswith(prefix)})
        held = self.catalogue.rows()
        item_map = self.id_maps.get(self.spec.table_of("item_id").name)
        if item_map is not None:  # rows as the map holds them now; evicted items leave
            held = held.remapped(item_map.lookup(id_keys(held.ids)))
        return pack_item_vectors(held.ids, self.catalogue.embed(self._tower, held),
                                 ItemCatalogue.inputs(held))

    def _judge_write_announce(
            self, manifest: Manifest, full: dict[str, torch.Tensor],
            optimizer_state: dict[str, torch.Tensor] | None,
            deltas: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
    ) -> Manifest:
        """Rank 0: read what is served now, judge ``full`` against it, write the checkpoint
        (``deltas`` instead of the full state when given; keeping the served version and the
        rollback target) and announce it."""
        assert self.gate is not None and self._announcements is not None
        try:
            current = self._announcements.refresh()
        except BrokerError as exc:  # judged against the last known served model
            log.warning("cannot read %s, using what was last read: %s",
                        self.settings.topics.model_updates, exc)
            current = self._announcements.latest
        serving = current.serving if current is not None else None
        self.gate.follow(serving.version if serving else None, serving.path if serving else None)
        verdict = self.gate.check(full).as_dict()
        manifest = dataclasses.replace(manifest, promotion=verdict)
        tc = self.settings.trainer
        blobs = {HOLDOUT_FILE: orjson.dumps(list(self.gate.examples), option=orjson.OPT_SERIALIZE_NUMPY)} \
            if self.gate.examples else {}
        if self._tower is not None and self.catalogue is not None and len(self.catalogue):
            blobs[RETRIEVAL_FILE] = self._item_vectors(full)
        if self.id_maps:  # every version carries the whole maps (scorers and resumes need them)
            blobs[ID_MAPS_FILE] = pack_id_maps(self.id_maps)
        model_file, optimizer_file = deltas if deltas is not None else (full, optimizer_state)
        path = write_checkpoint(self.root, model_file, manifest, tc.keep_checkpoints,
                                optimizer_file, protect=protected(current), blobs=blobs)
        history = current.history if current is not None else ()
        if verdict["promoted"]:
            history = with_served(history, ServedVersion(manifest.version, str(path.resolve())),
                                  tc.keep_checkpoints)
            self.gate.promoted(manifest.version, full)
        else:
            log.warning("checkpoint v%d held back, still serving v%s: %s", manifest.version,
                        serving.version if serving else None, verdict["reason"])
        update = announcement(manifest, str(path.resolve()), action="publish",
                              promoted=verdict["promoted"], verdict=verdict, served=history)
        assert self._producer is not None
        send(self.settings, update, self._producer)
        self._announcements.latest = update  # also what the next refresh reads back
        self.promotion_prom.record(verdict, history[-1].version if history else None)
        return manifest

    def _identity_fields(self) -> dict[str, Any]:
        """The manifest's ``kafka_cluster_id`` and ``topic_ids`` (asked again if unknown)."""
        if self.identity is None:
            self.identity = self._read_identity(retry_s=0.0)
        if self.identity is None:
            return {}
        topic = self.settings.topics.examples
        return {"kafka_cluster_id": self.identity.cluster_id,
                "topic_ids": {topic: self.identity.topic_ids[topic]}}

    # -- main loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event, max_steps: int | None = None,
            publish_on_exit: bool = True) -> None:
        """Poll, agree, train and publish (when due) until ``stop`` is set on any rank or ``max_steps``
        is reached; then publish what was trained since the last publish (``publish_on_exit``)."""
        # The ~350k objects made at start (torch, TorchRec, the sharded model) live as long as
        # the process, yet every full collection walked them all: decoding 512 examples cost
        # ~4.3 ms with them, ~2.2 ms frozen out of the collector's sight. Garbage first, so
        # none of it is kept for good; thawed on return, for callers that go on (tests).
        gc.collect()
        gc.freeze()
        try:
            self._loop(stop, max_steps)
            # Collective: a rank that only stood in since the last publish trained nothing,
            # yet must take part in the publish the others make.
            if publish_on_exit and self._on_any_rank(self.state.loss_n > 0):
                self.publish()
        finally:
            gc.unfreeze()

    def _loop(self, stop: threading.Event, max_steps: int | None) -> None:
        """Agree on a plan, train it, publish when due; until a stop or ``max_steps``."""
        while True:
            self._beat()
            t = time.perf_counter()
            self._fill()
            t = self._clock("input", t)
            halt = stop.is_set() or (max_steps is not None and self.state.step >= max_steps)
            n, k, halt, publish = self._agree(halt, max_steps)
            self._clock("agree", t)
            if halt:
                return
            for i in range(k):
                if i:
                    self._beat()
                self.train_step(n)
            if publish:
                t = time.perf_counter()
                self.publish()
                self._clock("publish", t)

    def _clock(self, phase: str, since: float) -> float:
        """Add the time since ``since`` (perf_counter) to ``phase`` once the warm-up steps are
        done; returns now."""
        now = time.perf_counter()
        if self._steps_here >= WARMUP_STEPS:
            self.phase_s[phase] += now - since
        return now

    def phase_ms_per_step(self) -> dict[str, float]:
        """ms per step of each phase (see :attr:`phase_s`) over the steps after the warm-up."""
        timed = self._steps_here - WARMUP_STEPS  # the steps whose phases were clocked
        return {k: round(v * 1000 / timed, 3)
                for k, v in sorted(self.phase_s.items())} if timed > 0 else {}

    def _beat(self) -> None:
        if not self._heartbeat.beat(len(self._partitions)):
            self.prom.redis_errors.labels("trainer").inc()

    def close(self) -> None:
        """Stop the metrics server, close Redis and the consumer, flush the producer (rank 0,
        up to 10 s)."""
        if self._metrics_server is not None:
            self._metrics_server.close()
        self._redis.close()
        self.source.close()
        if self._announcements is not None:
            self._announcements.close()
        if self._producer is not None:
            self._producer.flush(10)
