"""The trainer's plans: how many steps of which batch size the ranks agree on at once, and the
buffer that feeds them (filled without waiting past one batch, duplicates dropped, held-out
examples marked)."""

from __future__ import annotations

from collections import deque

import pytest

from streaming.contract.examples import ExampleRow
from streaming.settings import TrainerSettings
from trainer.dedup import RecentIds
from trainer.loop import ContinuousTrainer, TrainerState, plan_steps
from trainer.promotion import held_out

AGREE = TrainerSettings().agree_every_steps  # the default plan length


@pytest.mark.parametrize(("buffered", "step", "publish", "every", "max_steps", "expected"), [
    (10 * 128, 0, False, 0, None, (128, AGREE)),  # full batches, a whole plan
    (3 * 128 + 5, 0, False, 0, None, (128, 3)),  # only the full batches every rank holds
    (100, 0, False, 0, None, (100, 1)),  # short of a batch: one step of what all hold
    (1, 0, False, 0, None, (1, 1)),  # a lone example trains too (see models.norm)
    (0, 0, False, 0, None, (0, 0)),  # nothing to train: no step
    (0, 0, True, 0, None, (0, 0)),  # a publish with nothing to train: no step
    (10 * 128, 7, True, 0, None, (128, 1)),  # publish due: one step, then the publish
    (10 * 128, 6, False, 4, None, (128, 2)),  # ends at step 8, where a publish falls due
    (10 * 128, 8, False, 4, None, (128, 4)),
    (10 * 128, 17, False, 0, 20, (128, 3)),  # never past max_steps
])
def test_plan_steps(buffered: int, step: int, publish: bool, every: int, max_steps: int | None,
                    expected: tuple[int, int]) -> None:
    assert plan_steps(buffered, 128, step, publish=publish, publish_every_steps=every,
                      max_steps=max_steps, agree_every_steps=AGREE) == expected


@pytest.mark.parametrize(("buffered", "most", "max_steps", "expected"), [
    (0, 500, None, (128, 1)),  # a rank holds none: one step, up to a batch, it stands in
    (0, 40, None, (40, 1)),
    (0, 40, 7, (40, 1)),
    (0, 40, 6, (40, 0)),  # max_steps reached
    (0, 0, None, (0, 0)),  # nothing anywhere
    (3, 500, None, (3, 1)),  # every rank holds some: what all hold, as before
])
def test_a_tail_on_some_ranks_only_still_trains(buffered: int, most: int,
                                                max_steps: int | None,
                                                expected: tuple[int, int]) -> None:
    assert plan_steps(buffered, 128, 6, publish=False, publish_every_steps=0,
                      max_steps=max_steps, agree_every_steps=AGREE, most=most) == expected


def test_publishes_fall_on_the_same_steps_as_with_a_plan_per_step() -> None:
    """With ``publish_every_steps`` a publish follows the step after each multiple (the due
    check sees the steps trained so far); plans of any length keep exactly those steps."""
    def publishes(agree_every: int) -> list[int]:
        step, out = 0, []
        while step < 40:
            due = step > 0 and step % 5 == 0 and (not out or out[-1] != step)
            _, k = plan_steps(10_000, 128, step, publish=due, publish_every_steps=5,
                              max_steps=40, agree_every_steps=agree_every)
            step += k
            if due:
                out.append(step)
        return out

    assert publishes(8) == publishes(3) == publishes(1) == [6, 11, 16, 21, 26, 31, 36]


def _row(example_id: str) -> ExampleRow:
    """An example that only its id tells apart (all the buffer and the hold-out look at)."""
    return ExampleRow(1, example_id, "u", "i", None, 0, 0, 0, False, "", b"", [], [None] * 3)


class FakeSource:
    """Hands out examples of one partition in order; records each poll's (max_n, timeout_s)."""

    def __init__(self, n: int, ready: int) -> None:
        self.examples = [(0, off, _row(f"x{off % (n - 3)}")) for off in range(n)]
        self.ready = ready  # what the consumer holds already; the rest "arrives" on a wait
        self.calls: list[tuple[int, float]] = []

    def poll(self, max_n: int, timeout_s: float) -> list[tuple[int, int, ExampleRow]]:
        self.calls.append((max_n, timeout_s))
        limit = len(self.examples) if timeout_s > 0 else min(self.ready, len(self.examples))
        got = self.examples[:min(max_n, limit)]
        del self.examples[:len(got)]
        self.ready = max(0, self.ready - len(got))
        return got


def trainer_with(source: FakeSource, batch_size: int, share: float) -> ContinuousTrainer:
    """A trainer object with just what filling its buffer needs (no Kafka, no model)."""
    t = ContinuousTrainer.__new__(ContinuousTrainer)
    t.settings = type("S", (), {"trainer": TrainerSettings(
        batch_size=batch_size, batch_max_wait_ms=50, holdout_share=share)})()
    t.info = type("I", (), {"world": 2, "rank": 0})()
    t.source = source  # type: ignore[assignment]
    t.state = TrainerState()
    t._buffer, t._n_train, t._polled, t._held_new = deque(), 0, {}, []
    t._seen_ids, t.duplicates = RecentIds(1000), 0
    return t


def test_fill_waits_for_one_batch_then_takes_only_what_is_there() -> None:
    source = FakeSource(n=5000, ready=300)
    t = trainer_with(source, batch_size=200, share=0.1)  # 100 per rank and step
    t._fill()
    # Waits (asking for exactly what completes a batch to train) only until one batch is
    # there; then takes what the consumer holds without waiting.
    waits = [max_n for max_n, timeout in source.calls if timeout > 0]
    assert waits[0] == 100 and sum(waits) < 100 + 30 and source.ready == 0
    assert all(timeout == 0.0 for _, timeout in source.calls[len(waits):])
    # Held-out examples at the head left the buffer for the promotion check at once.
    released, entries = t._held_new, list(t._buffer)
    assert all(held_out(ex.example_id, 0.1) for ex in released) and not entries[0][3]
    assert t.state.held_out == len(released)
    offsets = [off for _, off, _, _ in entries]
    assert offsets == list(range(len(released), 300))  # in order, none lost
    assert [h for *_, h in entries] == [held_out(ex.example_id, 0.1) for *_, ex, _ in entries]
    assert t._n_train == sum(not h for *_, h in entries) >= 100
    assert t._polled == {0: 300}  # all it held, no more
    # Topped up to a whole plan when the consumer holds enough (no duplicates until then).
    source.ready = 10_000
    t._fill()
    assert t._n_train >= 100 * AGREE and t.duplicates == 0


def test_fill_drops_duplicates() -> None:
    source = FakeSource(n=50, ready=50)  # ids x0..x46, then x0, x1, x2 again
    t = trainer_with(source, batch_size=2 * 1000, share=0.0)
    t._fill()
    assert t.duplicates == 3 and t._n_train == 47 and t._polled == {0: 50}


def test_a_tail_of_held_out_examples_leaves_the_buffer_and_moves_the_offsets() -> None:
    """At a quiet stream's tail the examples after the last one trained may all be held out:
    they leave the buffer when the step before them is taken (or when they arrive behind an
    empty buffer), so the offsets the next publish commits are past them."""
    ids = [f"y{i}" for i in range(400)]
    train = [i for i in ids if not held_out(i, 0.5)][:6]
    held = [i for i in ids if held_out(i, 0.5)][:5]
    source = FakeSource(n=20, ready=20)
    source.examples = [(0, off, _row(eid)) for off, eid in enumerate(
        [*train[:3], held[0], *train[3:], *held[1:3]])]
    t = trainer_with(source, batch_size=2 * 100, share=0.5)
    t.source.topic = "examples"  # type: ignore[attr-defined]
    t._fill()
    assert t._n_train == 6 and len(t._buffer) == 9 and not t._held_new
    t._take(6)  # the step trains all 6; the 3 held out met or left behind go with it
    assert not t._buffer and t.state.held_out == 3 and t._n_train == 0
    assert t.next_offsets() == {"examples:0": 9}
    source.examples = [(0, 9 + k, _row(eid)) for k, eid in enumerate(held[3:])]
    source.ready = 2
    t._fill()  # arrive behind an empty buffer: released at once
    assert not t._buffer and t.state.held_out == 5
    assert t.next_offsets() == {"examples:0": 11}
