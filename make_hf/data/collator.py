"""`MakeCollator`: a list of training rows in, the model's batch out (the processor's keys plus `product_ids`).

Use it as a `DataLoader`'s `collate_fn`. Each row is checked first (query present, product id present, image
decodable with `make_hf.image_utils.load_image`); a row that fails is dropped from the batch and recorded in
`collator.skipped_rows` (and logged), so an image that vanished or broke after loading costs one row, not the run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..image_feature_cache import image_content_key
from ..image_utils import load_image
from ..keywords import stable_hash64
from .files import SOURCE_ROW_COLUMN, check_row
from .skipped import SkippedRows

logger = logging.getLogger(__name__)

_INT63 = (1 << 63) - 1


def hash_product_id(product_id: str) -> int:
    """Stable non-negative int64 id of a product id string (blake2b; the same in every process and Python run).

    The model treats batch rows with the same id as positives of each other (a product bought from several
    queries), so equal strings must give equal ids on every data-loader worker and machine, which `hash()` does
    not guarantee.
    """
    if not isinstance(product_id, str):
        product_id = str(product_id)
    return stable_hash64(product_id) & _INT63


class MakeCollator:
    """Turn training rows into a `MakeModel` batch with the processor.

    Args:
        processor (`MakeProcessor`): tokenizes queries/titles, prepares images, extracts keywords.
        query_column, title_column, image_column, product_id_column: row keys (defaults: the standard names
            that `load_triples` and the built-in datasets use). A key missing from the rows leaves that input out
            (e.g. product rows without queries).
        skipped_rows (`SkippedRows`, *optional*): the report to record dropped rows in; share the one given to
            `load_triples` to get a single report per run. A new one by default (`collator.skipped_rows`).
        extract_keywords: passed to the processor (None: its default, keywords for training batches).
        source: the name used for rows in the report (default: the data file name is unknown here, "batch").
        padding: `"longest"` (default: pad each text field to the batch's longest row, as `DataCollatorWithPadding`
            does; a 20-token title then costs 20 positions, not the title max length) or `"max_length"`.
        image_features (`ImageFeatureCache`, *optional*): a locked image tower's cache, filled with the rows'
            images. The batch then carries `image_features` (the cached tower outputs) instead of `pixel_values`,
            and no image is decoded; a row whose image the cache could not encode is skipped as corrupt.

    Returns (from `__call__`):
        A `BatchFeature` with the processor's keys (`query_input_ids`, `title_input_ids`, `pixel_values`,
        `image_mask`, `keyword_input_ids`, `query_term_ids`, ... as applicable) plus `product_ids` (B,) int64 from
        `hash_product_id`. When every row of a batch is dropped the result is empty (`len(batch) == 0`); skip
        such a batch. Checking rows up front with `load_triples` makes that practically impossible.
    """

    def __init__(
        self,
        processor,
        *,
        query_column: str = "query",
        title_column: str = "title",
        image_column: str = "image",
        product_id_column: str = "product_id",
        skipped_rows: SkippedRows | None = None,
        extract_keywords: bool | None = None,
        source: str | None = None,
        return_tensors: str = "pt",
        padding: str = "longest",
        image_features=None,
    ):
        self.processor = processor
        self.query_column = query_column
        self.title_column = title_column
        self.image_column = image_column
        self.product_id_column = product_id_column
        self.skipped_rows = skipped_rows if skipped_rows is not None else SkippedRows()
        self.extract_keywords = extract_keywords
        self.source = source
        self.return_tensors = return_tensors
        self.padding = padding
        self.image_features = image_features

    def _skip(self, row: Mapping[str, Any], position: int, reason: str, detail: str) -> None:
        index = row.get(SOURCE_ROW_COLUMN)
        if index is None:
            product = row.get(self.product_id_column)
            where = f"product {product!r}" if product is not None else f"batch position {position}"
            detail = f"{where}: {detail}"
        self.skipped_rows.add(index, reason, detail, source=self.source)
        logger.warning("Dropped a training row (%s, row %s): %s", reason, "?" if index is None else index, detail)

    def __call__(self, rows: Sequence[Mapping[str, Any]]):
        if not rows:
            raise ValueError("MakeCollator got an empty list of rows; check the DataLoader's batch_size.")
        first = rows[0]
        has = {name: column in first for name, column in (("query", self.query_column), ("title", self.title_column),
                                                          ("image", self.image_column),
                                                          ("product_id", self.product_id_column))}
        queries, titles, images, product_ids = [], [], [], []
        for position, row in enumerate(rows):
            query = row.get(self.query_column) if has["query"] else None
            title = row.get(self.title_column) if has["title"] else None
            image = row.get(self.image_column) if has["image"] else None
            product_id = row.get(self.product_id_column) if has["product_id"] else None
            opened = []
            problem = check_row(
                query, title, image, product_id, needs_query=has["query"], needs_product_id=has["product_id"],
                needs_product=has["title"] or has["image"], open_image=lambda value: opened.append(self._image(value)),
            )
            if problem is not None:
                self._skip(row, position, *problem)
                continue
            loaded = opened[0] if opened else None
            queries.append(query)
            titles.append(title if isinstance(title, str) and title.strip() else None)
            images.append(loaded)
            product_ids.append(product_id)
        if not queries:
            return _empty_batch()
        cached = self.image_features is not None and has["image"]
        batch = self.processor(
            query=queries if has["query"] else None,
            title=titles if has["title"] else None,
            images=images if has["image"] and not cached else None,
            return_tensors=self.return_tensors,
            extract_keywords=self.extract_keywords,
            padding=self.padding,
        )
        if cached:
            features, image_mask = self.image_features.lookup(images)
            batch["image_features"], batch["image_mask"] = features, image_mask
        if has["product_id"]:
            ids = [hash_product_id(product_id) for product_id in product_ids]
            batch["product_ids"] = torch.tensor(ids, dtype=torch.long) if self.return_tensors == "pt" else ids
        return batch

    def _image(self, image: Any) -> Any:
        """The decoded image, or with a feature cache the undecoded one once its cached entry is confirmed."""
        if self.image_features is None:
            return load_image(image, "image")
        key = image_content_key(image)
        if key not in self.image_features:
            reason = self.image_features.failures.get(key, "its features were not cached; fill the cache first")
            raise ValueError(f"the image cannot be used: {reason}")
        return image


def _empty_batch():
    from transformers import BatchFeature

    return BatchFeature(data={})


__all__ = ["MakeCollator", "hash_product_id"]
