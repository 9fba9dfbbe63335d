"""The search behind `make-hf serve`: check a request, encode its queries, search the index, describe each hit.

`SearchService` holds a loaded [`MakeRetriever`] (its index and catalogue) and a query encoder: the retriever's own
query tower, or an exported ONNX one ([`OnnxQueryEncoder`] from `make_hf.export`). It knows nothing of HTTP, so
the app (`make_hf.serving.app`) stays a thin layer over it and the checks here are the same wherever a search comes
from.

Queries are encoded one request at a time, under a lock: the web server answers requests from a thread pool, and
torch (or ONNX Runtime) running several forward passes at once on the same cores only makes each of them slower.
"""

from __future__ import annotations

import os
import threading
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np

from .limits import MAX_K, MAX_QUERIES, MAX_QUERY_CHARS, MIN_K

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif", ".bmp": "image/bmp"}
"""The files `/products/{id}/image` serves, by extension: a catalogue entry pointing at anything else is refused."""


class BadParameter(ValueError):
    """A request parameter that is missing, malformed or out of range: the service answers 422 naming it."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter
        self.message = message


class ImageUnavailable(LookupError):
    """A product image the service does not serve: `status` 404 (unknown product, no image file) or 403 (a file
    outside the image folder, or not an image)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_queries(queries: Any, parameter: str) -> list[str]:
    """`queries` stripped, or `BadParameter` naming the first one that is empty, too long or not a string."""
    if not isinstance(queries, list) or not queries:
        raise BadParameter(parameter, f"`{parameter}` must be a non-empty list of query strings.")
    if len(queries) > MAX_QUERIES:
        raise BadParameter(
            parameter, f"`{parameter}` holds {len(queries)} queries; send at most {MAX_QUERIES} per request."
        )
    texts = []
    for position, query in enumerate(queries):
        name = parameter if parameter == "q" else f"{parameter}[{position}]"
        texts.append(check_query(query, name))
    return texts


def check_query(query: Any, parameter: str) -> str:
    if not isinstance(query, str):
        raise BadParameter(parameter, f"`{parameter}` must be a string, got {type(query).__name__}.")
    text = query.strip()
    if not text:
        raise BadParameter(parameter, f"`{parameter}` is empty; type a few words to search for.")
    if len(text) > MAX_QUERY_CHARS:
        raise BadParameter(
            parameter, f"`{parameter}` is {len(text)} characters long; a query may have at most {MAX_QUERY_CHARS}."
        )
    if "\ufffd" in text:  # what the web server makes of bytes that are not UTF-8
        raise BadParameter(parameter, f"`{parameter}` is not valid UTF-8; send the query percent-encoded as UTF-8.")
    control = next((c for c in text if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        raise BadParameter(
            parameter, f"`{parameter}` contains the control character U+{ord(control):04X}; send plain text."
        )
    return text


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not MIN_K <= k <= MAX_K:
        raise BadParameter("k", f"`k` must be an integer from {MIN_K} to {MAX_K}, got {k!r}.")
    return k


def common_image_folder(catalogue: Sequence[dict[str, Any]]) -> str | None:
    """The deepest folder holding every local image file of the catalogue (None when no product has one)."""
    paths = [os.path.dirname(os.path.realpath(row["image"])) for row in catalogue
             if isinstance(row.get("image"), str) and "://" not in row["image"] and os.path.isabs(row["image"])]
    return os.path.commonpath(paths) if paths else None


class SearchService:
    """Search a retriever's index and describe the hits as the HTTP API returns them.

    Args:
        retriever ([`MakeRetriever`]): a retriever with an index and its catalogue (`MakeRetriever.load(folder)`).
        query_encoder (`callable`, *optional*): `list[str] -> np.ndarray (N, dim)`, float32, L2-normalised, e.g.
            `OnnxQueryEncoder(folder).encode`. Default: the retriever's query tower.
        image_folder (`str`, *optional*): the folder product images are served from; an image reference outside it
            (after following links) is refused. Relative references are read from it. Default: the deepest folder
            holding every image file of the catalogue.
        query_encoder_name (`str`): what `/health` reports as the query encoder.
    """

    def __init__(
        self,
        retriever: Any,
        query_encoder: Callable[[list[str]], np.ndarray] | None = None,
        image_folder: str | os.PathLike | None = None,
        query_encoder_name: str = "torch",
    ):
        if retriever.index is None:
            raise ValueError(
                "The retriever has no index to serve: build one with `MakeRetriever.build_index(products)` and "
                "`save` it, then serve that folder."
            )
        self.retriever = retriever
        self.index = retriever.index
        self.catalogue = retriever.catalogue
        self.query_encoder_name = query_encoder_name
        self._encode = query_encoder or (lambda texts: retriever.encode_queries(texts, batch_size=MAX_QUERIES))
        self._rows = {str(row["product_id"]): row for row in self.catalogue}
        folder = image_folder if image_folder is not None else common_image_folder(self.catalogue)
        self.image_folder = os.path.realpath(folder) if folder is not None else None
        self._lock = threading.Lock()
        self._check_encoder()

    def _check_encoder(self) -> None:
        dim = self._encode(["check"]).shape[-1]
        if dim != self.index.dim:
            raise ValueError(
                f"The {self.query_encoder_name} query encoder gives {dim}-dimensional vectors but the index holds "
                f"{self.index.dim}-dimensional products: export the query tower of the model that built the index."
            )

    def search(self, queries: list[str], k: int) -> list[list[dict[str, Any]]]:
        """The `k` best products for each (already checked) query, best first, as `describe_hit` dicts."""
        with self._lock:
            query_embeds = np.asarray(self._encode(queries), dtype=np.float32)
            scores, rows = self.index.search_rows(query_embeds, k)
        return [
            [self.describe_hit(self.catalogue[row], score) for score, row in zip(row_scores, row_rows) if row >= 0]
            for row_scores, row_rows in zip(scores.tolist(), rows.tolist())
        ]

    @staticmethod
    def describe_hit(entry: dict[str, Any], score: float) -> dict[str, Any]:
        """A hit as the API returns it: id, title, score, the product's title/image weights (why it matched) and
        the URL of its image (None without one). The image's file path stays on the server."""
        weights = entry.get("modal_weights")
        title_weight, image_weight = (float(weights[0]), float(weights[1])) if weights is not None else (None, None)
        has_image = entry.get("image") is not None
        return {
            "product_id": entry["product_id"],
            "title": entry.get("title"),
            "score": float(score),
            "title_weight": title_weight,
            "image_weight": image_weight,
            "image_url": f"/products/{quote(str(entry['product_id']), safe='')}/image" if has_image else None,
        }

    def image_file(self, product_id: str) -> tuple[str, str]:
        """`(path, media type)` of a product's image file, or `ImageUnavailable` saying why it is not served."""
        entry = self._rows.get(product_id)
        if entry is None:
            raise ImageUnavailable(404, f"Unknown product_id {product_id!r}: no such product in the catalogue.")
        reference = entry.get("image")
        if not isinstance(reference, str) or not reference:
            raise ImageUnavailable(404, f"Product {product_id!r} has no image.")
        if "://" in reference:
            raise ImageUnavailable(404, f"Product {product_id!r} has a remote image ({reference}); fetch it there.")
        if self.image_folder is None:
            raise ImageUnavailable(404, f"Product {product_id!r}: this service serves no image folder.")
        path = os.path.realpath(os.path.join(self.image_folder, reference))
        if os.path.commonpath([path, self.image_folder]) != self.image_folder:
            raise ImageUnavailable(403, f"The image of product {product_id!r} lies outside the served image folder.")
        media_type = IMAGE_TYPES.get(os.path.splitext(path)[1].lower())
        if media_type is None:
            raise ImageUnavailable(403, f"The image of product {product_id!r} is not a {'/'.join(IMAGE_TYPES)} file.")
        if not os.path.isfile(path):
            raise ImageUnavailable(404, f"The image file of product {product_id!r} is missing.")
        return path, media_type

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "products": len(self.index),
            "dim": self.index.dim,
            "index": self.index.kind,
            "query_encoder": self.query_encoder_name,
            "limits": {"max_query_chars": MAX_QUERY_CHARS, "k": [MIN_K, MAX_K], "max_queries": MAX_QUERIES},
        }


__all__ = ["BadParameter", "IMAGE_TYPES", "ImageUnavailable", "SearchService", "check_k", "check_queries"]
