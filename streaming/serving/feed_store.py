"""Per-user ranked feeds in Redis: atomic replace for the scorers, reads for apps.

Each feed is one string (:class:`~streaming.contract.feeds.Feed` as JSON) under
:meth:`Keys.feed <streaming.contract.names.Keys.feed>`, written with a single ``SET ... PX ttl``:
a single-key write is atomic, so a reader never sees a partial feed. Users without a feed get
the fallback feed (``feed:_popular``, the items trending now).
"""

from __future__ import annotations

from types import TracebackType

import redis

from streaming.contract.feeds import Feed
from streaming.contract.names import POPULAR_FEED, Keys
from streaming.io.redis_client import call, connect
from streaming.settings import Settings

__all__ = ["FeedReader", "FeedStore"]


class FeedStore:
    """Reads and writes feeds. ``client`` is a redis-py client (bytes responses)."""

    def __init__(self, client: redis.Redis, key_prefix: str = "sr:", ttl_s: float = 86_400) -> None:
        self._r = client
        self._keys = Keys(key_prefix)
        self._ttl_ms = int(ttl_s * 1000)

    def key(self, user_id: str) -> str:
        """The Redis key of ``user_id``'s feed."""
        return self._keys.feed(user_id)

    def write(self, feed: Feed) -> None:
        """Replace one feed atomically."""
        call(lambda: self._r.set(self.key(feed.user_id), feed.to_json(), px=self._ttl_ms),
             "feed write")

    def write_many(self, feeds: list[Feed]) -> None:
        """One round trip; each feed is still its own single-key ``SET`` (atomic per feed)."""

        def run() -> None:
            with self._r.pipeline(transaction=False) as pipe:
                for feed in feeds:
                    pipe.set(self.key(feed.user_id), feed.to_json(), px=self._ttl_ms)
                pipe.execute()

        if feeds:
            call(run, "feed write")

    def read(self, user_id: str, *, fallback: bool = True) -> Feed | None:
        """The user's feed; with ``fallback``, the fallback (trending) feed when the user has none."""
        keys = [self.key(user_id), self.key(POPULAR_FEED)] if fallback else [self.key(user_id)]
        raws = call(lambda: self._r.mget(keys), "feed read")
        if raws[0] is not None:
            return Feed.from_json(raws[0])
        if fallback and raws[1] is not None:
            return Feed.from_json(raws[1], fallback=True)
        return None


class FeedReader:
    """What an app needs to serve feeds: built from :class:`~streaming.settings.Settings` alone
    (Redis URL, credentials and key prefix), one connection, closed on exit::

        with FeedReader(Settings.load()) as feeds:
            feed = feeds.read("u42")   # Feed, or the fallback feed, or None
    """

    def __init__(self, settings: Settings) -> None:
        self._client = connect(settings.redis)
        self._store = FeedStore(self._client, settings.redis.key_prefix)

    def read(self, user_id: str, *, fallback: bool = True) -> Feed | None:
        """The user's feed, else (with ``fallback``) the trending feed, else ``None``.
        Raises :class:`~streaming.errors.StoreError` when Redis fails."""
        return self._store.read(user_id, fallback=fallback)

    def close(self) -> None:
        """Close the Redis connection."""
        self._client.close()

    def __enter__(self) -> FeedReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
