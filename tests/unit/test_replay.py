from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from streaming.contract.events import Limits, validate_event
from streaming.errors import SourceError
from streaming.sources.files import BadRecord
from streaming.sources.replay import log_name, read_log, validate_records

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


def test_movielens_ratings_become_clicks_with_the_first_genre_as_category(
        tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t5\t881250000\n"
                                     "7\t9\tx\t881250001\n\n22\t377\t1\t878887116\n")
    flags = ["0"] * 19
    noir_and_crime = flags.copy()
    noir_and_crime[6] = noir_and_crime[10] = "1"  # Crime, Film-Noir: the first one counts
    (tmp_path / "u.item").write_bytes("\n".join([
        "|".join(["242", "Kolya (1996)", "24-Jan-1997", "", "http://x", *noir_and_crime]),
        "|".join(["302", "L.A. Confidential (1997)", "01-Jan-1997", "", "", *flags]),
        "|".join(["377", "Heavyweights (1994)", "01-Jan-1994", "", "", *flags[:-1], "1"]),
    ]).encode("latin-1") + "\nbroken \u00e9 line\n".encode("latin-1"))
    log = read_log(tmp_path / "u.data")
    assert (log.name, log.format, log.label_mode) == ("movielens-100k", "movielens", "implicit")
    assert log.rows == 4 and dict(log.skipped) == {"unparsable": 1}
    assert [(e.user_id, e.item_id, e.event_type, e.ts, e.category, e.context)
            for e in log.events] == [  # event-time order; no genre flagged: no category
        ("ml22", "m377", "click", 878887116000, "Western", {"rating": 1}),
        ("ml186", "m302", "click", 881250000000, None, {"rating": 5}),
        ("ml196", "m242", "click", 881250949000, "Crime", {"rating": 3})]
    for e in log.events:  # valid events but for the contract's year-2000 floor (1997)
        assert validate_event(e.to_dict(), now_ms=e.ts, limits=Limits(min_ts_ms=0)) == e
    (tmp_path / "u.item").unlink()
    assert {e.category for e in read_log(tmp_path / "u.data").events} == {None}


def test_missing_or_unknown_logs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        read_log(tmp_path / "nope.csv.gz")
    other = tmp_path / "notes.txt"
    other.write_text("hello, world\nnot, a log\n")
    with pytest.raises(SourceError, match="not a log this replay knows"):
        read_log(other)
    binary = tmp_path / "events.jsonl.gz"
    binary.write_bytes(b"\x00\xff" * 100)  # not gzip
    with pytest.raises(SourceError, match="not a text log"):
        read_log(binary)


OLD_TS = 631_152_000_000  # 1990-01-01T00:00:00Z: before the contract's 2000 floor


def contract(event_id: str, ts: int, kind: str = "click", user: str = "u1", item: str = "i1"
             ) -> dict[str, object]:
    return {"event_id": event_id, "user_id": user, "item_id": item, "event_type": kind, "ts": ts}


def test_event_files_in_the_contract_replay_with_old_times_and_count_rejects(
        tmp_path: Path) -> None:
    rows = [contract("e2", OLD_TS + 5000, "purchase"), contract("e1", OLD_TS, "view"),
            contract("e1", OLD_TS + 9, "click"),  # the same event_id again
            {"event_id": "e3", "user_id": "u1", "event_type": "click", "ts": OLD_TS},  # no item
            contract("e4", -5), contract("e5", OLD_TS, "like")]
    path = tmp_path / "my log.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(orjson.dumps(r) for r in rows) + b"\n{broken\n"))
    log = read_log(path)
    assert log.name == "my-log" and log.format == "events-jsonl" and log.rows == 7
    assert [(e.event_id, e.ts) for e in log.events] == [("e1", OLD_TS), ("e2", OLD_TS + 5000)]
    assert log.label_mode == "exposure"  # the log has views
    assert dict(log.skipped) == {"duplicate": 1, "missing_field": 1, "ts_out_of_range": 1,
                                 "unknown_event_type": 1, "not_json": 1}
    assert any(m.startswith("my log.jsonl.gz:3: duplicate") for m in log.messages)
    assert read_log(path, limit=1).events[0].event_id == "e1"
    path.write_bytes(path.read_bytes()[:-12])  # a truncated gzip stream
    with pytest.raises(SourceError, match="read failed"):
        read_log(path)


def test_event_csv_files_replay_too_and_views_decide_the_label_mode(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("event_id,user_id,item_id,event_type,ts,price\n"
                    f"a,u1,i1,purchase,{OLD_TS},2.5\n"
                    f"b,u2,i2,click,{OLD_TS + 1},x\n")
    log = read_log(path)
    assert log.format == "events-csv" and log.label_mode == "implicit"
    assert [(e.event_id, e.price) for e in log.events] == [("a", 2.5)]
    assert dict(log.skipped) == {"wrong_type": 1}


def test_validate_records_is_pure_and_honours_the_time_floor() -> None:
    records = [("f:1", contract("a", OLD_TS)), ("f:2", BadRecord("not_json", "x", b"{")),
               ("f:3", contract("b", OLD_TS + 1, "view"))]
    log = validate_records(records, "f", min_ts_ms=OLD_TS + 1, now_ms=OLD_TS + 10)
    assert [e.event_id for e in log.events] == ["b"]
    assert dict(log.skipped) == {"ts_out_of_range": 1, "not_json": 1}
    assert log.messages[0].startswith("f:1: ts_out_of_range")
    assert log_name("/x/train.events.csv.gz") == "train.events"


SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "otto-sample" / "train.jsonl").is_file(),
                    reason="../shared/data not present")
def test_the_shared_otto_sample_reads_whole() -> None:
    log = read_log(SHARED / "otto-sample" / "train.jsonl")
    assert log.rows == 20 and len(log.events) == 862 and not log.skipped
