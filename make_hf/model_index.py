"""The retrieval metrics of an evaluation result, read as groups, and the Hub's `model-index` made from them.

`model-index`: task `information-retrieval` (as sentence-transformers cards use), one result per evaluation group (a
condition such as title+image / title-only / image-only, or a bucket inside one), the group's path as the dataset
`config`, metric types `recall@1`, `mrr@10`, `ndcg@10` as the evaluation reports them.

The evaluation JSON is read generically: any nesting of mappings, where a mapping holding keys like `recall@10`,
`mrr@10`, `ndcg@10` (any case, optional prefix such as `eval_`) with numbers is one group of metrics, named by the
keys leading to it. Other keys (counts, weights, settings) are ignored by the metadata. `make_hf.modelcard` puts
the groups in the card's metadata and its tables.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from huggingface_hub import EvalResult

TASK_TYPE = "information-retrieval"
TASK_NAME = "Text-to-multimodal product retrieval"

_METRIC_KEY = re.compile(r"(?:.*[_\-/. ])?(recall|mrr|ndcg)@(\d+)", re.IGNORECASE)
_METRIC_ORDER = {"recall": 0, "mrr": 1, "ndcg": 2}
_METRIC_PRETTY = {"recall": "Recall", "mrr": "MRR", "ndcg": "NDCG"}


def metric_sort_key(metric: str) -> tuple[int, int]:
    """Recall (by k), then MRR, then NDCG: the order of a card's metric columns."""
    name, k = metric.split("@")
    return _METRIC_ORDER[name], int(k)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON in `path`; a missing or broken file is an error naming `what` it was meant to be."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist.") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON: {error}") from None


def _metric_parts(key: str) -> tuple[str, int] | None:
    match = _METRIC_KEY.fullmatch(key)
    if match is None:
        return None
    return match.group(1).lower(), int(match.group(2))


def metric_groups(evaluation: Mapping | str | os.PathLike) -> list[tuple[tuple[str, ...], dict[str, float]]]:
    """The groups of retrieval metrics in an evaluation result, in reading order.

    Args:
        evaluation: the evaluation's JSON (a mapping, or the path of a JSON file), e.g. the result of
            `make_hf.evaluation.evaluate_retrieval` (`{"title+image": {"overall": {...}, "by_bucket": {"seen":
            {...}}}, "title": {...}}`). Any nesting of mappings; a mapping with metric keys (`recall@k`, `mrr@k`,
            `ndcg@k`, case-insensitive, an optional prefix such as `eval_`) is a group; `per_query` sections (each
            query's values) are skipped.

    Returns:
        `[(path, {"recall@1": 0.8, ..., "mrr@10": ..., "ndcg@10": ...})]`: `path` is the tuple of keys leading to the
        group (empty for top-level metrics), with an `overall` level dropped and a `by_<name>: {<label>: ...}`
        breakdown named `<name>=<label>` (`("title+image", "bucket=seen")`); metric names are normalised to lower
        case `name@k` and ordered recall (by k), MRR, NDCG.

    Raises:
        ValueError: the JSON holds no metric at all, or a metric value is not a finite number.
    """
    if isinstance(evaluation, (str, os.PathLike)):
        evaluation = read_json(evaluation, "The evaluation file")
    if not isinstance(evaluation, Mapping):
        raise ValueError(f"The evaluation must be a JSON object (mapping), got {type(evaluation).__name__}.")
    groups: list[tuple[tuple[str, ...], dict[str, float]]] = []

    def visit(node: Mapping, path: tuple[str, ...]) -> None:
        metrics = {}
        for key, value in node.items():
            parts = _metric_parts(str(key))
            if parts is not None and not isinstance(value, Mapping):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    where = "/".join((*path, str(key)))
                    raise ValueError(f"Evaluation metric {where!r} must be a finite number, got {value!r}.")
                metrics[parts] = float(value)
        if metrics:
            ordered = sorted(metrics, key=lambda part: (_METRIC_ORDER[part[0]], part[1]))
            groups.append((path, {f"{name}@{k}": metrics[(name, k)] for name, k in ordered}))
        for key, value in node.items():
            if not isinstance(value, Mapping):
                continue
            key = str(key)
            if key == "per_query":  # each query's values (`return_per_query=True`): not a group of the card
                continue
            if key == "overall":  # make_hf.evaluation: a condition's metrics over all its queries
                visit(value, path)
            elif key.startswith("by_"):  # a breakdown: {"by_bucket": {"seen": {...}}} -> "bucket=seen"
                for label, sub in value.items():
                    if isinstance(sub, Mapping):
                        visit(sub, (*path, f"{key[3:]}={label}"))
            else:
                visit(value, (*path, key))

    visit(evaluation, ())
    if not groups:
        raise ValueError(
            "The evaluation holds no retrieval metric: expected keys such as 'recall@10', 'mrr@10' or 'ndcg@10' "
            "(at the top level or inside nested groups)."
        )
    return groups


def pretty_metric(metric: str) -> str:
    name, k = metric.split("@")
    return f"{_METRIC_PRETTY[name]}@{k}"


def eval_results_from_groups(
    groups: list[tuple[tuple[str, ...], dict[str, float]]],
    *,
    dataset_name: str,
    dataset_type: str,
    dataset_split: str = "test",
) -> list[EvalResult]:
    """One `EvalResult` per metric per group; the group path becomes the dataset `config` of the model-index."""
    results = []
    for path, metrics in groups:
        for metric, value in metrics.items():
            results.append(
                EvalResult(
                    task_type=TASK_TYPE,
                    task_name=TASK_NAME,
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_config="/".join(path) if path else None,
                    dataset_split=dataset_split,
                    metric_type=metric,
                    metric_name=pretty_metric(metric),
                    metric_value=round(value, 4),
                )
            )
    return results


def is_breakdown(path: tuple[str, ...]) -> bool:
    """Whether a group is a breakdown of a condition (by query bucket, category group, ...), not its headline."""
    return any("=" in part for part in path)


__all__ = ["TASK_NAME", "TASK_TYPE", "eval_results_from_groups", "is_breakdown", "metric_groups", "metric_sort_key",
           "pretty_metric", "read_json"]
