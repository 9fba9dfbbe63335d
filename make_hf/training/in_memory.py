"""Pre-training data given as Python objects: `pretrain(args, train_dataset=..., eval_dataset=..., test_dataset=...)`.

Training rows are a `datasets.Dataset` or a list of row dicts with the columns a training file has (`query`,
`title`, `image`, `product_id`; renamed with `args.*_column`). They are checked by `make_hf.data.load_triples` as a
file is: a bad row is skipped and counted in the run's skipped-rows report under the argument's name, with its
position in what was given. Image paths are used as given (relative ones from the working directory).

An evaluation set (`eval_dataset`, validated during the run; `test_dataset`, scored at the end) is either

- the layout of the `make_hf.data` datasets: a `DatasetDict` or dict with `products` (`product_id`, `title`,
  `image`) and `queries` (`query`, `relevant_ids`), or the tuple `(products, queries)` that
  `make_hf.evaluation_sets.load_evaluation_set` returns; or
- training-style rows, whose relevance comes from the rows (`evaluation_set_from_logs`): the catalogue is their
  distinct products, and a query's relevant products are those it was logged with.

A set not given is held out of `train_dataset` by product, as a training file is split (`split_by_product`): with
neither, validation and test products both leave training; with one of them, only the other's products do. With
`args.dataset` instead of `train_dataset`, a set given replaces that split of the data as loaded.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from ..data import SkippedRows, load_triples
from ..data.evaluation_splits import products_split, queries_split
from .arguments import PretrainArguments, default_output_dir
from .sources import PretrainingData, load_pretraining_data, split_by_product

_IMAGE_TYPES = (str, bytes, dict)
"""Image cells a row dict may hold besides a PIL image and None: a path, encoded bytes, a `datasets` image dict."""


def run_arguments(args: PretrainArguments, train_dataset: Any) -> PretrainArguments:
    """`args` for a run on `train_dataset`: `dataset` names the rows given (for the model card and its launch
    command), and a default `output_dir` is that of this data, not of the synthetic shop's run."""
    if train_dataset is None:
        return args
    if args.dataset != PretrainArguments.dataset:
        raise ValueError(
            f"Both args.dataset ({args.dataset!r}) and train_dataset are given; pass the training rows one way: "
            "leave `dataset` at its default with train_dataset, or drop train_dataset."
        )
    name = _dataset_name(train_dataset)
    output_dir = args.output_dir
    if output_dir == default_output_dir(args.model, args.dataset):
        output_dir = default_output_dir(args.model, name)
    return dataclasses.replace(args, dataset=name, output_dir=output_dir)


def pretraining_data(
    args: PretrainArguments, train_dataset: Any = None, eval_dataset: Any = None, test_dataset: Any = None
) -> PretrainingData:
    """The run's data: `args.dataset`, or `train_dataset`; `eval_dataset` / `test_dataset` replace its validation /
    test split (held out of `train_dataset` by product when not given)."""
    data = load_pretraining_data(args) if train_dataset is None else None
    skipped = SkippedRows()
    given = {}
    for split, argument, value in (("validation", "eval_dataset", eval_dataset),
                                   ("test", "test_dataset", test_dataset)):
        if value is not None:
            given[split] = evaluation_set(value, argument, args, skipped)
    if data is None:
        rows = training_rows(train_dataset, "train_dataset", args, skipped)
        data = _held_out_of(rows, _dataset_name(train_dataset), args, given)
    for split, (products, queries) in given.items():
        setattr(data, products_split(split), products)
        setattr(data, queries_split(split), queries)
    if data.skipped is not None:
        skipped = SkippedRows(list(data.skipped)).extend(skipped)
    data.skipped = skipped
    return data


def training_rows(value: Any, argument: str, args: PretrainArguments, skipped: SkippedRows) -> datasets.Dataset:
    """`value` (a `Dataset` or a list of row dicts) checked as a training file is; dropped rows go to `skipped`."""
    own = SkippedRows()
    dataset = _as_dataset(value, argument, args, own)
    _require_training_columns(dataset, argument, args)
    try:
        rows = load_triples(
            dataset,
            query_column=args.query_column,
            title_column=args.title_column,
            image_column=args.image_column,
            product_id_column=args.product_id_column,
            skipped=own,
        )
    except ValueError as error:  # no usable row left: load_triples names an in-memory source "dataset"
        raise ValueError(f"`{argument}`: {str(error).removeprefix('dataset: ')}") from None
    for row in own:
        skipped.add(row.index, row.reason, row.detail, source=argument)
    return rows


def evaluation_set(
    value: Any, argument: str, args: PretrainArguments, skipped: SkippedRows
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """`(products, queries)` from `value`: products and queries as they are, or training rows turned into a
    catalogue and its queries (`evaluation_set_from_logs`, the rows checked and counted as in training)."""
    from ..evaluation_sets import evaluation_set_from_logs

    if isinstance(value, datasets.DatasetDict) or isinstance(value, Mapping):
        missing = [key for key in ("products", "queries") if key not in value]
        if missing:
            raise ValueError(
                f"`{argument}` has no {' and no '.join(repr(key) for key in missing)} (keys: {list(value)}). An "
                "evaluation set is a dict / DatasetDict with 'products' (product_id, title, image) and 'queries' "
                "(query, relevant_ids), or training rows (query, title, image, product_id)."
            )
        products, queries = value["products"], value["queries"]
    elif isinstance(value, tuple) and len(value) == 2 and not any(isinstance(part, Mapping) for part in value):
        products, queries = value
    else:
        rows = training_rows(value, argument, args, skipped)
        products, queries = evaluation_set_from_logs(rows, skipped=SkippedRows())  # rows already checked
        return datasets.Dataset.from_list(products), datasets.Dataset.from_list(queries)
    products = _plain_dataset(products, f"{argument}['products']")
    queries = _plain_dataset(queries, f"{argument}['queries']")
    _require_columns(products, f"{argument}['products']", ["product_id"], any_of=["title", "image"])
    _require_columns(queries, f"{argument}['queries']", ["query", "relevant_ids"])
    return products, queries


def _held_out_of(rows: datasets.Dataset, name: str, args: PretrainArguments, given: dict) -> PretrainingData:
    """`rows` split by product as a training file is, for the held-out splits not `given`; the products that only
    a given split's hold-out would take train."""
    needed = {"validation", "test"} - set(given)
    if not needed:
        return PretrainingData(name, rows, *given["validation"], *given["test"])
    data = split_by_product(name, rows, args.validation_fraction, seed=args.seed)
    if len(needed) == 2:
        return data
    held = {pid for split in needed for pid in getattr(data, products_split(split))["product_id"]}
    data.train = rows.select([i for i, pid in enumerate(rows["product_id"]) if pid not in held])
    return data


def _dataset_name(value: Any) -> str:
    """The name a run's card and messages give in-memory training rows: the dataset's own, else the argument."""
    info = getattr(value, "info", None)
    return getattr(info, "dataset_name", None) or "train_dataset"


def _as_dataset(value: Any, argument: str, args: PretrainArguments, skipped: SkippedRows) -> datasets.Dataset:
    """A `Dataset` as it is; a list of row dicts as a `Dataset`, a row whose query, title or product id is not a
    string (an integer id aside) or whose image is not a path, bytes, image dict or PIL image skipped as
    `wrong_type`, as in a JSON file."""
    if isinstance(value, datasets.Dataset):
        return value
    if isinstance(value, (datasets.DatasetDict, datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise TypeError(
            f"`{argument}` is a {type(value).__name__}; pass one in-memory datasets.Dataset (e.g. dataset['train'], "
            "loaded without streaming) or a list of row dicts."
        )
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise TypeError(
            f"`{argument}` must be a datasets.Dataset or a list of row dicts (query, title, image, product_id), got "
            f"{type(value).__name__}. To train on a file, pass its path as args.dataset instead."
        )
    if len(value) == 0:
        raise ValueError(f"`{argument}` is empty; it needs rows of (query, title, image, product_id).")
    text = {"query": args.query_column, "title": args.title_column, "product_id": args.product_id_column}
    records, positions = [], []
    for index, row in enumerate(value):
        if not isinstance(row, Mapping):
            raise TypeError(f"`{argument}[{index}]` is a {type(row).__name__}; every row must be a dict of columns.")
        problem = _type_problem(row, text, args.image_column)
        if problem is not None:
            skipped.add(index, "wrong_type", problem, source=argument)
            continue
        record = dict(row)
        if isinstance(record.get(args.product_id_column), int):
            record[args.product_id_column] = str(record[args.product_id_column])
        records.append(record)
        positions.append(index)
    if not records:
        raise ValueError(f"`{argument}`: no usable rows.\n{skipped.report()}\nFix the rows above.")
    names = list(dict.fromkeys(key for record in records for key in record))
    image_column = args.image_column if args.image_column in names else None
    try:
        dataset = datasets.Dataset.from_dict(
            {name: [record.get(name) for record in records] for name in names if name != image_column}
        )
        for name in text.values():
            if name in dataset.column_names and dataset.features[name] != datasets.Value("string"):
                dataset = dataset.cast_column(name, datasets.Value("string"))
    except (TypeError, ValueError) as error:  # pyarrow's errors are ValueError / TypeError subclasses
        raise ValueError(
            f"`{argument}`: the rows do not form one table ({type(error).__name__}: {error}). Give each column "
            "values of one type in every row."
        ) from None
    if image_column is not None:
        images = [record.get(image_column) for record in records]
        # Paths stay strings (checked like a file's); bytes and PIL images become `datasets` image dicts.
        paths_only = all(image is None or isinstance(image, str) for image in images)
        feature = datasets.Value("string") if paths_only else datasets.Image(decode=False)
        column = datasets.Dataset.from_dict({image_column: images}, features=datasets.Features({image_column: feature}))
        dataset = datasets.concatenate_datasets([dataset, column], axis=1)
    # The position among the rows given, so that a row skipped later is reported where the caller has it.
    from ..data.files import _ORIGINAL_ROW

    return dataset.add_column(_ORIGINAL_ROW, positions)


def _type_problem(row: Mapping, text: dict[str, str | None], image_column: str | None) -> str | None:
    for role, column in text.items():
        value = row.get(column) if column is not None else None
        if value is None or isinstance(value, str) or (role == "product_id" and type(value) is int):
            continue
        kind = "a string or an integer" if role == "product_id" else "a string"
        return f"the {role} ({column!r}) is {type(value).__name__} {str(value)[:60]!r}, not {kind}"
    image = row.get(image_column) if image_column is not None else None
    if image is None or isinstance(image, _IMAGE_TYPES) or _is_pil_image(image):
        return None
    return f"the image ({image_column!r}) is {type(image).__name__}, not a path, bytes or a PIL image"


def _is_pil_image(value: Any) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


def _plain_dataset(value: Any, argument: str) -> datasets.Dataset:
    """An evaluation catalogue or query set as a `Dataset` (what the run saves and evaluates)."""
    if isinstance(value, datasets.Dataset):
        return value
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and value:
        for index, row in enumerate(value):
            if not isinstance(row, Mapping):
                raise TypeError(f"`{argument}[{index}]` is a {type(row).__name__}; every row must be a dict.")
        try:
            return datasets.Dataset.from_list([dict(row) for row in value])
        except (TypeError, ValueError) as error:
            raise ValueError(f"`{argument}`: the rows do not form one table ({error}).") from None
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        raise ValueError(f"`{argument}` is empty.")
    raise TypeError(f"`{argument}` must be a datasets.Dataset or a list of row dicts, got {type(value).__name__}.")


def _require_training_columns(dataset: datasets.Dataset, argument: str, args: PretrainArguments) -> None:
    _require_columns(dataset, argument, [args.query_column],
                     any_of=[name for name in (args.title_column, args.image_column) if name is not None])


def _require_columns(dataset: datasets.Dataset, argument: str, names: list[str], any_of: list[str] = ()) -> None:
    missing = [repr(name) for name in names if name not in dataset.column_names]
    if any_of and not any(name in dataset.column_names for name in any_of):
        missing.append(" or ".join(repr(name) for name in any_of))
    if missing:
        raise ValueError(
            f"`{argument}` has no column {', '.join(missing)} "
            f"(columns: {dataset.column_names})."
        )


__all__ = ["evaluation_set", "pretraining_data", "run_arguments", "training_rows"]
