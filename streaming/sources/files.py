"""Readers for event files to replay: JSON Lines and CSV in the event-contract schema.

Each reader yields ``(origin, record)`` where ``origin`` names the place in the file
(``"events.jsonl:3"``) and ``record`` is a decoded dict, or a :class:`BadRecord` when the line
could not even be decoded. Validation against the contract happens later, in one place.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from streaming.contract.events import ALL_FIELDS
from streaming.errors import SourceError


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A line that could not be decoded: reason ``code`` (an ``InvalidEvent`` code), ``detail``,
    and the raw bytes."""

    code: str
    detail: str
    raw: bytes


Record = dict[str, Any] | BadRecord
_INT_FIELDS = {"ts", "qty"}
_FLOAT_FIELDS = {"price"}


def read_records(path: str | Path, fmt: str = "auto") -> Iterator[tuple[str, Record]]:
    """Records of ``path`` (``.jsonl``/``.json``/``.csv``, optionally ``.gz``; ``-`` = stdin).

    Opening errors (absent file, unknown format) are raised here, before iteration starts.
    """
    name = str(path)
    if fmt == "auto":
        base = name[:-3] if name.endswith(".gz") else name
        fmt = "csv" if base.endswith(".csv") else "jsonl"
    if fmt not in {"jsonl", "csv"}:
        raise SourceError(f"unknown format {fmt!r}: expected jsonl or csv")
    fh = _open(name)
    reader = _jsonl if fmt == "jsonl" else _csv
    return _closing(reader(fh, Path(name).name), fh)


def _closing(records: Iterator[tuple[str, Record]], fh: IO[bytes]) -> Iterator[tuple[str, Record]]:
    try:
        yield from records
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()


def _open(name: str) -> IO[bytes]:
    if name == "-":
        return sys.stdin.buffer
    path = Path(name)
    if not path.is_file():
        raise SourceError(f"input file not found: {name}")
    try:
        return gzip.open(path, "rb") if name.endswith(".gz") else path.open("rb")
    except OSError as exc:
        raise SourceError(f"cannot open {name}: {exc.strerror}") from None


def _jsonl(fh: IO[bytes], label: str) -> Iterator[tuple[str, Record]]:
    for n, line in enumerate(fh, 1):
        line = line.strip()
        if not line:
            continue
        try:
            yield f"{label}:{n}", orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield f"{label}:{n}", BadRecord("not_json", str(exc), line)


def _csv(fh: IO[bytes], label: str) -> Iterator[tuple[str, Record]]:
    text = io.TextIOWrapper(fh, encoding="utf-8", errors="strict", newline="")
    try:
        reader = csv.DictReader(text)
        header = reader.fieldnames or []
        unknown = [h for h in header if h not in ALL_FIELDS]
        if unknown:
            raise SourceError(f"{label}: unknown CSV column(s) {unknown}; expected {sorted(ALL_FIELDS)}")
        for row in reader:
            origin = f"{label}:{reader.line_num}"
            try:
                yield origin, _convert_row(row)
            except ValueError as exc:
                yield origin, BadRecord("wrong_type", str(exc), repr(row).encode())
    except UnicodeDecodeError as exc:
        raise SourceError(f"{label}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    finally:
        text.detach()


def _convert_row(row: dict[str, str | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key is None:
            raise ValueError("row has more cells than the header")
        if value is None or value == "":
            continue
        if key in _INT_FIELDS:
            try:
                out[key] = int(value)
            except ValueError:
                raise ValueError(f"{key}={value!r} is not an integer") from None
        elif key in _FLOAT_FIELDS:
            out[key] = float(value)
        elif key == "context":
            try:
                out[key] = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise ValueError(f"context={value[:40]!r} is not a JSON object") from None
        else:
            out[key] = value
    return out
