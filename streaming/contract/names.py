"""Every Redis key and Kafka consumer-group name streamrec uses, defined once.

Topic names are settings (``topics.*``); everything else that two processes must agree on by
name lives here, so that the ingest worker, the scorers, the trainer, ``streamrec up``, the lag
monitor and the benchmarks cannot drift apart.

Redis keys (``P`` = ``redis.key_prefix``, default ``sr:``)
----------------------------------------------------------

Feature state (written by ingest, read by ingest and the scorers):

``P u:<user>``          hash  decayed per-type counts, ``last`` event ms, category affinity
``P ur:<user>``         list  newest-first ``item\\x1fts`` of the user's last items
``P ub:<user>``         zset  purchased item -> time (ms), the newest ``purchased_kept``
``P ui:<user>``         hash  item -> ``"views clicks purchases last_ms weight"`` (user x item
                              state; field ``\x1ft0`` = reference time of ``uz:``)
``P uz:<user>``         zset  item -> decayed interaction weight x a factor shared by the user's
                              items (the "again" order; the most interacted ``user_items_kept``)
``P i:<item>``          hash  decayed popularity, raw counts, ``first`` seen, ``cat``, ``price``
``P cv:<item>``         zset  co-visited item -> count (top-K)
``P ci:<category>``     zset  item -> interactions within the category (top-K)
``P pop``               zset  item -> all-time interaction count
``P trend``             zset  item -> decayed count times a shared factor (trending order)
``P trend:t0``          string  reference time (ms) of the ``trend`` scores
``P new``               zset  item -> first-seen time (ms), the newest items
``P ichg``              zset  item -> sequence number of the last batch that changed its
                              ``i:`` hash (the item change log; scorers cache item state
                              until it changes), the newest ``item_changes_kept``
``P ichg:meta``         hash  ``seq``: the last batch's number; ``floor``: the newest number
                              trimmed from the log

Per partition of the events topic (ingest only):

``P wm:<topic>:<p>``    string  last applied offset (the exactly-once watermark)
``P mt:<topic>:<p>``    string  max event time seen (ms)
``P seen:<p>``          zset  event id -> offset, the de-duplication window
``P lx:<p>`` / ``P lxd:<p>``  hash / zset  pending exposures and their earliest window end
``P lf:<p>`` / ``P lfd:<p>``  hash / zset  recent follow-ups and their newest time
``P ob:<p>``            list  outbox: records to produce after the apply committed
``P stats:<p>``         hash  processor counters
``P obp:<p>``           list  outbox records refused by the broker for good, moved aside

Serving and operations:

``P feed:<user>``       string  the user's ranked feed (JSON, :mod:`streaming.contract.feeds`)
``P feed:_popular``     string  the fallback feed (items trending now)
``P nb:<user>``         zset  item -> score in the user's neighbour list (own and similar users'
                              items, :mod:`streaming.serving.neighbour_job`; read by ingest and
                              the scorers, for the ``neighbours`` source and ``nb_score``)
``P nb:lock``           string  held by the scorer rebuilding the neighbour lists (expires
                              after ``serving.neighbour_interval_s``: the schedule)
``P scorer:stats``      hash  scorer counters (feeds written, model loads, model version)
``P scorer:fresh``      list  recent event-to-feed latencies (ms)
``P health``            hash  component heartbeats (:mod:`streaming.ops.health`)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "GROUP_INGEST",
    "GROUP_LAG_MONITOR",
    "GROUP_SCORER",
    "GROUP_SCORER_MODELS",
    "GROUP_TRAINER",
    "GROUP_UP_MONITOR",
    "POPULAR_FEED",
    "Keys",
]

# Kafka consumer groups. The ingest group is also the Faust app id.
GROUP_INGEST = "streamrec-ingest"
GROUP_SCORER = "streamrec-scorer"
GROUP_SCORER_MODELS = "streamrec-scorer-models"
GROUP_TRAINER = "streamrec-trainer"
GROUP_LAG_MONITOR = "streamrec-lag-monitor"
GROUP_UP_MONITOR = "streamrec-up-monitor"  # required by librdkafka; commits nothing

POPULAR_FEED = "_popular"  # the user id of the fallback feed


@dataclass(frozen=True, slots=True)
class Keys:
    """Redis key names under one prefix (``redis.key_prefix``). Cheap to build; pure."""

    prefix: str = "sr:"

    # -- feature state ------------------------------------------------------------------------
    def user(self, user_id: str) -> str:
        """User feature hash."""
        return f"{self.prefix}u:{user_id}"

    def recent(self, user_id: str) -> str:
        """The user's recent-items list."""
        return f"{self.prefix}ur:{user_id}"

    def purchased(self, user_id: str) -> str:
        """The user's purchased-items zset."""
        return f"{self.prefix}ub:{user_id}"

    def user_items(self, user_id: str) -> str:
        """The user x item state: the user's history with each item."""
        return f"{self.prefix}ui:{user_id}"

    def user_items_order(self, user_id: str) -> str:
        """The user's items by decayed interaction weight (the "again" candidates)."""
        return f"{self.prefix}uz:{user_id}"

    def user_items_pattern(self) -> str:
        """SCAN pattern of every user's user x item hash (``user_items`` of any user)."""
        return f"{_glob_escape(self.prefix)}ui:*"

    def user_of_user_items(self, key: str) -> str:
        """The user id in a ``user_items`` key."""
        return key[len(self.prefix) + len("ui:"):]

    def item(self, item_id: str) -> str:
        """Item feature hash."""
        return f"{self.prefix}i:{item_id}"

    def covisit(self, item_id: str) -> str:
        """Items co-visited with ``item_id``."""
        return f"{self.prefix}cv:{item_id}"

    def category_items(self, category: str) -> str:
        """Top items of a category."""
        return f"{self.prefix}ci:{category}"

    @property
    def popular(self) -> str:
        """All-time popularity zset."""
        return f"{self.prefix}pop"

    @property
    def trending(self) -> str:
        """Decayed-popularity zset."""
        return f"{self.prefix}trend"

    @property
    def trending_t0(self) -> str:
        """Reference time of the trending scores."""
        return f"{self.prefix}trend:t0"

    @property
    def new_items(self) -> str:
        """Newest first-seen items."""
        return f"{self.prefix}new"

    @property
    def item_changes(self) -> str:
        """The item change log: item -> sequence number of the last batch that changed it."""
        return f"{self.prefix}ichg"

    @property
    def item_changes_meta(self) -> str:
        """The change log's last sequence number (``seq``) and trim point (``floor``)."""
        return f"{self.prefix}ichg:meta"

    # -- per partition (ingest) ---------------------------------------------------------------
    def applied_offset(self, topic: str, partition: int) -> str:
        """The partition's exactly-once watermark (last applied offset)."""
        return f"{self.prefix}wm:{topic}:{partition}"

    def max_event_time(self, topic: str, partition: int) -> str:
        """The partition's max event time (ms)."""
        return f"{self.prefix}mt:{topic}:{partition}"

    def partition(self, name: str, partition: int) -> str:
        """A per-partition structure: ``seen``, ``lx``, ``lxd``, ``lf``, ``lfd``, ``ob``, ``stats``."""
        if name not in _PARTITION_KEYS:
            raise ValueError(f"unknown per-partition key {name!r}")
        return f"{self.prefix}{name}:{partition}"

    def stats(self, partition: int) -> str:
        """The partition's processor counters."""
        return self.partition("stats", partition)

    def outbox(self, partition: int) -> str:
        """The partition's outbox list."""
        return self.partition("ob", partition)

    def parked(self, partition: int) -> str:
        """Outbox records the broker refused for good, moved aside (newest last, bounded)."""
        return self.partition("obp", partition)

    # -- serving and operations ---------------------------------------------------------------
    def feed(self, user_id: str) -> str:
        """A user's feed (``POPULAR_FEED`` for the fallback feed)."""
        return f"{self.prefix}feed:{user_id}"

    def neighbours(self, user_id: str) -> str:
        """A user's neighbour list: item -> score."""
        return f"{self.prefix}nb:{user_id}"

    @property
    def neighbours_lock(self) -> str:
        """Held by the scorer that rebuilds the neighbour lists."""
        return f"{self.prefix}nb:lock"

    @property
    def scorer_stats(self) -> str:
        """Scorer counters."""
        return f"{self.prefix}scorer:stats"

    @property
    def scorer_freshness(self) -> str:
        """Recent event-to-feed latencies (ms)."""
        return f"{self.prefix}scorer:fresh"

    @property
    def health(self) -> str:
        """Component heartbeats."""
        return f"{self.prefix}health"


_PARTITION_KEYS = frozenset({"seen", "lx", "lxd", "lf", "lfd", "ob", "obp", "stats"})


def _glob_escape(text: str) -> str:
    """``text`` with Redis glob characters escaped, for a SCAN MATCH pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
