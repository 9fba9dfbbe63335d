"""Markdown tables of retrieval results: one renderer for what `make-hf evaluate` and the training run print
(`format_results`) and for the model card's evaluation section (`make_hf.modelcard`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (no trailing newline); cells are written as given."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def warning_lines(warnings: Sequence[str]) -> str:
    """Warnings as Markdown quotes, one per line (the card and the printed results show them alike)."""
    return "\n".join(f"> **Warning:** {warning}" for warning in warnings)


def _metric_names(section: Mapping[str, Any]) -> list[str]:
    return [key for key in section["overall"] if key != "num_queries"]


def format_results(results: Mapping[str, Any]) -> str:
    """Markdown tables of an `evaluate_retrieval` result: its size and small-catalogue warnings, the conditions,
    then buckets and category groups per condition, then the mean image weight per category."""
    from .encoding import CONDITIONS  # imports torch; the model card renders tables without it

    conditions = [c for c in CONDITIONS if c in results]
    if not conditions:
        raise ValueError("`results` holds no condition; pass the dict `evaluate_retrieval` returned.")
    names = _metric_names(results[conditions[0]])
    header = ["condition", *names, "queries"]
    parts = [f"{results.get('num_queries', '?')} queries, {results.get('num_products', '?')} products."]
    if results.get("warnings"):
        parts.append(warning_lines(results["warnings"]))
    parts.append(markdown_table(header, [[c, *(f"{results[c]['overall'][n]:.3f}" for n in names),
                                          str(results[c]["overall"]["num_queries"])] for c in conditions]))
    for key, title in (("by_bucket", "bucket"), ("by_category_group", "category group")):
        rows = [
            [c, group, *(f"{values[n]:.3f}" for n in names), str(values["num_queries"])]
            for c in conditions
            for group, values in results[c].get(key, {}).items()
        ]
        if rows:
            parts.append(markdown_table(["condition", title, *names, "queries"], rows))
    if "image_weight_by_category" in results:
        groups = results.get("image_weight_by_category_group", {})
        rows = [[name, f"{weight:.3f}"] for name, weight in results["image_weight_by_category"].items()]
        rows += [[f"**{name}** (group)", f"{weight:.3f}"] for name, weight in groups.items()]
        parts.append(markdown_table(["category", "mean image weight"], rows))
    elif results.get("mean_image_weight") is not None:
        parts.append(f"Mean image weight: {results['mean_image_weight']:.3f}")
    return "\n\n".join(parts) + "\n"


__all__ = ["format_results", "markdown_table", "warning_lines"]
