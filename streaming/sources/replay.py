"""Public event logs as event streams, in event-time order: UCI Online Retail and OTTO.

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
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from streaming.contract.events import Event
from streaming.errors import SourceError

UCI_HEADER = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
              "CustomerID", "Country")
OTTO_TYPES = {"clicks": "view", "carts": "click", "orders": "purchase"}


@dataclass(slots=True)
class ReplayLog:
    """A log read into memory and sorted by event time (stable: file order breaks ties)."""

    name: str  # "uci-online-retail" | "otto"
    label_mode: str  # the labelling mode the log supports: "implicit" | "exposure"
    events: list[Event]
    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def _open_text(path: Path) -> io.TextIOWrapper:
    if not path.is_file():
        raise SourceError(f"replay file not found: {path} (see ../shared/data/README.md)")
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_log(path: str | Path, limit: int | None = None) -> ReplayLog:
    """Recognise the log by its content (CSV header or first JSON line) and read it.
    ``limit`` keeps the first ``limit`` events in event-time order."""
    path = Path(path)
    with _open_text(path) as fh:
        first = fh.readline()
    if first.strip().lstrip("\ufeff").split(",")[:2] == list(UCI_HEADER[:2]):
        log = read_uci(path)
    elif first.lstrip().startswith("{") and '"session"' in first:
        log = read_otto(path)
    else:
        raise SourceError(f"{path}: not a log this replay knows (UCI Online Retail CSV or OTTO "
                          "JSON lines); event files in the contract format go to `streamrec emit`")
    if limit is not None:
        log.events = log.events[:limit]
    return log


def read_uci(path: str | Path) -> ReplayLog:
    """Read a UCI Online Retail CSV (mapping in the module docstring). Raises
    :class:`SourceError` when the file is absent or lacks a column."""
    path = Path(path)
    log = ReplayLog("uci-online-retail", "implicit", [])
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
    log = ReplayLog("otto", "exposure", [])
    with _open_text(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            log.rows += 1
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
