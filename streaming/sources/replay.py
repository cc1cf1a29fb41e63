"""Event logs as event streams, in event-time order: UCI Online Retail, OTTO, MovieLens 100K, and
any event file in the contract's format (what ``streamrec emit --file`` reads).

The path is always an argument (the logs are not part of the repository); an absent or
unrecognised file raises :class:`SourceError` before anything is read. Rows that cannot be
events are counted by reason in :class:`ReplayLog.skipped`, never dropped silently.

Mappings (documented in the README, "Evaluation"):

UCI Online Retail (``InvoiceNo,StockCode,...,CustomerID,Country`` CSV, optionally gzipped)
    One ``purchase`` per invoice line with a CustomerID and a positive quantity: user =
    CustomerID, item = StockCode, ts = InvoiceDate (minutes, read as UTC), price = UnitPrice,
    qty = Quantity, category = the first three characters of the StockCode (product families
    share a prefix; the log has no category column). Cancellations (``C`` invoices), lines
    without a customer and non-positive quantities are skipped and counted. Purchases only:
    evaluate it in implicit mode (sampled negatives).
OTTO (``{"session", "events": [{"aid", "ts", "type"}]}`` JSON lines)
    user = ``otto-<session>``, item = aid; ``clicks`` -> ``view`` (the item was looked at),
    ``carts`` -> ``click`` (the intent the model predicts), ``orders`` -> ``purchase``.
    Evaluated in exposure mode: the label is "was the viewed item carted or ordered".
MovieLens 100K (``u.data`` as GroupLens distributes it: ``user<TAB>item<TAB>rating<TAB>unix s``)
    One ``click`` per rating (a rating says the user chose and watched the film; the log has no
    exposures): user = ``ml<user>``, item = ``m<item>``, ts = the rating's time, the rating in
    ``context.rating``. Category = the first genre flagged for the film in ``u.item`` beside
    ``u.data`` (``id|title|release|video release|url|19 genre flags``, Latin-1), none without
    that file. Evaluated in implicit mode (sampled negatives).
Event files (JSON lines or CSV in the contract's schema, optionally gzipped; see
:func:`streaming.sources.files.read_records`)
    Each record is validated with :func:`streaming.contract.events.validate_event`, except that
    any time from 1970 on is accepted (``min_ts_ms``, default 0: replays of historical logs).
    Invalid records and repeated ``event_id`` s (the first is kept) are counted by reason code
    (``missing_field``, ``ts_out_of_range``, ..., ``duplicate``), the first few with their place
    in the file (``events.jsonl:3: ...``) in :attr:`ReplayLog.messages`.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from streaming.contract.events import ALL_FIELDS, R_DUPLICATE, Event, Limits, validate_event
from streaming.errors import InvalidEvent, SourceError
from streaming.sources.files import BadRecord, Record, read_records

UCI_HEADER = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
              "CustomerID", "Country")
OTTO_TYPES = {"clicks": "view", "carts": "click", "orders": "purchase"}
MOVIELENS_ROW = re.compile(r"^\d+\t\d+\t\d+\t\d+$")
MOVIELENS_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
                    "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
                    "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")  # u.item order


@dataclass(slots=True)
class ReplayLog:
    """A log read into memory and sorted by event time (stable: file order breaks ties)."""

    name: str  # "uci-online-retail" | "otto" | "movielens-100k" | an event file's name
    label_mode: str  # the labelling mode the log supports: "implicit" | "exposure"
    events: list[Event]
    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    format: str = ""  # "uci" | "otto" | "movielens" | "events-jsonl" | "events-csv"
    messages: list[str] = field(default_factory=list)  # the first skipped records: where, why


def _open_text(path: Path) -> io.TextIOWrapper:
    if not path.is_file():
        raise SourceError(f"replay file not found: {path} (see ../shared/data/README.md)")
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _counted_lines(path: Path, log: ReplayLog) -> Iterator[str]:
    """The non-blank lines of ``path``, each counted in ``log.rows``."""
    with _open_text(path) as fh:
        for line in fh:
            if line.strip():
                log.rows += 1
                yield line


def read_log(path: str | Path, limit: int | None = None, min_ts_ms: int = 0) -> ReplayLog:
    """Recognise the log by its content (CSV header, first JSON line or tab-separated row) and
    read it: UCI Online Retail, OTTO, MovieLens 100K ``u.data``, or an event file in the
    contract's format (JSON lines or CSV; events before ``min_ts_ms`` are rejected). ``limit``
    keeps the first ``limit`` events in event-time order."""
    path = Path(path)
    first = ""
    try:
        with _open_text(path) as fh:
            for line in fh:  # the first non-blank line
                if line.strip():
                    first = line.strip().lstrip("\ufeff")
                    break
    except (UnicodeDecodeError, OSError) as exc:  # binary, a broken .gz, unreadable
        raise SourceError(f"{path}: not a text log (UTF-8, optionally gzipped): {exc}") from None
    header = [h.strip() for h in first.split(",")]
    if header[:2] == list(UCI_HEADER[:2]):
        log = read_uci(path)
    elif first.startswith("{") and _is_otto(first):
        log = read_otto(path)
    elif MOVIELENS_ROW.match(first):
        log = read_movielens(path)
    elif first.startswith("{"):
        log = read_events(path, "jsonl", min_ts_ms)
    elif first and set(header) <= ALL_FIELDS:
        log = read_events(path, "csv", min_ts_ms)
    else:
        raise SourceError(f"{path}: not a log this replay knows: UCI Online Retail CSV, OTTO "
                          "JSON lines, MovieLens 100K u.data, or events in the contract's format "
                          f"(JSON lines, or CSV with a header of {', '.join(sorted(ALL_FIELDS))}; "
                          ".gz ok)")
    if limit is not None:
        log.events = log.events[:limit]
    return log


def _is_otto(line: str) -> bool:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and "session" in doc and "events" in doc


def log_name(path: str | Path) -> str:
    """An event file's name for results: without directories and ``.gz`` / ``.jsonl`` /
    ``.json`` / ``.csv``, characters other than letters, digits, ``._-`` replaced by ``-``."""
    name = Path(path).name
    for ext in (".gz", ".jsonl", ".json", ".csv"):
        name = name.removesuffix(ext)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "events"


def read_events(path: str | Path, fmt: str = "auto", min_ts_ms: int = 0) -> ReplayLog:
    """Read an event file in the contract's format (``fmt``: ``jsonl``, ``csv`` or ``auto`` by
    the file name, as :func:`streaming.sources.files.read_records`); see
    :func:`validate_records`. Raises :class:`SourceError` when the file cannot be read."""
    fmt = fmt if fmt != "auto" else ("csv" if str(path).removesuffix(".gz").endswith(".csv")
                                     else "jsonl")
    try:
        log = validate_records(read_records(path, fmt), log_name(path), min_ts_ms)
    except (OSError, EOFError) as exc:  # e.g. a truncated .gz
        raise SourceError(f"{path}: read failed: {exc}") from None
    log.format = f"events-{fmt}"
    return log


def validate_records(records: Iterable[tuple[str, Record]], name: str, min_ts_ms: int = 0,
                     now_ms: int | None = None, max_messages: int = 20) -> ReplayLog:
    """Validate decoded records ``(origin, record)`` against the event contract (no I/O; the
    clock is read once when ``now_ms`` is None), any time from ``min_ts_ms`` on (up to
    ``now_ms`` + 24 h) accepted. Invalid
    records and repeats of an ``event_id`` are counted by reason code in ``skipped`` (the first
    ``max_messages`` described in ``messages``); the events come out sorted by time (stable).
    The label mode is ``exposure`` if any event is a view, else ``implicit``."""
    limits = Limits(min_ts_ms=min_ts_ms)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms  # one clock read per file
    log = ReplayLog(name, "implicit", [])
    seen: set[str] = set()
    for origin, record in records:
        log.rows += 1
        try:
            if isinstance(record, BadRecord):
                raise InvalidEvent(record.code, record.detail)
            event = validate_event(record, limits=limits, now_ms=now_ms)
            if event.event_id in seen:
                raise InvalidEvent(R_DUPLICATE, f"event_id {event.event_id[:64]!r} seen before")
        except InvalidEvent as exc:
            log.skipped[exc.code] += 1
            if len(log.messages) < max_messages:
                log.messages.append(f"{origin}: {exc.code}: {exc.detail}")
            continue
        seen.add(event.event_id)
        log.events.append(event)
    log.events.sort(key=lambda e: e.ts)
    if any(e.event_type == "view" for e in log.events):
        log.label_mode = "exposure"
    return log


def read_uci(path: str | Path) -> ReplayLog:
    """Read a UCI Online Retail CSV (mapping in the module docstring). Raises
    :class:`SourceError` when the file is absent or lacks a column."""
    path = Path(path)
    log = ReplayLog("uci-online-retail", "implicit", [], format="uci")
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in UCI_HEADER if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceError(f"{path}: missing UCI column(s) {missing}")
        for n, row in enumerate(reader):
            log.rows += 1
            reason = _uci_skip(row)
            if reason:
                log.skipped[reason] += 1
                continue
            ts = datetime.fromisoformat(row["InvoiceDate"]).replace(tzinfo=UTC)
            item = row["StockCode"].strip().upper()
            log.events.append(Event(
                event_id=f"uci-{row['InvoiceNo']}-{n}",
                user_id=f"c{int(float(row['CustomerID']))}",
                item_id=item,
                event_type="purchase",
                ts=int(ts.timestamp() * 1000),
                price=max(0.0, float(row["UnitPrice"])),
                qty=int(float(row["Quantity"])),
                category=f"sc{item[:3]}",
                context={"country": row["Country"][:64]} if row["Country"] else None,
            ))
    log.events.sort(key=lambda e: e.ts)
    return log


def _uci_skip(row: dict[str, str]) -> str | None:
    if row["InvoiceNo"].startswith("C"):
        return "cancellation"
    if not row["CustomerID"]:
        return "no_customer"
    try:
        if float(row["Quantity"]) <= 0:
            return "non_positive_quantity"
        float(row["UnitPrice"])
        datetime.fromisoformat(row["InvoiceDate"])
    except ValueError:
        return "unparsable"
    return None if row["StockCode"].strip() else "no_item"


def read_otto(path: str | Path) -> ReplayLog:
    """Read an OTTO JSON-lines session log (mapping in the module docstring). Raises
    :class:`SourceError` when the file is absent."""
    path = Path(path)
    log = ReplayLog("otto", "exposure", [], format="otto")
    for line in _counted_lines(path, log):
        try:
            doc = orjson.loads(line)
            session, events = int(doc["session"]), doc["events"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.skipped["unparsable"] += 1
            continue
        for k, ev in enumerate(events):
            kind = OTTO_TYPES.get(ev.get("type"))
            if kind is None or not isinstance(ev.get("ts"), int):
                log.skipped["unknown_type_or_ts"] += 1
                continue
            log.events.append(Event(
                event_id=f"otto-{session}-{k}", user_id=f"otto-{session}",
                item_id=str(ev["aid"]), event_type=kind, ts=ev["ts"],
                session_id=f"otto-{session}"))
    log.events.sort(key=lambda e: e.ts)
    return log


def read_movielens(path: str | Path) -> ReplayLog:
    """Read a MovieLens 100K ``u.data`` (mapping in the module docstring), with the genres of
    ``u.item`` in the same directory when it is there. Lines that are not four integers are
    skipped and counted as ``unparsable``. Raises :class:`SourceError` when the file is absent."""
    path = Path(path)
    genres = _movielens_genres(path.parent / "u.item")
    log = ReplayLog("movielens-100k", "implicit", [], format="movielens")
    for line in _counted_lines(path, log):
        try:
            user, item, rating, ts_s = (int(x) for x in line.split("\t"))
        except ValueError:
            log.skipped["unparsable"] += 1
            continue
        log.events.append(Event(
            event_id=f"ml-{user}-{item}-{ts_s}", user_id=f"ml{user}", item_id=f"m{item}",
            event_type="click", ts=ts_s * 1000, category=genres.get(item),
            context={"rating": rating}))
    log.events.sort(key=lambda e: e.ts)
    return log


def _movielens_genres(path: Path) -> dict[int, str]:
    """Film id -> its first flagged genre, from a ``u.item``; empty when there is none."""
    if not path.is_file():
        return {}
    out: dict[int, str] = {}
    with path.open(encoding="latin-1") as fh:  # GroupLens ships it in ISO-8859-1
        for line in fh:
            fields = line.rstrip("\n").split("|")
            flags = fields[-len(MOVIELENS_GENRES):]
            if len(fields) < 5 + len(MOVIELENS_GENRES) or not fields[0].isdigit():
                continue
            first = next((g for g, f in zip(MOVIELENS_GENRES, flags, strict=True) if f == "1"),
                         None)
            if first is not None:
                out[int(fields[0])] = first
    return out
