"""Hard negatives mined with a trained MAKE model, as extra candidates for contrastive training.

In-batch negatives are mostly easy: a random product from the same batch rarely competes with the right one. For
each training row, `mine_hard_negatives` takes the products the model itself ranks highest for the row's query and
keeps those that are safely wrong:

- not a positive: no product the same query (whitespace- and case-insensitive) was logged with in the data;
- below a relative margin of the positive: `score <= positive_score * (1 - relative_margin)`, as
  sentence-transformers' `mine_hard_negatives` does, so near-duplicates of the positive (often unlabelled
  positives) are left out;
- not covered by the query through keywords: a product whose extracted keywords contain every term of the query
  is the same rule `MakeModel`'s false-negative masking uses (`make_hf.losses.keyword_coverage`), so a product the
  loss would not push away is never mined as a negative either.

The scores are exact inner products over the encoded catalogue (chunks of queries against all products), so the
result does not depend on an approximate index; the catalogue's vectors must fit in memory (4 bytes x dim per
product: 1 M products at dim 256 is 1 GB).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .atomic import atomic_path
from .encoding import _Table, check_query_texts, encode_products, encode_queries
from .losses import keyword_coverage

CONDITION = "title+image"
"""Products are scored as retrieval scores them: the fused title + image vector."""


@dataclass
class HardNegatives:
    """What `mine_hard_negatives` found.

    Attributes:
        negatives: per training row, the product ids of its hard negatives, highest-scoring first (possibly fewer
            than asked, or none).
        scores: the matching scores.
        counts: how the candidates were filtered: `rows`, `rows_with_negatives`, `candidates` (looked at),
            `dropped_positive`, `dropped_margin`, `dropped_keywords`.
    """

    negatives: list[list[str]]
    scores: list[list[float]]
    counts: dict[str, int] = field(default_factory=dict)


def query_key(query: str) -> str:
    """Queries that differ only in case or spacing are one query: their logged products are all positives."""
    return " ".join(query.split()).casefold()


def _keyword_strings(processor: Any, titles: Sequence[str | None]) -> list[str]:
    extractor = processor.keyword_extractor
    return [" ".join(extractor.extract(title, processor.num_keywords)) if title else "" for title in titles]


def mine_hard_negatives(
    model: torch.nn.Module,
    processor: Any,
    rows: Any,
    *,
    num_negatives: int = 5,
    top_k: int = 50,
    relative_margin: float = 0.05,
    batch_size: int = 64,
    query_chunk_size: int = 1024,
    show_progress: bool = True,
) -> HardNegatives:
    """Mine hard negatives for each training row with a trained model.

    Args:
        model: a trained `MakeModel`.
        processor: its `MakeProcessor` (tokenisation and the fitted keyword extractor).
        rows: training rows (a `datasets.Dataset` as `make_hf.data.load_triples` returns, a list of row dicts or
            a dict of columns) with `query`, `product_id` and a `title` and/or an `image`. The catalogue is their
            distinct products (the first row of each id gives its title and image).
        num_negatives: negatives kept per row.
        top_k: products looked at per query (the highest-scoring ones), before filtering.
        relative_margin: keep a candidate only if its score is at most `positive_score * (1 - relative_margin)`.
        batch_size: products per forward pass when encoding the catalogue.
        query_chunk_size: queries scored against the whole catalogue at once.
        show_progress: show progress bars while encoding.

    Returns:
        `HardNegatives`, aligned with `rows`.
    """
    for name, value in (("num_negatives", num_negatives), ("top_k", top_k), ("batch_size", batch_size),
                        ("query_chunk_size", query_chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if not 0.0 <= float(relative_margin) < 1.0:
        raise ValueError(f"`relative_margin` must be in [0, 1), got {relative_margin!r}.")
    table = _Table(rows, "rows")
    table.require("query", "product_id")
    queries = check_query_texts(table.column("query"), "rows' query")
    product_ids = [str(pid) for pid in table.column("product_id")]
    titles, images = table.column("title"), table.column("image")

    catalogue_row: dict[str, int] = {}
    catalogue: list[dict[str, Any]] = []
    for row, pid in enumerate(product_ids):
        if pid not in catalogue_row:
            catalogue_row[pid] = len(catalogue)
            catalogue.append({"product_id": pid, "title": titles[row], "image": images[row]})
    encoded = encode_products(
        model, processor, catalogue, conditions=(CONDITION,), batch_size=batch_size, show_progress=show_progress
    )
    product_embeds = encoded.embeds[CONDITION]
    retrievable = encoded.retrievable[CONDITION]
    keyword_terms = torch.as_tensor(processor.term_ids(_keyword_strings(processor, [p["title"] for p in catalogue])))

    positives: dict[str, set[str]] = {}
    distinct: dict[str, int] = {}  # query key -> position in `texts`, the first spelling seen
    texts: list[str] = []
    for query, pid in zip(queries, product_ids):
        key = query_key(query)
        positives.setdefault(key, set()).add(pid)
        if key not in distinct:
            distinct[key] = len(texts)
            texts.append(query)
    query_embeds = encode_queries(model, processor, texts, show_progress=show_progress).to(product_embeds.device)
    query_terms = torch.as_tensor(processor.term_ids(texts))

    # Per distinct query: candidate rows (best first) and whether their keywords cover the query.
    k = min(top_k, len(catalogue))
    candidates, candidate_scores = [], []
    for start in range(0, len(texts), query_chunk_size):
        scores = query_embeds[start : start + query_chunk_size] @ product_embeds.t()
        scores[:, ~retrievable] = float("-inf")
        values, indices = scores.topk(k, dim=-1)
        candidates.extend(indices.tolist())
        candidate_scores.extend(values.tolist())
    covered = [
        keyword_coverage(query_terms[q : q + 1], keyword_terms[torch.tensor(candidates[q])])[0].tolist()
        for q in range(len(texts))
    ]

    counts = dict(rows=len(product_ids), rows_with_negatives=0, candidates=0, dropped_positive=0, dropped_margin=0,
                  dropped_keywords=0)
    negatives, negative_scores = [], []
    for query, pid in zip(queries, product_ids):
        key = query_key(query)
        q = distinct[key]
        positive_score = float(query_embeds[q] @ product_embeds[catalogue_row[pid]])
        bound = positive_score * (1.0 - float(relative_margin))
        kept, kept_scores = [], []
        for candidate, score, is_covered in zip(candidates[q], candidate_scores[q], covered[q]):
            if len(kept) == num_negatives or score == float("-inf"):
                break
            counts["candidates"] += 1
            candidate_id = catalogue[candidate]["product_id"]
            if candidate_id in positives[key]:
                counts["dropped_positive"] += 1
            elif is_covered:
                counts["dropped_keywords"] += 1
            elif score > bound:
                counts["dropped_margin"] += 1
            else:
                kept.append(candidate_id)
                kept_scores.append(score)
        counts["rows_with_negatives"] += bool(kept)
        negatives.append(kept)
        negative_scores.append(kept_scores)
    return HardNegatives(negatives=negatives, scores=negative_scores, counts=counts)


NEGATIVES_COLUMN = "negatives"
"""The column `write_rows_with_negatives` adds: a list of product ids per row."""


def write_rows_with_negatives(path: str, rows: Any, negatives: Sequence[Sequence[str]]) -> str:
    """Write `rows` (from `make_hf.data.load_triples`) with a `negatives` column to a `.jsonl` or `.parquet` file,
    atomically. The bookkeeping column `source_row` is left out; images stay as the rows hold them (absolute paths
    after `load_triples`), which JSON Lines can only hold as strings: use `.parquet` for embedded image bytes."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".jsonl", ".parquet"):
        raise ValueError(f"--output {path!r}: write the mined rows to a .jsonl or .parquet file.")
    table = _Table(rows, "rows")
    if len(negatives) != len(table):
        raise ValueError(f"{len(negatives)} lists of negatives for {len(table)} rows.")
    columns = [name for name in table.column_names if name not in ("source_row", NEGATIVES_COLUMN)]
    values = {name: table.column(name) for name in columns}
    values[NEGATIVES_COLUMN] = [list(row) for row in negatives]
    with atomic_path(path) as tmp:
        if extension == ".parquet":
            import datasets

            datasets.Dataset.from_dict(values).to_parquet(tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in range(len(table)):
                    record = {name: values[name][row] for name in values}
                    try:
                        f.write(json.dumps(record, ensure_ascii=False) + "\n")
                    except TypeError as error:
                        raise ValueError(
                            f"--output {path!r}: row {row} holds a value JSON cannot store ({error}); write to a "
                            ".parquet file instead."
                        ) from None
    return path


__all__ = ["NEGATIVES_COLUMN", "HardNegatives", "mine_hard_negatives", "query_key", "write_rows_with_negatives"]
