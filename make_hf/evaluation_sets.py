"""Where evaluation sets come from: files of products and queries, a shop's own training log, the sets a training
run saved, the synthetic shop, Emoji-CLDR-3D, or a folder saved with `datasets`.

An evaluation set is a catalogue (`product_id`, `title`, `image`, optional `category`, `category_group`) and
queries (`query`, `relevant_ids`, optional `bucket`, `category_group`), ready for
`make_hf.evaluation.evaluate_retrieval`:

- **products and queries files** (`read_rows`): JSONL, JSON, CSV, TSV or Parquet. In CSV / TSV a `relevant_ids`
  cell holds a JSON list (`["a", "b"]`) or ids separated by `|` (`a|b`).
- **a training log** (`evaluation_set_from_logs`): the rows training reads (`query`, `title`, `image`,
  `product_id`; `make_hf.data.load_triples`). The catalogue is the distinct products of the file (a product's
  first row gives its title and image) and a query's relevant products are those it was logged with. Rows are
  checked (and images decoded) before anything is encoded; bad rows are skipped and counted as in training.
- **a training run's folder**: `examples/pretrain.py` saves its validation and test sets in
  `<output_dir>/evaluation_sets/` (`save_evaluation_sets`), so the run's numbers can be computed again later.

JSONL, JSON, CSV and TSV files are read row by row by `make_hf.row_files.read_records`, the reader training uses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .encoding import _Table

ROW_FILE_TYPES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
"""File types of products, queries and training-log files."""

EVALUATION_SETS_FOLDER = "evaluation_sets"
"""The sub-folder of a training run's `output_dir` that holds its evaluation sets (`save_evaluation_sets`)."""

def is_row_file(path: str | os.PathLike) -> bool:
    """Whether `path` names a products / queries / log file by its type (JSONL, JSON, CSV, TSV, Parquet)."""
    return os.path.splitext(os.fspath(path))[1].lower() in ROW_FILE_TYPES


def _parse_id_list(value: Any, where: str) -> list:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: relevant_ids {text!r} is not a valid JSON list ({error}).") from None
        else:
            value = [part.strip() for part in text.split("|") if part.strip()]
    return list(value) if value is not None else []


def _text_rows(path: str) -> list[Any]:
    from .row_files import read_records

    # Decoded here first so that a byte that is not UTF-8 is reported with its line and column (see make_hf.cli).
    Path(path).read_bytes().decode("utf-8-sig")
    rows = []
    for _, where, value, problem in read_records(path)[1]:
        if problem is not None:
            raise ValueError(f"{path}, {problem}. Fix that row.")
        if not isinstance(value, dict):
            raise ValueError(f"{path}, {where}: a JSON {type(value).__name__}, expected an object with named columns.")
        rows.append(value)
    return rows


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a products or queries file into row dicts: JSONL, JSON (a list of objects), CSV, TSV or Parquet.

    Relative image paths are resolved against the file's folder; empty `title` / `image` cells become None; a
    `relevant_ids` cell in CSV/TSV holds a JSON list or ids separated by `|`; an integer product id becomes its
    decimal string. A row that does not parse is an error naming the file and line: an evaluation set is never
    silently shrunk.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in ROW_FILE_TYPES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(ROW_FILE_TYPES)}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No file at {path!r}; check the path.")
    if suffix == ".parquet":
        try:
            import pyarrow.parquet
        except ImportError:
            raise ImportError(
                f"{path}: reading Parquet needs pyarrow, which the training stack brings: "
                'pip install "make-hf[train]" (or pyarrow), or give a JSONL / CSV file.'
            ) from None
        rows = pyarrow.parquet.read_table(path).to_pylist()
    else:
        rows = _text_rows(path)
    folder = os.path.dirname(os.path.abspath(path))
    for number, row in enumerate(rows):
        for column in ("title", "image", "category", "category_group", "bucket"):
            if row.get(column) == "":
                row[column] = None
        image = row.get("image")
        if isinstance(image, str) and not os.path.isabs(image):
            row["image"] = os.path.join(folder, image)
        if "relevant_ids" in row:
            row["relevant_ids"] = _parse_id_list(row["relevant_ids"], f"{path}, row {number}")
        if "product_id" in row and isinstance(row["product_id"], int):
            row["product_id"] = str(row["product_id"])
    return rows


def evaluation_set_from_logs(
    source: str | os.PathLike,
    *,
    skipped: Any = None,
    query_column: str = "query",
    title_column: str | None = "title",
    image_column: str | None = "image",
    product_id_column: str | None = "product_id",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The `(products, queries)` of a training log: every distinct product is in the catalogue, and a query's
    relevant products are the products it was logged with.

    Args:
        source: a file (or dataset) `make_hf.data.load_triples` reads: one row per (query, product).
        skipped (`SkippedRows`, *optional*): collects the rows left out (empty query, missing or corrupt image, no
            title and no image, wrong types, rows that do not parse), as in training; logged when None.
        query_column, title_column, image_column, product_id_column: the log's column names.

    Every row is checked and every image decoded before this returns, so nothing is encoded from a log that would
    fail half-way. A product logged with several titles or images keeps those of its first row.
    """
    from .data import load_triples

    rows = load_triples(
        source, query_column=query_column, title_column=title_column, image_column=image_column,
        product_id_column=product_id_column, skipped=skipped,
    )
    if not hasattr(rows, "column_names"):
        raise ValueError(
            f"{os.fspath(source)}: holds several splits ({list(rows)}); evaluate a single log file, or a folder saved "
            "with save_to_disk that has <split>_products and <split>_queries."
        )
    size = len(rows)
    titles = rows["title"] if "title" in rows.column_names else [None] * size
    images = rows["image"] if "image" in rows.column_names else [None] * size
    products: dict[str, dict[str, Any]] = {}
    relevant: dict[str, list[str]] = {}
    for query, title, image, product_id in zip(rows["query"], titles, images, rows["product_id"]):
        products.setdefault(product_id, {"product_id": product_id, "title": title, "image": image})
        ids = relevant.setdefault(query, [])
        if product_id not in ids:
            ids.append(product_id)
    queries = [{"query": query, "relevant_ids": ids} for query, ids in relevant.items()]
    return list(products.values()), queries


def save_evaluation_sets(folder: str | os.PathLike, splits: Mapping[str, Any]) -> None:
    """Save evaluation sets (`{"test_products": Dataset, "test_queries": Dataset, ...}`) to `folder` with
    `DatasetDict.save_to_disk`, for `load_evaluation_set(folder)` (or `make-hf evaluate --model RUN_FOLDER`) to
    compute the same numbers later. Image paths are kept as they are: the images themselves are not copied."""
    import datasets

    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a copy of sets already loaded: nothing for the user to wait for
    try:
        datasets.DatasetDict({name: splits[name] for name in splits}).save_to_disk(os.fspath(folder))
    finally:
        if shown:
            datasets.enable_progress_bars()


def run_evaluation_sets(model_folder: str | os.PathLike) -> str | None:
    """The evaluation-sets folder a training run saved beside its model, or None when `model_folder` has none."""
    folder = os.path.join(os.fspath(model_folder), EVALUATION_SETS_FOLDER)
    return folder if os.path.isfile(os.path.join(folder, "dataset_dict.json")) else None


def load_evaluation_set(
    source: str | os.PathLike | None = None,
    *,
    split: str = "test",
    products: str | os.PathLike | None = None,
    queries: str | os.PathLike | None = None,
    num_products: int = 1600,
    seed: int = 0,
    language: str | None = None,
    emoji_source: str | os.PathLike | None = None,
    skipped: Any = None,
) -> tuple[Any, Any]:
    """The `(products, queries)` of an evaluation set, ready for `evaluate_retrieval`.

    Args:
        source: `"synthetic"` (the embedded synthetic shop, `num_products` and `seed`), `"emoji"`
            (Emoji-CLDR-3D, built from the npm tarballs in `emoji_source`, fetched with npm when None), a training
            log file (`evaluation_set_from_logs`; `split` does not apply: the whole file is evaluated), a training
            run's `output_dir` (the sets it saved), or a folder written by `DatasetDict.save_to_disk` with
            `<split>_products` and `<split>_queries`. Leave None and give `products` and `queries` files instead
            (see `read_rows`).
        split: `"test"` or `"validation"` (the datasets' split prefixes).
        language: keep only rows whose `language` column equals this (Emoji-CLDR-3D: one language at a time;
            product ids repeat across languages). Default for `"emoji"`: `"en"`.
        skipped (`SkippedRows`, *optional*): the rows of a training log that were left out.
    """
    if source is None:
        if products is None or queries is None:
            raise ValueError(
                "Give an evaluation source (synthetic, emoji, a training log file, a training run's folder or a saved "
                "folder), or both a products and a queries file."
            )
        product_rows, query_rows = read_rows(products), read_rows(queries)
        _refuse_log_as_queries(query_rows, queries)
    else:
        if products is not None or queries is not None:
            raise ValueError("Give either an evaluation source or products + queries files, not both.")
        source = os.fspath(source)
        if source not in ("synthetic", "emoji") and is_row_file(source):
            if not os.path.isfile(source):
                raise FileNotFoundError(f"No file at {source!r}; check the path.")
            product_rows, query_rows = evaluation_set_from_logs(source, skipped=skipped)
            return _filtered(product_rows, query_rows, language)
        if source == "synthetic":
            from .data import make_synthetic_shop

            data = make_synthetic_shop(num_products, seed=seed)
        elif source == "emoji":
            from .data import build_emoji_cldr_3d

            language = language or "en"
            data = build_emoji_cldr_3d(emoji_source, languages=language, seed=seed, verbose=False)
        elif os.path.isdir(source):
            import datasets

            folder = run_evaluation_sets(source) or source
            if not os.path.isfile(os.path.join(folder, "dataset_dict.json")):
                raise ValueError(
                    f"{source}: neither a training run's output_dir (no {EVALUATION_SETS_FOLDER}/) nor a folder saved "
                    "with DatasetDict.save_to_disk (no dataset_dict.json); pass one of those, or a log file."
                )
            data = datasets.load_from_disk(folder)
        else:
            raise FileNotFoundError(
                f"Evaluation source {source!r} is neither 'synthetic', 'emoji', a {'/'.join(ROW_FILE_TYPES)} file nor "
                "a folder (a training run's output_dir, or one saved with save_to_disk)."
            )
        from .data.evaluation_splits import products_split, queries_split

        keys = (products_split(split), queries_split(split))
        missing = [key for key in keys if key not in data]
        if missing:
            raise ValueError(f"{source}: no {', '.join(missing)} (available: {list(data)}); check the split.")
        product_rows, query_rows = data[keys[0]], data[keys[1]]
    return _filtered(product_rows, query_rows, language)


def _refuse_log_as_queries(rows: list[dict[str, Any]], path: Any) -> None:
    """A queries file without `relevant_ids` but with product ids is a training log: say how to evaluate it, before
    a catalogue is encoded for nothing."""
    if rows and all("relevant_ids" not in row for row in rows):
        if any("product_id" in row for row in rows):
            raise ValueError(
                f"{os.fspath(path)}: no relevant_ids column, but product_id: this is a training log (one row per "
                "query and product). Evaluate it as the evaluation source (`make-hf evaluate --dataset FILE`), "
                "which takes the catalogue and the relevance from its rows."
            )
        raise ValueError(
            f"{os.fspath(path)}: no relevant_ids column; every query row needs the ids of its relevant products."
        )


def _filtered(product_rows: Any, query_rows: Any, language: str | None) -> tuple[Any, Any]:
    if language is None:
        return product_rows, query_rows
    return tuple(_filter_language(rows, language, name)
                 for rows, name in ((product_rows, "products"), (query_rows, "queries")))


def _filter_language(rows: Any, language: str, name: str) -> Any:
    table = _Table(rows, name)
    if not table.has("language"):
        return rows
    keep = [i for i, value in enumerate(table.column("language")) if value == language]
    if not keep:
        raise ValueError(f"`{name}` has no row with language {language!r}.")
    if hasattr(rows, "select"):
        return rows.select(keep)
    if isinstance(rows, Mapping):
        return {name: [values[i] for i in keep] for name, values in rows.items()}
    return [rows[i] for i in keep]


__all__ = [
    "EVALUATION_SETS_FOLDER",
    "ROW_FILE_TYPES",
    "evaluation_set_from_logs",
    "is_row_file",
    "load_evaluation_set",
    "read_rows",
    "run_evaluation_sets",
    "save_evaluation_sets",
]
