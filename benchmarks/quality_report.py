"""Tables of the pretrained-regime quality benchmark, from the per-run files that `quality.py run` writes.

Each row is a variant at its chosen learning rate, mean ± std (population, over seeds) of the test metrics; `MAKE`
is the candidate of the MAKE family (`make`, `make-spe`, ...) with the best mean *validation* Recall@10, so its
defaults are chosen without looking at the test split. Under each table: a paired bootstrap 95% interval of
(MAKE - best other row) on per-query test Recall@10, each system's per-query values averaged over its seeds.
"""

import copy
import dataclasses
import glob
import os
import statistics

from quality import (BATCH_SIZE, DATASETS, DESCRIPTIONS, LEARNING_RATES, RESULTS, SEEDS, STEPS, VARIANTS,
                     WARMUP_STEPS, chosen_learning_rate, initialisation, load_result, result_path)

from make_hf.atomic import write_json, write_text
from make_hf.metrics import paired_bootstrap_interval

METRICS = (("R@1", "recall@1"), ("R@10", "recall@10"), ("MRR@10", "mrr@10"))
PRESET_ROWS = ("clip", "make-shared-encoder", "make-no-ma", "make-no-ke")
BASELINE_ORDER = ("clip", "make-shared-encoder", "make-no-ma", "make-no-ke", "fixed mix",
                  "sentence-transformers fine-tune", "MiniLM zero-shot", "BM25")


def _stats(values):
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def variant_runs(dataset: str, name: str) -> tuple[float | None, list[dict]]:
    """(chosen learning rate, its runs over the seeds present) of a variant; untrained peers have one run."""
    variant = VARIANTS[name]
    if not variant.trained:
        record = load_result(result_path(dataset, name, None, None))
        return None, [record] if record else []
    learning_rate = chosen_learning_rate(dataset, variant)
    if learning_rate is None:
        return None, []
    runs = [load_result(result_path(dataset, name, learning_rate, seed)) for seed in SEEDS]
    return learning_rate, [run for run in runs if run is not None]


def _row(name: str, learning_rate, runs: list[dict], part: str | None = None) -> dict:
    """Mean ± std of a variant's runs; `part="fixed_mix"` reads the fixed-mix figures stored in each run."""
    records = [run[part] if part else run for run in runs]
    condition = "title+image" if "title+image" in records[0]["test"] else "title"
    row = {"name": name, "learning_rate": learning_rate, "seeds": len(records), "condition": condition}
    for _, key in METRICS:
        row[key] = _stats([r["test"][condition][key] for r in records])
    row["validation_recall@10"] = _stats([r["validation"]["recall@10"] for r in records])
    for other in ("title", "image"):
        if other in records[0]["test"] and condition == "title+image":
            row[f"{other}_recall@10"] = _stats([r["test"][other]["recall@10"] for r in records])
    if part == "fixed_mix":
        row["image_weight"] = [r["image_weight"] for r in records]
    row["per_query_recall@10"] = [statistics.fmean(values) for values in
                                  zip(*(r["per_query"]["recall@10"] for r in records))]
    row["cpu_seconds"] = _stats([run["cpu_seconds"] for run in runs])
    row["num_test_products"], row["num_test_queries"] = runs[0]["num_test_products"], runs[0]["num_test_queries"]
    return row


def dataset_rows(dataset: str) -> dict:
    candidates, baselines = [], []
    for name, variant in VARIANTS.items():
        learning_rate, runs = variant_runs(dataset, name)
        if not runs:
            continue
        row = _row(name, learning_rate, runs)
        (candidates if variant.make_family else baselines).append(row)
        if variant.fixed_mix and all("fixed_mix" in run for run in runs):
            baselines.append(_row("fixed mix", learning_rate, runs, part="fixed_mix"))
    complete = [row for row in candidates if row["seeds"] == len(SEEDS)] or candidates
    make = max(complete, key=lambda row: row["validation_recall@10"]["mean"]) if complete else None
    baselines.sort(key=lambda row: BASELINE_ORDER.index(row["name"]))
    result = {"candidates": candidates, "baselines": baselines, "make": make}
    if make and baselines:
        best = max(baselines, key=lambda row: row["recall@10"]["mean"])
        interval = paired_bootstrap_interval(make["per_query_recall@10"], best["per_query_recall@10"])
        result["bootstrap"] = {"against": best["name"], **dataclasses.asdict(interval)}
    return result


def _cell(stats: dict) -> str:
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}" if stats["n"] > 1 else f"{stats['mean']:.3f}"


def _table_line(label: str, row: dict) -> str:
    cells = [_cell(row[key]) for _, key in METRICS]
    title_only = _cell(row["title_recall@10"]) if "title_recall@10" in row else "-"
    image_only = _cell(row["image_recall@10"]) if "image_recall@10" in row else "-"
    lr = "-" if row["learning_rate"] is None else f"{row['learning_rate']:g}"
    seeds = row["seeds"] if row["learning_rate"] is not None else "- (deterministic)"
    return (f"| {label} | " + " | ".join(cells) + f" | {title_only} | {image_only} | {seeds} | {lr} | "
            f"{row['cpu_seconds']['mean'] / 60:.1f} |")


def markdown(reports: dict) -> str:
    header = ("| variant | R@1 | R@10 | MRR@10 | R@10 title only | R@10 image only | seeds | lr | CPU min/run |\n"
              "|---|---|---|---|---|---|---|---|---|")
    lines = []
    for dataset, report in reports.items():
        rows = ([report["make"]] if report["make"] else []) + report["baselines"]
        if not rows:
            lines += [f"### {dataset}", "", "No finished runs yet.", ""]
            continue
        first = rows[0]
        lines += [f"### {dataset} ({first['num_test_products']} test products, {first['num_test_queries']} test "
                  "queries)", "", header]
        if report["make"]:
            make = report["make"]
            lines.append(_table_line(f"MAKE (`{make['name']}`: {DESCRIPTIONS[make['name']]})", make))
        lines += [_table_line(f"`{row['name']}`" if row["name"] in PRESET_ROWS else row["name"], row)
                  for row in report["baselines"]]
        lines.append("")
        if "bootstrap" in report:
            b = report["bootstrap"]
            lines.append(f"MAKE - {b['against']} (best other row), per-query test R@10: {b['mean_difference']:+.3f}, "
                         f"paired bootstrap {b['confidence']:.0%} interval [{b['low']:+.3f}, {b['high']:+.3f}] "
                         f"({b['num_queries']} queries, {b['num_resamples']} resamples).")
            lines.append("")
        candidates = report["candidates"]
        if candidates:
            lines += ["MAKE candidates (chosen on mean validation R@10):", "",
                      "| candidate | validation R@10 | test R@10 | seeds |", "|---|---|---|---|"]
            for row in sorted(candidates, key=lambda r: -r["validation_recall@10"]["mean"]):
                lines.append(f"| `{row['name']}` ({DESCRIPTIONS[row['name']]}) | {_cell(row['validation_recall@10'])} "
                             f"| {_cell(row['recall@10'])} | {row['seeds']} |")
            lines.append("")
        incomplete = [row["name"] for row in rows + candidates if row["seeds"] < len(SEEDS) and row["learning_rate"]]
        if incomplete:
            lines += [f"Fewer than {len(SEEDS)} seeds so far: {', '.join(sorted(set(incomplete)))}.", ""]
        present = {row["name"] for row in report["baselines"] + candidates}
        expected = [name for name in VARIANTS] + ["fixed mix"]
        missing = [name for name in expected if name not in present]
        if missing:
            consequence = (", so the interval above compares MAKE with the best row measured so far"
                           if report["make"] else "")
            lines += [f"Not measured yet (learning-rate search unfinished){consequence}: {', '.join(missing)}.", ""]
    return "\n".join(lines)


def all_runs(dataset: str) -> list[dict]:
    runs = []
    for path in sorted(glob.glob(os.path.join(RESULTS, dataset, "*", "*.json"))):
        record = load_result(path)
        record.pop("per_query", None)
        if isinstance(record.get("fixed_mix"), dict):
            record["fixed_mix"].pop("per_query", None)
        runs.append(record)
    return runs


def plot(reports: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {d: r for d, r in reports.items() if r["baselines"] or r["make"]}
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4.5), squeeze=False)
    for ax, (dataset, report) in zip(axes[0], shown.items()):
        rows = ([dict(report["make"], name="MAKE")] if report["make"] else []) + report["baselines"]
        colours = ["tab:orange" if r["name"] == "MAKE" else "tab:blue" for r in rows]
        ax.barh([r["name"] for r in rows], [r["recall@10"]["mean"] for r in rows],
                xerr=[r["recall@10"]["std"] for r in rows], color=colours)
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_xlabel("test Recall@10 (mean ± std over seeds)")
        ax.set_title(dataset)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(datasets=DATASETS) -> None:
    reports = {dataset: dataset_rows(dataset) for dataset in datasets}
    results_dir = os.path.dirname(RESULTS)
    tables = copy.deepcopy(reports)
    for report in tables.values():
        for row in report["candidates"] + report["baselines"]:
            row.pop("per_query_recall@10", None)  # kept in the per-run files
    payload = {
        "settings": {"steps": STEPS, "batch_size": BATCH_SIZE, "warmup_steps": WARMUP_STEPS,
                     "learning_rates": LEARNING_RATES, "seeds": SEEDS,
                     "initialisation": {d: {n: initialisation(d, v) for n, v in VARIANTS.items()} for d in datasets}},
        "tables": tables,
        "runs": {dataset: all_runs(dataset) for dataset in datasets},
    }
    write_json(os.path.join(results_dir, "quality.json"), payload)
    table = markdown(reports)
    write_text(os.path.join(results_dir, "quality.md"), table + "\n")
    plot(reports, os.path.join(results_dir, "quality.png"))
    print(table)


__all__ = ["write_report", "dataset_rows", "markdown"]


if __name__ == "__main__":
    write_report()
