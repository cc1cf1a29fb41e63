from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from streaming.contract.events import validate_event
from streaming.errors import SourceError
from streaming.sources.replay import read_log

UCI = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536366,22633,HAND WARMER,6,2010-12-01 08:28:00,1.85,17850.0,United Kingdom
536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom
C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom
536414,22139,,56,2010-12-01 11:52:00,0.0,,United Kingdom
536415,22140,BAD,0,2010-12-01 11:53:00,1.0,14000.0,France
"""


def test_uci_lines_become_time_ordered_purchases_and_skips_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "online_retail.csv.gz"
    path.write_bytes(gzip.compress(UCI.encode()))
    log = read_log(path)
    assert log.name == "uci-online-retail" and log.label_mode == "implicit"
    assert log.rows == 5
    assert dict(log.skipped) == {"cancellation": 1, "no_customer": 1, "non_positive_quantity": 1}
    first, second = log.events
    assert (first.item_id, second.item_id) == ("85123A", "22633")  # event-time order
    assert first.user_id == "c17850" and first.event_type == "purchase" and first.qty == 6
    assert first.ts == 1291191960000 and first.price == 2.55 and first.category == "sc851"
    for e in log.events:
        assert validate_event(e.to_dict(), now_ms=first.ts) == e


def test_otto_sessions_map_clicks_carts_orders(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(d) for d in [
        {"session": 1, "events": [{"aid": 5, "ts": 2000, "type": "carts"},
                                  {"aid": 5, "ts": 1000, "type": "clicks"}]},
        {"session": 2, "events": [{"aid": 7, "ts": 1500, "type": "orders"},
                                  {"aid": 7, "ts": 1600, "type": "likes"}]},
    ]) + b"\n")
    log = read_log(path)
    assert log.name == "otto" and log.label_mode == "exposure"
    assert [(e.user_id, e.item_id, e.event_type, e.ts) for e in log.events] == [
        ("otto-1", "5", "view", 1000), ("otto-2", "7", "purchase", 1500),
        ("otto-1", "5", "click", 2000)]
    assert dict(log.skipped) == {"unknown_type_or_ts": 1}


def test_missing_or_unknown_logs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        read_log(tmp_path / "nope.csv.gz")
    other = tmp_path / "events.jsonl"
    other.write_text('{"event_id": "e1"}\n')
    with pytest.raises(SourceError, match="not a log this replay knows"):
        read_log(other)


SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "otto-sample" / "train.jsonl").is_file(),
                    reason="../shared/data not present")
def test_the_shared_otto_sample_reads_whole() -> None:
    log = read_log(SHARED / "otto-sample" / "train.jsonl")
    assert log.rows == 20 and len(log.events) == 862 and not log.skipped
