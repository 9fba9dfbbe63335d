"""Evaluate a MAKE model on a product search set: encode the catalogue and the queries, search exactly, score.

An evaluation set is a catalogue of products (`product_id`, `title`, `image`, optional `category`,
`category_group`) and queries (`query`, `relevant_ids`, optional `bucket`, `category_group`), each given as a
`datasets.Dataset`, a list of row dicts or a dict of columns. `evaluate_retrieval` encodes every product under
up to three conditions and searches exhaustively with torch (`(queries @ products.T)` top-k: exact, and
2-3x the throughput of a FAISS flat index on CPU, see `benchmarks/index_recall.py`):

- `"title+image"`: the product as served, title and image fused by the model (Modal Adaptation for MAKE);
- `"title"`: the title alone (`get_product_features` without pixels);
- `"image"`: the image alone.

A product that lacks what a condition needs (no image under `"image"`, no title under `"title"`) cannot be
retrieved in that condition: it keeps its place in the catalogue and counts as not found for the queries it
is relevant to, so the three conditions are scored on the same queries and compared fairly.

Scores are Recall@{1,5,10,50}, MRR@10 and NDCG@10 with several relevant products per query (see
`make_hf.metrics` for the definitions and the pessimistic handling of ties), overall, by query `bucket` and by
`category_group`; and, as a health metric of Modal Adaptation, the mean image weight per category.

The training loop calls `evaluate_retrieval` every few hundred steps: pass `conditions=("title+image",)`,
`max_queries=` and `show_progress=False` to keep it cheap, or encode the catalogue once with `encode_products`
and pass `encoded_products=` when only the query side changes. The batched encoders live in `make_hf.encoding`
(shared with `make_hf.retrieval.MakeRetriever`); `encode_products`, `encode_queries`, `EncodedProducts` and
`CONDITIONS` are importable from here as well.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .encoding import (
    CONDITIONS,
    EncodedProducts,
    _check_conditions,
    _Table,
    _unwrap,
    encode_products,
    encode_queries,
)
from .metrics import (
    MRR_K,
    NDCG_K,
    RECALL_KS,
    max_cutoff,
    mean_metrics,
    per_query_metrics,
    ranks_from_scores,
    small_catalogue_warnings,
)

logger = logging.getLogger(__name__)

MIXED_GROUP = "mixed"
"""The category group of a query whose relevant products belong to several groups."""

# Score-matrix elements per search step: bounds memory whatever the catalogue size.
_SEARCH_ELEMENTS = 1 << 24


def _score_chunks(query_embeds: torch.Tensor, product_embeds: torch.Tensor, retrievable: torch.Tensor | None):
    product_embeds = product_embeds.to(query_embeds.device, query_embeds.dtype)
    blocked = None if retrievable is None else ~retrievable.to(query_embeds.device)
    chunk = max(1, _SEARCH_ELEMENTS // max(1, product_embeds.shape[0]))
    for start in range(0, query_embeds.shape[0], chunk):
        scores = query_embeds[start : start + chunk] @ product_embeds.T
        if blocked is not None:
            scores[:, blocked] = -math.inf
        yield start, scores


def exact_search(
    query_embeds: torch.Tensor,
    product_embeds: torch.Tensor,
    k: int = 10,
    *,
    retrievable: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product search: `(scores, indices)`, both (num_queries, min(k, num_products)), best first.

    Queries are processed in chunks so the score matrix never exceeds ~16M elements. `retrievable` (bool per
    product) excludes products (they get score `-inf`, ranked last). Runs on the queries' device.
    """
    if query_embeds.ndim != 2 or product_embeds.ndim != 2 or query_embeds.shape[1] != product_embeds.shape[1]:
        raise ValueError(
            f"`query_embeds` {tuple(query_embeds.shape)} and `product_embeds` {tuple(product_embeds.shape)} must "
            "be 2-D with the same embedding dimension."
        )
    if k < 1:
        raise ValueError(f"`k` must be >= 1, got {k}.")
    k = min(k, product_embeds.shape[0])
    values, indices = [], []
    for _, scores in _score_chunks(query_embeds, product_embeds, retrievable):
        top = scores.topk(k, dim=1)
        values.append(top.values)
        indices.append(top.indices)
    if not values:
        return query_embeds.new_zeros(0, k), torch.zeros(0, k, dtype=torch.long, device=query_embeds.device)
    if len(values) == 1:
        return values[0], indices[0]
    return torch.cat(values), torch.cat(indices)


def _query_rows(table: _Table, product_index: Mapping, max_queries: int | None):
    table.require("query", "relevant_ids")
    total = len(table)
    if total == 0:
        raise ValueError("`queries` is empty: there is nothing to evaluate.")
    rows = list(range(total))
    if max_queries is not None:
        if max_queries < 1:
            raise ValueError(f"`max_queries` must be >= 1 or None, got {max_queries}.")
        if max_queries < total:
            # Evenly spaced rather than the first ones: keeps the mix of buckets when the file is grouped by them.
            rows = sorted({round(i * (total - 1) / max(1, max_queries - 1)) for i in range(max_queries)})
    all_texts, all_relevant = table.column("query"), table.column("relevant_ids")
    texts, relevant = [], []
    for row in rows:
        text = all_texts[row]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"queries[{row}]['query'] is {text!r}; a query must be a non-empty string.")
        ids = all_relevant[row]
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise ValueError(f"queries[{row}]['relevant_ids'] must be a list of product ids, got {ids!r}.")
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise ValueError(f"queries[{row}]['relevant_ids'] is empty; every query needs a relevant product.")
        unknown = [pid for pid in ids if pid not in product_index]
        if unknown:
            raise ValueError(
                f"queries[{row}] ({text!r}) names relevant product(s) {unknown[:3]} that are not in `products`; "
                "evaluate each query set against the catalogue of its own split."
            )
        texts.append(text)
        relevant.append([product_index[pid] for pid in ids])
    return rows, texts, relevant


def _query_groups(table: _Table, rows: list[int], relevant: list[list[int]], encoded: EncodedProducts):
    groups: dict[str, list] = {}
    if table.has("bucket"):
        buckets = table.column("bucket")
        groups["by_bucket"] = [buckets[r] for r in rows]
    if table.has("category_group"):
        category_groups = table.column("category_group")
        groups["by_category_group"] = [category_groups[r] for r in rows]
    elif encoded.category_groups is not None:
        derived = []
        for indices in relevant:
            names = {encoded.category_groups[i] for i in indices}
            derived.append(names.pop() if len(names) == 1 else MIXED_GROUP)
        groups["by_category_group"] = derived
    return groups


def _image_weights(encoded: EncodedProducts) -> dict[str, Any]:
    if encoded.modal_weights is None:
        return {}
    # Only products with both modalities: the others get weight 0 or 1 on the image by masking, not by choice.
    both = encoded.has_title & encoded.has_image
    image_weight = encoded.modal_weights[:, -1]
    result: dict[str, Any] = {"mean_image_weight": float(image_weight[both].mean()) if both.any() else math.nan}
    for key, labels in (("image_weight_by_category", encoded.categories),
                        ("image_weight_by_category_group", encoded.category_groups)):
        if labels is None:
            continue
        sums: dict[Any, list] = {}
        for i in both.nonzero().flatten().tolist():
            sums.setdefault(labels[i], []).append(float(image_weight[i]))
        result[key] = {str(name): sum(v) / len(v) for name, v in sorted(sums.items(), key=lambda item: str(item[0]))}
    return result


def evaluate_retrieval(
    model: torch.nn.Module,
    processor: Any,
    products: Any,
    queries: Any,
    *,
    conditions: Iterable[str] = CONDITIONS,
    recall_ks: Iterable[int] = RECALL_KS,
    mrr_k: int = MRR_K,
    ndcg_k: int = NDCG_K,
    batch_size: int = 64,
    max_queries: int | None = None,
    encoded_products: EncodedProducts | None = None,
    show_progress: bool = True,
    image_features: Any = None,
    return_per_query: bool = False,
) -> dict[str, Any]:
    """Encode, search exactly and score a product search set under each condition.

    Args:
        model: a `MakeModel` (or a DDP-style wrapper); evaluated in eval mode without gradients, its mode is
            restored afterwards.
        processor: the model's `MakeProcessor`.
        products: the catalogue (`product_id`, `title`, `image`; optional `category`, `category_group`).
        queries: `query`, `relevant_ids` (product ids of `products`); optional `bucket`, `category_group`.
        conditions: any of `"title+image"`, `"title"`, `"image"` (default: all three).
        recall_ks, mrr_k, ndcg_k: metric cutoffs.
        batch_size: products per forward pass (queries use 4x as many, they are short).
        max_queries: score an evenly spaced subset of at most this many queries (cheap validation in training).
        encoded_products: a catalogue already encoded by `encode_products` with this model (skips product
            encoding; must hold every requested condition).
        show_progress: tqdm progress bars.
        image_features (`ImageFeatureCache`, *optional*): a locked image tower's cache (see `encode_products`).
        return_per_query: also return each query's metrics (`section["per_query"][metric]`, a list in query
            order), e.g. for a paired bootstrap between two models on the same queries.

    Returns:
        A JSON-able dict:

        ```
        {"num_products": 160, "num_queries": 431,
         "title+image": {"overall": {"recall@1": ..., "recall@5": ..., "recall@10": ..., "recall@50": ...,
                                     "mrr@10": ..., "ndcg@10": ..., "num_queries": 431},
                         "by_bucket": {"new_combination": {..., "num_queries": 120}, ...},
                         "by_category_group": {"image_decided": {...}, "title_decided": {...}},
                         "num_retrievable_products": 160},
         "title": {...}, "image": {...},
         "mean_image_weight": 0.53,
         "image_weight_by_category": {"dress": 0.91, ...}, "image_weight_by_category_group": {...}}
        ```

        A `warnings` list (also logged) says which Recall@k were computed on fewer than 10·k products
        (`make_hf.metrics.small_catalogue_warnings`).

        `by_bucket` / `by_category_group` appear when the queries have a `bucket` / `category_group` column (the
        group of a query without one is that of its relevant products, or `"mixed"`); the image weights when
        `"title+image"` is evaluated (mean over products that have both a title and an image).
    """
    conditions = _check_conditions(conditions)
    recall_ks = tuple(recall_ks)
    depth = max_cutoff(recall_ks, mrr_k, ndcg_k)
    model = _unwrap(model)
    if encoded_products is None:
        encoded_products = encode_products(
            model, processor, products, conditions=conditions, batch_size=batch_size, show_progress=show_progress,
            image_features=image_features,
        )
    else:
        missing = [c for c in conditions if c not in encoded_products.embeds]
        if missing:
            raise ValueError(f"`encoded_products` was encoded without condition(s) {missing}; encode them too.")
    product_index = {pid: i for i, pid in enumerate(encoded_products.product_ids)}
    query_table = _Table(queries, "queries")
    rows, texts, relevant = _query_rows(query_table, product_index, max_queries)
    query_embeds = encode_queries(model, processor, texts, batch_size=4 * batch_size, show_progress=show_progress)
    groups = _query_groups(query_table, rows, relevant, encoded_products)

    results: dict[str, Any] = {"num_products": len(encoded_products.product_ids), "num_queries": len(texts)}
    warnings = small_catalogue_warnings(results["num_products"], recall_ks)
    if warnings:
        results["warnings"] = warnings
        for warning in warnings:
            logger.warning(warning)
    for condition in conditions:
        per_query: dict[str, list[torch.Tensor]] = {}
        retrievable = encoded_products.retrievable[condition]
        for start, scores in _score_chunks(query_embeds, encoded_products.embeds[condition], retrievable):
            ranks, num_relevant = ranks_from_scores(scores, relevant[start : start + scores.shape[0]], depth)
            for name, values in per_query_metrics(ranks, num_relevant, recall_ks, mrr_k, ndcg_k).items():
                per_query.setdefault(name, []).append(values)
        metrics = {name: torch.cat(values) for name, values in per_query.items()}
        section: dict[str, Any] = {"overall": {**mean_metrics(metrics), "num_queries": len(texts)}}
        for key, labels in groups.items():
            section[key] = {}
            for label in sorted(set(labels), key=str):
                mask = torch.tensor([value == label for value in labels])
                section[key][str(label)] = {**mean_metrics(metrics, mask), "num_queries": int(mask.sum())}
        section["num_retrievable_products"] = int(retrievable.sum())
        if return_per_query:
            section["per_query"] = {name: values.tolist() for name, values in metrics.items()}
        results[condition] = section
    if "title+image" in conditions:
        results.update(_image_weights(encoded_products))
    return results


_ROW_FILE_TYPES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def _parse_id_list(value: Any, where: str) -> list:
    # CSV/TSV cells hold a JSON list (`["a", "b"]`) or ids separated by `|` (`a|b`).
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


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a products or queries file into row dicts: JSONL, JSON (a list of objects), CSV, TSV or Parquet.

    Relative image paths are resolved against the file's folder; empty `title` / `image` cells become None; a
    `relevant_ids` cell in CSV/TSV holds a JSON list or ids separated by `|`.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _ROW_FILE_TYPES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(_ROW_FILE_TYPES)}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No file at {path!r}; check the path.")
    if suffix == ".parquet":
        import pyarrow.parquet

        rows = pyarrow.parquet.read_table(path).to_pylist()
    elif suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    else:
        with open(path, encoding="utf-8") as f:
            if suffix == ".json":
                rows = json.load(f)
                if not isinstance(rows, list):
                    raise ValueError(
                        f"{path}: a .json file must hold a list of row objects; use .jsonl for one per line."
                    )
            else:
                rows = []
                for line_number, line in enumerate(f, start=1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as error:
                            raise ValueError(f"{path}, line {line_number}: not valid JSON ({error}).") from None
    folder = os.path.dirname(os.path.abspath(path))
    for number, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {number} is {type(row).__name__}, expected an object with named columns.")
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
) -> tuple[Any, Any]:
    """The `(products, queries)` of an evaluation set, ready for `evaluate_retrieval`.

    Args:
        source: `"synthetic"` (the embedded synthetic shop, `num_products` and `seed`), `"emoji"`
            (Emoji-CLDR-3D, built from the npm tarballs in `emoji_source`, fetched with npm when None), or a
            folder written by `DatasetDict.save_to_disk` with `<split>_products` and `<split>_queries`. Leave None
            and give `products` and `queries` files instead (see `read_rows`).
        split: `"test"` or `"validation"` (the datasets' split prefixes).
        language: keep only rows whose `language` column equals this (Emoji-CLDR-3D: one language at a time;
            product ids repeat across languages). Default for `"emoji"`: `"en"`.
    """
    if source is None:
        if products is None or queries is None:
            raise ValueError(
                "Give an evaluation `source` (synthetic, emoji or a saved folder), or both `products` and `queries` "
                "files."
            )
        product_rows, query_rows = read_rows(products), read_rows(queries)
    else:
        if products is not None or queries is not None:
            raise ValueError("Give either `source` or `products` + `queries`, not both.")
        source = os.fspath(source)
        if source == "synthetic":
            from .data import make_synthetic_shop

            data = make_synthetic_shop(num_products, seed=seed)
        elif source == "emoji":
            from .data import build_emoji_cldr_3d

            language = language or "en"
            data = build_emoji_cldr_3d(emoji_source, languages=language, seed=seed, verbose=False)
        elif os.path.isdir(source):
            import datasets

            data = datasets.load_from_disk(source)
        else:
            raise FileNotFoundError(
                f"Evaluation source {source!r} is neither 'synthetic', 'emoji' nor a folder saved with save_to_disk; "
                "for files use `products=` and `queries=`."
            )
        keys = (f"{split}_products", f"{split}_queries")
        missing = [key for key in keys if key not in data]
        if missing:
            raise ValueError(f"{source}: no {', '.join(missing)} (available: {list(data)}); check `split`.")
        product_rows, query_rows = data[keys[0]], data[keys[1]]
    if language is not None:
        product_rows, query_rows = (_filter_language(rows, language, name)
                                    for rows, name in ((product_rows, "products"), (query_rows, "queries")))
    return product_rows, query_rows


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


def flatten_results(results: Mapping[str, Any], separator: str = "/") -> dict[str, float]:
    """Numeric leaves of an `evaluate_retrieval` result as flat keys (`"title+image/overall/recall@10"`), for
    trackers that log scalars."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}{separator}{key}" if prefix else str(key), item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix] = value

    walk("", results)
    return flat


def _metric_names(section: Mapping[str, Any]) -> list[str]:
    return [key for key in section["overall"] if key != "num_queries"]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_results(results: Mapping[str, Any]) -> str:
    """Markdown tables of an `evaluate_retrieval` result: conditions, then buckets and category groups per
    condition, then the mean image weight per category."""
    conditions = [c for c in CONDITIONS if c in results]
    if not conditions:
        raise ValueError("`results` holds no condition; pass the dict `evaluate_retrieval` returned.")
    names = _metric_names(results[conditions[0]])
    header = ["condition", *names, "queries"]
    parts = [
        f"{results.get('num_queries', '?')} queries, {results.get('num_products', '?')} products.",
        _table(header, [[c, *(f"{results[c]['overall'][n]:.3f}" for n in names),
                         str(results[c]["overall"]["num_queries"])] for c in conditions]),
    ]
    for key, title in (("by_bucket", "bucket"), ("by_category_group", "category group")):
        rows = [
            [c, group, *(f"{values[n]:.3f}" for n in names), str(values["num_queries"])]
            for c in conditions
            for group, values in results[c].get(key, {}).items()
        ]
        if rows:
            parts.append(_table(["condition", title, *names, "queries"], rows))
    if "image_weight_by_category" in results:
        groups = results.get("image_weight_by_category_group", {})
        rows = [[name, f"{weight:.3f}"] for name, weight in results["image_weight_by_category"].items()]
        rows += [[f"**{name}** (group)", f"{weight:.3f}"] for name, weight in groups.items()]
        parts.append(_table(["category", "mean image weight"], rows))
    elif "mean_image_weight" in results:
        parts.append(f"Mean image weight: {results['mean_image_weight']:.3f}")
    return "\n\n".join(parts) + "\n"


__all__ = [
    "CONDITIONS",
    "EncodedProducts",
    "encode_products",
    "encode_queries",
    "evaluate_retrieval",
    "exact_search",
    "flatten_results",
    "format_results",
    "load_evaluation_set",
    "read_rows",
]
