"""`MakeCollator`: a list of training rows in, the model's batch out (the processor's keys plus `product_ids`).

Use it as a `DataLoader`'s `collate_fn`. Each row is checked first (query present, product id present, image
decodable with `make_hf.image_utils.load_image`); a row that fails is dropped from the batch and recorded in
`collator.skipped_rows` (and logged), so an image that vanished or broke after loading costs one row, not the run.

Every epoch visits the same titles and images, so the collator keeps what it derives from them in bounded LRU
caches (`make_hf.data.bounded_cache`): each title's keyword string (on by default: a string per title is small) and,
with `pixel_cache_mib`, each encoded image's pixel tensor, keyed by the image's content, so that a cached image is
neither decoded nor resized again (off by default: 100k images at 224 px are 60 GB of float pixels).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..image_feature_cache import image_content_key
from ..image_utils import load_image
from ..keywords import stable_hash64
from .bounded_cache import BoundedCache
from .files import SOURCE_ROW_COLUMN, check_row
from .skipped import SkippedRow, SkippedRows

logger = logging.getLogger(__name__)

_INT63 = (1 << 63) - 1

DEFAULT_KEYWORD_CACHE_SIZE = 200_000
"""Titles whose keyword strings a collator keeps: every title of a 200k-product shop (some 30 MB of strings)."""


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
        negatives_column: the row key of mined hard negatives (`make-hf mine-negatives`): a list of product ids.
        products (`Mapping`, *optional*): product id -> row with the product's title and image, where the
            negatives are looked up (`catalogue_of(train_rows)`); needed when the rows carry negatives. Each
            negative not already in the batch is appended as a product-only row: no query (its query tokens are
            all padding, so `has_query` is False), no keywords, its own product id. The loss then scores it as one
            more candidate for every query, and never as an anchor. Ids not in `products` are left out and
            counted in `collator.unknown_negatives`.
        keyword_cache_size: the most titles whose keyword strings are kept (LRU; default
            `DEFAULT_KEYWORD_CACHE_SIZE`; 0: extract every batch). The strings are those the processor would
            extract; the processor's keyword extractor must not be refitted while the collator is in use.
        pixel_cache_mib: the most MiB of pixel tensors kept, one per distinct encoded image (bytes, `datasets`
            image dict or path, keyed by `image_content_key`; LRU; default 0: none). A cached image is not decoded
            again: it passed the check once and its content is unchanged. An image costs 3·H·W·4 bytes (48 KiB at
            64 px, 588 KiB at 224 px) in every DataLoader worker. Rows without a title always decode their image.
        report_key: a batch key under which the rows dropped from this batch (and the hard negatives left out)
            travel, for a collator running in DataLoader workers, whose `skipped_rows` the main process never sees.
            Pop it from the batch (`take_report`) before calling the model. Default: none.

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
        negatives_column: str = "negatives",
        products: Mapping[str, Mapping[str, Any]] | None = None,
        keyword_cache_size: int = DEFAULT_KEYWORD_CACHE_SIZE,
        pixel_cache_mib: int = 0,
        report_key: str | None = None,
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
        self.negatives_column = negatives_column
        self.products = products
        self.unknown_negatives = 0
        self.keyword_cache = BoundedCache(keyword_cache_size)
        if pixel_cache_mib and return_tensors != "pt":
            raise ValueError("pixel_cache_mib needs return_tensors='pt': the cache holds torch pixel tensors.")
        self.pixel_cache = BoundedCache(pixel_cache_mib * 2**20, lambda pixels: pixels.numel() * pixels.element_size())
        self.report_key = report_key
        self._dropped: list[SkippedRow] = []

    def _skip(self, row: Mapping[str, Any], position: int, reason: str, detail: str) -> None:
        index = row.get(SOURCE_ROW_COLUMN)
        if index is None:
            product = row.get(self.product_id_column)
            where = f"product {product!r}" if product is not None else f"batch position {position}"
            detail = f"{where}: {detail}"
        self.skipped_rows.add(index, reason, detail, source=self.source)
        self._dropped.append(SkippedRow(self.source, None if index is None else int(index), reason, detail))
        logger.warning("Dropped a training row (%s, row %s): %s", reason, "?" if index is None else index, detail)

    def __call__(self, rows: Sequence[Mapping[str, Any]]):
        if not rows:
            raise ValueError("MakeCollator got an empty list of rows; check the DataLoader's batch_size.")
        self._dropped, unknown_before = [], self.unknown_negatives
        batch = self._collate(rows)
        if self.report_key is not None and (self._dropped or self.unknown_negatives != unknown_before):
            batch[self.report_key] = {"skipped": [dataclasses.asdict(row) for row in self._dropped],
                                      "unknown_negatives": self.unknown_negatives - unknown_before}
        return batch

    def take_report(self, batch) -> None:
        """Pop `report_key` from a batch made in a DataLoader worker and add it to this collator's
        `skipped_rows` and `unknown_negatives` (rows recorded twice count once)."""
        report = batch.pop(self.report_key, None) if self.report_key is not None else None
        if report:
            self.skipped_rows.extend(SkippedRows([SkippedRow(**row) for row in report["skipped"]]))
            self.unknown_negatives += report["unknown_negatives"]

    def _collate(self, rows: Sequence[Mapping[str, Any]]):
        first = rows[0]
        has = {name: column in first for name, column in (("query", self.query_column), ("title", self.title_column),
                                                          ("image", self.image_column),
                                                          ("product_id", self.product_id_column))}
        queries, titles, images, product_ids, negatives, pixel_keys = [], [], [], [], [], []
        for position, row in enumerate(rows):
            query = row.get(self.query_column) if has["query"] else None
            title = row.get(self.title_column) if has["title"] else None
            image = row.get(self.image_column) if has["image"] else None
            product_id = row.get(self.product_id_column) if has["product_id"] else None
            title = title if isinstance(title, str) and title.strip() else None
            opened = []
            problem = check_row(
                query, title, image, product_id, needs_query=has["query"], needs_product_id=has["product_id"],
                needs_product=has["title"] or has["image"],
                open_image=lambda value: opened.append(self._image_or_cached(value, cacheable=title is not None)),
            )
            if problem is not None:
                self._skip(row, position, *problem)
                continue
            loaded, pixel_key = opened[0] if opened else (None, None)
            queries.append(query)
            titles.append(title)
            images.append(loaded)
            pixel_keys.append(pixel_key)
            product_ids.append(product_id)
            negatives.append(row.get(self.negatives_column) or ())
        if not queries:
            return _empty_batch()
        cached = self.image_features is not None and has["image"]
        extract = self.extract_keywords
        if extract is None:  # the processor's own rule: keywords for training batches (queries and titles)
            extract = self.processor.extract_keywords and has["query"] and has["title"]
        keywords = None
        if extract and has["title"] and self.keyword_cache.limit:
            keywords = [self._keywords(title) if title is not None else "" for title in titles]
        pixels = [None if isinstance(image, _CachedPixels) else image for image in images]
        batch = self.processor(
            query=queries if has["query"] else None,
            title=titles if has["title"] else None,
            images=pixels if has["image"] and not cached else None,
            keywords=keywords,
            return_tensors=self.return_tensors,
            extract_keywords=self.extract_keywords,
            padding=self.padding,
        )
        if has["image"] and not cached:
            self._use_pixel_cache(batch, images, pixel_keys)
        if cached:
            features, image_mask = self.image_features.lookup(images)
            batch["image_features"], batch["image_mask"] = features, image_mask
        if has["product_id"]:
            ids = [hash_product_id(product_id) for product_id in product_ids]
            batch["product_ids"] = torch.tensor(ids, dtype=torch.long) if self.return_tensors == "pt" else ids
        if self.negatives_column in first:
            batch = self._append_negatives(batch, product_ids, negatives, has)
        return batch

    def _append_negatives(self, batch, product_ids: list, negatives: list, has: dict[str, bool]):
        """Append each row's hard negatives that are not in the batch yet as product-only rows."""
        if self.products is None:
            raise ValueError(
                f"The rows carry a {self.negatives_column!r} column (mined hard negatives): pass "
                "`products=catalogue_of(train_rows)` to MakeCollator so their titles and images can be found."
            )
        if self.return_tensors != "pt" or not has["product_id"]:
            raise ValueError("Hard negatives need return_tensors='pt' and a product id column.")
        seen = set(product_ids)
        extra_ids, titles, images = [], [], []
        for ids in negatives:
            for product_id in ids:
                if product_id in seen:
                    continue
                seen.add(product_id)
                product = self.products.get(product_id)
                if product is None:
                    self.unknown_negatives += 1
                    continue
                title, image = product.get(self.title_column), product.get(self.image_column)
                try:
                    opened = self._image(image) if image is not None else None
                except (OSError, ValueError) as error:
                    logger.warning("Left out hard negative %r: %s", product_id, error)
                    continue
                extra_ids.append(product_id)
                titles.append(title if isinstance(title, str) and title.strip() else None)
                images.append(opened)
        if not extra_ids:
            return batch
        cached = self.image_features is not None and has["image"]
        extra = self.processor(
            title=titles if has["title"] else None,
            images=images if has["image"] and not cached else None,
            return_tensors="pt",
            extract_keywords=False,
            padding=self.padding,
        )
        if cached:
            extra["image_features"], extra["image_mask"] = self.image_features.lookup(images)
        extra["product_ids"] = torch.tensor([hash_product_id(pid) for pid in extra_ids], dtype=torch.long)
        pad_id = getattr(self.processor.tokenizer, "pad_token_id", None) or 0
        for key, value in list(batch.items()):
            addition = extra.get(key)
            if addition is None:  # no query, no keywords: padding that every mask reads as absent
                fill = pad_id if key.endswith("input_ids") else 0
                addition = torch.full((len(extra_ids), *value.shape[1:]), fill, dtype=value.dtype)
            batch[key] = torch.cat(_same_width(value, addition, pad_id if key.endswith("input_ids") else 0))
        return batch

    def _keywords(self, title: str) -> str:
        """The keyword string the processor extracts from `title`, computed once while the cache holds it."""
        keywords = self.keyword_cache.get(title)
        if keywords is None:
            extractor = self.processor.keyword_extractor
            keywords = " ".join(extractor.extract(title, self.processor.num_keywords))
            self.keyword_cache.put(title, keywords)
        return keywords

    def _image_or_cached(self, image: Any, cacheable: bool) -> tuple[Any, str | None]:
        """`(decoded image, its content key to cache its pixels under)`, or `(_CachedPixels, None)` when the
        pixel cache already holds this content: it decoded once and its bytes are the same."""
        if not (self.pixel_cache.limit and cacheable and self.image_features is None
                and isinstance(image, (bytes, bytearray, dict, str, os.PathLike))):
            return self._image(image), None
        key = image_content_key(image)  # raises FileNotFoundError for a file that is gone: a missing_image row
        if key is not None:
            pixels = self.pixel_cache.get(key)
            if pixels is not None:
                return _CachedPixels(pixels), None
        return self._image(image), key

    def _use_pixel_cache(self, batch, images: list, pixel_keys: list) -> None:
        """Put the cached pixels into the batch's rows that skipped decoding; keep the new rows' pixels."""
        if not self.pixel_cache.limit:
            return
        for row, (image, key) in enumerate(zip(images, pixel_keys)):
            if isinstance(image, _CachedPixels):
                batch["pixel_values"][row] = image.pixels
                batch["image_mask"][row] = 1
            elif key is not None:
                self.pixel_cache.put(key, batch["pixel_values"][row].clone())

    def _image(self, image: Any) -> Any:
        """The decoded image, or with a feature cache the undecoded one once its cached entry is confirmed."""
        if self.image_features is None:
            return load_image(image, "image")
        key = image_content_key(image)
        if key not in self.image_features:
            reason = self.image_features.failures.get(key, "its features were not cached; fill the cache first")
            raise ValueError(f"the image cannot be used: {reason}")
        return image


class _CachedPixels:
    """A row whose pixel tensor came from the pixel cache (the image was not decoded)."""

    __slots__ = ("pixels",)

    def __init__(self, pixels: torch.Tensor):
        self.pixels = pixels


def _same_width(left: torch.Tensor, right: torch.Tensor, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad two token tensors (B, L) to the longer L, so that their rows can be stacked."""
    if left.dim() != 2 or left.shape[1] == right.shape[1]:
        return left, right
    width = max(left.shape[1], right.shape[1])

    def pad(tensor):
        return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=fill)

    return pad(left), pad(right)


def catalogue_of(rows: Any, title_column: str = "title", image_column: str = "image",
                 product_id_column: str = "product_id") -> dict[str, dict[str, Any]]:
    """Product id -> `{title, image}` of the distinct products of training rows (the first row of each id), where
    `MakeCollator` finds hard negatives. Only these products can be negatives: a mined negative from another split
    is left out rather than brought into training."""
    columns = getattr(rows, "column_names", None)
    if columns is not None:
        import datasets

        if isinstance(rows.features.get(image_column), datasets.Image):  # keep images encoded: decoded per batch
            rows = rows.cast_column(image_column, datasets.Image(decode=False))
        ids = rows[product_id_column]
        titles = rows[title_column] if title_column in columns else [None] * len(ids)
        images = rows[image_column] if image_column in columns else [None] * len(ids)
    else:
        ids = [row.get(product_id_column) for row in rows]
        titles = [row.get(title_column) for row in rows]
        images = [row.get(image_column) for row in rows]
    catalogue: dict[str, dict[str, Any]] = {}
    for product_id, title, image in zip(ids, titles, images):
        catalogue.setdefault(product_id, {title_column: title, image_column: image})
    return catalogue


def _empty_batch():
    from transformers import BatchFeature

    return BatchFeature(data={})


__all__ = ["DEFAULT_KEYWORD_CACHE_SIZE", "MakeCollator", "catalogue_of", "hash_product_id"]
