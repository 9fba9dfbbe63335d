"""Load your own (query, title, image, product id) training triples, and drop the rows that cannot be used.

Sources: a JSONL / JSON / CSV / TSV / Parquet file, a folder of such files, a `datasets` dataset saved with
`save_to_disk`, a `Dataset` / `DatasetDict` object, or a dataset name on the Hugging Face Hub. Column names are
arguments. Image paths relative to a data file are resolved against the file's folder (or `image_root`).

A JSONL file, one triple per line (`image` may also be omitted or null for a product without a picture):

    {"query": "red sneakers", "title": "2024 new running shoes red mesh", "image": "img/1.jpg", "product_id": "1"}
    {"query": "usb c charger", "title": "65w gan fast charger usb c", "image": "img/2.jpg", "product_id": "2"}
    {"query": "phone charger", "title": "65w gan fast charger usb c", "image": "img/2.jpg", "product_id": "2"}

JSONL, JSON, CSV and TSV files are read row by row with the standard library, so each row keeps its own values:
a query, title or image that is not a string skips that row (`wrong_type`) instead of re-typing its whole column,
an integer product id becomes its decimal string, and CSV values are never guessed into numbers. A JSONL line
that is not a JSON object, or a CSV / TSV row that does not parse or has the wrong number of fields, is skipped
as `malformed_row` with its line number. A file that cannot be read at all (empty, not UTF-8, a JSON document or
Parquet file that does not parse) is an error naming the file, and so is a source with no usable row left, whose
error carries the skip report.

Validation happens here, once, before training: every row's query, product id and image are checked (images are
decoded with `make_hf.image_utils.load_image`). Rows with an empty query, a missing or corrupt image, neither
title nor image, or no product id are dropped and recorded in a `SkippedRows` report, so that a bad row never
crashes a run mid-epoch. `MakeCollator` re-checks each batch (a file can vanish after loading) and drops and
records failures the same way. The returned rows carry their position in the source as `source_row`, so both
reports name the original row.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from ..image_utils import load_image
from ..keywords import stable_hash64
from ..processing_make import is_query_text
from ..row_files import read_records
from .skipped import SkippedRows

logger = logging.getLogger(__name__)

SOURCE_ROW_COLUMN = "source_row"
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
_TEXT_FILES = (".jsonl", ".json", ".csv", ".tsv")
_ORIGINAL_ROW = "_original_row"  # the row's position in a text file, carried past the rows dropped while reading


def derive_product_id(title: str | None, image: Any) -> str:
    """A product id for data without one: the same title and image reference give the same id."""
    if isinstance(image, Mapping):
        image = image.get("path") or image.get("bytes")
    reference = image if isinstance(image, (bytes, bytearray)) else str(image if image is not None else "").encode()
    return "p" + format(stable_hash64((title or "").encode("utf-8") + b"\0" + bytes(reference)), "016x")


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def has_image(image: Any) -> bool:
    """Whether a row's `image` value refers to an image at all (a path, bytes, a decoded image), blank or not."""
    return not (_is_blank(image) or (isinstance(image, Mapping) and image.get("bytes") is None
                                     and _is_blank(image.get("path"))))


def check_row(
    query: Any,
    title: Any,
    image: Any,
    product_id: Any,
    *,
    require_image: bool = False,
    needs_query: bool = True,
    needs_product_id: bool = True,
    needs_product: bool = True,
    open_image: Callable[[Any], Any] | None = None,
) -> tuple[str, str] | None:
    """Why a training row cannot be used, as `(reason, detail)`, or None when it can: the one rule `load_triples`
    applies before training and `MakeCollator` applies again to every batch.

    `image` is a resolved path, bytes, a `datasets` image dict, a PIL image or None (no image). It is opened with
    `open_image` (default: fully decoded by `load_image`, so a truncated file is caught here rather than in the
    middle of an epoch), which raises `FileNotFoundError` for a missing file and `ValueError` for one that cannot be
    used. `needs_query` / `needs_product_id` / `needs_product` (a title or an image) say which parts the row must
    have; a collator for product rows without queries turns `needs_query` off.
    """
    if needs_query and not is_query_text(query):
        return "empty_query", "the query is empty"
    if needs_product_id and _is_blank(product_id):
        return "missing_product_id", "the product id is empty"
    if not has_image(image):
        if require_image:
            return "missing_image", "the row has no image and require_image=True"
        if needs_product and _is_blank(title):
            return "no_title_or_image", "the product has neither a title nor an image"
        return None
    try:
        (open_image or (lambda value: load_image(value, "image")))(image)
    except FileNotFoundError:
        path = image.get("path") if isinstance(image, Mapping) else image
        return "missing_image", f"no file at {path!r}"
    except ValueError as error:  # corrupt data, and unsupported types (InvalidInputTypeError is a ValueError)
        return "corrupt_image", str(error)
    return None


def _resolve(image: Any, root: Path | None) -> Any:
    if isinstance(image, str) and image.strip() and root is not None:
        path = Path(image).expanduser()
        if not path.is_absolute() and not image.startswith(("http://", "https://")):
            return str(root / path)
    if isinstance(image, str) and not image.strip():
        return None
    return image


def _resolve_column(dataset: datasets.Dataset, column: str | None, root: Path | None) -> datasets.Dataset:
    """Resolve relative image paths of a split that holds no training rows (an evaluation catalogue)."""
    if column is None or root is None or column not in dataset.column_names:
        return dataset
    if not isinstance(dataset.features[column], datasets.Value):  # decoded images or bytes: nothing to resolve
        return dataset
    return dataset.map(lambda row: {column: _resolve(row[column], root)})


def _type_problem(record: dict[str, Any], columns: dict[str, str | None]) -> str | None:
    """Why a row's query, title, image or product id has the wrong type to be used as it is, or None."""
    for role in ("query", "title", "image"):
        column = columns[role]
        value = record.get(column) if column is not None else None
        if value is not None and not isinstance(value, str):
            kind = "a path string or null" if role == "image" else "a string"
            return f"the {role} ({column!r}) is {type(value).__name__} {json.dumps(value)[:60]}, not {kind}"
    column = columns["product_id"]
    value = record.get(column) if column is not None else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
        return (f"the product id ({column!r}) is {type(value).__name__} {json.dumps(value)[:60]}, not a string or "
                "an integer")
    return None


def _read_text_file(path: Path, name: str, columns: dict[str, str | None], skipped: SkippedRows) -> datasets.Dataset:
    """Read a JSONL / JSON / CSV / TSV file with the standard library, row by row.

    `datasets` infers one Arrow type per column, so a single number among string queries would turn the whole
    column into JSON-encoded strings (`'"blue sneakers"'`). Here every row keeps its own values: a row whose
    query, title or image is not a string is skipped (`wrong_type`), an integer product id becomes its decimal
    string, and the query, title, image and product id columns are always strings.
    """
    header, values = read_records(path)
    records, positions = [], []
    for index, where, record, problem in values:
        if problem is None and not isinstance(record, dict):
            problem = f"{where}: a JSON {type(record).__name__}, not an object of column values"
        if problem is not None:
            skipped.add(index, "malformed_row", problem, source=name)
            continue
        problem = _type_problem(record, columns)
        if problem is not None:
            skipped.add(index, "wrong_type", problem, source=name)
            continue
        product_id = record.get(columns["product_id"]) if columns["product_id"] is not None else None
        if isinstance(product_id, int):
            record[columns["product_id"]] = str(product_id)
        records.append(record)
        positions.append(index)
    if not records:
        raise ValueError(f"{name}: no usable rows.\n{skipped.report()}\nFix the rows above, or pass another file.")
    names = list(dict.fromkeys([*header, *(key for record in records for key in record)]))
    text_columns = {column for column in columns.values() if column is not None}
    arrays = {}
    for column in names:
        cells = [record.get(column) for record in records]
        if column in text_columns:
            arrays[column] = pa.array(cells, type=pa.string())
            continue
        try:
            arrays[column] = pa.array(cells)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            logger.warning("%s: column %r mixes value types; it is kept as JSON-encoded strings.", name, column)
            arrays[column] = pa.array([None if cell is None else json.dumps(cell) for cell in cells], pa.string())
    arrays[_ORIGINAL_ROW] = pa.array(positions, type=pa.int64())
    return datasets.Dataset(datasets.table.InMemoryTable(pa.table(arrays)))


def _read(
    source: str | os.PathLike, split: str | None, name: str, columns: dict[str, str | None], skipped: SkippedRows
) -> tuple[datasets.Dataset | datasets.DatasetDict, Path | None]:
    """The raw dataset behind `source` and the folder that relative image paths start from."""
    path = Path(source).expanduser()
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"{path}: unsupported file type {path.suffix!r}. Use JSONL, JSON, CSV, TSV or Parquet "
                f"({', '.join(sorted(_FILE_BUILDERS))}), a folder saved with `save_to_disk`, or a Hub dataset name."
            )
        if path.suffix.lower() in _TEXT_FILES:
            return _read_text_file(path, name, columns, skipped), path.parent.resolve()
        try:
            data = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as error:  # pyarrow and datasets raise many types for a damaged file
            raise ValueError(
                f"{path}: cannot read it as Parquet ({type(error).__name__}: {error}). Check that the file is "
                "complete (re-export it), or convert it to JSONL, where a broken line only skips that row."
            ) from error
        return data, path.parent.resolve()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return datasets.load_from_disk(str(path)), path.resolve()
        return datasets.load_dataset(str(path), split=split), path.resolve()
    text = str(source)
    if path.suffix.lower() in _FILE_BUILDERS or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"No file or folder at {text!r}; check the path.")
    try:
        return datasets.load_dataset(str(source), split=split), None
    except Exception as error:
        raise ValueError(
            f"{str(source)!r} is not a file or folder here, and loading it as a Hub dataset failed ({error}). Pass "
            "a JSONL/CSV/Parquet file, a folder saved with `save_to_disk`, or a reachable Hub dataset name."
        ) from error


def _standardise(
    data: datasets.Dataset,
    name: str,
    root: Path | None,
    columns: dict[str, str | None],
    *,
    validate: bool,
    require_image: bool,
    skipped: SkippedRows,
    num_proc: int | None,
) -> datasets.Dataset:
    """Rename to the standard columns, cast text to strings, resolve image paths, and drop unusable rows."""
    available = list(data.column_names)
    query_column, title_column = columns["query"], columns["title"]
    image_column, product_id_column = columns["image"], columns["product_id"]
    if query_column not in available:
        raise ValueError(
            f"{name}: no query column {query_column!r} (columns: {available}). Pass `query_column=` with the name "
            "of the column holding the search queries."
        )
    has_title = title_column is not None and title_column in available
    has_image = image_column is not None and image_column in available
    if not (has_title or has_image):
        raise ValueError(
            f"{name}: neither a title column {title_column!r} nor an image column {image_column!r} (columns: "
            f"{available}). Pass `title_column=` and/or `image_column=`."
        )
    has_product_id = product_id_column is not None and product_id_column in available
    renames = {source: target for source, target in ((query_column, "query"), (title_column, "title"),
                                                       (image_column, "image"), (product_id_column, "product_id"))
               if source is not None and source in available and source != target}
    clashes = [target for target in renames.values() if target in available and target not in renames]
    if clashes:
        raise ValueError(
            f"{name}: cannot rename to {clashes}: columns of that name already exist (columns: {available}). Point "
            "the *_column arguments at them, or drop or rename them first."
        )
    data = data.rename_columns(renames)
    for column in ("query", "title", "product_id"):
        if column in data.column_names and data.features[column] != datasets.Value("string"):
            data = data.cast_column(column, datasets.Value("string"))
    image_is_feature = has_image and isinstance(data.features["image"], datasets.Image)
    if image_is_feature:
        # Decoding stays in the collator, where a failure drops a row instead of failing the DataLoader.
        data = data.cast_column("image", datasets.Image(decode=False))

    def prepare(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        size = len(indices)
        titles = batch["title"] if has_title else [None] * size
        images = [_resolve(image, root) for image in batch["image"]] if has_image else [None] * size
        if has_product_id:
            product_ids = batch["product_id"]
        else:
            product_ids = [derive_product_id(title, image) for title, image in zip(titles, images)]
        reasons, details = [], []
        for query, title, image, product_id in zip(batch["query"], titles, images, product_ids):
            problem = (check_row(query, title, image, product_id, require_image=require_image)
                       if validate else None)
            reasons.append(problem[0] if problem else None)
            details.append(problem[1] if problem else None)
        positions = batch[_ORIGINAL_ROW] if _ORIGINAL_ROW in batch else list(indices)
        out = {"product_id": product_ids, SOURCE_ROW_COLUMN: positions, "_skip_reason": reasons,
               "_skip_detail": details}
        if has_image and not image_is_feature:
            out["image"] = images
        return out

    data = data.map(
        prepare,
        batched=True,
        batch_size=256,
        with_indices=True,
        num_proc=num_proc,
        load_from_cache_file=False,  # image files may have changed since the last run: always re-check
        desc=f"Checking rows of {name}",
    )
    reasons = data.with_format("arrow")["_skip_reason"].to_pylist()
    bad = [i for i, reason in enumerate(reasons) if reason is not None]
    if bad:
        details = data.with_format("arrow")["_skip_detail"].to_pylist()
        # The row's place in the source, not in `data`: rows that did not parse are already gone from it.
        positions = data.with_format("arrow")[SOURCE_ROW_COLUMN].to_pylist()
        for i in bad:
            skipped.add(positions[i], reasons[i], details[i], source=name)
        keep = [i for i, reason in enumerate(reasons) if reason is None]
        data = data.select(keep).flatten_indices()
    if data.num_rows == 0:
        raise ValueError(f"{name}: no usable rows.\n{skipped.report()}\nFix the rows above, or pass another file.")
    return data.remove_columns([column for column in ("_skip_reason", "_skip_detail", _ORIGINAL_ROW)
                                if column in data.column_names])


def load_triples(
    source: str | os.PathLike | datasets.Dataset | datasets.DatasetDict,
    *,
    split: str | None = None,
    query_column: str = "query",
    title_column: str | None = "title",
    image_column: str | None = "image",
    product_id_column: str | None = "product_id",
    image_root: str | os.PathLike | None = None,
    validate: bool = True,
    require_image: bool = False,
    skipped: SkippedRows | None = None,
    num_proc: int | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    """Load training triples from a file, a folder, a saved or in-memory dataset, or the Hub, and drop bad rows.

    Args:
        source: a `.jsonl` / `.json` / `.csv` / `.tsv` / `.parquet` file; a folder saved with `save_to_disk`; a
            folder of data files (read by `datasets.load_dataset`); a `Dataset` / `DatasetDict`; or a Hub name.
        split: the split to return from a multi-split source. None: a single-split source gives a `Dataset`, a
            multi-split one a `DatasetDict` in which every split holding training rows (a query column and a
            title or image column) is checked; the other splits (e.g. evaluation products/queries) are untouched.
        query_column, title_column, image_column, product_id_column: the source's column names; they are renamed
            to `query`, `title`, `image`, `product_id`. Without a product id column, ids are derived from title
            and image (`derive_product_id`). Title or image may be absent, not both. In a JSON / JSONL file a row
            whose query, title or image is not a string (null aside) is skipped as `wrong_type`; an integer
            product id is read as its decimal string, any other non-string id skips the row.
        image_root: folder that relative image paths start from; default: the data file's folder (or the saved
            dataset's folder).
        validate: check every row (and decode every image) now. With False, bad rows are still dropped by
            `MakeCollator` during training.
        require_image: treat a row without an image as a `missing_image` row instead of a title-only product.
        skipped: a `SkippedRows` to record dropped rows in (pass the same one to `MakeCollator` to get a single
            report at the end of a run). When None, the dropped rows are logged as a warning here.
        num_proc: processes for the row check (large image sets).

    Raises:
        ValueError: a file that cannot be read (empty, not UTF-8, broken JSON or Parquet), missing columns, or no
            usable row left (the message holds the skip report).
        FileNotFoundError: a path with nothing behind it.

    Returns:
        A `Dataset` (or `DatasetDict`, see `split`) with `query`, `title`, `image`, `product_id`, `source_row`
        (the row's 0-based position in the source) and the source's other columns. `image` holds absolute paths,
        bytes or `datasets` image dicts, decoded later by the processor.
    """
    columns = {"query": query_column, "title": title_column, "image": image_column, "product_id": product_id_column}
    report = SkippedRows()
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        data, root, name = source, Path(image_root) if image_root is not None else None, "dataset"
    else:
        name = os.path.basename(os.path.normpath(str(source))) or str(source)
        data, root = _read(source, split, name, columns, report)
        if image_root is not None:
            root = Path(image_root).expanduser().resolve()
    if isinstance(data, datasets.DatasetDict) and split is not None:
        if split not in data:
            raise ValueError(f"{name}: no split {split!r}; available: {list(data)}.")
        data = data[split]
        name = f"{name}[{split}]"
    options = dict(validate=validate, require_image=require_image, skipped=report, num_proc=num_proc)
    if isinstance(data, datasets.DatasetDict):
        if len(data) == 1:
            (only,) = data.values()
            result = _standardise(only, name, root, columns, **options)
        else:
            result = datasets.DatasetDict({
                key: _standardise(value, f"{name}[{key}]", root, columns, **options)
                if query_column in value.column_names and (title_column in value.column_names
                                                           or image_column in value.column_names)
                else _resolve_column(value, image_column, root)
                for key, value in data.items()
            })
    else:
        result = _standardise(data, name, root, columns, **options)
    if skipped is not None:
        skipped.extend(report)
    elif report:
        logger.warning("%s", report.report())
    return result


__all__ = ["SOURCE_ROW_COLUMN", "check_row", "derive_product_id", "has_image", "load_triples", "read_records"]
