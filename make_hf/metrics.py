"""Retrieval metrics with several relevant products per query: Recall@k, MRR@k and NDCG@k.

Every metric here is computed from one thing: the 1-based rank of each relevant product of a query (``inf``
when it is not retrieved within the cutoff). Ranks come either from ranked lists of ids (the output of an
index, BM25 or any other retriever) or from full score rows over the catalogue (exact search).

Definitions (binary relevance; ``R`` = set of relevant products of a query, ``n = |R|``):

- ``recall@k = |R ∩ top-k| / min(k, n)``. The denominator is capped at ``k`` so that 1.0 is always
  attainable (the "capped recall" of BEIR). With one relevant product it is the hit rate at ``k``; with
  ``n <= k`` it is the usual ``|R ∩ top-k| / n``.
- ``mrr@k = 1 / rank`` of the first relevant product when that rank is ``<= k``, else 0.
- ``ndcg@k = DCG@k / IDCG@k`` with ``DCG@k = sum over relevant products ranked <= k of 1 / log2(rank + 1)``
  and ``IDCG@k`` the DCG of a ranking with all ``min(k, n)`` first places relevant.

Ties (scores only): products with exactly equal scores are ordered **non-relevant first**. This is the
pessimistic convention: a model cannot gain from ties, and a collapsed model that gives every product the
same score gets (near) zero instead of whatever the catalogue order would give. Relevant products tied with
each other take consecutive ranks; which of them gets which rank does not change any metric. A product
scored ``-inf`` is never retrieved (the evaluation uses this for products that cannot be encoded in a
condition, e.g. a product without an image under image-only search). Ranked id lists are taken in the given
order: the retriever that produced them has already broken its ties.

A query with no relevant product has no defined recall; it is an error, not a zero.

Whether one system beats another on the same queries is a question for `paired_bootstrap_interval`: give it the
per-query values of one metric for both (from `per_query_metrics`) and read the interval of the mean difference.

Example:

```python
>>> from make_hf.metrics import retrieval_metrics
>>> retrieval_metrics(rankings=[["b", "a", "c"]], relevant=[["a", "c"]], recall_ks=(1, 2))
{'recall@1': 0.0, 'recall@2': 0.5, 'mrr@10': 0.5, 'ndcg@10': 0.6934264036172708}
```
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

RECALL_KS = (1, 5, 10, 50)
"""Default Recall@k cutoffs."""

MRR_K = 10
NDCG_K = 10

MIN_PRODUCTS_PER_CUTOFF = 10
"""Recall@k is reported as not meaningful on a catalogue of fewer than this many times k products."""


def small_catalogue_warnings(num_products: int, recall_ks: Iterable[int] = RECALL_KS) -> list[str]:
    """One warning per Recall@k whose catalogue has fewer than 10·k products.

    On so few products even a weak model ranks most relevant ones in its top k (Recall@50 on 30 products is 1.0
    for any model), so such numbers cannot tell models apart. Used by the evaluation (logged and returned) and by
    the model card (printed), so both apply the same rule.
    """
    return [
        f"Recall@{k} on {num_products} products is not meaningful (fewer than {MIN_PRODUCTS_PER_CUTOFF * k}, i.e. "
        f"{MIN_PRODUCTS_PER_CUTOFF}·k); evaluate on a larger catalogue to compare models at this cutoff."
        for k in sorted(set(recall_ks))
        if num_products < MIN_PRODUCTS_PER_CUTOFF * k
    ]


# Elements of the largest temporary tensor ranks_from_scores creates per chunk of queries.
_CHUNK_ELEMENTS = 1 << 24
# Resampled query indices paired_bootstrap_interval draws at once (int64: 16 MiB, plus as many float64 values).
_BOOTSTRAP_CHUNK_ELEMENTS = 1 << 21


def _check_cutoffs(recall_ks: Iterable[int], mrr_k: int, ndcg_k: int) -> tuple[int, ...]:
    recall_ks = tuple(recall_ks)
    for name, value in [("recall_ks", k) for k in recall_ks] + [("mrr_k", mrr_k), ("ndcg_k", ndcg_k)]:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must hold positive integers, got {value!r}.")
    return tuple(int(k) for k in recall_ks)


def max_cutoff(recall_ks: Iterable[int] = RECALL_KS, mrr_k: int = MRR_K, ndcg_k: int = NDCG_K) -> int:
    """The deepest rank any of the metrics looks at: ranks beyond it never change a value."""
    return max((*_check_cutoffs(recall_ks, mrr_k, ndcg_k), mrr_k, ndcg_k))


def _relevant_sets(relevant: Sequence[Iterable], num_queries: int, argument: str) -> list[list]:
    if len(relevant) != num_queries:
        raise ValueError(
            f"`{argument}` has {len(relevant)} rows but there are {num_queries} queries; give one row per query."
        )
    sets = []
    for row, items in enumerate(relevant):
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise ValueError(f"`{argument}[{row}]` must be a list of relevant items, got {type(items).__name__}.")
        unique = list(dict.fromkeys(items))  # de-duplicated, order kept
        if not unique:
            raise ValueError(
                f"`{argument}[{row}]` is empty: a query needs at least one relevant product to be scored. "
                "Drop the query or add its relevant product ids."
            )
        sets.append(unique)
    return sets


def _pad(rows: list[list[float]]) -> torch.Tensor:
    width = max(len(row) for row in rows)
    ranks = torch.full((len(rows), width), math.inf, dtype=torch.float64)
    for i, row in enumerate(rows):
        ranks[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    return ranks


def ranks_from_rankings(
    rankings: Sequence[Sequence], relevant: Sequence[Iterable]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of the relevant items in ranked lists of ids.

    Args:
        rankings: one ranked list of item ids per query, best first (any hashable ids: strings, ints).
            Lists may be shorter than the metric cutoffs; missing items are not retrieved.
        relevant: one collection of relevant item ids per query (duplicates are ignored).

    Returns:
        `(ranks, num_relevant)`: `ranks` is a float64 tensor (num_queries, max relevant per query) of 1-based
        ranks, `inf` for relevant items not in the list and for padding; `num_relevant` (num_queries,) int64.
    """
    if isinstance(rankings, (str, bytes)):
        raise ValueError("`rankings` must be a list with one ranked list of ids per query.")
    relevant_sets = _relevant_sets(relevant, len(rankings), "relevant")
    rows = []
    for row, (ranking, items) in enumerate(zip(rankings, relevant_sets)):
        if isinstance(ranking, (str, bytes)):
            raise ValueError(f"`rankings[{row}]` must be a list of ids, got a single {type(ranking).__name__}.")
        position = {}
        for rank, item in enumerate(ranking, start=1):
            if item in position:
                raise ValueError(
                    f"`rankings[{row}]` lists {item!r} twice (ranks {position[item]} and {rank}); a ranking must "
                    "name each item once, otherwise recall counts it twice."
                )
            position[item] = rank
        rows.append([float(position.get(item, math.inf)) for item in items])
    num_relevant = torch.tensor([len(items) for items in relevant_sets], dtype=torch.int64)
    return _pad(rows), num_relevant


def ranks_from_scores(
    scores: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    relevant: Sequence[Iterable[int]],
    max_rank: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of the relevant items from full score rows, with pessimistic ties (see the module docstring).

    Only ranks up to `max_rank` are resolved (deeper ones are `inf`), so the cost per query is one top-k over
    its row plus small comparisons: this is what makes exact evaluation over a large catalogue cheap.

    Args:
        scores: (num_queries, num_items) similarity scores, higher is better. `-inf` marks an item that
            cannot be retrieved; NaN is an error.
        relevant: one collection of relevant column indices per query.
        max_rank: deepest rank to resolve, normally `max_cutoff(...)`.

    Returns:
        `(ranks, num_relevant)` as in `ranks_from_rankings`.
    """
    scores = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores)
    if scores.ndim != 2:
        raise ValueError(f"`scores` must be 2-D (num_queries, num_items), got shape {tuple(scores.shape)}.")
    if not scores.is_floating_point():
        scores = scores.double()
    num_queries, num_items = scores.shape
    if num_items == 0:
        raise ValueError("`scores` has no columns: the catalogue is empty.")
    if max_rank < 1:
        raise ValueError(f"`max_rank` must be >= 1, got {max_rank}.")
    relevant_sets = _relevant_sets(relevant, num_queries, "relevant")
    for row, items in enumerate(relevant_sets):
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or not 0 <= item < num_items:
                raise ValueError(
                    f"`relevant[{row}]` holds {item!r}, which is not a column index of `scores` "
                    f"(0 <= index < {num_items})."
                )
    if torch.isnan(scores).any():
        row = int(torch.isnan(scores).any(dim=1).nonzero()[0])
        raise ValueError(f"`scores[{row}]` contains NaN; check the embeddings for NaN (e.g. a diverged model).")

    depth = min(max_rank, num_items)
    width = max(len(items) for items in relevant_sets)
    index = torch.zeros((num_queries, width), dtype=torch.int64)
    valid = torch.zeros((num_queries, width), dtype=torch.bool)
    for i, items in enumerate(relevant_sets):
        index[i, : len(items)] = torch.tensor([int(item) for item in items], dtype=torch.int64)
        valid[i, : len(items)] = True
    device = scores.device  # a GPU score matrix is ranked where it lives; only the (Q, width) ranks come back
    index, valid = index.to(device), valid.to(device)

    per_query = num_items + width * (depth + width)
    chunk = max(1, min(num_queries, _CHUNK_ELEMENTS // per_query))
    ranks = torch.full((num_queries, width), math.inf, dtype=torch.float64)
    # before[i, j]: relevant slot i precedes slot j among equal scores.
    before = torch.ones(width, width, dtype=torch.bool, device=device).triu(diagonal=1)
    for start in range(0, num_queries, chunk):
        rows = slice(start, start + chunk)
        block, idx, ok = scores[rows], index[rows], valid[rows]
        top = block.topk(depth, dim=1).values  # (b, depth), descending
        threshold = top[:, -1:]
        rel = block.gather(1, idx)  # (b, width)
        # Every item scoring strictly above the threshold is inside `top`; items equal to it may not be.
        count_ge = (top.unsqueeze(1) >= rel.unsqueeze(2)).sum(-1)
        count_ge = torch.where(rel == threshold, (block >= threshold).sum(1, keepdim=True), count_ge)
        other = rel.unsqueeze(1)  # other[b, 0, i] = score of relevant slot i
        mine = rel.unsqueeze(2)  # mine[b, j, 0] = score of relevant slot j
        ok_other = ok.unsqueeze(1)
        relevant_ge = ((other >= mine) & ok_other).sum(-1)
        relevant_gt = ((other > mine) & ok_other).sum(-1)
        relevant_tied_before = ((other == mine) & ok_other & before.T.unsqueeze(0)).sum(-1)
        # Pessimistic: every non-relevant item with a score >= mine comes first, then relevant ones above me.
        rank = (count_ge - relevant_ge) + relevant_gt + relevant_tied_before + 1
        retrievable = ok & (rel >= threshold) & (rel > -math.inf) & (rank <= max_rank)
        unretrieved = torch.full_like(rank, math.inf, dtype=torch.float64)
        ranks[rows] = torch.where(retrievable, rank.double(), unretrieved).cpu()
    num_relevant = torch.tensor([len(items) for items in relevant_sets], dtype=torch.int64)
    return ranks, num_relevant


def per_query_metrics(
    ranks: torch.Tensor,
    num_relevant: torch.Tensor,
    recall_ks: Iterable[int] = RECALL_KS,
    mrr_k: int = MRR_K,
    ndcg_k: int = NDCG_K,
) -> dict[str, torch.Tensor]:
    """Each metric for each query, from the relevant ranks of `ranks_from_rankings` / `ranks_from_scores`.

    Returns a dict `{"recall@1": (num_queries,) float64, ..., "mrr@10": ..., "ndcg@10": ...}` (keys in that
    order), ready to be averaged over any subset of queries (e.g. a query bucket).
    """
    recall_ks = _check_cutoffs(recall_ks, mrr_k, ndcg_k)
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    num_relevant = torch.as_tensor(num_relevant, dtype=torch.float64)
    if ranks.ndim != 2 or num_relevant.shape != ranks.shape[:1]:
        raise ValueError(
            f"`ranks` must be (num_queries, width) and `num_relevant` (num_queries,), got {tuple(ranks.shape)} "
            f"and {tuple(num_relevant.shape)}."
        )
    if (num_relevant < 1).any():
        raise ValueError("Every query needs at least one relevant item (`num_relevant` >= 1).")
    results: dict[str, torch.Tensor] = {}
    for k in recall_ks:
        hits = (ranks <= k).sum(1).double()
        results[f"recall@{k}"] = hits / num_relevant.clamp(max=k)
    first = ranks.min(dim=1).values
    results[f"mrr@{mrr_k}"] = torch.where(first <= mrr_k, 1.0 / first, torch.zeros_like(first))
    gains = torch.where(ranks <= ndcg_k, 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
    ideal_table = torch.cumsum(1.0 / torch.log2(torch.arange(2, ndcg_k + 2, dtype=torch.float64)), dim=0)
    ideal = ideal_table[(num_relevant.clamp(max=ndcg_k) - 1).long()]
    results[f"ndcg@{ndcg_k}"] = gains.sum(1) / ideal
    return results


def mean_metrics(per_query: Mapping[str, torch.Tensor], mask: torch.Tensor | None = None) -> dict[str, float]:
    """Average per-query metrics (optionally over the queries where `mask` is True) into plain floats."""
    out = {}
    for name, values in per_query.items():
        values = values if mask is None else values[mask]
        out[name] = float(values.mean()) if values.numel() else float("nan")
    return out


def retrieval_metrics(
    rankings: Sequence[Sequence],
    relevant: Sequence[Iterable],
    recall_ks: Iterable[int] = RECALL_KS,
    mrr_k: int = MRR_K,
    ndcg_k: int = NDCG_K,
) -> dict[str, float]:
    """Mean Recall@k, MRR@`mrr_k` and NDCG@`ndcg_k` of ranked id lists against relevant id sets."""
    _check_cutoffs(recall_ks, mrr_k, ndcg_k)
    if len(rankings) == 0:
        raise ValueError("`rankings` is empty: nothing to score.")
    ranks, num_relevant = ranks_from_rankings(rankings, relevant)
    return mean_metrics(per_query_metrics(ranks, num_relevant, recall_ks, mrr_k, ndcg_k))


def retrieval_metrics_from_scores(
    scores: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    relevant: Sequence[Iterable[int]],
    recall_ks: Iterable[int] = RECALL_KS,
    mrr_k: int = MRR_K,
    ndcg_k: int = NDCG_K,
) -> dict[str, float]:
    """Mean metrics from full score rows over the catalogue (pessimistic ties; `relevant` = column indices)."""
    depth = max_cutoff(recall_ks, mrr_k, ndcg_k)
    if len(scores) == 0:
        raise ValueError("`scores` is empty: nothing to score.")
    ranks, num_relevant = ranks_from_scores(scores, relevant, depth)
    return mean_metrics(per_query_metrics(ranks, num_relevant, recall_ks, mrr_k, ndcg_k))


@dataclass(frozen=True)
class BootstrapInterval:
    """A paired bootstrap percentile interval for the mean per-query difference `first - second` of a metric.

    Attributes:
        mean_difference: mean of `first - second` over all queries (the observed difference, not a resample).
        low: lower end of the interval, the `(1 - confidence) / 2` quantile of the resampled mean differences.
        high: upper end, the `(1 + confidence) / 2` quantile.
        confidence: the interval's nominal coverage, e.g. 0.95.
        num_queries: queries per resample (the number of values given for each system).
        num_resamples: bootstrap resamples drawn.
    """

    mean_difference: float
    low: float
    high: float
    confidence: float
    num_queries: int
    num_resamples: int

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0: the difference is significant at this level."""
        return self.low > 0 or self.high < 0


def _per_query_values(values: torch.Tensor | np.ndarray | Sequence[float], argument: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double()
    else:
        try:
            values = torch.from_numpy(np.asarray(values, dtype=np.float64))
        except (TypeError, ValueError) as error:
            raise ValueError(f"`{argument}` must be a 1-D sequence of numbers (one per query): {error}") from None
    if values.ndim != 1:
        raise ValueError(
            f"`{argument}` must be 1-D (one value per query), got shape {tuple(values.shape)}; pass one metric, "
            'e.g. `per_query_metrics(...)["recall@10"]`.'
        )
    if values.numel() == 0:
        raise ValueError(f"`{argument}` is empty: give the per-query values of at least one query.")
    finite = torch.isfinite(values)
    if not finite.all():
        row = int((~finite).nonzero()[0])
        raise ValueError(
            f"`{argument}[{row}]` is {float(values[row])}; per-query metric values must be finite (a NaN usually "
            "means the query was not scored: drop it from both systems)."
        )
    return values


def paired_bootstrap_interval(
    first: torch.Tensor | np.ndarray | Sequence[float],
    second: torch.Tensor | np.ndarray | Sequence[float],
    *,
    num_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Paired bootstrap percentile interval of the mean per-query difference of one metric between two systems.

    The paired percentile bootstrap used to compare IR systems (Sakai 2006; Efron and Tibshirani 1993, ch. 13).

    Each resample draws `num_queries` query indices with replacement and averages `first - second` over them:
    the same indices for both systems, so the interval reflects how much the *difference* varies over query
    samples, which is far narrower than comparing two separate per-system intervals when the systems agree on
    which queries are hard. The interval ends are the `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles
    of the resampled means (linear interpolation, numpy's default).

    Deterministic for a seed: resample `r` is the `r`-th call of `torch.randint(num_queries, (num_queries,))` on a
    CPU `torch.Generator` seeded with `seed`. Resamples are drawn in chunks, so memory stays at a few tens of MiB
    whatever `num_resamples` is (10,000 resamples of 2,000 queries take a fraction of a second).

    Args:
        first: per-query values of one metric for the first system, e.g. `per_query_metrics(...)["recall@10"]`
            (1-D tensor, array or sequence of finite numbers).
        second: the same metric for the second system, on the same queries in the same order.
        num_resamples: bootstrap resamples.
        confidence: nominal coverage of the interval, in (0, 1).
        seed: seed of the resampling generator.

    Returns:
        A `BootstrapInterval`; `low > 0` means the first system is better at this confidence.

    Example:

    ```python
    >>> interval = paired_bootstrap_interval([1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], num_resamples=1000)
    >>> interval.mean_difference, interval.num_queries
    (0.5, 4)
    ```
    """
    first = _per_query_values(first, "first")
    second = _per_query_values(second, "second")
    if first.numel() != second.numel():
        raise ValueError(
            f"`first` has {first.numel()} values but `second` has {second.numel()}; give both systems' per-query "
            "values on the same queries, in the same order."
        )
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, (int, np.integer)) or num_resamples < 1:
        raise ValueError(f"`num_resamples` must be a positive integer, got {num_resamples!r}.")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be a number strictly between 0 and 1 (e.g. 0.95), got {confidence!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an integer, got {seed!r}.")

    difference = first - second
    num_queries, num_resamples = difference.numel(), int(num_resamples)
    generator = torch.Generator().manual_seed(int(seed))
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // num_queries)
    means = torch.empty(num_resamples, dtype=torch.float64)
    for start in range(0, num_resamples, chunk):
        rows = min(chunk, num_resamples - start)
        # One (rows, n) draw consumes the generator exactly as `rows` draws of (n,) do: chunking never changes
        # the result.
        indices = torch.randint(num_queries, (rows, num_queries), generator=generator)
        resampled = difference.index_select(0, indices.view(-1)).view(rows, num_queries)
        means[start : start + rows] = resampled.mean(dim=1)
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return BootstrapInterval(
        mean_difference=float(difference.mean()),
        low=low,
        high=high,
        confidence=float(confidence),
        num_queries=num_queries,
        num_resamples=num_resamples,
    )


_DESCRIPTION = """Recall@k (capped at min(k, #relevant)), MRR@k and NDCG@k for retrieval with several relevant
items per query. Config "rankings" (default): predictions are ranked id lists (strings or ints), references are
relevant id lists. Config "scores": predictions are score rows over the whole catalogue (higher is better; exact
ties ordered non-relevant first), references are relevant column indices."""

_INPUTS = """
Args:
    predictions: per query, a ranked list of ids (config "rankings") or a full row of scores (config "scores").
    references: per query, the relevant ids (config "rankings") or relevant column indices (config "scores").
    recall_ks: Recall@k cutoffs, default (1, 5, 10, 50).
    mrr_k: MRR cutoff, default 10.
    ndcg_k: NDCG cutoff, default 10.
Returns:
    {"recall@1": float, "recall@5": ..., "recall@10": ..., "recall@50": ..., "mrr@10": ..., "ndcg@10": ...}
Example:
    >>> metric = RetrievalMetrics()
    >>> metric.compute(predictions=[["b", "a"]], references=[["a"]], recall_ks=(1, 2))
    {'recall@1': 0.0, 'recall@2': 1.0, 'mrr@10': 0.5, 'ndcg@10': 0.6309297535714575}
"""


def _define_retrieval_metrics() -> type:
    # Importing `evaluate` imports transformers' pipelines (~4 s) and would pick up any local file named
    # evaluate.py next to a script being run: defer it to the first use of the class.
    from .training_stack import require_training_stack

    require_training_stack("make_hf.metrics.RetrievalMetrics (an evaluate.Metric)", ("datasets", "evaluate"))
    import datasets
    import evaluate

    class RetrievalMetrics(evaluate.Metric):
        """The retrieval metrics of this module as an offline `evaluate.Metric` (no hub download).

        Same values as `retrieval_metrics` (config `"rankings"`, the default) and `retrieval_metrics_from_scores`
        (config `"scores"`); supports `add_batch` accumulation and evaluate's distributed gathering.

        Example:

        ```python
        >>> metric = RetrievalMetrics()                      # ranked ids
        >>> metric.add_batch(predictions=[["p3", "p1"]], references=[["p1"]])
        >>> metric.compute(recall_ks=(1, 5))["recall@5"]
        1.0
        >>> RetrievalMetrics("scores").compute(predictions=[[0.1, 0.9, 0.3]], references=[[2]])["mrr@10"]
        0.5
        ```
        """

        def _info(self) -> evaluate.MetricInfo:
            if self.config_name == "scores":
                features = datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("float64")),
                        "references": datasets.Sequence(datasets.Value("int64")),
                    }
                )
            elif self.config_name in ("default", "rankings"):
                features = [
                    datasets.Features(
                        {
                            "predictions": datasets.Sequence(datasets.Value("string")),
                            "references": datasets.Sequence(datasets.Value("string")),
                        }
                    ),
                    datasets.Features(
                        {
                            "predictions": datasets.Sequence(datasets.Value("int64")),
                            "references": datasets.Sequence(datasets.Value("int64")),
                        }
                    ),
                ]
            else:
                raise ValueError(f"Unknown config {self.config_name!r}: use 'rankings' (the default) or 'scores'.")
            return evaluate.MetricInfo(
                description=_DESCRIPTION,
                citation="",
                inputs_description=_INPUTS,
                features=features,
                module_type="metric",
            )

        def _compute(self, predictions, references, recall_ks=RECALL_KS, mrr_k=MRR_K, ndcg_k=NDCG_K):
            if self.config_name == "scores":
                lengths = {len(row) for row in predictions}
                if len(lengths) > 1:
                    raise ValueError(
                        f"Score rows have different lengths {sorted(lengths)}; every row must score the whole "
                        "catalogue."
                    )
                scores = torch.tensor(np.asarray(predictions, dtype=np.float64))
                relevant = [[int(i) for i in row] for row in references]
                return retrieval_metrics_from_scores(scores, relevant, recall_ks, mrr_k, ndcg_k)
            return retrieval_metrics(predictions, references, recall_ks, mrr_k, ndcg_k)

    RetrievalMetrics.__module__, RetrievalMetrics.__qualname__ = __name__, "RetrievalMetrics"
    return RetrievalMetrics


def __getattr__(name: str):
    """`RetrievalMetrics` is defined on first access (PEP 562), so that importing this module stays light."""
    if name == "RetrievalMetrics":
        globals()[name] = _define_retrieval_metrics()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BootstrapInterval",
    "MIN_PRODUCTS_PER_CUTOFF",
    "MRR_K",
    "NDCG_K",
    "RECALL_KS",
    "RetrievalMetrics",  # noqa: F822 (defined on first access by the module __getattr__)
    "max_cutoff",
    "mean_metrics",
    "paired_bootstrap_interval",
    "per_query_metrics",
    "ranks_from_rankings",
    "ranks_from_scores",
    "retrieval_metrics",
    "retrieval_metrics_from_scores",
    "small_catalogue_warnings",
]
