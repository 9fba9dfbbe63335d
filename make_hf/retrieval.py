"""Serve MAKE the way sentence-transformers serves a bi-encoder: encode queries and products, index, search.

`MakeRetriever` bundles a `MakeModel`, its `MakeProcessor` and, once built or loaded, a `ProductIndex` over a
catalogue together with the catalogue's rows (product id, title, image reference, modal weights), so that a search
returns what a results page shows rather than bare row numbers:

```python
>>> retriever = MakeRetriever.from_pretrained("outputs/make-small-synthetic")
>>> retriever.build_index(products, kind="hnsw")  # rows with `product_id` and a `title` and/or an `image`
>>> retriever.search(["red sneakers"], k=5)[0][0]
{'product_id': '1001', 'score': 0.83, 'title': '2024 breathable running shoes ...', 'image': 'img/1001.jpg',
 'modal_weights': [0.41, 0.59]}
>>> retriever.save("shop-retriever")
>>> MakeRetriever.load("shop-retriever").search(["red sneakers"], k=5)  # the same results
```

Encoding goes through `make_hf.encoding`, the batched encoders evaluation and the CLI use, so a product gets the
same vector whichever of them encodes it. A saved retriever is a folder that `MakeModel` / `MakeProcessor`
`.from_pretrained` also read, plus the index and its catalogue in `index/`:

```
config.json, model.safetensors, *.py       MakeModel.save_pretrained
processor_config.json, tokenizer files     MakeProcessor.save_pretrained
index/index.faiss, product_ids.json,       ProductIndex.save
      index_config.json
index/catalogue.jsonl                      one row per index row: product_id, title, image, modal_weights
```

FAISS (the index) is an optional dependency: `pip install make-hf[index]`.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_path, readable_directory, replaced_directory, staged_directory
from .encoding import _has_title, _Table, _unwrap, check_query_texts, encode_product_rows, encode_products
from .encoding import encode_queries as _encode_queries
from .index import CONFIG_FILE, INDEX_KINDS, ProductIndex, _import_faiss

INDEX_FOLDER = "index"
"""The sub-folder of a saved retriever that holds its `ProductIndex` and catalogue."""

CATALOGUE_FILE = "catalogue.jsonl"
"""The catalogue next to the index files: one JSON row per index row, in index order."""

CATALOGUE_COLUMNS = ("product_id", "title", "image", "modal_weights")
"""What the catalogue keeps of each product, and what a search result holds besides its `score`."""

_PRODUCT_CONDITION = "title+image"

_INDEX_OPTIONS = set(inspect.signature(ProductIndex.build).parameters) - {"cls", "embeddings", "product_ids", "kind"}


@dataclass
class ProductEncoding:
    """Products encoded by [`MakeRetriever.encode_products`].

    Attributes:
        embeddings (`np.ndarray` or `torch.FloatTensor` of shape `(num_products, projection_dim)`):
            float32 L2-normalised product embeddings, title and image fused by the model (Modal Adaptation).
        modal_weights (`np.ndarray` or `torch.FloatTensor` of shape `(num_products, 2)`):
            float32 `[title weight, image weight]` of each product; `[1, 0]` for a product without an image,
            `[0, 1]` for one without a title.
        product_ids (`list`, *optional*): the rows' `product_id` column, when they have one.
    """

    embeddings: np.ndarray | torch.Tensor
    modal_weights: np.ndarray | torch.Tensor
    product_ids: list | None = None


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _image_reference(image: Any) -> str | None:
    """What the catalogue keeps of a product image: its path or URL; None for an image held only in memory."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, Mapping):  # a `datasets` image dict
        path = image.get("path")
        return path if isinstance(path, str) and path else None
    filename = getattr(image, "filename", None)  # a PIL image opened from a file keeps its path
    return filename if isinstance(filename, str) and filename else None


def _check_positive_int(value: Any, argument: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{argument}` must be an integer >= 1, got {value!r}.")


def _check_catalogue(index: ProductIndex, catalogue: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The catalogue rows of `index`, one per index row; rows holding only the id when `catalogue` is None."""
    if catalogue is None:
        return [{"product_id": pid, "title": None, "image": None, "modal_weights": None} for pid in index.product_ids]
    catalogue = list(catalogue)
    if len(catalogue) != len(index):
        raise ValueError(
            f"The catalogue has {len(catalogue)} rows but the index holds {len(index)} products; give one catalogue "
            "row per index row, in index order (or rebuild both with `build_index`)."
        )
    rows = []
    for row, (entry, pid) in enumerate(zip(catalogue, index.product_ids)):
        if not isinstance(entry, Mapping) or entry.get("product_id") != pid:
            found = entry.get("product_id") if isinstance(entry, Mapping) else entry
            raise ValueError(
                f"catalogue[{row}] is product {found!r} but index row {row} is {pid!r}; the catalogue must list the "
                "index's products in index order (rebuild both with `build_index`)."
            )
        rows.append({column: entry.get(column) for column in CATALOGUE_COLUMNS})
    return rows


def _write_catalogue(path: str, catalogue: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for entry in catalogue:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")


def _read_catalogue(path: str) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{path}, line {line_number}: not valid JSON ({error}); save the retriever again."
                    ) from None
    return rows


class MakeRetriever:
    """A MAKE model, its processor and (optionally) a searchable catalogue: encode, index, search, save, load.

    Args:
        model ([`MakeModel`]): the model; put it on the device to encode on.
        processor ([`MakeProcessor`]): the model's processor.
        index ([`ProductIndex`], *optional*): an index over the model's product embeddings, e.g. one built by
            `make-hf index` (`ProductIndex.load(folder)`).
        catalogue (`list[dict]`, *optional*): one row per index row, in index order, with `product_id` (the index's)
            and optionally `title`, `image` and `modal_weights`, which search results repeat. Without it results
            hold the product id and score only.

    Build one with [`~MakeRetriever.from_pretrained`] (a model folder or hub id) or [`~MakeRetriever.load`] (a
    folder written by [`~MakeRetriever.save`], index included).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        index: ProductIndex | None = None,
        catalogue: Sequence[Mapping[str, Any]] | None = None,
    ):
        self.model = _unwrap(model)
        self.processor = processor
        if index is None and catalogue is not None:
            raise ValueError("`catalogue` describes the rows of an index: give `index` with it, or neither.")
        self.index = index
        self.catalogue = _check_catalogue(index, catalogue) if index is not None else None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device: str | torch.device | None = None, **kwargs):
        """Load the model and processor of a folder written by `save_pretrained` (or `save`) or of a hub id, in eval
        mode on `device` (default: CUDA when available, else CPU). `kwargs` (`revision`, `token`, `cache_dir`,
        ...) go to both `from_pretrained` calls. The index of a saved retriever is loaded by `load`."""
        from .modeling_make import MakeModel
        from .processing_make import MakeProcessor

        name_or_path = os.fspath(name_or_path)
        model = MakeModel.from_pretrained(name_or_path, **kwargs).to(device or _default_device()).eval()
        processor = MakeProcessor.from_pretrained(name_or_path, **kwargs)
        return cls(model, processor)

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device | None = None) -> "MakeRetriever":
        """Load a retriever written by [`~MakeRetriever.save`]: model, processor and, when it was saved with one,
        the index and its catalogue (checked to list the same products in the same order)."""
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"No retriever folder at {folder!r}; write one with `MakeRetriever.save`, or load a model folder or "
                "hub id with `MakeRetriever.from_pretrained`."
            )
        retriever = cls.from_pretrained(folder, device=device)
        index_folder = os.path.join(folder, INDEX_FOLDER)
        # Where `ProductIndex.load` reads from too: the old folder, if a save was killed while swapping folders.
        source = readable_directory(index_folder)
        if os.path.isdir(source):
            index = ProductIndex.load(index_folder)
            catalogue_path = os.path.join(source, CATALOGUE_FILE)
            catalogue = _read_catalogue(catalogue_path) if os.path.isfile(catalogue_path) else None
            try:
                retriever = cls(retriever.model, retriever.processor, index=index, catalogue=catalogue)
            except ValueError as error:
                raise ValueError(f"{index_folder!r} is inconsistent: {error}") from None
        return retriever

    def save(self, folder: str | os.PathLike) -> str:
        """Write the model, the processor and, if there is one, the index with its catalogue into `folder`.

        Every file is written under a temporary name and renamed into place, so an interrupted save never leaves a
        half-written file, and the index folder (index files and catalogue) is swapped in as a whole
        (`make_hf.atomic.replaced_directory`), so it never pairs a new index with an old catalogue. Returns the
        folder.
        """
        folder = os.fspath(folder)
        index_folder = os.path.join(folder, INDEX_FOLDER)
        if self.index is None and os.path.isfile(os.path.join(index_folder, CONFIG_FILE)):
            raise ValueError(
                f"{folder!r} holds an index, and this retriever has none: saving would pair that index with another "
                "model. Save into an empty folder, or `build_index` first."
            )
        with staged_directory(folder) as staging:
            self.model.save_pretrained(staging)
            self.processor.save_pretrained(staging)
        if self.index is not None:
            with replaced_directory(index_folder) as staging:
                _write_catalogue(os.path.join(staging, CATALOGUE_FILE), self.catalogue)
                self.index.save(staging)
        return folder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        name = getattr(self.model, "name_or_path", "") or type(self.model).__name__
        return f"{type(self).__name__}(model={name!r}, device={str(self.device)!r}, index={self.index!r})"

    # ------------------------------------------------------------------ encoding

    def encode_queries(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool = False,
        convert_to_numpy: bool = True,
    ) -> np.ndarray | torch.Tensor:
        """Encode queries with the query tower, `batch_size` at a time, under `torch.inference_mode()`.

        Args:
            texts: a list of non-empty query strings (a single string is a batch of one).
            batch_size: queries per forward pass.
            show_progress_bar: show a tqdm progress bar.
            convert_to_numpy: return a numpy array (default) rather than a torch tensor on the model's device.

        Returns:
            `(len(texts), projection_dim)` float32, L2-normalised.
        """
        texts = check_query_texts(texts, "texts")
        _check_positive_int(batch_size, "batch_size")
        with torch.inference_mode():
            embeds = _encode_queries(
                self.model, self.processor, texts, batch_size=batch_size, show_progress=show_progress_bar
            )
            # Normalised again in float32: a half-precision model's unit vectors are not unit after the cast.
            embeds = F.normalize(embeds.float(), dim=-1)
        return embeds.cpu().numpy() if convert_to_numpy else embeds

    def encode_products(
        self,
        rows: Any,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        convert_to_numpy: bool = True,
    ) -> ProductEncoding:
        """Encode products (title and image fused, as served), `batch_size` at a time, under
        `torch.inference_mode()`.

        Args:
            rows: a list of dicts (or a `datasets.Dataset`, or a dict of columns) with a `title` (str or None) and/or
                an `image` (a PIL image, a path, bytes, ...: anything `make_hf.image_utils.load_image` reads, or
                None); every row needs one of them. A `product_id` column is optional here and passed through.
            batch_size: products per forward pass.
            show_progress_bar: show a tqdm progress bar.
            convert_to_numpy: numpy arrays (default) rather than CPU torch tensors.

        Returns:
            [`ProductEncoding`]: `embeddings` `(N, projection_dim)` and `modal_weights` `(N, 2)`, float32.
        """
        _check_positive_int(batch_size, "batch_size")
        table = _Table(rows, "rows")
        with torch.inference_mode():
            encoded = encode_product_rows(
                self.model, self.processor, table, conditions=(_PRODUCT_CONDITION,), batch_size=batch_size,
                show_progress=show_progress_bar,
            )
            embeddings = F.normalize(encoded.embeds[_PRODUCT_CONDITION], dim=-1)
        weights = encoded.modal_weights
        product_ids = table.column("product_id") if table.has("product_id") else None
        if convert_to_numpy:
            embeddings, weights = embeddings.numpy(), weights.numpy()
        return ProductEncoding(embeddings=embeddings, modal_weights=weights, product_ids=product_ids)

    # ------------------------------------------------------------------ index and search

    def build_index(
        self,
        products: Any,
        kind: str = "flat",
        *,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        **index_options: Any,
    ) -> ProductIndex:
        """Encode a catalogue and index it (replacing any index this retriever had), keeping its rows.

        Args:
            products: rows (a list of dicts, a `datasets.Dataset` or a dict of columns) with a unique `product_id`
                and a `title` and/or an `image`, as for `encode_products`. The catalogue keeps each product's id,
                title, image reference (its path or URL; None for an image given only in memory) and modal
                weights, and search results repeat them.
            kind: `"flat"` (exact), `"hnsw"` or `"ivfpq"`; see `make_hf.index`.
            batch_size, show_progress_bar: as for `encode_products`.
            index_options: `ProductIndex.build` options (`hnsw_m`, `ef_search`, `nlist`, `nprobe`, `pq_m`, `seed`,
                `metadata`, ...).

        Returns:
            The [`ProductIndex`] (also `self.index`).
        """
        if kind not in INDEX_KINDS:
            raise ValueError(f"Unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}.")
        unknown = sorted(set(index_options) - _INDEX_OPTIONS)
        if unknown:
            raise TypeError(
                f"Unknown index option(s) {', '.join(map(repr, unknown))}; `ProductIndex.build` takes "
                f"{', '.join(sorted(_INDEX_OPTIONS))}."
            )
        _check_positive_int(batch_size, "batch_size")
        _import_faiss()  # before encoding the whole catalogue, not after
        table = _Table(products, "products")
        with torch.inference_mode():
            encoded = encode_products(
                self.model, self.processor, table, conditions=(_PRODUCT_CONDITION,), batch_size=batch_size,
                show_progress=show_progress_bar,
            )
            embeddings = F.normalize(encoded.embeds[_PRODUCT_CONDITION], dim=-1)
        metadata = {"condition": _PRODUCT_CONDITION, **(index_options.pop("metadata", None) or {})}
        index = ProductIndex.build(embeddings, encoded.product_ids, kind=kind, metadata=metadata, **index_options)
        catalogue = [
            {"product_id": pid, "title": title if _has_title(title) else None, "image": _image_reference(image),
             "modal_weights": weights}
            for pid, title, image, weights in zip(
                encoded.product_ids, table.column("title"), table.column("image"), encoded.modal_weights.tolist()
            )
        ]
        self.index, self.catalogue = index, _check_catalogue(index, catalogue)
        return index

    def search(
        self,
        queries: str | Sequence[str],
        k: int = 10,
        *,
        batch_size: int = 32,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """The `k` best products of the index for each query.

        Args:
            queries: a list of non-empty query strings (a single string is a batch of one).
            k: results per query (at most the number of products).
            batch_size: queries per forward pass.
            ef_search, nprobe: the HNSW beam width / IVF-PQ probes, for this and later searches.

        Returns:
            One list per query, best first, of `{"product_id", "score", "title", "image", "modal_weights"}`
            (`score` is the cosine similarity; `title`, `image` and `modal_weights` come from the catalogue and are
            None where it has none). An approximate index may return fewer than `k` products.
        """
        _check_positive_int(k, "k")
        if self.index is None:
            raise ValueError(
                "This retriever has no index to search: call `build_index(products)` first, or "
                "`MakeRetriever.load(folder)` a saved one."
            )
        texts = check_query_texts(queries, "queries")
        if not texts:
            return []
        query_embeds = self.encode_queries(texts, batch_size=batch_size)
        self.index.set_search_params(ef_search, nprobe)
        scores, rows = self.index.search_rows(query_embeds, k)
        results = []
        for row_scores, row_indices in zip(scores.tolist(), rows.tolist()):
            hits = []
            for score, row in zip(row_scores, row_indices):
                if row < 0:  # FAISS pads with -1 when an approximate index finds fewer than k products
                    continue
                entry = self.catalogue[row]
                weights = entry["modal_weights"]
                hits.append({
                    "product_id": entry["product_id"],
                    "score": float(score),
                    "title": entry["title"],
                    "image": entry["image"],
                    "modal_weights": list(weights) if weights is not None else None,
                })
            results.append(hits)
        return results


__all__ = ["CATALOGUE_FILE", "INDEX_FOLDER", "MakeRetriever", "ProductEncoding"]
