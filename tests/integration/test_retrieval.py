"""The retriever end to end on Kafka and Redis: the trainer publishes the catalogue's item
vectors with each checkpoint (and keeps its catalogue across a restart), a scorer loads them
into an index and fills feeds with its nearest items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.examples_gen import produce_examples
from models.checkpoint import (
    RETRIEVAL_FILE,
    list_versions,
    read_blob,
    read_manifest,
    unpack_item_vectors,
    version_dir,
)
from models.spec import spec_for
from streaming.serving.ranker import FeedRanker, ModelHolder
from streaming.settings import Settings
from tests.integration.test_trainer_resume import train

pytestmark = pytest.mark.integration


def _published(root: Path) -> tuple[int, Path, list[str], np.ndarray]:
    version = list_versions(root)[-1]
    path = version_dir(root, version)
    raw = read_blob(path, read_manifest(path), RETRIEVAL_FILE)
    assert raw is not None, f"v{version} has no {RETRIEVAL_FILE}"
    ids, vectors, _ = unpack_item_vectors(raw)
    return version, path, ids, vectors


@pytest.mark.parametrize("id_maps", ["", "t_user,t_item"], ids=["hashed", "id-maps"])
def test_item_vectors_are_published_restored_and_served(stack: Settings, redis_client,
                                                        id_maps: str) -> None:
    settings = stack.with_values({
        "model.retrieval_dim": "8", "model.id_maps": id_maps, "trainer.batch_size": "100",
        "trainer.batch_max_wait_ms": "200", "trainer.publish_interval_s": "3600",
        "trainer.publish_every_steps": "2", "trainer.holdout_share": "0",
        "serving.retrieval_candidates": "7"})
    root = Path(settings.trainer.checkpoint_dir)
    produce_examples(settings, 800)  # items i0..i7999: nearly every example a new item
    train(settings, "--max-steps", "4")
    _, _, first_ids, vectors = _published(root)
    assert 300 < len(first_ids) <= 400 and len(set(first_ids)) == len(first_ids)
    assert vectors.shape == (len(first_ids), 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    train(settings, "--max-steps", "8")  # a restart: resumes at step 4
    version, path, ids, _ = _published(root)
    assert set(first_ids) < set(ids)  # the catalogue survived the restart and grew

    holder = ModelHolder(spec_for(**settings.model.spec_args()), settings.serving)
    assert holder.load(path, version)
    loaded = holder.current
    assert loaded is not None and loaded.retrieval is not None
    assert len(loaded.retrieval.index) == len(ids)
    # A user with no history has no other candidates: the feed is the retriever's.
    ranker = FeedRanker(redis_client, settings.redis.key_prefix, holder,
                        serving=settings.serving)
    feed = ranker.rank("newcomer", 1_732_000_000_000)
    assert feed is not None and feed.sources == {"retrieval": 7}
    assert {item.item_id for item in feed.items} <= set(ids)
    if id_maps:  # the scorer's user tower looked the user up in the served maps
        assert loaded.builder is not None and loaded.builder.id_maps
