"""Online feature state: its Redis layout, the update rules, and feature values. Pure (no I/O).

Both the label joiner (training examples) and the scorers (serving) turn state into model inputs
with :func:`feature_values`, so training and serving cannot drift apart.

Decayed counters
----------------
A decayed count with half-life ``h`` is ``sum_i w_i * 2 ** (-(T - ts_i) / h)``. It is stored as a
value ``v`` referenced to time ``t`` (the newest event time seen). Adding an event at ``ts``:
``ts >= t``: ``v <- v * 2 ** (-(ts - t) / h) + w``, ``t <- ts``; ``ts < t``: ``v <- v + w * 2 **
(-(t - ts) / h)``. The result does not depend on arrival order, so out-of-order events and several
workers updating one item give the same state. Reading at ``T``: ``v * 2 ** (-(T - t) / h)``.

Redis keys (``P`` = key prefix; ``{type}`` in view/click/purchase; ``{h}`` a half-life label)
-----------------------------------------------------------------------------------------------
``P u:<user>``  hash  ``{type}.t`` (ms), ``{type}.{h}`` decayed counts, ``last`` last event ms,
                      ``c.<category>.a`` / ``.s`` / ``.t`` decayed category affinity (1 d and 1 h,
                      weighted view 1, click 3, purchase 10)
``P ur:<user>`` list  newest-first ``item\\x1fts`` of the last ``recent_items`` events
``P i:<item>``  hash  ``{type}.t``, ``{type}.{h}`` decayed popularity, ``n.{type}`` raw counts,
                      ``first`` first-seen ms, ``cat`` category, ``price`` last seen price
``P cv:<item>`` zset  co-visited item -> count (same user within ``covisit_window_ms``), top-K:
                      trimmed back to K when it reaches 2K members. Which members survive a
                      trim depends on the order increments arrive in (an approximation, as any
                      bounded top-K); below 2K members the counts are exact.
``P pop``       zset  item -> raw interaction count (negative sampling, popular fallback)
``P trend``     zset  item -> ``sum(w * 2 ** ((ts - t0) / h))`` over its events (weights as
                      affinity, ``h`` = ``trending_half_life_ms``, ``t0`` in ``P trend:t0``):
                      the decayed count at any read time ``T`` times one factor shared by all
                      items, so ZREVRANGE gives the trending order. Top-K, trimmed as ``ci:``;
                      rebased to a newer ``t0`` after 64 half-lives to keep scores finite.
``P ci:<cat>``  zset  item -> interaction count within the category (top-K), for candidates
``P new``       zset  item -> first-seen time (ms), the newest ``new_items_kept`` items
``P ub:<user>`` zset  purchased item -> time (ms), the newest ``purchased_kept``
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from streaming.contract.events import EVENT_TYPES
from streaming.contract.examples import HALF_LIVES_MS, dense_feature_names

if TYPE_CHECKING:
    from streaming.settings import Settings

SEP = "\x1f"  # separator inside list entries and composite hash fields; not allowed in ids
# An event's weight in category affinity, trending, the user x item weight and the neighbour
# lists' interaction counts: a purchase says more than a click, a click more than a view.
EVENT_WEIGHT = {"view": 1.0, "click": 3.0, "purchase": 10.0}


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """Feature rules: half-lives and windows (ms), list sizes, and the CTR/CVR smoothing priors.
    Built from the settings by :func:`feature_config`."""

    half_lives_ms: tuple[tuple[str, int], ...] = HALF_LIVES_MS
    affinity_half_life_ms: int = 86_400_000
    short_affinity_half_life_ms: int = 3_600_000  # what the user is into this session
    trending_half_life_ms: int = 3_600_000
    trending_top_k: int = 2_000  # trending list length (trimmed at 2K back to K); >= the
    # negative pool, which is drawn from it
    recent_items: int = 20
    covisit_window_ms: int = 30 * 60 * 1000
    covisit_recent: int = 5  # pair an event with this many of the user's latest items
    category_top_k: int = 500  # items kept per category index (trimmed at 2K back to K)
    new_items_kept: int = 1_000  # newest first-seen items kept
    purchased_kept: int = 200  # per user, newest purchases
    user_items_kept: int = 200  # per user, most interacted items in the user x item state
    user_item_half_life_ms: int = 7 * 86_400_000  # decay of the user x item weight
    covisit_top_k: int = 50
    ctr_prior: float = 0.05  # smoothed CTR = (clicks + a * prior) / (views + a)
    cvr_prior: float = 0.1
    smoothing: float = 20.0


DEFAULT_FEATURES = FeatureConfig()


def feature_config(settings: Settings) -> FeatureConfig:
    """The feature rules the settings ask for: the one place both the ingest agent (training
    examples) and the scorers (serving) take them from, so the two cannot disagree."""
    s = settings.stream
    return FeatureConfig(recent_items=s.recent_items, covisit_window_ms=s.covisit_window_ms,
                         covisit_top_k=s.covisit_top_k, covisit_recent=s.covisit_recent,
                         affinity_half_life_ms=s.affinity_half_life_ms,
                         short_affinity_half_life_ms=s.short_affinity_half_life_ms,
                         trending_half_life_ms=s.trending_half_life_ms,
                         trending_top_k=max(DEFAULT_FEATURES.trending_top_k, s.negative_pool),
                         user_items_kept=s.user_items_kept,
                         user_item_half_life_ms=s.user_item_half_life_ms)


def decay(value: float, from_ms: int, to_ms: int, half_life_ms: int) -> float:
    """``value`` referenced at ``from_ms``, read at ``to_ms`` (no growth into the past)."""
    if to_ms <= from_ms:
        return value
    return value * 2.0 ** (-(to_ms - from_ms) / half_life_ms)


def decayed_add(
    value: float, ref_ms: int, ts: int, weight: float, half_life_ms: int
) -> tuple[float, int]:
    """Add an event of ``weight`` at ``ts`` to a counter; returns the new ``(value, ref_ms)``.

    The op ``dadd`` in ``streaming/ingest/lua/apply.lua`` is the same formula; keep them in step.
    """
    if ts >= ref_ms:
        return value * 2.0 ** (-(ts - ref_ms) / half_life_ms) + weight, ts
    return value + weight * 2.0 ** (-(ref_ms - ts) / half_life_ms), ref_ms


# User x item state: one entry per (user, item), ``(views, clicks, purchases, last_ms, weight)``
# where ``weight`` is the decayed interaction weight referenced to ``last_ms`` (event weights as
# for category affinity). Stored as ``"v c p t w"`` in the ``ui:`` hash (lua/apply.lua ``uitouch``).
UserItem = tuple[float, float, float, float, float]
USER_ITEM_T0 = SEP + "t0"  # ``ui:`` hash field holding the reference time of the ``uz:`` scores


def parse_user_items(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, UserItem]:
    """A ``ui:`` hash as read from Redis -> ``{item: (views, clicks, purchases, last_ms, weight)}``
    (the ``\x1ft0`` bookkeeping field is skipped)."""
    out: dict[str, UserItem] = {}
    for raw_name, raw_value in fields:
        name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        if name == USER_ITEM_T0:
            continue
        raw = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
        v, c, p, t, w = (float(x) for x in raw.split())
        out[name] = (v, c, p, t, w)
    return out


def touch_user_item(entry: UserItem | None, event_type: str, ts: int, weight: float,
                    half_life_ms: int) -> UserItem:
    """``entry`` after one event of ``event_type`` at ``ts`` (ms): its type's count + 1, the last
    touch ``max(last, ts)``, the weight decayed-added as :func:`decayed_add` does. The Lua op
    ``uitouch`` (``streaming/ingest/lua/apply.lua``) is the same formula; keep them in step."""
    if entry is None:
        counts, t, w = [0.0, 0.0, 0.0], float(ts), weight
    else:
        counts = list(entry[:3])
        w, new_t = decayed_add(entry[4], int(entry[3]), ts, weight, half_life_ms)
        t = float(new_t)
    counts[EVENT_TYPES.index(event_type)] += 1.0
    return (counts[0], counts[1], counts[2], t, w)


# State hashes as read for a batch: numeric fields as floats, ``cat`` as a string.
StateFields = Mapping[str, Any]


def _f(h: StateFields, name: str, default: float = 0.0) -> float:
    raw = h.get(name)
    return float(raw) if raw is not None else default


def _i(h: StateFields, name: str) -> int | None:
    raw = h.get(name)
    return int(raw) if raw is not None else None


def parse_state_hash(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, Any]:
    """A ``u:``/``i:`` hash as read from Redis, with values parsed once: floats, except the
    ``cat`` field (a string)."""
    out: dict[str, Any] = {}
    for raw_name, raw_value in fields:
        name = raw_name.decode()
        out[name] = raw_value.decode() if name == "cat" else float(raw_value)
    return out


def parse_state_hashes(replies: Iterable[Sequence[bytes]]) -> list[dict[str, Any]]:
    """Many ``u:``/``i:`` hashes as flat HGETALL replies (field, value, ...), parsed as
    :func:`parse_state_hash` does each. The numbers of all of them go through one
    ``orjson.loads``: Python's ``float()`` of the 17-digit values streamrec writes costs ~0.35 us
    each (a user hash holds ~3 per category it has seen), orjson's parser a quarter of that,
    with the same correctly rounded result."""
    hashes: list[tuple[dict[str, bytes], bytes | None]] = []
    values: list[bytes] = []
    for flat in replies:
        h = dict(zip(map(bytes.decode, flat[::2]), flat[1::2], strict=True))
        cat = h.pop("cat", None)
        hashes.append((h, cat))
        values.extend(h.values())
    try:
        numbers = orjson.loads(b"[" + b",".join(values) + b"]")
    except orjson.JSONDecodeError:  # a value JSON does not spell (inf, nan): the slow way
        numbers = list(map(float, values))
    out: list[dict[str, Any]] = []
    at = 0
    for h, cat in hashes:
        parsed: dict[str, Any] = dict(zip(h, map(float, numbers[at:at + len(h)]), strict=True))
        at += len(h)
        if cat is not None:
            parsed["cat"] = cat.decode()
        out.append(parsed)
    return out


@lru_cache(maxsize=4096)
def _decayed_names(prefix: str, half_lives: tuple[tuple[str, int], ...]
                   ) -> tuple[str, tuple[tuple[str, int], ...]]:
    """``<prefix>.t`` and ``(<prefix>.<label>, half-life ms)`` per counter (built once per
    prefix: event types and categories)."""
    return f"{prefix}.t", tuple((f"{prefix}.{label}", h) for label, h in half_lives)


class EntityState:
    """Mutable view of one Redis hash (``u:`` or ``i:``), for applying a batch in memory."""

    __slots__ = ("fields",)

    def __init__(self, fields: StateFields | None = None) -> None:
        self.fields: dict[str, Any] = dict(fields or {})

    def add_decayed(self, prefix: str, ts: int, weight: float,
                    half_lives: tuple[tuple[str, int], ...]) -> None:
        """Add an event of ``weight`` at ``ts`` (ms) to the decayed counters ``<prefix>.<label>``,
        one per ``(label, half_life_ms)``, and move their reference time ``<prefix>.t``: the
        in-memory twin of the ``dadd`` op (:func:`decayed_add`'s formula, inlined: this runs
        three times per event)."""
        t_name, counters = _decayed_names(prefix, half_lives)
        f = self.fields
        ref = f.get(t_name)
        if ref is None:
            for name, _ in counters:
                f[name] = weight
            f[t_name] = float(ts)
            return
        ref = int(ref)
        if ts >= ref:
            for name, h in counters:
                f[name] = float(f.get(name, 0.0)) * 2.0 ** (-(ts - ref) / h) + weight
            f[t_name] = float(ts)
        else:
            for name, h in counters:
                f[name] = float(f.get(name, 0.0)) + weight * 2.0 ** (-(ref - ts) / h)
            f[t_name] = float(ref)

    def set_max(self, name: str, value: int) -> None:
        """Set field ``name`` to ``value`` unless it already holds a larger one."""
        old = self.fields.get(name)
        if old is None or value > old:
            self.fields[name] = float(value)

    def set_min(self, name: str, value: int) -> None:
        """Set field ``name`` to ``value`` unless it already holds a smaller one."""
        old = self.fields.get(name)
        if old is None or value < old:
            self.fields[name] = float(value)

    def incr(self, name: str, n: int = 1) -> None:
        """Add ``n`` to field ``name`` (absent = 0)."""
        self.fields[name] = self.fields.get(name, 0.0) + n


def decayed_value(h: StateFields, prefix: str, label: str, half_life_ms: int,
                  at_ms: int) -> float:
    """Counter ``<prefix>.<label>`` of ``h`` decayed to ``at_ms``; 0.0 when it has no reference
    time ``<prefix>.t`` (no event yet)."""
    ref = _i(h, f"{prefix}.t")
    if ref is None:
        return 0.0
    return decay(_f(h, f"{prefix}.{label}"), ref, at_ms, half_life_ms)


def parse_recent(entries: Sequence[str]) -> list[tuple[str, int]]:
    """``ur:`` list entries -> ``[(item_id, ts_ms)]``, newest first."""
    out = []
    for entry in entries:
        item, _, ts = entry.rpartition(SEP)
        out.append((item, int(ts)))
    return out


def item_fields(cfg: FeatureConfig = DEFAULT_FEATURES) -> list[tuple[str, float]]:
    """The ``F`` item-hash fields the dense features read, with their defaults (NaN = absent time)."""
    fields: list[tuple[str, float]] = []
    for t in EVENT_TYPES:
        fields.append((f"{t}.t", np.nan))
        fields += [(f"{t}.{label}", 0.0) for label, _ in cfg.half_lives_ms]
    fields += [(f"n.{t}", 0.0) for t in EVENT_TYPES]
    fields.append(("first", np.nan))
    return fields


def item_columns(items: Sequence[StateFields], cfg: FeatureConfig = DEFAULT_FEATURES
                 ) -> np.ndarray:
    """Raw item fields, ``N x F`` float64 in :func:`item_fields` order. Item state changes
    slowly and is shared by every user, so the scorer computes a row once per item and cache
    period; the decay to the scoring time happens in :func:`feature_rows`."""
    fields = item_fields(cfg)
    out = np.empty((len(items), len(fields)), dtype=np.float64)
    for k, (name, default) in enumerate(fields):
        out[:, k] = np.fromiter((r.get(name, default) for r in items), np.float64, len(items))
    return out


def price_values(prices: Iterable[float | None], n: int) -> np.ndarray:
    """``n`` prices as the features read them: float64, NaN where absent or negative."""
    return np.fromiter((p if p is not None and p >= 0 else np.nan for p in prices), np.float64, n)


def feature_rows(
    users: Sequence[StateFields],
    recent_counts: Sequence[int],
    items: Sequence[StateFields],
    categories: Sequence[str | None],
    prices: Sequence[float | None],
    at_ms: Sequence[int] | int,
    cfg: FeatureConfig = DEFAULT_FEATURES,
    item_cols: np.ndarray | None = None,
    user_items: Sequence[UserItem | None] | None = None,
    neighbour_scores: Sequence[float] | None = None,
) -> np.ndarray:
    """Dense model inputs, ``N x D`` float64 in :func:`dense_feature_names` order; row ``k`` is
    user ``users[k]`` (with ``recent_counts[k]`` recent items) against ``items[k]`` as of
    ``at_ms[k]``. Counts and times (s) are ``log1p``-compressed, rates in [0, 1], absent
    times -1. The one implementation behind training examples (:class:`streaming.ingest.plan.Snapshots`
    computes a batch's snapshots in one call) and serving (the scorer, through
    :func:`indexed_feature_rows`, which this calls). ``item_cols`` is :func:`item_columns` of
    ``items`` when the caller already has it. ``user_items[k]`` is the user's history with the
    item (``None``: never touched; all ``None`` when not given); ``neighbour_scores[k]`` the
    item's score in the user's neighbour list (0.0 when not in it; all 0.0 when not given)."""
    n = len(items)
    if item_cols is None:
        item_cols = item_columns(items, cfg)
    # A user passed for several rows (the same object) has its fields read once.
    slot: dict[int, int] = {}
    distinct: list[StateFields] = []
    user_index = np.empty(n, dtype=np.intp)
    for k, u in enumerate(users):
        j = slot.get(id(u))
        if j is None:
            j = slot[id(u)] = len(distinct)
            distinct.append(u)
        user_index[k] = j
    return indexed_feature_rows(
        distinct, user_index, np.asarray(recent_counts, dtype=np.float64).reshape(n), item_cols,
        [c or it.get("cat") for c, it in zip(categories, items, strict=True)],
        price_values(prices, n), np.arange(n), at_ms, cfg, user_items, neighbour_scores)


def indexed_feature_rows(
    users: Sequence[StateFields],
    user_index: np.ndarray,
    recent_counts: np.ndarray,
    item_cols: np.ndarray,
    categories: Sequence[str | None],
    prices: np.ndarray,
    item_index: np.ndarray,
    at_ms: Sequence[int] | int,
    cfg: FeatureConfig = DEFAULT_FEATURES,
    user_items: Sequence[UserItem | None] | None = None,
    neighbour_scores: Sequence[float] | None = None,
) -> np.ndarray:
    """:func:`feature_rows` on tables of distinct users and items, ``N x D`` float64: row ``k``
    is user ``users[user_index[k]]`` (``recent_counts[k]`` recent items) against the item in
    row ``item_index[k]`` of ``item_cols`` (:func:`item_columns`), ``categories`` and
    ``prices`` (:func:`price_values`), as of ``at_ms`` (one time or ``N``), with
    ``user_items[k]`` and ``neighbour_scores[k]`` as in :func:`feature_rows`. Each user's and
    item's fields are read once however many rows they are in: the scorer's shape (a few users
    against hundreds of candidates each, the candidates shared between users). Every value is the same
    element-wise operation on the same inputs as for a row of its own, so the result does not
    depend on how rows are grouped (training and serving stay bit-identical)."""
    n = len(item_index)
    at_rows = np.broadcast_to(np.asarray(at_ms, dtype=np.float64), (n,))
    out = np.empty((n, len(dense_feature_names(cfg.half_lives_ms))), dtype=np.float64)
    # With one scoring time (the scorer), the user, (user, category) and item columns depend on
    # the user, the pair or the item alone: computed once per distinct one, then gathered to
    # the rows. With a time per row (training), they are computed per row.
    per_entity = np.ndim(at_ms) == 0

    def block(width: int, index: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | float]:
        """The array to compute ``width`` columns of an entity's features in (per distinct
        entity, or per row), the rows' index into it (None: already per row), and the time."""
        if per_entity:
            return np.empty((int(index.max()) + 1 if n else 0, width)), index, \
                np.float64(at_ms)
        return np.empty((n, width)), None, at_rows

    def place(col: int, values: np.ndarray, index: np.ndarray | None) -> None:
        out[:, col:col + values.shape[1]] = values if index is None else values[index]

    def decayed(value: np.ndarray, ref: np.ndarray, h: int, at: np.ndarray | float
                ) -> np.ndarray:
        elapsed = np.maximum(at - ref, 0.0)  # never grows into the past
        return np.where(np.isnan(ref), 0.0, value * np.exp2(-elapsed / h))

    # User columns: its decayed counters and recency.
    n_users = len(users)
    width = len(EVENT_TYPES) * len(cfg.half_lives_ms) + 1
    vals, gather, at = block(width, user_index)

    def user_column(name: str, default: float = np.nan) -> np.ndarray:
        values = np.fromiter((u.get(name, default) for u in users), np.float64, n_users)
        return values[:len(vals)] if gather is not None else values[user_index]

    col = 0
    for t in EVENT_TYPES:
        ref = user_column(f"{t}.t")
        for label, h in cfg.half_lives_ms:
            vals[:, col] = np.log1p(decayed(user_column(f"{t}.{label}", 0.0), ref, h, at))
            col += 1
    last = user_column("last")
    vals[:, col] = np.where(np.isnan(last), -1.0, np.log1p(np.maximum(0.0, at - last) / 1000))
    place(0, vals, gather)
    col += 1
    # Affinity is a (user, category) lookup: each distinct pair among the rows is looked up
    # once. Codes: 0 = no category, j + 1 = names[j].
    code_of = {c: k for k, c in enumerate(filter(None, dict.fromkeys(categories)), 1)}
    item_codes = np.fromiter(map(code_of.get, categories, repeat(0)), np.int64, len(categories))
    names = list(code_of)
    pairs, pair_of_row = np.unique(user_index.astype(np.int64) * (len(names) + 1)
                                   + item_codes[item_index], return_inverse=True)
    pair_of_row = pair_of_row.reshape(n)
    pair_users, pair_codes = np.divmod(pairs, len(names) + 1)
    pair_list = list(zip(pair_users.tolist(), pair_codes.tolist(), strict=True))
    vals, gather, at = block(2, pair_of_row)

    def affinity(label: str, default: float) -> np.ndarray:
        values = np.fromiter((users[u].get(f"c.{names[c - 1]}.{label}", default) if c
                              else default for u, c in pair_list), np.float64, len(pair_list))
        return values if gather is not None else values[pair_of_row]

    aff_ref = affinity("t", np.nan)
    for j, (label, h) in enumerate((("a", cfg.affinity_half_life_ms),
                                    ("s", cfg.short_affinity_half_life_ms))):
        vals[:, j] = np.log1p(decayed(affinity(label, 0.0), aff_ref, h, at))
    place(col, vals, gather)
    out[:, col + 2] = recent_counts
    col += 3
    # Item columns: decayed popularity, CTR / CVR, age and price.
    width = len(EVENT_TYPES) * len(cfg.half_lives_ms) + 4
    if per_entity:
        vals, gather, at = np.empty((len(item_cols), width)), item_index, np.float64(at_ms)
        icol = {name: item_cols[:, k] for k, (name, _) in enumerate(item_fields(cfg))}
        price = prices
    else:
        vals, gather, at = np.empty((n, width)), None, at_rows
        icol = {name: item_cols[item_index, k] for k, (name, _) in enumerate(item_fields(cfg))}
        price = prices[item_index]
    j = 0
    for t in EVENT_TYPES:
        ref = icol[f"{t}.t"]
        for label, h in cfg.half_lives_ms:
            vals[:, j] = np.log1p(decayed(icol[f"{t}.{label}"], ref, h, at))
            j += 1
    views, clicks, buys = (icol[f"n.{t}"] for t in EVENT_TYPES)
    a = cfg.smoothing
    vals[:, j] = (clicks + a * cfg.ctr_prior) / (views + a)
    vals[:, j + 1] = (buys + a * cfg.cvr_prior) / (clicks + a)
    first = icol["first"]
    vals[:, j + 2] = np.where(np.isnan(first), -1.0, np.log1p(np.maximum(0.0, at - first) / 1000))
    vals[:, j + 3] = np.where(np.isnan(price), -1.0, np.log1p(np.nan_to_num(price)))
    place(col, vals, gather)
    col += width
    # The user's history with the item: per row.
    ui = np.full((n, 5), np.nan)
    if user_items is not None:
        touched_rows = [k for k, entry in enumerate(user_items) if entry is not None]
        if touched_rows:
            ui[touched_rows] = [user_items[k] for k in touched_rows]
    touched = ~np.isnan(ui[:, 3])
    for j in range(3):
        out[:, col + j] = np.where(touched, np.log1p(np.nan_to_num(ui[:, j])), 0.0)
    since = np.maximum(at_rows - np.nan_to_num(ui[:, 3]), 0.0)
    out[:, col + 3] = np.where(touched, np.log1p(since / 1000), -1.0)
    out[:, col + 4] = np.where(touched, np.log1p(np.nan_to_num(ui[:, 4])
                                                 * np.exp2(-since / cfg.user_item_half_life_ms)), 0.0)
    # The neighbour score is a similarity-weighted share in [0, 1]: used as it is.
    out[:, col + 5] = 0.0 if neighbour_scores is None else np.asarray(neighbour_scores,
                                                                      np.float64).reshape(n)
    return out


def feature_matrix(
    user: StateFields,
    recent: Sequence[tuple[str, int]],
    items: Sequence[StateFields],
    categories: Sequence[str | None],
    prices: Sequence[float | None],
    at_ms: int,
    cfg: FeatureConfig = DEFAULT_FEATURES,
    item_cols: np.ndarray | None = None,
    user_items: Sequence[UserItem | None] | None = None,
    neighbour_scores: Sequence[float] | None = None,
) -> np.ndarray:
    """One user against ``N`` items (the scorer's shape): :func:`feature_rows`, ``N x D`` float64."""
    n = len(items)
    return feature_rows([user] * n, [len(recent)] * n, items, categories, prices, at_ms, cfg,
                        item_cols, user_items, neighbour_scores)


def feature_values(
    user: StateFields,
    recent: Sequence[tuple[str, int]],
    item: StateFields,
    category: str | None,
    price: float | None,
    at_ms: int,
    cfg: FeatureConfig = DEFAULT_FEATURES,
    user_item: UserItem | None = None,
    neighbour_score: float = 0.0,
) -> dict[str, float]:
    """:func:`feature_rows` for one (user, item), by name."""
    row = feature_rows([user], [len(recent)], [item], [category], [price], at_ms, cfg,
                       user_items=[user_item], neighbour_scores=[neighbour_score])[0]
    return dict(zip(dense_feature_names(cfg.half_lives_ms), row.tolist(), strict=True))
