"""Synthetic-shop Recall@10 of a bigger contrastive batch (GradCache) and of mined hard negatives.

Three ways to spend the same number of epochs (2) on the built-in synthetic shop (`make-small` from scratch, 7998
training rows, the default run's data), each with seeds 0, 1, 2:

- `batch 64`: the default run's batch and learning rate (5e-4), 248 steps;
- `batch 512, GradCache`: 512 rows per step encoded in chunks of 64 (`--gradcache_chunk_size 64`), 30 steps, the
  learning rate scaled by sqrt(512 / 64) (the square-root rule for Adam, Malladi et al. 2022);
- `batch 64 + hard negatives`: batch 64 again from a fresh initialisation, each row carrying the one hard negative
  that `mine_hard_negatives` found for it with the `batch 64` model of the same seed (so this row also spent that
  model's training on mining).

Warm-up is a fifth of each run; each epoch's last partial batch is dropped. Every run scores the test split once;
the table gives mean ± std over seeds and, per configuration, a paired bootstrap 95% interval of its difference to
`batch 64` on per-query Recall@10 (each configuration's per-query values averaged over its seeds).

    python benchmarks/training.py --quality          # all runs missing (resumable), then the table

Each run writes `benchmarks/results/training_quality/<configuration>-seed<k>.json` and is skipped when that file
exists, so the benchmark can be stopped and resumed; the summary goes into `training.json` under `quality`.
"""

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "training_quality")
SEEDS = (0, 1, 2)
EPOCHS, BASE_BATCH, BASE_LEARNING_RATE, CHUNK_SIZE, WARMUP_FRACTION = 2, 64, 5e-4, 64, 0.2
CONFIGURATIONS = {
    "batch 64": dict(batch_size=64),
    "batch 512, GradCache": dict(batch_size=512, gradcache_chunk_size=CHUNK_SIZE),
    "batch 64 + hard negatives": dict(batch_size=64, hard_negatives=1),
}
METRICS = (("R@1", "recall@1"), ("R@10", "recall@10"), ("MRR@10", "mrr@10"))


def result_path(configuration: str, seed: int) -> str:
    slug = configuration.replace(", ", "-").replace(" + ", "-").replace(" ", "-")
    return os.path.join(RESULTS, f"{slug}-seed{seed}.json")


def _load(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def train_once(configuration: str, seed: int, work_dir: str, threads: int) -> dict:
    """One run in this process: train, score the test split, return the figures the result file keeps."""
    import torch

    sys.path.insert(0, os.path.dirname(HERE))
    from make_hf import MakeModel, MakeProcessor
    from make_hf.data import make_synthetic_shop
    from make_hf.hard_negatives import NEGATIVES_COLUMN, mine_hard_negatives
    from make_hf.training import PretrainArguments, pretrain

    settings = CONFIGURATIONS[configuration]
    torch.set_num_threads(threads)
    started = time.process_time()
    shop = make_synthetic_shop(num_products=PretrainArguments.synthetic_products, seed=0)
    train = shop["train"]
    mining = None
    if settings.get("hard_negatives"):
        baseline = os.path.join(work_dir, "batch-64-model")
        if not os.path.isfile(os.path.join(baseline, "config.json")):
            raise RuntimeError(f"{configuration!r} seed {seed} mines with the `batch 64` model of that seed: "
                               f"train it first (it is kept in {baseline}).")
        model, processor = MakeModel.from_pretrained(baseline).eval(), MakeProcessor.from_pretrained(baseline)
        mined = mine_hard_negatives(model, processor, train, num_negatives=settings["hard_negatives"],
                                    show_progress=False)
        train = train.add_column(NEGATIVES_COLUMN, mined.negatives)
        mining = mined.counts

    batch_size = settings["batch_size"]
    steps = len(train) // batch_size * EPOCHS  # the loader drops each epoch's last partial batch
    output_dir = os.path.join(work_dir, "batch-64-model" if configuration == "batch 64" else "run")
    args = PretrainArguments(
        model="make-small",
        seed=seed,
        per_device_train_batch_size=batch_size,
        gradcache_chunk_size=settings.get("gradcache_chunk_size"),
        learning_rate=BASE_LEARNING_RATE * math.sqrt(batch_size / BASE_BATCH),
        num_train_epochs=EPOCHS,
        warmup_steps=round(WARMUP_FRACTION * steps),
        eval_steps=0,
        num_cpu_threads=threads,
        report_to="none",
        output_dir=output_dir,
        per_query_results=True,
    )
    results = pretrain(
        args,
        train_dataset=train,
        eval_dataset={"products": shop["validation_products"], "queries": shop["validation_queries"]},
        test_dataset={"products": shop["test_products"], "queries": shop["test_queries"]},
    )
    test = results["title+image"]
    return {
        "configuration": configuration,
        "seed": seed,
        "batch_size": batch_size,
        "gradcache_chunk_size": args.gradcache_chunk_size,
        "learning_rate": args.learning_rate,
        "epochs": EPOCHS,
        "steps": results["steps"],
        "warmup_steps": args.warmup_steps,
        "hard_negatives_per_row": settings.get("hard_negatives", 0),
        "mining": mining,
        "test": {name: test["overall"][name] for _, name in METRICS},
        "per_query_recall@10": test["per_query"]["recall@10"],
        "test_queries": len(shop["test_queries"]),
        "test_products": len(shop["test_products"]),
        "cpu_seconds": round(time.process_time() - started, 1),
        "threads": threads,
    }


def run_missing(work_root: str, threads: int) -> None:
    """Every (configuration, seed) without a result file, each in its own process, seed by seed."""
    from make_hf.atomic import write_json

    os.makedirs(RESULTS, exist_ok=True)
    for seed in SEEDS:
        work_dir = os.path.join(work_root, f"seed{seed}")
        for configuration in CONFIGURATIONS:
            path = result_path(configuration, seed)
            if os.path.exists(path):
                continue
            baseline = os.path.join(work_dir, "batch-64-model", "config.json")
            if CONFIGURATIONS[configuration].get("hard_negatives") and not os.path.isfile(baseline):
                _run_one("batch 64", seed, work_dir, threads)  # the mining model, gone since its result was written
            write_json(path, _run_one(configuration, seed, work_dir, threads))


def _run_one(configuration: str, seed: int, work_dir: str, threads: int) -> dict:
    """`train_once` in a fresh process (its own threads and memory); returns its record."""
    print(f"training quality: {configuration}, seed {seed} ...", flush=True)
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false")
        command = [sys.executable, os.path.join(HERE, "training.py"), "--threads", str(threads), "--quality_one",
                   configuration, str(seed), work_dir, out.name]
        subprocess.run(command, env=env, check=True)
        return json.load(out)


def summary() -> dict:
    """Mean ± std per configuration over the seeds that exist, and each one's interval against `batch 64`."""
    from make_hf.metrics import paired_bootstrap_interval

    rows, sizes = {}, {}
    for configuration in CONFIGURATIONS:
        records = [r for r in (_load(result_path(configuration, seed)) for seed in SEEDS) if r is not None]
        if not records:
            continue
        row = {"seeds": [r["seed"] for r in records], "steps": records[0]["steps"],
               "learning_rate": records[0]["learning_rate"],
               "cpu_seconds_per_run": round(statistics.fmean(r["cpu_seconds"] for r in records), 1)}
        for _, name in METRICS:
            values = [r["test"][name] for r in records]
            row[name] = {"mean": statistics.fmean(values),
                         "std": statistics.pstdev(values) if len(values) > 1 else 0.0}
        row["per_query"] = [statistics.fmean(v) for v in zip(*(r["per_query_recall@10"] for r in records))]
        if records[0]["mining"]:
            row["mining"] = records[0]["mining"]
        rows[configuration] = row
        sizes = {"test_products": records[0]["test_products"], "test_queries": records[0]["test_queries"]}
    base = rows.get("batch 64")
    for configuration, row in rows.items():
        if base is not None and configuration != "batch 64" and len(row["seeds"]) == len(base["seeds"]):
            interval = paired_bootstrap_interval(row["per_query"], base["per_query"])
            row["minus_batch_64_recall@10"] = dict(difference=interval.mean_difference, low=interval.low,
                                                   high=interval.high)
    for row in rows.values():
        row.pop("per_query")
    return {
        "what": "synthetic-shop test Recall@10 (title+image) after 2 epochs, make-small from scratch: batch 64, "
        "batch 512 with GradCache (chunks of 64), batch 64 with one mined hard negative per row",
        "command": "python benchmarks/training.py --quality",
        **sizes,
        "rows": rows,
    }


def print_table(report: dict) -> None:
    print(f"\nsynthetic shop, {report['test_products']} test products, {report['test_queries']} test queries; "
          "mean ± std over seeds")
    print("| configuration | steps | peak lr | R@1 | R@10 | MRR@10 | R@10 - batch 64 (95% CI) | seeds |")
    print("|---|---|---|---|---|---|---|---|")
    for configuration, row in report["rows"].items():
        cells = " | ".join(f"{row[name]['mean']:.3f} ± {row[name]['std']:.3f}" for _, name in METRICS)
        diff = row.get("minus_batch_64_recall@10")
        interval = "" if diff is None else f"{diff['difference']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]"
        print(f"| {configuration} | {row['steps']} | {row['learning_rate']:.2g} | {cells} | {interval} | "
              f"{len(row['seeds'])} |")
