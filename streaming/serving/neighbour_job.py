"""The neighbour job: every user's list of items liked by users who interact alike, rebuilt
periodically from the user x item state and written to ``P nb:<user>`` (item -> score).

Those lists are the ``neighbours`` candidate source of the scorers and the ``nb_score`` dense
feature of both the training examples (the ingest worker reads the list when it snapshots an
example) and the scorers, so training and serving see the same values. The scores are
:class:`~streaming.features.neighbours.UserNeighbours`' (TIFU-KNN: the user's own items and the
similar users', with ``serving.neighbour_own_weight``) over :func:`user_vector` of each user's
``ui:`` hash, counts decayed with ``serving.neighbour_half_life_ms``.

One scorer at a time runs it: :meth:`NeighbourJob.run_if_due` takes ``P nb:lock`` for
``serving.neighbour_interval_s`` (the lock's expiry is the schedule, so a scorer that dies
mid-run only delays the next run). The job reads every user's ``ui:`` hash: its cost grows with
the number of users (about 1 s per 5,000 users here), the reason it runs on a period and not per
event. A user's list expires after three periods without a rebuild (a user whose state expired,
or a job that stopped), never leaving stale lists behind for good.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from streaming.contract.names import Keys
from streaming.errors import StoreError
from streaming.features.neighbours import UserNeighbours, user_vector
from streaming.features.state import parse_user_items
from streaming.io.redis_client import call
from streaming.settings import ServingSettings

__all__ = ["NeighbourJob", "NeighbourRun"]

log = logging.getLogger(__name__)

_CHUNK = 500  # users read or written per pipeline round trip
_MIN_TTL_S = 3_600  # a list outlives a short period's three (a job's own run time included)


@dataclass(frozen=True, slots=True)
class NeighbourRun:
    """What one run did: users read (with a ``ui:`` hash), lists written, seconds taken."""

    users: int
    lists: int
    elapsed_s: float


class NeighbourJob:
    """Builds and writes every user's neighbour list (see the module docstring).

    Args:
        client (redis.Redis): the feature store (bytes replies).
        keys (Keys): key names under the deployment's prefix.
        serving (ServingSettings): ``neighbour_*`` settings.
    """

    def __init__(self, client: redis.Redis, keys: Keys, serving: ServingSettings) -> None:
        self.client = client
        self.keys = keys
        self.cfg = serving

    def run_if_due(self, now_ms: int | None = None) -> NeighbourRun | None:
        """Run if no scorer has in the last ``neighbour_interval_s`` (takes ``P nb:lock`` for
        that long); None when not due or the job is off (interval 0)."""
        if self.cfg.neighbour_interval_s <= 0:
            return None
        took = call(lambda: self.client.set(self.keys.neighbours_lock, b"1", nx=True,
                                            px=int(self.cfg.neighbour_interval_s * 1000)),
                    "taking the neighbour-job lock")
        return self.run(now_ms) if took else None

    def run(self, now_ms: int | None = None) -> NeighbourRun:
        """Rebuild every user's list as of ``now_ms`` (default: now). Raises
        :class:`~streaming.errors.StoreError` if Redis fails."""
        started = time.perf_counter()
        at_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cfg = self.cfg
        vectors = {user: user_vector(entries, at_ms, cfg.neighbour_half_life_ms)
                   for user, entries in self._user_items()}
        model = UserNeighbours(vectors, cfg.neighbour_users, cfg.neighbour_own_weight)
        users = sorted(model.users)
        ttl_ms = int(max(3 * cfg.neighbour_interval_s, _MIN_TTL_S) * 1000)
        written = 0
        for start in range(0, len(users), _CHUNK):
            chunk = users[start:start + _CHUNK]
            lists = model.top(chunk, cfg.neighbour_items)

            def write(chunk: list[str] = chunk, lists: list = lists) -> None:
                # One transaction per chunk: a reader sees a user's old list or the new one.
                with self.client.pipeline(transaction=True) as pipe:
                    for user, items in zip(chunk, lists, strict=True):
                        key = self.keys.neighbours(user)
                        pipe.delete(key)
                        if items:
                            pipe.zadd(key, dict(items))
                            pipe.pexpire(key, ttl_ms)
                    pipe.execute()

            call(write, "writing neighbour lists")
            written += sum(1 for items in lists if items)
        run = NeighbourRun(len(vectors), written, round(time.perf_counter() - started, 3))
        log.info("neighbour lists: %d users read, %d lists written in %.1f s", run.users,
                 run.lists, run.elapsed_s)
        return run

    def _user_items(self) -> Iterator[tuple[str, dict]]:
        """Every user's parsed ``ui:`` hash, read ``_CHUNK`` users per round trip."""
        try:
            keys = [k.decode() if isinstance(k, bytes) else k for k in self.client.scan_iter(
                match=self.keys.user_items_pattern(), count=1_000)]
        except redis.RedisError as exc:
            raise StoreError(f"Redis error during listing users for neighbour lists: {exc}") \
                from None
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]

            def read(chunk: list[str] = chunk) -> list:
                with self.client.pipeline(transaction=False) as pipe:
                    for key in chunk:
                        pipe.hgetall(key)
                    return pipe.execute()

            for key, fields in zip(chunk, call(read, "reading user x item state"), strict=True):
                if fields:
                    yield self.keys.user_of_user_items(key), parse_user_items(fields.items())
