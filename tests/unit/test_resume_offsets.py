"""A trainer applies a checkpoint's offsets only to the topic instance they were read from."""

from __future__ import annotations

from streaming.io.kafka import ClusterIdentity
from trainer.source import verified_offsets

TOPIC = "training-examples"
SAVED = {f"{TOPIC}:0": 120, f"{TOPIC}:1": 80, "other-topic:0": 5}
HERE = ClusterIdentity("cluster-A", {TOPIC: "topic-1"})


def test_offsets_of_the_same_cluster_and_topic_instance_are_applied() -> None:
    offsets, problem = verified_offsets(SAVED, "cluster-A", {TOPIC: "topic-1"}, HERE, TOPIC)
    assert problem == "" and offsets == {f"{TOPIC}:0": 120, f"{TOPIC}:1": 80}


def test_another_cluster_drops_the_offsets_and_says_why() -> None:
    offsets, problem = verified_offsets(SAVED, "cluster-B", {TOPIC: "topic-1"}, HERE, TOPIC)
    assert offsets == {} and "cluster-B" in problem and "cluster-A" in problem


def test_a_topic_created_again_drops_the_offsets() -> None:
    offsets, problem = verified_offsets(SAVED, "cluster-A", {TOPIC: "topic-0"}, HERE, TOPIC)
    assert offsets == {} and "another instance" in problem and "topic-0" in problem


def test_unverifiable_offsets_are_not_applied() -> None:
    # A manifest from before the identity was recorded, or a cluster that did not answer.
    assert verified_offsets(SAVED, "", {}, HERE, TOPIC)[0] == {}
    assert verified_offsets(SAVED, "cluster-A", {TOPIC: "topic-1"}, None, TOPIC)[0] == {}
    # Nothing saved for this topic: nothing to apply, nothing to warn about.
    assert verified_offsets({"other-topic:0": 5}, "", {}, None, TOPIC) == ({}, "")
