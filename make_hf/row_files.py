"""Row files read row by row with the standard library: JSONL, JSON, CSV and TSV.

The one reader of row files: training (`make_hf.data.load_triples`) and evaluation and catalogue files
(`make_hf.evaluation_sets`, `make-hf encode`) read through it, so a malformed row is found and named the same way
everywhere. It needs neither `datasets` nor `pyarrow`, so serving a catalogue does not need the training stack.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any


def _decode(path: Path) -> str:
    """The text of a data file, or an error naming the file and what to do when it is empty or not UTF-8."""
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"{path}: the file is empty. Write one row per line (JSONL) or a header and rows (CSV).")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: not UTF-8 text: byte 0x{data[error.start]:02x} at offset {error.start} (line {line}) does not "
            "decode. Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`)."
        ) from None


# (row index, where in the file, value or None, why it is malformed or None)
_Record = tuple[int, str, Any, "str | None"]


def _json_records(text: str, path: Path) -> list[_Record]:
    """The rows of a JSON file (an array of objects, or an object of columns) or of a JSONL file.

    A JSONL line that is not a JSON object is a malformed row; a JSON document that does not parse is an error
    naming its line, since no row of it can be trusted.
    """
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: not valid JSON at line {error.lineno}, column {error.colno} ({error.msg}). Fix the file, "
                "or write one JSON object per line (JSONL), where a broken line only skips that row."
            ) from None
        return [(index, f"element {index}", value, None) for index, value in enumerate(values)]
    if text.lstrip().startswith("{") and path.suffix.lower() == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None  # JSON lines in a .json file
        if isinstance(value, dict):
            lengths = {len(column) if isinstance(column, list) else -1 for column in value.values()}
            if len(lengths) != 1 or -1 in lengths:
                raise ValueError(
                    f"{path}: a JSON object must map each column name to a list of values of one length. Write an "
                    "array of row objects, or one JSON object per line (JSONL)."
                )
            rows = [dict(zip(value, row)) for row in zip(*value.values())]
            return [(index, f"row {index}", row, None) for index, row in enumerate(rows)]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((len(records), f"line {number}", json.loads(line), None))
        except json.JSONDecodeError as error:
            problem = f"line {number}: not valid JSON ({error.msg} at column {error.colno})"
            records.append((len(records), f"line {number}", None, problem))
    return records


def _csv_records(text: str, path: Path) -> tuple[list[str], list[_Record]]:
    """The header and rows of a CSV/TSV file, every value a string as written (no type guessing: an id `007`
    stays `007`); an empty cell is None. A row that does not parse or has another number of fields than the
    header is a malformed row."""
    delimiter, separator = ("\t", "a tab") if path.suffix.lower() == ".tsv" else (",", "a comma")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    records: list[_Record] = []
    last_line = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            where = f"line {last_line + 1}" if reader.line_num == last_line + 1 else \
                f"lines {last_line + 1}-{reader.line_num}"
            last_line = reader.line_num
            if header is None:
                raise ValueError(f"{path}: the header row does not parse ({where}: {error}).") from None
            records.append((len(records), where, None, f"{where}: {error}; quote fields that contain quotes"))
            continue
        where, last_line = f"line {last_line + 1}", reader.line_num
        if not row:
            continue
        if header is None:
            duplicates = sorted({column for column in row if row.count(column) > 1})
            if duplicates:
                raise ValueError(f"{path}: the header names {duplicates} more than once; give every column a name.")
            header = row
            continue
        if len(row) != len(header):
            problem = (f"{where}: {len(row)} fields where the header has {len(header)}; quote fields that contain "
                       f"{separator}")
            records.append((len(records), where, None, problem))
            continue
        records.append((len(records), where, {column: value or None for column, value in zip(header, row)}, None))
    return header or [], records


def read_records(path: str | os.PathLike) -> tuple[list[str], list[tuple[int, str, Any, str | None]]]:
    """The header (CSV / TSV; empty for JSON) and rows of a JSONL / JSON / CSV / TSV file, read row by row with the
    standard library: `(index, where, value, problem)` per row, `where` its place in the file (`line 3`), `value`
    the parsed row (None when malformed), `problem` why it is malformed (else None).

    The one reader of row files: training (`load_triples`) and evaluation files (`make_hf.evaluation_sets`) both
    read through it. A file that cannot be read at all (empty, not UTF-8, a JSON document that does not parse) is
    an error naming the file.
    """
    path = Path(path)
    text = _decode(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        return _csv_records(text, path)
    return [], _json_records(text, path)


__all__ = ["read_records"]
