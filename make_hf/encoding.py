"""Batched encoders of a MAKE model: a catalogue of products and a list of queries, in eval mode without gradients.

`encode_products` runs the processor once per batch (images decoded and resized once) and the towers once per
product condition:

- `"title+image"`: the product as served, title and image fused by the model (Modal Adaptation for MAKE);
- `"title"`: the title alone (`get_product_features` without pixels);
- `"image"`: the image alone.

`encode_queries` encodes query strings with the query tower. Evaluation (`make_hf.evaluation`), the CLI, the
benchmarks and `make_hf.retrieval.MakeRetriever` all encode through these two functions, so that a product or a
query gets the same vector whichever of them asks.

Products and queries are given as a `datasets.Dataset`, a list of row dicts or a dict of columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

CONDITIONS = ("title+image", "title", "image")
"""The product conditions `encode_products` (and `evaluate_retrieval`) know: fused title and image, title only, image
only."""


class _Table:
    """Column access over a `datasets.Dataset`, a list of row dicts or a dict of columns."""

    def __init__(self, data: Any, argument: str):
        self.argument = argument
        if hasattr(data, "column_names") and hasattr(data, "select_columns"):  # datasets.Dataset
            if not hasattr(data, "__len__"):
                raise ValueError(
                    f"`{argument}` is a streaming (iterable) dataset; it is encoded and searched as a whole: load "
                    "it without streaming or pass a list of rows."
                )
            self._dataset, self._rows, self._columns = data, None, None
            self.column_names = list(data.column_names)
            self._length = len(data)
        elif isinstance(data, Mapping):
            if any(isinstance(values, str) or not hasattr(values, "__len__") for values in data.values()):
                raise ValueError(
                    f"`{argument}` is a dict whose values are not columns: pass a list of row dicts (a single row "
                    "as `[row]`) or a dict of equal-length column lists."
                )
            lengths = {name: len(values) for name, values in data.items()}
            if len(set(lengths.values())) > 1:
                raise ValueError(f"The columns of `{argument}` have different lengths: {lengths}.")
            self._dataset, self._rows, self._columns = None, None, dict(data)
            self.column_names = list(data)
            self._length = next(iter(lengths.values()), 0)
        elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
            for row, item in enumerate(data):
                if not isinstance(item, Mapping):
                    raise ValueError(f"`{argument}[{row}]` must be a dict of columns, got {type(item).__name__}.")
            self._dataset, self._rows, self._columns = None, list(data), None
            self.column_names = list(dict.fromkeys(name for item in self._rows for name in item))
            self._length = len(self._rows)
        else:
            raise ValueError(
                f"`{argument}` must be a datasets.Dataset, a list of row dicts or a dict of columns, "
                f"got {type(data).__name__}."
            )

    def __len__(self) -> int:
        return self._length

    def has(self, name: str) -> bool:
        return name in self.column_names

    def require(self, *names: str) -> None:
        missing = [name for name in names if not self.has(name)]
        if missing:
            raise ValueError(
                f"`{self.argument}` has no column {', '.join(repr(n) for n in missing)} "
                f"(columns: {self.column_names})."
            )

    def column(self, name: str, start: int = 0, end: int | None = None) -> list:
        end = self._length if end is None else min(end, self._length)
        if not self.has(name):
            return [None] * (end - start)
        if self._dataset is not None:
            return list(self._dataset.select_columns([name])[start:end][name])
        if self._columns is not None:
            return list(self._columns[name][start:end])
        return [row.get(name) for row in self._rows[start:end]]


@dataclass
class EncodedProducts:
    """A catalogue encoded under one or more conditions (what `encode_products` returns).

    Attributes:
        product_ids: the catalogue's ids, in catalogue order (None from `encode_product_rows` without ids).
        embeds: condition -> (num_products, dim) float32 CPU tensor; rows that cannot be encoded in that
            condition are zeros.
        retrievable: condition -> (num_products,) bool, False for those rows.
        modal_weights: (num_products, 2) `[title weight, image weight]` under `"title+image"` (None if that
            condition was not encoded).
        has_title, has_image: (num_products,) bool.
        categories, category_groups: the catalogue's `category` / `category_group` columns (None if absent).
    """

    product_ids: list | None
    embeds: dict[str, torch.Tensor]
    retrievable: dict[str, torch.Tensor]
    modal_weights: torch.Tensor | None
    has_title: torch.Tensor
    has_image: torch.Tensor
    categories: list | None = None
    category_groups: list | None = None
    conditions: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.conditions = tuple(self.embeds)


def _check_conditions(conditions: Iterable[str]) -> tuple[str, ...]:
    if isinstance(conditions, str):
        conditions = (conditions,)
    conditions = tuple(dict.fromkeys(conditions))
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown or not conditions:
        raise ValueError(f"Unknown condition(s) {unknown}; choose from {', '.join(CONDITIONS)}.")
    return conditions


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DistributedDataParallel and similar wrappers hide the feature methods behind `.module`.
    while not hasattr(model, "get_product_features") and hasattr(model, "module"):
        model = model.module
    for method in ("get_product_features", "get_query_features"):
        if not hasattr(model, method):
            raise ValueError(
                f"`model` has no `{method}`; pass a `MakeModel` (unwrap it with accelerator.unwrap_model)."
            )
    return model


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


class _EvalMode:
    """Run in eval mode without gradients, and put the model back in the mode it was in."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        # Switching modes visits every submodule (a thousand attribute writes for a MiniLM + image tower model):
        # as costly as the query tower itself for one short query, so a model already in eval mode is left alone.
        self.switched = any(module.training for module in self.model.modules())
        if self.switched:
            self.model.eval()
        self.no_grad = torch.inference_mode()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        if self.switched:
            self.model.train(self.was_training)


def _has_title(title: Any) -> bool:
    return isinstance(title, str) and bool(title.strip())


def check_query_texts(queries: Any, argument: str = "queries") -> list[str]:
    """`queries` as a list of non-empty strings (a single string is a batch of one); errors name `argument[row]`."""
    from .processing_make import is_query_text

    if isinstance(queries, str):
        queries = [queries]
    elif isinstance(queries, (bytes, Mapping)) or not isinstance(queries, Iterable):
        raise ValueError(f"`{argument}` must be a string or a list of strings, got {type(queries).__name__}.")
    queries = list(queries)
    for row, text in enumerate(queries):
        if not is_query_text(text):
            raise ValueError(f"{argument}[{row}] is {text!r}; a query must be a non-empty string.")
    return queries


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")


def encode_products(
    model: torch.nn.Module,
    processor: Any,
    products: Any,
    *,
    conditions: Iterable[str] = CONDITIONS,
    batch_size: int = 64,
    show_progress: bool = True,
    image_features: Any = None,
) -> EncodedProducts:
    """Encode a catalogue with `model.get_product_features` under each condition.

    Each batch goes through the processor once (images decoded and resized once); the towers then run once
    per condition on the rows that condition can encode.

    Args:
        model: a `MakeModel` (or a wrapper with `.module`); its mode is restored afterwards.
        processor: the model's `MakeProcessor`.
        products: rows with `product_id`, `title` (str or None) and `image` (anything
            `make_hf.image_utils.load_image` reads, or None); optional `category`, `category_group`.
        conditions: any of `"title+image"`, `"title"`, `"image"`.
        batch_size: products per forward pass.
        show_progress: show a tqdm progress bar.
        image_features (`ImageFeatureCache`, *optional*): for a model with a locked image tower, take the tower's
            outputs from this cache (filled with the catalogue's images first) instead of running the tower.
    """
    conditions = _check_conditions(conditions)
    _check_batch_size(batch_size)
    table = products if isinstance(products, _Table) else _Table(products, "products")
    table.require("product_id")
    product_ids = table.column("product_id")
    check_product_ids(product_ids)
    return encode_product_rows(
        model, processor, table, conditions=conditions, batch_size=batch_size, show_progress=show_progress,
        image_features=image_features, product_ids=product_ids,
    )


def check_product_ids(product_ids: Sequence[Any]) -> None:
    """Every product has a string (or integer) id, none repeated; errors name the row (`products[row]`)."""
    seen: dict[Any, int] = {}
    for row, pid in enumerate(product_ids):
        if isinstance(pid, bool) or not isinstance(pid, (str, int)):
            raise ValueError(f"products[{row}]['product_id'] is {pid!r}; product ids must be strings.")
        if pid in seen:
            raise ValueError(
                f"products[{row}]['product_id'] = {pid!r} repeats products[{seen[pid]}]; ids must be unique."
            )
        seen[pid] = row


def _unreadable_image(images: list) -> tuple[int, Exception] | None:
    """`(position, error)` of the first image in `images` that cannot be loaded, or None if all load."""
    from .image_utils import load_image

    for position, image in enumerate(images):
        if image is None:
            continue
        try:
            load_image(image, "image")
        except (ValueError, OSError) as error:
            return position, error
    return None


def encode_product_rows(
    model: torch.nn.Module,
    processor: Any,
    rows: Any,
    *,
    conditions: Iterable[str] = ("title+image",),
    batch_size: int = 64,
    show_progress: bool = True,
    image_features: Any = None,
    product_ids: list | None = None,
    argument: str = "rows",
) -> EncodedProducts:
    """`encode_products` for rows that need no `product_id` (`product_ids` of the result is then None).

    Errors name the rows as `argument[row]` (with the row's id when `product_ids` is given), so that a wrapper reports
    them under its own argument name.
    """
    conditions = _check_conditions(conditions)
    _check_batch_size(batch_size)
    table = rows if isinstance(rows, _Table) else _Table(rows, argument)
    argument = table.argument
    if not (table.has("title") or table.has("image")):
        raise ValueError(f"`{argument}` needs a 'title' or an 'image' column (columns: {table.column_names}).")
    num_products = len(table)
    if num_products == 0:
        raise ValueError(f"`{argument}` is empty: there is nothing to encode.")

    def where(row: int) -> str:
        return f"{argument}[{row}]" + (f" (product_id {product_ids[row]!r})" if product_ids is not None else "")

    model = _unwrap(model)
    device, dtype = _model_device_dtype(model)
    has_title = torch.zeros(num_products, dtype=torch.bool)
    has_image = torch.zeros(num_products, dtype=torch.bool)
    embeds: dict[str, torch.Tensor] = {}
    modal_weights = None
    progress = tqdm(total=num_products, desc="Encoding products", unit="product", disable=not show_progress)
    with _EvalMode(model):
        for start in range(0, num_products, batch_size):
            end = min(start + batch_size, num_products)
            titles = [t if _has_title(t) else None for t in table.column("title", start, end)]
            images = table.column("image", start, end)
            batch_title = torch.tensor([t is not None for t in titles])
            batch_image = torch.tensor([image is not None for image in images])
            for offset in (~(batch_title | batch_image)).nonzero().flatten().tolist():
                raise ValueError(
                    f"{where(start + offset)} has neither a title nor an image; drop it or give it one."
                )
            has_title[start:end], has_image[start:end] = batch_title, batch_image
            try:
                inputs = processor(
                    title=titles if batch_title.any() else None,
                    images=images if batch_image.any() and image_features is None else None,
                    return_tensors="pt",
                )
            except (ValueError, OSError) as error:
                # The processor names the image by its place in the batch; name the catalogue row instead.
                row = _unreadable_image(images if image_features is None else [])
                if row is None:
                    raise
                position, reason = row
                message = f"{where(start + position)}: its image cannot be read; fix or drop it. {reason}"
                raise ValueError(message) from error
            if image_features is not None and batch_image.any():
                image_features.fill(images)
                inputs["image_features"], inputs["image_mask"] = image_features.lookup(images)
                unreadable = (batch_image & ~inputs["image_mask"].bool()).nonzero().flatten().tolist()
                if unreadable:
                    raise ValueError(f"{where(start + unreadable[0])}: its image cannot be read; fix or drop it.")
            text = {}
            if "title_input_ids" in inputs:
                text = {
                    "title_input_ids": inputs["title_input_ids"].to(device),
                    "title_attention_mask": inputs["title_attention_mask"].to(device),
                }
            pixels = {}
            for key in ("pixel_values", "image_features"):
                if key in inputs:
                    pixels = {key: inputs[key].to(device, dtype), "image_mask": inputs["image_mask"].to(device)}
            for condition in conditions:
                if condition == "title+image":
                    rows_done = torch.ones(end - start, dtype=torch.bool)
                    output = model.get_product_features(**text, **pixels)
                    if modal_weights is None:
                        modal_weights = torch.zeros(num_products, output.modal_weights.shape[-1])
                    modal_weights[start:end] = output.modal_weights.float().cpu()
                else:
                    rows_done = batch_title if condition == "title" else batch_image
                    if not rows_done.any():
                        continue
                    chosen = text if condition == "title" else pixels
                    index = rows_done.nonzero().flatten().to(device)
                    output = model.get_product_features(**{k: v[index] for k, v in chosen.items()})
                features = output.product_embeds
                if condition not in embeds:
                    embeds[condition] = torch.zeros(num_products, features.shape[-1])
                embeds[condition][start:end][rows_done] = features.float().cpu()
            progress.update(end - start)
    progress.close()
    retrievable = {"title+image": torch.ones(num_products, dtype=torch.bool), "title": has_title, "image": has_image}
    dim = next(iter(embeds.values())).shape[-1] if embeds else model.config.projection_dim
    return EncodedProducts(
        product_ids=product_ids,
        embeds={c: embeds.get(c, torch.zeros(num_products, dim)) for c in conditions},
        retrievable={c: retrievable[c].clone() for c in conditions},
        modal_weights=modal_weights,
        has_title=has_title,
        has_image=has_image,
        categories=table.column("category") if table.has("category") else None,
        category_groups=table.column("category_group") if table.has("category_group") else None,
    )


def encode_queries(
    model: torch.nn.Module,
    processor: Any,
    queries: Sequence[str],
    *,
    batch_size: int = 256,
    show_progress: bool = True,
) -> torch.Tensor:
    """Encode query strings with `model.get_query_features`: (num_queries, dim) float32 on the model's device."""
    queries = check_query_texts(queries)
    _check_batch_size(batch_size)
    model = _unwrap(model)
    device, _ = _model_device_dtype(model)
    outputs = []
    with _EvalMode(model):
        for start in tqdm(range(0, len(queries), batch_size), desc="Encoding queries", unit="batch",
                          disable=not show_progress):
            inputs = processor(query=queries[start : start + batch_size], return_tensors="pt")
            features = model.get_query_features(
                inputs["query_input_ids"].to(device), inputs["query_attention_mask"].to(device)
            )
            outputs.append(features.float())
    if not outputs:
        return torch.zeros(0, getattr(model.config, "projection_dim", 0), device=device)
    return torch.cat(outputs)


__all__ = [
    "CONDITIONS",
    "EncodedProducts",
    "check_product_ids",
    "check_query_texts",
    "encode_product_rows",
    "encode_products",
    "encode_queries",
]
