"""A searchable product index: FAISS over product embeddings, keeping the product ids, saved to a folder.

MAKE serves as two towers: product vectors are computed offline (`make-hf encode`), put into an approximate
nearest-neighbour index (`make-hf index`), and only the query tower runs per request (`make-hf search`).
`ProductIndex` is that index. Three kinds:

- `"flat"`: exact inner-product search (`IndexFlatIP`). Right up to a few hundred thousand products.
- `"hnsw"`: graph search (`IndexHNSWFlat`), recall@10 close to 1 at a fraction of the cost; no training.
- `"ivfpq"`: inverted lists with product quantisation (`IndexIVFPQ`): a few dozen bytes per product, for
  catalogues that do not fit in memory as float32; approximate scores, needs training on the catalogue.

All kinds rank by inner product; MAKE's embeddings are L2-normalised, so that is cosine similarity.

The embeddings file that `make-hf encode` writes and `make-hf index` reads is a safetensors file with the
`product_embeds` matrix (float32, one row per product), optional `modal_weights`, and the product ids (JSON)
in its header: `save_embeddings` / `load_embeddings`.

FAISS is an optional dependency: `pip install make-hf[index]`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path, readable_directory, replaced_directory

logger = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "hnsw", "ivfpq")
"""The index kinds `ProductIndex.build` accepts."""

INDEX_FILE = "index.faiss"
IDS_FILE = "product_ids.json"
CONFIG_FILE = "index_config.json"
FORMAT_VERSION = 2
"""Version 2 adds the manifest (`files`: size and SHA-256 of each data file) that `load` checks; version 1 folders
(no manifest) still load, unchecked."""

_HNSW_DEFAULTS = {"hnsw_m": 32, "ef_construction": 200, "ef_search": 64}


def _import_faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "ProductIndex needs FAISS, which is not installed. Install it with `pip install make-hf[index]` "
            "(or `pip install faiss-cpu`). Exact search without FAISS: `make_hf.evaluation.exact_search`."
        ) from error
    return faiss


def _as_matrix(vectors: Any, argument: str, dim: int | None = None) -> np.ndarray:
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().to("cpu", torch.float32).numpy()
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(f"`{argument}` must be a 2-D (num_vectors, dim) array, got shape {matrix.shape}.")
    if dim is not None and matrix.shape[1] != dim:
        raise ValueError(
            f"`{argument}` has dimension {matrix.shape[1]} but the index holds {dim}-dimensional vectors; encode "
            "with the model that built the index."
        )
    if not np.isfinite(matrix).all():
        row = int(np.nonzero(~np.isfinite(matrix).all(axis=1))[0][0])
        raise ValueError(f"`{argument}[{row}]` contains NaN or inf; check the model that produced the embeddings.")
    return np.ascontiguousarray(matrix)


def _check_ids(product_ids: Sequence, num_vectors: int, existing: Sequence = ()) -> list:
    if isinstance(product_ids, (str, bytes)):
        raise ValueError("`product_ids` must be a list of ids, one per embedding row, not a single string.")
    product_ids = list(product_ids)
    if len(product_ids) != num_vectors:
        raise ValueError(f"Got {num_vectors} embeddings but {len(product_ids)} product ids; give one id per row.")
    seen = {pid: i for i, pid in enumerate(existing)}
    for i, pid in enumerate(product_ids):
        if isinstance(pid, bool) or not isinstance(pid, (str, int)):
            raise ValueError(f"`product_ids[{i}]` is {pid!r}; product ids must be strings (or integers).")
        if pid in seen:
            raise ValueError(
                f"`product_ids[{i}]` = {pid!r} is already in the index (row {seen[pid]}); product ids must be unique."
            )
        seen[pid] = i
    return product_ids


def _write_atomically(path: str, write) -> None:
    """Write through a temporary file in the same folder and rename it over `path` (never a half-written file)."""
    with atomic_path(path) as tmp:
        write(tmp)


def _write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _damaged(folder: str, problem: str) -> ValueError:
    """The error for an index folder whose files cannot be what `save` wrote: say which file and what to do."""
    return ValueError(
        f"{problem}: the index folder {folder!r} is damaged or was not written by `ProductIndex.save`. Rebuild the "
        "index with `make-hf index` or `ProductIndex.save`."
    )


def _read_json(path: str, folder: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _damaged(folder, f"{path} is not valid JSON ({error})") from None
    except RecursionError:
        raise _damaged(folder, f"{path} is nested too deeply to be a file `save` wrote") from None


def _is_count(value: Any, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check_config(config: Any, path: str, folder: str) -> dict:
    """Refuse an `index_config.json` without the fields `load` reads, or with values `save` never writes."""
    if not isinstance(config, dict):
        raise _damaged(folder, f"{path} holds a JSON {type(config).__name__}, not an object")
    version = config.get("format_version")
    if not _is_count(version) or version not in (1, FORMAT_VERSION):
        raise ValueError(
            f"{path} has format_version {version!r}; this make_hf reads versions 1 to {FORMAT_VERSION}. Rebuild the "
            "index with this version (`make-hf index`)."
        )
    problems = [f"`{key}` is missing" for key in ("kind", "num_products") if key not in config]
    if "kind" in config and config["kind"] not in INDEX_KINDS:
        problems.append(f"`kind` is {config['kind']!r}, not one of {', '.join(INDEX_KINDS)}")
    if "num_products" in config and not _is_count(config["num_products"]):
        problems.append(f"`num_products` is {config['num_products']!r}, not a count")
    if "dim" in config and not _is_count(config["dim"], 1):
        problems.append(f"`dim` is {config['dim']!r}, not a positive integer")
    for key in ("params", "metadata"):
        if not isinstance(config.get(key, {}), dict):
            problems.append(f"`{key}` is a JSON {type(config[key]).__name__}, not an object")
    params = config.get("params") or {}
    if isinstance(params, dict):
        problems += [f"`params.{name}` is {value!r}, not a positive integer"
                     for name, value in params.items() if not _is_count(value, 1)]
    if problems:
        raise _damaged(folder, f"{path} is not a valid index config ({'; '.join(problems)})")
    return config


def _read_index(faiss: Any, path: str, folder: str, config: Mapping[str, Any]) -> Any:
    """Read `index.faiss` and check it is the kind, metric and dimension `index_config.json` describes."""
    try:
        index = faiss.read_index(path)
    except (RuntimeError, MemoryError) as error:  # FAISS reports a truncated or foreign file as a RuntimeError
        reason = str(error).rsplit("Error: ", 1)[-1].strip() or type(error).__name__  # drop FAISS's C++ location
        raise _damaged(folder, f"{path} is not a readable FAISS index (truncated, or not FAISS: {reason})") from None
    expected = {"flat": faiss.IndexFlatIP, "hnsw": faiss.IndexHNSWFlat, "ivfpq": faiss.IndexIVFPQ}[config["kind"]]
    if not isinstance(index, expected) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise _damaged(
            folder, f"{path} holds a FAISS {type(index).__name__}, but {CONFIG_FILE} says kind {config['kind']!r} "
            f"({expected.__name__}, inner product)"
        )
    if config.get("dim", index.d) != index.d:
        raise _damaged(folder, f"{path} holds {index.d}-dimensional vectors, but {CONFIG_FILE} says {config['dim']}")
    return index


def _check_manifest(folder: str, source: str, config: Mapping[str, Any]) -> None:
    """Refuse a folder whose data files are not the ones its config was saved with (a mix of two saves, a file
    copied in from another index, a truncated file): it would load and return wrong products."""
    manifest = config.get("files")
    if (not isinstance(manifest, Mapping) or set(manifest) != {INDEX_FILE, IDS_FILE}
            or not all(isinstance(record, Mapping) for record in manifest.values())):
        raise ValueError(
            f"{os.path.join(folder, CONFIG_FILE)} has no valid `files` manifest: the index folder {folder!r} is "
            "damaged. Rebuild the index with `make-hf index` or `ProductIndex.save`."
        )
    for check in ("bytes", "sha256"):  # the cheap check on every file first
        for name, expected in sorted(manifest.items()):
            path = os.path.join(source, name)
            found = os.path.getsize(path) if check == "bytes" else _sha256(path)
            if found != expected.get(check):
                what = f"{found} bytes, saved with {expected.get('bytes')}" if check == "bytes" else "other SHA-256"
                raise ValueError(
                    f"{folder!r} mixes files of different saves, or a file in it is damaged: {name} is not the file "
                    f"{CONFIG_FILE} was saved with ({what}). Searching it would return wrong products. Rebuild the "
                    "index (`make-hf index` or `ProductIndex.save`), or restore the whole folder from one save."
                )


def _ivfpq_defaults(num_vectors: int, dim: int, nlist: int | None, pq_m: int | None, pq_bits: int | None):
    # FAISS's k-means wants ~39 training points per centroid; below that it warns and clusters poorly.
    if nlist is None:
        nlist = max(1, min(int(round(4 * math.sqrt(num_vectors))), num_vectors // 39))
    if pq_m is None:
        # About 4 dimensions per sub-quantiser (dim 256 -> 64 bytes per product): coarser codes (8 dimensions
        # each) lost a third of the recall@10 on clustered embeddings.
        pq_m = max(m for m in range(1, dim + 1) if dim % m == 0 and dim // m >= min(4, dim))
    if pq_bits is None:
        pq_bits = int(max(1, min(8, math.floor(math.log2(max(num_vectors / 39, 2))))))
    return nlist, pq_m, pq_bits


class ProductIndex:
    """Product embeddings in a FAISS index, with the product id of every row.

    Build one with `ProductIndex.build(embeddings, product_ids, kind=...)`, search with `search`, persist with
    `save(folder)` / `ProductIndex.load(folder)`. The folder holds `index.faiss` (the FAISS index),
    `product_ids.json` (row -> product id) and `index_config.json` (kind, dimension, search parameters,
    versions, your own `metadata`, e.g. the model that produced the vectors, and the size and checksum of the
    other two files); a save replaces the three together, so an interrupted one leaves the old index whole, and
    `load` refuses a folder whose files do not belong together.

    Example:

    ```python
    >>> index = ProductIndex.build(product_embeds, product_ids, kind="hnsw")
    >>> ids, scores = index.search(query_embeds, k=10)
    >>> index.save("catalogue-index")
    >>> ProductIndex.load("catalogue-index").search(query_embeds, k=10)[0] == ids
    True
    ```
    """

    def __init__(self, index: Any, product_ids: Sequence, kind: str, params: Mapping[str, Any] | None = None,
                 metadata: Mapping[str, Any] | None = None):
        if kind not in INDEX_KINDS:
            raise ValueError(f"Unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}.")
        self.faiss_index = index
        self.kind = kind
        self.params = dict(params or {})
        self.metadata = dict(metadata or {})
        self.product_ids = _check_ids(product_ids, index.ntotal)
        self.set_search_params(self.params.get("ef_search"), self.params.get("nprobe"))

    @classmethod
    def build(
        cls,
        embeddings: torch.Tensor | np.ndarray,
        product_ids: Sequence,
        kind: str = "flat",
        *,
        hnsw_m: int = _HNSW_DEFAULTS["hnsw_m"],
        ef_construction: int = _HNSW_DEFAULTS["ef_construction"],
        ef_search: int = _HNSW_DEFAULTS["ef_search"],
        nlist: int | None = None,
        nprobe: int | None = None,
        pq_m: int | None = None,
        pq_bits: int | None = None,
        max_train_vectors: int | None = None,
        seed: int = 0,
        metadata: Mapping[str, Any] | None = None,
    ) -> "ProductIndex":
        """Build an index over `embeddings` (num_products, dim) whose row `i` is product `product_ids[i]`.

        Args:
            kind: `"flat"`, `"hnsw"` or `"ivfpq"` (see the module docstring).
            hnsw_m, ef_construction, ef_search: HNSW graph degree, build-time and search-time beam widths.
            nlist, nprobe: IVF-PQ inverted lists and how many are visited per query. Defaults:
                `min(4 * sqrt(N), N // 39)` lists (k-means wants ~39 points per centroid), `max(8, nlist // 8)`
                probes (at most `nlist`).
            pq_m, pq_bits: IVF-PQ sub-quantisers (must divide `dim`; default ~4 dimensions each) and bits per
                code (default 8, fewer on catalogues too small to train 256 centroids per sub-quantiser).
            max_train_vectors: train IVF-PQ on a random sample of at most this many rows (default: all).
            seed: seeds that sample and FAISS's k-means, so a build is reproducible.
            metadata: JSON-able facts to keep with the index (model name, condition, ...).
        """
        faiss = _import_faiss()
        if kind not in INDEX_KINDS:
            raise ValueError(f"Unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}.")
        vectors = _as_matrix(embeddings, "embeddings")
        num_vectors, dim = vectors.shape
        product_ids = _check_ids(product_ids, num_vectors)
        if num_vectors == 0:
            raise ValueError("`embeddings` is empty: there is nothing to index.")
        if metadata is not None:
            json.dumps(metadata)  # fail now, not at save time, on metadata that JSON cannot hold
        params: dict[str, Any] = {}
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            for name, value in (("hnsw_m", hnsw_m), ("ef_construction", ef_construction), ("ef_search", ef_search)):
                if value < 1:
                    raise ValueError(f"`{name}` must be >= 1, got {value}.")
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            params = {"hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
        else:
            nlist, pq_m, pq_bits = _ivfpq_defaults(num_vectors, dim, nlist, pq_m, pq_bits)
            if dim % pq_m:
                raise ValueError(f"`pq_m`={pq_m} must divide the embedding dimension {dim}.")
            if not 1 <= nlist <= num_vectors:
                raise ValueError(f"`nlist`={nlist} must be between 1 and the number of products ({num_vectors}).")
            if not 1 <= pq_bits <= 16 or 2**pq_bits > num_vectors:
                raise ValueError(
                    f"`pq_bits`={pq_bits} needs at least {2**pq_bits} products to train its centroids, and must be "
                    f"1..16; there are {num_vectors}. Lower `pq_bits` or use kind='flat'/'hnsw' for small catalogues."
                )
            nprobe = min(nlist, max(8, nlist // 8)) if nprobe is None else nprobe
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, pq_bits, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.pq.cp.seed = seed
            train = vectors
            if max_train_vectors is not None and max_train_vectors < num_vectors:
                rows = np.random.default_rng(seed).choice(num_vectors, size=max_train_vectors, replace=False)
                train = vectors[np.sort(rows)]
            index.train(train)
            params = {"nlist": nlist, "nprobe": nprobe, "pq_m": pq_m, "pq_bits": pq_bits}
        index.add(vectors)
        return cls(index, product_ids, kind, params=params, metadata=metadata)

    def __len__(self) -> int:
        return self.faiss_index.ntotal

    @property
    def dim(self) -> int:
        return self.faiss_index.d

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        params = f", {params}" if params else ""
        return f"ProductIndex(kind={self.kind!r}, num_products={len(self)}, dim={self.dim}{params})"

    def set_search_params(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Set the HNSW search beam width (`ef_search`) or the IVF-PQ probes (`nprobe`) for later searches; both
        are saved with the index. Larger values: higher recall, slower search."""
        if ef_search is not None:
            if self.kind != "hnsw":
                raise ValueError(f"`ef_search` applies to kind='hnsw' only; this index is {self.kind!r}.")
            if ef_search < 1:
                raise ValueError(f"`ef_search` must be >= 1, got {ef_search}.")
            self.faiss_index.hnsw.efSearch = int(ef_search)
            self.params["ef_search"] = int(ef_search)
        if nprobe is not None:
            if self.kind != "ivfpq":
                raise ValueError(f"`nprobe` applies to kind='ivfpq' only; this index is {self.kind!r}.")
            if not 1 <= nprobe <= self.faiss_index.nlist:
                raise ValueError(f"`nprobe` must be between 1 and nlist={self.faiss_index.nlist}, got {nprobe}.")
            self.faiss_index.nprobe = int(nprobe)
            self.params["nprobe"] = int(nprobe)

    def add(self, embeddings: torch.Tensor | np.ndarray, product_ids: Sequence) -> None:
        """Append products (an IVF-PQ index encodes them with the centroids it was trained on)."""
        vectors = _as_matrix(embeddings, "embeddings", self.dim)
        product_ids = _check_ids(product_ids, vectors.shape[0], existing=self.product_ids)
        self.faiss_index.add(vectors)
        self.product_ids.extend(product_ids)

    def search_rows(self, query_embeds: torch.Tensor | np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Raw FAISS search: `(scores, rows)`, both (num_queries, min(k, len(self))); row -1 = no result."""
        if k < 1:
            raise ValueError(f"`k` must be >= 1, got {k}.")
        queries = _as_matrix(query_embeds, "query_embeds", self.dim)
        return self.faiss_index.search(queries, min(k, len(self)))

    def search(
        self,
        query_embeds: torch.Tensor | np.ndarray,
        k: int = 10,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> tuple[list[list], np.ndarray]:
        """The `k` best products for each query embedding.

        Args:
            query_embeds: (num_queries, dim) or a single (dim,) vector; torch or numpy.
            k: results per query (at most the number of products).
            ef_search / nprobe: change the HNSW beam width / IVF-PQ probes for this and later searches.

        Returns:
            `(ids, scores)`: `ids[q]` is the list of product ids for query `q`, best first; `scores` a float32
            array (num_queries, min(k, len(self))) of inner products. When an approximate index finds fewer
            than `k` products for a query, the missing places hold id `None` and score `-inf`.
        """
        self.set_search_params(ef_search, nprobe)
        scores, rows = self.search_rows(query_embeds, k)
        scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
        ids = [[self.product_ids[r] if r >= 0 else None for r in row] for row in rows.tolist()]
        return ids, scores

    def save(self, folder: str | os.PathLike) -> str:
        """Write `index.faiss`, `product_ids.json` and `index_config.json` into `folder`, all or nothing.

        The three files are written into a fresh sibling folder (`.NAME.new-XXXX`), synced to disk, and swapped in
        with two renames (`make_hf.atomic.replaced_directory`): a kill or a full disk at any point leaves `folder`
        with either the complete old index or the complete new one, never new vectors with old ids. Other files in
        `folder` are kept. Leftovers of an interrupted save are removed by the next save. `index_config.json`
        records the size and SHA-256 of the other two files and the number of vectors, which `load` checks.
        Returns `folder`.
        """
        faiss = _import_faiss()
        folder = os.fspath(folder)
        with replaced_directory(folder) as staging:
            faiss.write_index(self.faiss_index, os.path.join(staging, INDEX_FILE))
            _write_json(os.path.join(staging, IDS_FILE), self.product_ids)
            files = {}
            for name in (INDEX_FILE, IDS_FILE):
                path = os.path.join(staging, name)
                files[name] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
            config = {
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                "dim": self.dim,
                "metric": "inner_product",
                "num_products": len(self),
                "params": self.params,
                "metadata": self.metadata,
                "faiss_version": getattr(faiss, "__version__", "unknown"),
                "files": files,
            }
            _write_json(os.path.join(staging, CONFIG_FILE), config)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ProductIndex":
        """Load an index written by `save`, with its ids, search parameters and metadata.

        Raises `ValueError` when the files do not belong together (sizes, checksums or vector counts differ from
        what `index_config.json` recorded) or hold what `save` never writes (a truncated FAISS file, ids that are
        not a list of unique strings, a config with a missing field or another kind than the FAISS file): such a
        folder would load and return wrong products, or fail deep inside FAISS. A folder whose save
        was killed between its two renames loads as the complete old index."""
        faiss = _import_faiss()
        folder = os.fspath(folder)
        source = readable_directory(folder)
        if source != os.path.abspath(folder):
            logger.warning(f"{folder!r} is missing: loading the old index an interrupted save moved to {source!r}.")
        paths = {name: os.path.join(source, name) for name in (INDEX_FILE, IDS_FILE, CONFIG_FILE)}
        missing = [name for name, path in paths.items() if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError(
                f"{folder!r} is not a saved ProductIndex: missing {', '.join(missing)}. Build one with "
                "`make-hf index` or `ProductIndex.save`."
            )
        config = _check_config(_read_json(paths[CONFIG_FILE], folder), paths[CONFIG_FILE], folder)
        if config["format_version"] >= 2:
            _check_manifest(folder, source, config)
        product_ids = _read_json(paths[IDS_FILE], folder)
        if not isinstance(product_ids, list):
            raise _damaged(folder, f"{paths[IDS_FILE]} holds a JSON {type(product_ids).__name__}, not a list of ids")
        index = _read_index(faiss, paths[INDEX_FILE], folder, config)
        if index.ntotal != len(product_ids) or index.ntotal != config["num_products"]:
            raise ValueError(
                f"{folder!r} is inconsistent: the FAISS index holds {index.ntotal} vectors, {IDS_FILE} "
                f"{len(product_ids)} ids and {CONFIG_FILE} says {config['num_products']}. Rebuild the index."
            )
        try:
            return cls(index, product_ids, config["kind"], params=config.get("params"),
                       metadata=config.get("metadata"))
        except ValueError as error:  # an id or search parameter that `save` would never have written
            raise _damaged(folder, f"{IDS_FILE} / {CONFIG_FILE} do not load ({str(error).rstrip('.')})") from None


EMBEDDINGS_KEY = "product_embeds"
MODAL_WEIGHTS_KEY = "modal_weights"


@dataclass
class ProductEmbeddings:
    """Encoded products as stored by `save_embeddings`: vectors, their ids, and optional modal weights."""

    product_embeds: torch.Tensor
    product_ids: list
    modal_weights: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def save_embeddings(
    path: str | os.PathLike,
    product_embeds: torch.Tensor,
    product_ids: Sequence,
    *,
    modal_weights: torch.Tensor | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Write product embeddings, ids and JSON-able metadata to one safetensors file (atomically)."""
    from safetensors.torch import save_file

    embeds = torch.as_tensor(product_embeds).detach().to("cpu", torch.float32).contiguous()
    if embeds.ndim != 2:
        raise ValueError(f"`product_embeds` must be 2-D (num_products, dim), got shape {tuple(embeds.shape)}.")
    product_ids = _check_ids(product_ids, embeds.shape[0])
    tensors = {EMBEDDINGS_KEY: embeds}
    if modal_weights is not None:
        tensors[MODAL_WEIGHTS_KEY] = torch.as_tensor(modal_weights).detach().to("cpu", torch.float32).contiguous()
        if tensors[MODAL_WEIGHTS_KEY].shape[0] != embeds.shape[0]:
            raise ValueError("`modal_weights` must have one row per product embedding.")
    header = {"product_ids": json.dumps(product_ids, ensure_ascii=False),
              "metadata": json.dumps(dict(metadata or {}), ensure_ascii=False)}
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return path


def load_embeddings(path: str | os.PathLike) -> ProductEmbeddings:
    """Read a file written by `save_embeddings`, or a folder of shards written by `make-hf encode`
    (`make_hf.catalogue_encoding.load_encoded_catalogue`)."""
    from safetensors import safe_open

    path = os.fspath(path)
    if os.path.isdir(path):
        from .catalogue_encoding import load_encoded_catalogue

        return load_encoded_catalogue(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No embeddings file at {path!r}; write one with `make-hf encode`.")
    try:
        handle = safe_open(path, framework="pt")
    except Exception as error:  # safetensors raises its own error type on a file that is not safetensors
        raise ValueError(
            f"{path!r} is not a make_hf embeddings file (not readable as safetensors: {error}); write it with "
            "`make-hf encode` or `make_hf.index.save_embeddings`."
        ) from None
    with handle as f:
        header = f.metadata() or {}
        keys = set(f.keys())
        if EMBEDDINGS_KEY not in keys or "product_ids" not in header:
            raise ValueError(
                f"{path!r} is not a make_hf embeddings file (needs a {EMBEDDINGS_KEY!r} tensor and product ids in "
                "its header); write it with `make-hf encode` or `make_hf.index.save_embeddings`."
            )
        embeds = f.get_tensor(EMBEDDINGS_KEY)
        modal_weights = f.get_tensor(MODAL_WEIGHTS_KEY) if MODAL_WEIGHTS_KEY in keys else None
    return ProductEmbeddings(
        product_embeds=embeds,
        product_ids=json.loads(header["product_ids"]),
        modal_weights=modal_weights,
        metadata=json.loads(header.get("metadata", "{}")),
    )


__all__ = [
    "INDEX_KINDS",
    "ProductEmbeddings",
    "ProductIndex",
    "load_embeddings",
    "save_embeddings",
]
