"""Safe model promotion: a new checkpoint is served only if, on the newest held-out examples, it
is not worse than the model being served by more than the configured margins.

- **Hold-out.** Every rank sets aside the examples whose ``example_id`` hashes below
  ``trainer.holdout_share`` (:func:`held_out`, stable across processes and restarts). They are
  never trained on; rank 0 keeps the newest ``trainer.holdout_kept`` of them (:class:`Gate`).
- **Verdict.** At each publish rank 0 scores the held-out examples with the candidate (the full
  state it just gathered) and with the served model (a CPU copy, an unsharded
  ``StreamRecModel``), and :func:`judge` compares log-loss and AUC.
- **Policy.** With no model served yet (or the served one unreadable) the candidate is
  promoted; with ``trainer.holdout_share = 0`` every candidate is promoted unchecked. With fewer
  than ``trainer.promotion_min_examples`` held-out examples (a new deployment) the candidate is
  promoted unchecked too: too few examples cannot tell a worse model from noise, and a young
  deployment should not be stuck on its first model; the verdict's reason says "unchecked" and
  ``streamrec model rollback`` undoes it. The held-out examples are saved with each checkpoint
  (``holdout.json``), so a restarted trainer judges with them at once instead of reopening
  that window. Otherwise it is held back if its log-loss exceeds the
  served model's by more than ``trainer.promotion_logloss_margin`` or its AUC is lower by more
  than ``trainer.promotion_auc_margin`` (AUC is skipped when the held-out labels have one class).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.batch import BatchBuilder, hash64
from models.checkpoint import load_checkpoint
from models.dlrm import StreamRecModel
from models.spec import FeatureSpec
from streaming.errors import CorruptCheckpoint
from streaming.settings import TrainerSettings
from trainer.metrics import auc, log_loss

log = logging.getLogger(__name__)


def held_out_mask(example_ids: Sequence[Any], share: float) -> np.ndarray:
    """Which of ``example_ids`` are held out (bool, one per id): those whose 64-bit hash
    (:func:`models.batch.hash64`, FNV-1a with murmur3's finaliser, the same on every host and
    in every process), as a fraction of 2**64, is below ``share``. Ids that are not non-empty
    strings are never held out. Vectorised: one call per polled chunk, not one hash per id."""
    out = np.zeros(len(example_ids), dtype=bool)
    if share <= 0:
        return out
    keep = [k for k, i in enumerate(example_ids) if isinstance(i, str) and i]
    if keep:
        fraction = hash64([example_ids[k] for k in keep]).astype(np.float64) / 2.0 ** 64
        out[keep] = fraction < share
    return out


def held_out(example_id: Any, share: float) -> bool:
    """Whether the example with this id is held out (:func:`held_out_mask` of one id)."""
    return bool(held_out_mask([example_id], share)[0])


@dataclass(frozen=True, slots=True)
class Verdict:
    """The promotion check of one checkpoint: whether it is served, why, and the numbers.

    Metrics are on the same ``n`` held-out examples; ``served_*`` are None when no model was
    served (or it could not be read), metrics None when undefined (AUC with one class)."""

    promoted: bool
    reason: str
    n: int
    candidate_logloss: float | None = None
    candidate_auc: float | None = None
    served_version: int | None = None
    served_logloss: float | None = None
    served_auc: float | None = None
    logloss_margin: float = 0.0
    auc_margin: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the manifest's ``promotion`` and the announcement's ``verdict``)."""
        return asdict(self)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def judge(candidate: np.ndarray | None, served: np.ndarray | None, labels: np.ndarray,
          served_version: int | None, cfg: TrainerSettings) -> Verdict:
    """The verdict from both models' probabilities on the same held-out ``labels`` (``n``).
    ``candidate`` / ``served`` are None when not scored (no hold-out, no served model)."""
    n = len(labels)
    margins = {"logloss_margin": cfg.promotion_logloss_margin,
               "auc_margin": cfg.promotion_auc_margin}
    c_ll = c_auc = s_ll = s_auc = None
    if candidate is not None and n:
        c_ll, c_auc = _num(log_loss(candidate, labels)), _num(auc(candidate, labels))
    if served is not None and n:
        s_ll, s_auc = _num(log_loss(served, labels)), _num(auc(served, labels))
    nums = {"candidate_logloss": c_ll, "candidate_auc": c_auc, "served_version": served_version,
            "served_logloss": s_ll, "served_auc": s_auc, **margins}
    if cfg.holdout_share <= 0:
        return Verdict(True, "unchecked: trainer.holdout_share is 0", n, **nums)
    if served_version is None:
        return Verdict(True, "no model is served yet", n, **nums)
    if served is None:
        return Verdict(True, f"served v{served_version} could not be read", n, **nums)
    if n < cfg.promotion_min_examples:
        return Verdict(True, f"unchecked: {n} held-out examples < "
                       f"trainer.promotion_min_examples {cfg.promotion_min_examples}", n, **nums)
    assert c_ll is not None and s_ll is not None
    if c_ll > s_ll + cfg.promotion_logloss_margin:
        return Verdict(False, f"log-loss {c_ll:.4f} > served v{served_version}'s {s_ll:.4f} + "
                       f"margin {cfg.promotion_logloss_margin}", n, **nums)
    if c_auc is not None and s_auc is not None and c_auc < s_auc - cfg.promotion_auc_margin:
        return Verdict(False, f"AUC {c_auc:.4f} < served v{served_version}'s {s_auc:.4f} - "
                       f"margin {cfg.promotion_auc_margin}", n, **nums)
    return Verdict(True, f"within margins of served v{served_version}", n, **nums)


def predict(model: StreamRecModel, builder: BatchBuilder,
            examples: list[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``(probs, labels)`` (``n`` float64 each) of ``model`` (eval mode) on ``examples``."""
    batch = builder.build(examples)
    model.eval()
    with torch.no_grad():
        probs = torch.sigmoid(model(batch.dense, batch.sparse))
    return probs.double().numpy(), batch.labels.double().numpy()


class Gate:
    """Rank 0's promotion gate: the newest held-out examples and a CPU copy of the served model.

    :meth:`check` judges a candidate state; :meth:`promoted` makes it the served copy;
    :meth:`follow` follows what operators serve (``streamrec model promote | rollback``)."""

    def __init__(self, spec: FeatureSpec, cfg: TrainerSettings) -> None:
        self.spec = spec
        self.cfg = cfg
        self.builder = BatchBuilder(spec)
        self.examples: deque[Mapping[str, Any]] = deque(maxlen=cfg.holdout_kept)
        self.served_version: int | None = None
        self._served: StreamRecModel | None = None  # None: nothing served, or unreadable
        self._spare: StreamRecModel | None = None  # reused for candidates

    def add(self, examples: Iterable[Mapping[str, Any]]) -> None:
        """Append held-out examples (oldest first); the oldest beyond ``holdout_kept`` drop."""
        self.examples.extend(examples)

    def follow(self, version: int | None, path: str | None) -> None:
        """Make ``version`` (its checkpoint at ``path``) the served model compared against;
        a checkpoint that cannot be read is logged and leaves no served copy."""
        if version == self.served_version:
            return
        self.served_version, self._served = version, None
        if version is None or path is None:
            return
        try:
            _, state = load_checkpoint(Path(path), self.spec.digest())
            model = StreamRecModel(self.spec)
            model.load_state_dict(state)
            self._served = model
        except (CorruptCheckpoint, RuntimeError, OSError) as exc:
            log.error("served model v%d cannot be read to judge new checkpoints: %s", version,
                      exc)

    def check(self, state: Mapping[str, torch.Tensor]) -> Verdict:
        """Judge the candidate ``state`` (an unsharded StreamRecModel state_dict) against the
        served model on the held-out examples."""
        examples = list(self.examples)
        labels = np.zeros(0)
        cand_p = served_p = None
        if examples and self.cfg.holdout_share > 0:
            candidate = self._spare or StreamRecModel(self.spec)
            candidate.load_state_dict(state)
            self._spare = candidate
            cand_p, labels = predict(candidate, self.builder, examples)
            if self._served is not None:
                served_p, _ = predict(self._served, self.builder, examples)
        elif self._served is not None:
            served_p = np.zeros(0)
        return judge(cand_p, served_p, labels, self.served_version, self.cfg)

    def promoted(self, version: int, state: Mapping[str, torch.Tensor]) -> None:
        """The candidate ``state`` is now served as ``version``: keep it as the served copy."""
        model = self._spare if self._spare is not None else StreamRecModel(self.spec)
        model.load_state_dict(state)
        self._spare, self._served = self._served, model
        self.served_version = version
