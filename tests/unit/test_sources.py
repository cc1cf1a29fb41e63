from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from streaming.errors import SourceError
from streaming.sources.files import BadRecord, read_records


def test_jsonl_yields_records_and_bad_lines_with_their_line_number(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"a": 1}\n\n{broken\n{"b": 2}\n')
    records = list(read_records(path))
    assert [origin for origin, _ in records] == ["events.jsonl:1", "events.jsonl:3", "events.jsonl:4"]
    assert records[0][1] == {"a": 1}
    assert isinstance(records[1][1], BadRecord) and records[1][1].code == "not_json"


def test_csv_converts_types_and_skips_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "events.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("event_id,user_id,item_id,event_type,ts,price,qty,context\n")
        fh.write('e1,u1,i1,purchase,1732000000000,9.5,2,"{""k"": 1}"\n')
        fh.write("e2,u1,i2,view,1732000000001,,,\n")
        fh.write("e3,u1,i3,view,soon,,,\n")
    records = [r for _, r in read_records(path)]
    assert records[0] == {"event_id": "e1", "user_id": "u1", "item_id": "i1",
                          "event_type": "purchase", "ts": 1732000000000, "price": 9.5, "qty": 2,
                          "context": {"k": 1}}
    assert "price" not in records[1]
    assert isinstance(records[2], BadRecord) and "ts='soon'" in records[2].detail


def test_csv_with_unknown_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("user,item\nu,i\n")
    with pytest.raises(SourceError, match="unknown CSV column"):
        list(read_records(path))


def test_missing_file_fails_before_iteration(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        read_records(tmp_path / "absent.jsonl")
