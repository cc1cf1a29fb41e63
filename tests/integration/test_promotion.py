"""Safe promotion on the real broker: a checkpoint trained on inverted labels is held back
(scorers keep the served model), retention keeps the served version, and operators promote and
roll back with ``streamrec model``."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from models.checkpoint import list_versions, read_manifest, version_dir
from models.spec import DEFAULT_SPEC
from streaming.contract.names import Keys
from streaming.contract.updates import ModelUpdate
from streaming.io.producer import RecordProducer
from streaming.settings import Settings
from tests.integration.helpers import cli_env, consume_all, run_cli, stop_process, wait_for
from tests.integration.test_trainer_resume import train
from trainer.promotion import held_out

pytestmark = pytest.mark.integration

SHARE = 0.1


def produce(settings: Settings, n: int, start: int, invert_trained: bool) -> None:
    """``n`` examples (ids ``x{start}``...) whose click depends on two dense features; with
    ``invert_trained`` the examples that are not held out carry the opposite label (a broken
    label join feeding the trainer), the held-out ones keep the true one."""
    rng = random.Random(start)
    names = DEFAULT_SPEC.dense
    with RecordProducer(settings, topic=settings.topics.examples, linger_ms=20) as producer:
        for k in range(start, start + n):
            feats = {name: rng.gauss(0, 1) for name in names}
            click = int(feats["item_ctr"] + feats["user_category_affinity"] + rng.gauss(0, .5) > 1)
            eid = f"x{k}"
            if invert_trained and not held_out(eid, SHARE):
                click = 1 - click
            user = f"u{rng.randrange(500)}"
            producer.send_raw(user.encode(), orjson.dumps({
                "example_id": eid, "user_id": user, "item_id": f"i{rng.randrange(800)}",
                "category": f"c{rng.randrange(20)}", "ts": 1_732_000_000_000 + k,
                "labels": {"click": click, "purchase": 0}, "sampled": False,
                "dense_schema": DEFAULT_SPEC.dense_schema(), "dense": [feats[n] for n in names],
                "recent_items": [], "trace": {}}), topic=settings.topics.examples)


def announcements(settings: Settings, n: int) -> list[ModelUpdate]:
    return [ModelUpdate.from_json(m.value())
            for m in consume_all(settings, settings.topics.model_updates, n)]


def model_cli(settings: Settings, *args: str) -> str:
    done = run_cli(["model", *args], cli_env(settings), timeout_s=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def scorer_version(redis_client: object, settings: Settings) -> int | None:
    raw = redis_client.hget(Keys(settings.redis.key_prefix).scorer_stats,  # type: ignore[attr-defined]
                            "model_version")
    return int(raw) if raw is not None else None


def test_a_broken_checkpoint_is_held_back_then_promoted_and_rolled_back(
        stack: Settings, redis_client: object, tmp_path: Path) -> None:
    settings = stack.with_values({
        "trainer.batch_size": "256", "trainer.batch_max_wait_ms": "2000",
        "trainer.publish_interval_s": "3600", "trainer.publish_every_steps": "6",
        "trainer.keep_checkpoints": "2", "trainer.holdout_share": str(SHARE),
        "trainer.promotion_min_examples": "100", "trainer.holdout_kept": "1000"})
    root = Path(settings.trainer.checkpoint_dir)
    produce(settings, 6000, 0, invert_trained=False)
    train(settings, "--max-steps", "18")  # v1 (nothing served), v2, v3
    good = [read_manifest(version_dir(root, v)) for v in list_versions(root)]
    assert [m.promotion["promoted"] for m in good] == [True, True, True], \
        [m.promotion for m in good]
    assert good[0].promotion["reason"] == "no model is served yet"
    assert good[-1].promotion["n"] >= 100
    assert good[-1].examples_held_out > 0
    assert sum(good[-1].offsets.values()) == good[-1].examples_seen

    produce(settings, 6000, 6000, invert_trained=True)
    train(settings, "--max-steps", "36")  # v4, v5, v6 trained on inverted labels
    versions = list_versions(root)
    last = read_manifest(version_dir(root, versions[-1]))
    assert last.version == 6 and not last.promotion["promoted"], last.promotion
    assert last.promotion["candidate_logloss"] > last.promotion["served_logloss"]
    # The restarted trainer judged with the held-out examples saved in the checkpoint too.
    assert last.promotion["n"] > good[-1].promotion["n"] + 300
    held = [v for v in range(4, 7) if (version_dir(root, v)).is_dir()
            and not read_manifest(version_dir(root, v)).promotion["promoted"]]
    served = announcements(settings, 6)[-1]
    assert served.action == "publish" and served.version == 6 and not served.promoted
    assert served.serving is not None and served.serving.version not in held
    served_v = served.serving.version
    # Retention (keep 2) kept the served version and the rollback target.
    assert version_dir(root, served_v).is_dir()
    assert {s.version for s in served.history[-2:]} <= set(versions)

    table = orjson.loads(model_cli(settings, "list", "--json"))
    status = {r["version"]: r["status"] for r in table}
    assert status[served_v] == "served" and status[6] == "held back"
    text = model_cli(settings, "list")
    assert "held back" in text and "log-loss" in text

    # A real scorer serves what the newest announcement says: the served version, not v6.
    log = tmp_path / "scorer.log"
    scorer = subprocess.Popen([sys.executable, "-m", "deploy.cli", "score"],
                              env=cli_env(settings), stdout=log.open("ab"),
                              stderr=subprocess.STDOUT)
    try:
        wait_for(f"the scorer to serve v{served_v}",
                 lambda: scorer_version(redis_client, settings) == served_v, 60)
        promote_and_roll_back(settings, redis_client, served_v)
    finally:
        stop_process(scorer)
    assert "serving model v6" in log.read_text()
    assert f"serving model v{served_v} (rolled back from v6)" in log.read_text()

    missing = run_cli(["model", "promote", "1"], cli_env(settings), timeout_s=60)
    assert missing.returncode == 1 and "checkpoint v1 is not in" in missing.stderr


def promote_and_roll_back(settings: Settings, redis_client: object, served_v: int) -> None:
    out = model_cli(settings, "promote", "6")
    assert f"scorers now serve v6 (was v{served_v})" in out
    latest = announcements(settings, 7)[-1]
    assert latest.action == "promote" and latest.serving is not None
    assert latest.serving.version == 6
    assert orjson.loads(model_cli(settings, "list", "--json"))[0]["status"] == "served"
    wait_for("the scorer to serve v6", lambda: scorer_version(redis_client, settings) == 6, 30)

    out = model_cli(settings, "rollback")
    assert f"scorers now serve v{served_v} (was v6)" in out
    latest = announcements(settings, 8)[-1]
    assert latest.action == "rollback" and latest.serving is not None
    assert latest.serving.version == served_v
    wait_for(f"the scorer to serve v{served_v} again",
             lambda: scorer_version(redis_client, settings) == served_v, 30)
