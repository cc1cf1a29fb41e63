"""The promotion check: hold-out selection, verdicts, announcements, retention, and the scorer
going back to an older version."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import Manifest, list_versions, write_checkpoint
from models.dlrm import StreamRecModel
from models.spec import DEFAULT_SPEC
from streaming.contract.updates import ModelUpdate, ServedVersion
from streaming.serving.worker import ServedModelHolder
from streaming.settings import TrainerSettings
from trainer.announcements import protected, with_served
from trainer.promotion import Gate, held_out, held_out_mask, judge

CFG = TrainerSettings(holdout_share=0.1, promotion_min_examples=100,
                      promotion_logloss_margin=0.01, promotion_auc_margin=0.01)


def test_hold_out_is_a_stable_share_of_example_ids() -> None:
    ids = [f"x{k}" for k in range(20_000)]
    chosen = [i for i in ids if held_out(i, 0.02)]
    assert 0.015 < len(chosen) / len(ids) < 0.025
    assert chosen == [i for i in ids if held_out(i, 0.02)]  # same ids every time (no salt)
    assert set(chosen) <= {i for i in ids if held_out(i, 0.1)}  # nested shares
    assert not held_out("x1", 0.0) and not held_out(None, 0.5) and not held_out("", 0.5)


def test_hold_out_mask_is_held_out_per_id_and_the_same_in_every_process() -> None:
    import subprocess
    import sys

    ids: list[object] = [f"{k:08x}-e:n{k % 3}" for k in range(50_000)] + [None, "", 7]
    mask = held_out_mask(ids, 0.02)
    assert mask.dtype == bool and len(mask) == len(ids)
    assert 0.018 < mask[:50_000].mean() < 0.022  # the configured share
    assert not mask[-3:].any()  # ids that are not non-empty strings are never held out
    assert [held_out(i, 0.02) for i in ids[:2000]] == mask[:2000].tolist()
    assert not held_out_mask(ids, 0.0).any() and len(held_out_mask([], 0.5)) == 0
    # No per-process salt: another interpreter (another PYTHONHASHSEED) picks the same ids.
    code = ("from trainer.promotion import held_out_mask; "
            "print(held_out_mask([f'x{k}' for k in range(5000)], 0.02).nonzero()[0].tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123", "PATH": ""},
                         cwd=Path(__file__).resolve().parents[2])
    here = held_out_mask([f"x{k}" for k in range(5000)], 0.02).nonzero()[0].tolist()
    assert out.stdout.strip() == str(here)


def test_verdicts() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(1000) < 0.3).astype(float)
    good = np.clip(0.3 + 0.4 * (y - 0.3) + rng.normal(0, 0.1, 1000), 0.01, 0.99)
    bad = 1 - good  # anti-correlated: what training on inverted labels gives
    assert judge(good, good, y, 3, CFG).promoted
    v = judge(bad, good, y, 3, CFG)
    assert not v.promoted and "log-loss" in v.reason and v.served_version == 3
    assert v.candidate_logloss is not None and v.served_logloss is not None
    assert v.candidate_logloss > v.served_logloss + 0.01
    assert judge(bad, None, y, None, CFG).reason == "no model is served yet"
    assert judge(bad, None, y, 3, CFG).promoted  # served model unreadable: fail-open
    few = judge(good[:50], good[:50], y[:50], 3, CFG)
    assert few.promoted and few.reason.startswith("unchecked: 50 held-out examples")
    off = dataclasses.replace(CFG, holdout_share=0.0)
    assert judge(None, None, np.zeros(0), 3, off).promoted
    # AUC alone: same log-loss, ranking destroyed.
    shuffled = good.copy()
    rng.shuffle(shuffled)
    loose = dataclasses.replace(CFG, promotion_logloss_margin=1.0)
    v = judge(shuffled, good, y, 3, loose)
    assert not v.promoted and "AUC" in v.reason


def test_gate_holds_back_scrambled_weights() -> None:
    gen = torch.Generator().manual_seed(0)
    examples = []
    for k in range(400):
        dense = torch.randn(len(DEFAULT_SPEC.dense), generator=gen).tolist()
        examples.append({"example_id": f"e{k}", "user_id": f"u{k % 50}", "item_id": f"i{k % 70}",
                         "category": f"c{k % 5}", "recent_items": [], "dense": dense,
                         "dense_schema": DEFAULT_SPEC.dense_schema(),
                         "labels": {"click": int(dense[0] > 0), "purchase": 0}})
    torch.manual_seed(0)
    model = StreamRecModel(DEFAULT_SPEC)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    from models.batch import BatchBuilder

    batch = BatchBuilder(DEFAULT_SPEC).build(examples)
    for _ in range(60):  # learn the signal of dense[0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(batch.dense, batch.sparse), batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    good = {k: v.detach().clone() for k, v in model.state_dict().items()}
    scrambled = {k: (v[torch.randperm(v.shape[0])] if v.dim() and v.is_floating_point() else v)
                 for k, v in good.items()}
    gate = Gate(DEFAULT_SPEC, CFG)
    gate.add(examples)
    first = gate.check(good)
    assert first.promoted and first.reason == "no model is served yet"
    gate.promoted(1, good)
    verdict = gate.check(scrambled)
    assert not verdict.promoted, verdict
    assert verdict.n == 400 and verdict.served_version == 1
    assert gate.check(good).promoted


def test_announcements_carry_the_serving_state() -> None:
    history = (ServedVersion(3, "/c/v3"), ServedVersion(5, "/c/v5"))
    held = ModelUpdate(version=6, path="/c/v6", promoted=False, verdict={"reason": "worse"},
                       served=history, manifest={"step": 60})
    back = ModelUpdate.from_json(held.to_json())
    assert back.serving == ServedVersion(5, "/c/v5") and not back.promoted
    assert back.history == history and back.verdict == {"reason": "worse"}
    assert back.manifest["step"] == 60
    assert protected(back) == {3, 5}
    # A record from before promotion existed: its own version is served.
    legacy = ModelUpdate.from_json(b'{"version": 4, "path": "/c/v4", "step": 1}')
    assert legacy.serving == ServedVersion(4, "/c/v4") and legacy.action == "publish"
    assert with_served(history, ServedVersion(7, "/c/v7"), keep=2) == (
        ServedVersion(5, "/c/v5"), ServedVersion(7, "/c/v7"))


def test_retention_keeps_the_served_version_and_the_rollback_target(tmp_path: Path) -> None:
    for v in range(1, 8):
        m = Manifest(version=v, created_at_ms=1, step=v, examples_seen=v, offsets={},
                     metrics={}, spec_digest="abc")
        write_checkpoint(tmp_path, {"w": torch.zeros(1)}, m, keep=2, protect={2, 4})
    assert list_versions(tmp_path) == [2, 4, 6, 7]


def test_scorer_holder_rolls_back_to_an_older_version(tmp_path: Path) -> None:
    digest = DEFAULT_SPEC.digest()
    paths = {}
    for v in (1, 2):
        torch.manual_seed(v)
        m = Manifest(version=v, created_at_ms=1, step=v, examples_seen=v, offsets={},
                     metrics={}, spec_digest=digest)
        paths[v] = str(write_checkpoint(tmp_path, StreamRecModel(DEFAULT_SPEC).state_dict(), m,
                                        keep=5))
    holder = ServedModelHolder(DEFAULT_SPEC)
    assert holder.switch(paths[2], 2) and holder.current is not None
    assert not holder.switch(paths[2], 2)  # already served
    assert holder.switch(paths[1], 1)
    assert holder.current.version == 1 and holder.loads == 2
    assert not holder.switch(str(tmp_path / "missing"), 0)
    assert holder.current.version == 1 and holder.failures == 1
