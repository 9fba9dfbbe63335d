"""load_triples: JSONL / CSV / Parquet / save_to_disk / Hub sources, configurable columns, and bad rows skipped with
their reasons (SkippedRows)."""

import json
import logging
import struct
import zlib

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from make_hf.data import SkippedRows, derive_product_id, load_triples
from make_hf.data import files as files_module


def _write_png(path, colour="red"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


@pytest.fixture()
def shop_dir(tmp_path):
    """A data folder: images/ with two good PNGs and one corrupt file."""
    _write_png(tmp_path / "images" / "red.png", "red")
    _write_png(tmp_path / "images" / "blue.png", "blue")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return tmp_path


ROWS = [
    {"query": "red tee", "title": "zerel tshirt cotton", "image": "images/red.png", "product_id": "p0"},
    {"query": "blue tee", "title": "zerel tshirt cotton", "image": "images/missing.png", "product_id": "p1"},
    {"query": "navy tee", "title": "zerel tshirt cotton", "image": "images/broken.jpg", "product_id": "p2"},
    {"query": "", "title": "zerel tshirt cotton", "image": "images/blue.png", "product_id": "p3"},
    {"query": "cobalt tee", "title": "zerel tshirt cotton", "image": "images/blue.png", "product_id": "p3"},
    {"query": "usb charger", "title": "ditix 65w charger", "image": None, "product_id": "p4"},
]


def _jsonl(folder, rows=ROWS, name="train.jsonl"):
    path = folder / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_jsonl_with_missing_and_corrupt_image_and_empty_query(shop_dir):
    skipped = SkippedRows()
    rows = load_triples(_jsonl(shop_dir), skipped=skipped)
    assert rows["product_id"] == ["p0", "p3", "p4"]
    assert rows["source_row"] == [0, 4, 5]
    # Relative paths are resolved against the file's folder; a missing image is a title-only product.
    assert rows["image"] == [str(shop_dir / "images/red.png"), str(shop_dir / "images/blue.png"), None]
    assert len(skipped) == 3
    assert skipped.counts == {"missing_image": 1, "corrupt_image": 1, "empty_query": 1}
    assert [(r.index, r.reason) for r in skipped] == [(1, "missing_image"), (2, "corrupt_image"), (3, "empty_query")]
    assert {r.source for r in skipped} == {"train.jsonl"}
    assert "missing.png" in skipped.rows[0].detail
    report = skipped.report()
    assert report.startswith("3 row(s) skipped") and "train.jsonl row 2: corrupt_image" in report
    summary = skipped.summary()
    assert summary["total"] == 3 and json.loads(json.dumps(summary)) == summary
    assert len(SkippedRows.from_summary(summary)) == 3


def test_skipped_rows_are_logged_when_no_report_is_given(shop_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="make_hf.data.files"):
        load_triples(_jsonl(shop_dir))
    assert "3 row(s) skipped" in caplog.text


def test_require_image_and_no_validation(shop_dir):
    skipped = SkippedRows()
    rows = load_triples(_jsonl(shop_dir), require_image=True, skipped=skipped)
    assert rows["product_id"] == ["p0", "p3"] and skipped.counts["missing_image"] == 2
    unchecked = load_triples(_jsonl(shop_dir), validate=False)
    assert unchecked.num_rows == len(ROWS)


def test_csv_with_custom_columns_and_numeric_ids(shop_dir):
    frame = pd.DataFrame({
        "search": ["red tee", "cobalt tee", "usb charger"],
        "name": ["zerel tshirt", "zerel tshirt", "ditix charger"],
        "picture": ["images/red.png", "images/blue.png", ""],
        "sku": [101, 102, 103],
    })
    frame.to_csv(shop_dir / "triples.csv", index=False)
    rows = load_triples(shop_dir / "triples.csv", query_column="search", title_column="name",
                        image_column="picture", product_id_column="sku")
    assert set(rows.column_names) == {"query", "title", "image", "product_id", "source_row"}
    assert rows["product_id"] == ["101", "102", "103"]
    assert rows["image"][2] is None and rows["image"][0] == str(shop_dir / "images/red.png")


def test_tsv_and_image_root(tmp_path, shop_dir):
    data_dir = tmp_path / "elsewhere"
    data_dir.mkdir()
    (data_dir / "triples.tsv").write_text("query\ttitle\timage\tproduct_id\nred tee\tzerel\tred.png\tp\n")
    rows = load_triples(data_dir / "triples.tsv", image_root=shop_dir / "images")
    assert rows["image"] == [str((shop_dir / "images" / "red.png").resolve())]


def test_parquet_with_image_bytes(shop_dir):
    good = (shop_dir / "images" / "red.png").read_bytes()
    frame = pd.DataFrame({
        "query": ["red tee", "blue tee"],
        "title": ["zerel tshirt", "zerel tshirt"],
        "image": [good, b"GIF89a truncated"],
        "product_id": ["a", "b"],
    })
    frame.to_parquet(shop_dir / "triples.parquet")
    skipped = SkippedRows()
    rows = load_triples(shop_dir / "triples.parquet", skipped=skipped)
    assert rows["product_id"] == ["a"] and rows["image"][0] == good
    assert [(r.index, r.reason) for r in skipped] == [(1, "corrupt_image")]


def _image_dataset(good_png: bytes) -> datasets.Dataset:
    features = datasets.Features({"query": datasets.Value("string"), "title": datasets.Value("string"),
                                  "image": datasets.Image(), "product_id": datasets.Value("string")})
    return datasets.Dataset.from_dict({
        "query": ["red tee", "blue tee", "green tee"],
        "title": ["zerel tshirt"] * 3,
        "image": [{"bytes": good_png, "path": None}, {"bytes": b"\x89PNG\r\n\x1a\n cut short", "path": None}, None],
        "product_id": ["a", "b", "c"],
    }, features=features)


def test_save_to_disk_dataset_dict_keeps_evaluation_splits(shop_dir):
    good = (shop_dir / "images" / "red.png").read_bytes()
    products = datasets.Dataset.from_dict({"product_id": ["a"], "title": ["zerel tshirt"]})
    queries = datasets.Dataset.from_dict({"query": ["red tee"], "relevant_ids": [["a"]]})
    datasets.DatasetDict({"train": _image_dataset(good), "test_products": products, "test_queries": queries}) \
        .save_to_disk(str(shop_dir / "saved"))
    skipped = SkippedRows()
    loaded = load_triples(shop_dir / "saved", skipped=skipped)
    assert isinstance(loaded, datasets.DatasetDict)
    assert loaded["train"]["product_id"] == ["a", "c"]
    # Images stay encoded until the collator, where a decoding failure drops a row instead of the DataLoader.
    assert loaded["train"].features["image"] == datasets.Image(decode=False)
    assert loaded["test_queries"]["relevant_ids"] == [["a"]]
    assert [(r.source, r.index, r.reason) for r in skipped] == [("saved[train]", 1, "corrupt_image")]
    only_train = load_triples(shop_dir / "saved", split="train")
    assert isinstance(only_train, datasets.Dataset) and only_train.num_rows == 2


def test_relative_image_paths_of_an_evaluation_catalogue_are_resolved(tmp_path):
    saved = tmp_path / "saved"
    (saved / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(saved / "img" / "a.png")
    rows = {"product_id": ["a"], "title": ["red mug"], "image": ["img/a.png"]}
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({**rows, "query": ["red mug"]}),
        "test_products": datasets.Dataset.from_dict(rows),
    }).save_to_disk(str(saved))
    loaded = load_triples(saved)
    assert loaded["train"]["image"] == [str(saved / "img" / "a.png")]
    assert loaded["test_products"]["image"] == [str(saved / "img" / "a.png")]


def test_in_memory_dataset_and_derived_product_ids(shop_dir):
    good = (shop_dir / "images" / "red.png").read_bytes()
    rows = load_triples(_image_dataset(good).remove_columns("product_id"))
    assert rows.num_rows == 2
    assert rows["product_id"][1] == derive_product_id("zerel tshirt", None)
    assert rows["product_id"][0] == derive_product_id("zerel tshirt", {"bytes": good, "path": None})
    assert rows["product_id"][0] != rows["product_id"][1]


def test_hub_name_goes_to_load_dataset(shop_dir, monkeypatch):
    calls = []

    def fake_load_dataset(name, split=None, **kwargs):
        calls.append((name, split))
        return datasets.Dataset.from_dict({"query": ["red tee"], "title": ["zerel tshirt"], "image": [None],
                                           "product_id": ["a"]})

    monkeypatch.setattr(files_module.datasets, "load_dataset", fake_load_dataset)
    rows = load_triples("my-org/shop-triples", split="train")
    assert calls == [("my-org/shop-triples", "train")] and rows["product_id"] == ["a"]


def test_unreachable_hub_name_says_what_to_pass(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(files_module.datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="not a file or folder here"):
        load_triples("my-org/shop-triples")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"query_column": "search"}, ValueError, "no query column 'search'"),
        ({"title_column": "name", "image_column": "picture"}, ValueError, "neither a title column"),
    ],
)
def test_missing_columns_are_named(shop_dir, kwargs, error, message):
    with pytest.raises(error, match=message):
        load_triples(_jsonl(shop_dir), **kwargs)


def test_missing_file_and_unsupported_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="No file or folder"):
        load_triples(tmp_path / "nope.jsonl")
    (tmp_path / "data.xlsx").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported file type '.xlsx'"):
        load_triples(tmp_path / "data.xlsx")


def test_skipped_rows_count_a_row_once_and_gather_in_one_process():
    report = SkippedRows()
    report.add(3, "empty_query", source="a.jsonl")
    report.add(3, "empty_query", source="a.jsonl")
    report.add(3, "empty_query", source="b.jsonl")
    report.add(None, "corrupt_image", "product 'x'")
    assert len(report) == 3 and report.indices == [3]
    assert len(report.gather(None)) == 3
    with pytest.raises(ValueError, match="reason='bad'"):
        report.add(1, "bad")
    assert SkippedRows().report() == "No rows were skipped."


def test_gather_merges_the_reports_of_all_processes(monkeypatch):
    import accelerate.utils

    local = SkippedRows()
    local.add(1, "missing_image", source="train.jsonl")
    other = SkippedRows()
    other.add(1, "missing_image", source="train.jsonl")  # every process checked the same file
    other.add(5, "empty_query", source="train.jsonl")
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda objects: objects + [other.summary()])

    class TwoProcesses:
        num_processes = 2

    merged = local.gather(TwoProcesses())
    assert [(r.index, r.reason) for r in merged] == [(1, "missing_image"), (5, "empty_query")]


def test_a_decompression_bomb_is_skipped_as_a_corrupt_image(shop_dir):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # The header of a 10000 x 10000 grayscale PNG: 100 M pixels declared in a few bytes.
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 10000, 8, 0, 0, 0, 0))
    (shop_dir / "images" / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b""))
    rows = [ROWS[0], {**ROWS[0], "image": "images/bomb.png", "product_id": "bomb"}]
    skipped = SkippedRows()
    loaded = load_triples(_jsonl(shop_dir, rows), skipped=skipped)
    assert loaded["product_id"] == ["p0"]
    assert [(r.index, r.reason) for r in skipped] == [(1, "corrupt_image")]
    assert "10000 x 10000 = 100,000,000 pixels" in skipped.rows[0].detail


def test_a_float_image_with_nan_is_a_corrupt_image_row():
    image = np.full((4, 6, 3), 0.5, np.float32)
    assert files_module.check_row("red tee", "zerel tshirt", image, "p0") is None
    image[1, 2, 0] = np.nan
    reason, detail = files_module.check_row("red tee", "zerel tshirt", image, "p0")
    assert reason == "corrupt_image" and "1 NaN or infinite value(s)" in detail


def test_one_wrong_typed_cell_leaves_the_other_rows_of_its_column_intact(tmp_path):
    rows = [{"query": f"blue sneakers {i}", "title": f"zerel sneaker {i}", "product_id": f"p{i}", "note": "x"}
            for i in range(180)]
    rows[7]["query"] = 123
    rows[9]["title"] = ["a", "list"]
    rows[11]["product_id"] = 11  # an integer id is read as its decimal string
    rows[13]["product_id"] = 1.5
    rows[15]["note"] = 5  # another column mixing types is kept, as JSON strings
    skipped = SkippedRows()
    loaded = load_triples(_jsonl(tmp_path, rows), skipped=skipped)
    assert loaded.num_rows == 177
    kept = [row for i, row in enumerate(rows) if i not in (7, 9, 13)]
    assert loaded["query"] == [row["query"] for row in kept]
    assert loaded["title"] == [row["title"] for row in kept]
    assert loaded["product_id"] == [str(row["product_id"]) for row in kept] and "11" in loaded["product_id"]
    assert loaded.features["product_id"] == datasets.Value("string")
    assert [(r.index, r.reason) for r in skipped] == [(7, "wrong_type"), (9, "wrong_type"), (13, "wrong_type")]
    assert "the query ('query') is int 123, not a string" in skipped.rows[0].detail
    assert loaded["source_row"][:8] == [0, 1, 2, 3, 4, 5, 6, 8]


def test_json_array_and_columns_and_csv_keep_values_as_written(tmp_path):
    rows = [{"query": "red tee", "title": "zerel tshirt", "product_id": 7},
            {"query": "blue tee", "title": "zerel tshirt", "product_id": "007"}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    assert load_triples(tmp_path / "rows.json")["product_id"] == ["7", "007"]
    (tmp_path / "columns.json").write_text(json.dumps({key: [row[key] for row in rows] for key in rows[0]}))
    assert load_triples(tmp_path / "columns.json")["product_id"] == ["7", "007"]
    # pandas would guess integers here and drop the leading zeros.
    (tmp_path / "rows.csv").write_text("query,title,product_id\n123,zerel tshirt,007\nred tee,zerel tshirt,7\n")
    loaded = load_triples(tmp_path / "rows.csv")
    assert loaded["query"] == ["123", "red tee"] and loaded["product_id"] == ["007", "7"]


def test_malformed_jsonl_lines_are_skipped_with_their_line(tmp_path):
    good = json.dumps({"query": "red tee", "title": "zerel tshirt", "product_id": "p0"})
    path = tmp_path / "train.jsonl"
    path.write_text(f'{good}\n{{"query": "blue tee", "title": \n\n[1, 2]\n{good}\n')
    skipped = SkippedRows()
    rows = load_triples(path, skipped=skipped)
    assert rows["source_row"] == [0, 3]
    assert [(r.index, r.reason) for r in skipped] == [(1, "malformed_row"), (2, "malformed_row")]
    assert skipped.rows[0].detail.startswith("line 2: not valid JSON")
    assert skipped.rows[1].detail == "line 4: a JSON list, not an object of column values"


@pytest.mark.parametrize("suffix, separator", [(".csv", ","), (".tsv", "\t")])
def test_broken_csv_rows_are_skipped_with_their_line(tmp_path, suffix, separator):
    lines = ["query,title,product_id", "red tee,zerel tshirt,p0", "blue tee,zerel, tshirt,p1", '"navy" tee,x,p2',
             "", "green tee,zerel tshirt,p3"]
    path = tmp_path / f"train{suffix}"
    path.write_text("\n".join(line.replace(",", separator) for line in lines) + "\n")
    skipped = SkippedRows()
    rows = load_triples(path, skipped=skipped)
    assert rows["product_id"] == ["p0", "p3"] and rows["source_row"] == [0, 3]
    assert [(r.index, r.reason) for r in skipped] == [(1, "malformed_row"), (2, "malformed_row")]
    assert skipped.rows[0].detail.startswith("line 3: 4 fields where the header has 3")
    assert skipped.rows[1].detail.startswith("line 4: ")


@pytest.mark.parametrize("name, content, message", [
    ("train.jsonl", b"", "the file is empty"),
    ("train.csv", b"\n \n", "the file is empty"),
    ("train.csv", "query,title\nred tee,zerel\ncafé crème,tasse\n".encode("latin-1"),
     r"not UTF-8 text: byte 0xe9 at offset 29 \(line 3\) does not decode. Re-save the file as UTF-8"),
    ("train.json", b'[{"query": "red tee", "title": "zerel"},\n {"query": }]', "not valid JSON at line 2, column 12"),
    ("train.parquet", b"PAR1 cut short", "cannot read it as Parquet"),
])
def test_unreadable_files_name_the_file_and_what_to_do(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message) as raised:
        load_triples(tmp_path / name)
    assert str(tmp_path / name) in str(raised.value)


@pytest.mark.parametrize("content", [
    "{broken\n[1]\n",  # every row malformed
    '{"query": "", "title": "zerel tshirt", "product_id": "p0"}\n{"query": "red tee", "product_id": "p1"}\n',
])
def test_a_file_without_usable_rows_fails_with_the_skip_report(tmp_path, content):
    (tmp_path / "train.jsonl").write_text(content)
    with pytest.raises(ValueError, match=r"train.jsonl: no usable rows.\n2 row\(s\) skipped") as raised:
        load_triples(tmp_path / "train.jsonl")
    assert "train.jsonl row 1: " in str(raised.value)
