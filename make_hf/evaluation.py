"""Evaluate a MAKE model on a product search set: encode the catalogue and the queries, search exactly, score.

An evaluation set is a catalogue of products (`product_id`, `title`, `image`, optional `category`,
`category_group`) and queries (`query`, `relevant_ids`, optional `bucket`, `category_group`), each given as a
`datasets.Dataset`, a list of row dicts or a dict of columns (`make_hf.evaluation_sets` reads them from files, a
shop's training log or a training run's folder). `evaluate_retrieval` checks the queries against the catalogue,
encodes every product under up to three conditions and searches exhaustively (`make_hf.exhaustive_search`):

- `"title+image"`: the product as served, title and image fused by the model (Modal Adaptation for MAKE);
- `"title"`: the title alone (`get_product_features` without pixels);
- `"image"`: the image alone.

A product that lacks what a condition needs (no image under `"image"`, no title under `"title"`) cannot be
retrieved in that condition: it keeps its place in the catalogue and counts as not found for the queries it
is relevant to, so the three conditions are scored on the same queries and compared fairly.

Scores are Recall@{1,5,10,50}, MRR@10 and NDCG@10 with several relevant products per query (see
`make_hf.metrics` for the definitions and the pessimistic handling of ties), overall, by query `bucket` and by
`category_group`; and, as a health metric of Modal Adaptation, the mean image weight per category.
`make_hf.results_tables.format_results` renders a result as Markdown tables.

The training loop calls `evaluate_retrieval` every few hundred steps: pass `conditions=("title+image",)`,
`max_queries=` and `show_progress=False` to keep it cheap, or encode the catalogue once with `encode_products`
and pass `encoded_products=` when only the query side changes. The names of the modules this one draws on
(`encode_products`, `encode_queries`, `EncodedProducts`, `CONDITIONS`, `exact_search`, `format_results`,
`read_rows`, `load_evaluation_set`) are importable from here as well.
"""

from __future__ import annotations

import logging
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
from .evaluation_sets import load_evaluation_set, read_rows
from .exhaustive_search import exact_search, score_chunks
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
from .processing_make import is_query_text
from .results_tables import format_results

logger = logging.getLogger(__name__)

MIXED_GROUP = "mixed"
"""The category group of a query whose relevant products belong to several groups."""


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
        if not is_query_text(text):
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
    # None (JSON null), not NaN, when no product has both: there is no weight to report, and NaN is not JSON.
    result: dict[str, Any] = {"mean_image_weight": float(image_weight[both].mean()) if both.any() else None}
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
        product_table = _Table(products, "products")
        product_table.require("product_id")
        product_ids = product_table.column("product_id")
    else:
        missing = [c for c in conditions if c not in encoded_products.embeds]
        if missing:
            raise ValueError(f"`encoded_products` was encoded without condition(s) {missing}; encode them too.")
        product_ids = encoded_products.product_ids
    # The queries are checked against the catalogue's ids first: a wrong id fails before any product is encoded.
    product_index = {pid: i for i, pid in enumerate(product_ids)}
    query_table = _Table(queries, "queries")
    rows, texts, relevant = _query_rows(query_table, product_index, max_queries)
    if encoded_products is None:
        encoded_products = encode_products(
            model, processor, products, conditions=conditions, batch_size=batch_size, show_progress=show_progress,
            image_features=image_features,
        )
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
        for start, scores in score_chunks(query_embeds, encoded_products.embeds[condition], retrievable):
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
