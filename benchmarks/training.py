"""Training-step time and peak memory against the contrastive batch size, with and without GradCache.

One training step of `make-small` (forward with all six loss terms, backward, AdamW step, logit-scale clamp, fp32,
random inputs at the processor's default lengths) for each batch size, either at once or with GradCache in chunks
of `--chunk_size` rows (`make_hf.training.gradcache`, the `--gradcache_chunk_size` of pre-training). Each
configuration runs in a fresh process, so that its peak resident memory (`ru_maxrss`) is its own; the resident
memory after building the model and the batch is reported next to it, their difference being what the step adds.

    python benchmarks/training.py                                   # make-small, batches 64 256 1024, chunks of 64
    python benchmarks/training.py --preset make-tiny --batch_sizes 16 64 --chunk_size 8 --steps 1
    python benchmarks/training.py --breakdown     # make-small at batch 64: data vs towers vs losses, against CLIP
    python benchmarks/training.py --quality       # synthetic-shop R@10: batch 64, batch 512 with GradCache, negatives

`--breakdown` (benchmarks/step_breakdown.py) profiles one make-small step at batch 64 on the synthetic shop: data
time (collation, with and without the collator's caches) against compute time, the compute split by tower, and the
step and FLOP ratios against a transformers `CLIPModel` with the same title and image towers, measured in the same
process. It adds `step_breakdown` to training.json and leaves the rest of the file as it is.

`--quality` (benchmarks/training_quality.py) trains make-small on the synthetic shop for the same two epochs at batch
64, at batch 512 with GradCache, and at batch 64 with mined hard negatives, 3 seeds each (resumable, one file per run),
and adds their test Recall@10 to training.json as `quality`.

Writes a table to stdout and `benchmarks/results/training.json`, with the load average before and after the run:
the machine this ran on is shared, so times are of that moment; the memory figures do not depend on the load.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import training_quality

HERE = os.path.dirname(os.path.abspath(__file__))
QUERY_LENGTH, TITLE_LENGTH, NUM_TERMS = 16, 64, 8  # MakeProcessor's default query / title lengths


def _rss_mib() -> float:
    with open("/proc/self/statm", encoding="utf-8") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(preset: str, batch_size: int, chunk_size: int | None, warmup: int, steps: int, threads: int) -> dict:
    """Time `steps` training steps (after `warmup`) in this process; return times and memory."""
    import torch

    sys.path.insert(0, HERE)
    from model_size_and_step import make_batch, time_steps

    from make_hf import MakeConfig, MakeModel
    from make_hf.training.gradcache import GradCache

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MakeModel(MakeConfig.from_preset(preset)).train()
    batch = make_batch(model.config, batch_size, QUERY_LENGTH, TITLE_LENGTH, NUM_TERMS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    grad_cache = None if chunk_size is None else GradCache(model, chunk_size)

    def step():
        optimizer.zero_grad(set_to_none=True)
        if grad_cache is None:
            model(**batch).loss.backward()
        else:
            grad_cache.forward(batch)
            grad_cache.backward()
        optimizer.step()
        model.clamp_logit_scale()

    rss_before = _rss_mib()
    wall, cpu = time_steps(step, warmup, steps)
    return {
        "preset": preset,
        "batch_size": batch_size,
        "gradcache_chunk_size": chunk_size,
        "step_seconds": statistics.median(wall),
        "step_cpu_seconds": statistics.median(cpu),
        "rss_before_step_mib": round(rss_before, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": threads,
        "warmup_steps": warmup,
        "timed_steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="make-small", choices=("make-tiny", "make-small", "make-base"))
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--chunk_size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "training.json"))
    parser.add_argument("--breakdown", action="store_true", help="profile one make-small step at batch 64 instead")
    parser.add_argument("--quality", action="store_true", help="synthetic-shop R@10 of GradCache and hard negatives")
    parser.add_argument("--work_dir", default=os.path.join(os.path.dirname(HERE), "outputs", "training-quality"),
                        help="where --quality keeps its models")
    parser.add_argument("--one", nargs=2, metavar=("BATCH", "CHUNK"), help=argparse.SUPPRESS)
    parser.add_argument("--quality_one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.quality_one:  # one quality run, in the process that `--quality` starts for it
        configuration, seed, work_dir, output = args.quality_one
        record = training_quality.train_once(configuration, int(seed), work_dir, args.threads)
        with open(output, "w", encoding="utf-8") as f:
            json.dump(record, f)
        return

    if args.quality:
        quality(args)
        return

    if args.one:  # a single configuration, in the process that the run below starts for it
        batch_size, chunk = int(args.one[0]), None if args.one[1] == "none" else int(args.one[1])
        print(json.dumps(measure(args.preset, batch_size, chunk, args.warmup, args.steps, args.threads)))
        return

    if args.breakdown:
        breakdown(args)
        return

    load_before, started = os.getloadavg(), time.time()
    rows = []
    for batch_size in args.batch_sizes:
        for chunk in (None, args.chunk_size):
            command = [
                sys.executable, os.path.abspath(__file__), "--preset", args.preset, "--warmup", str(args.warmup),
                "--steps", str(args.steps), "--threads", str(args.threads),
                "--one", str(batch_size), "none" if chunk is None else str(chunk),
            ]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            row = rows[-1]
            print(
                f"batch {batch_size:5d}  {'GradCache ' + str(chunk) if chunk else 'at once':>14}: "
                f"{row['step_seconds']:7.2f} s/step  peak RSS {row['peak_rss_mib']:7.0f} MiB "
                f"(before the step {row['rss_before_step_mib']:.0f})",
                flush=True,
            )

    import torch

    report = {
        "what": "one training step (forward + backward + AdamW) against the contrastive batch size, with and "
        "without GradCache; random inputs, fp32, each configuration in its own process",
        "command": "python benchmarks/training.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "minutes": round((time.time() - started) / 60, 1),
        },
        "lengths": {"query": QUERY_LENGTH, "title": TITLE_LENGTH, "keyword": QUERY_LENGTH},
        "results": rows,
    }
    print()
    print("| batch | mode | step (s) | step CPU (s) | peak RSS (MiB) | RSS before the step (MiB) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        mode = f"GradCache, chunks of {row['gradcache_chunk_size']}" if row["gradcache_chunk_size"] else "at once"
        print(
            f"| {row['batch_size']} | {mode} | {row['step_seconds']:.2f} | {row['step_cpu_seconds']:.2f} | "
            f"{row['peak_rss_mib']:.0f} | {row['rss_before_step_mib']:.0f} |"
        )
    print(f"\nload average before / after: {report['machine']['load_average_before']} / "
          f"{report['machine']['load_average_after']}")
    sys.path.insert(0, os.path.dirname(HERE))
    from make_hf.atomic import write_json

    if os.path.exists(args.output):  # the --breakdown and --quality sections are kept
        with open(args.output, encoding="utf-8") as f:
            report.update({k: v for k, v in json.load(f).items() if k in ("step_breakdown", "quality")})
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    write_json(args.output, report)


def quality(args) -> None:
    """`--quality`: the missing quality runs, then their table, added to the JSON as `quality`."""
    sys.path.insert(0, os.path.dirname(HERE))
    from make_hf.atomic import write_json

    training_quality.run_missing(args.work_dir, args.threads)
    report = training_quality.summary()  # each run's CPU seconds are in its own file, and their mean here
    training_quality.print_table(report)
    whole = {}
    if os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as f:
            whole = json.load(f)
    whole["quality"] = report
    write_json(args.output, whole)


def breakdown(args) -> None:
    """`--breakdown`: run benchmarks/step_breakdown.py here with one thread, print it, add it to the JSON."""
    import torch

    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.dirname(HERE))
    from step_breakdown import measure

    from make_hf.atomic import write_json

    torch.set_num_threads(args.threads)
    load_before, started = os.getloadavg(), time.time()
    result = measure(batch_size=64, rounds=max(args.steps, 5))
    result["command"] = "python benchmarks/training.py " + " ".join(sys.argv[1:])
    result["load_average_before"] = [round(x, 2) for x in load_before]
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["minutes"] = round((time.time() - started) / 60, 1)
    result["torch"] = torch.__version__
    step, data, clip = result["step_seconds"], result["data_seconds_per_batch"], result["clip"]
    print(f"make-small step at batch 64 ({args.threads} thread): {step * 1000:.0f} ms "
          f"(forward {result['phases_seconds']['forward'] * 1000:.0f}, backward "
          f"{result['phases_seconds']['backward'] * 1000:.0f}, "
          f"AdamW {result['phases_seconds']['optimizer'] * 1000:.0f})")
    print("| part | forward in the step (ms) | forward + backward alone (ms) |")
    print("|---|---|---|")
    for name, seconds in result["forward_seconds"].items():
        alone = result["tower_forward_backward_alone_seconds"].get(name)
        print(f"| {name} | {seconds * 1000:.0f} | {'' if alone is None else f'{alone * 1000:.0f}'} |")
    print(f"data per batch: {data['no_cache_seconds'] * 1000:.0f} ms without caches, "
          f"{data['keyword_cache_warm_seconds'] * 1000:.0f} ms keyword cache warm, "
          f"{data['pixel_and_keyword_cache_warm_seconds'] * 1000:.0f} ms pixel + keyword caches warm; data share of a "
          f"step {result['data_share_of_a_step']['no_cache']:.1%} -> "
          f"{result['data_share_of_a_step']['pixel_and_keyword_cache_warm']:.1%}")
    print(f"CLIPModel, same title and image towers: {clip['step_seconds'] * 1000:.0f} ms; MAKE / CLIP step "
          f"{clip['make_over_clip_step']:.2f}x, FLOPs {clip['make_over_clip_flops']:.2f}x")
    print(f"load average before / after: {result['load_average_before']} / {result['load_average_after']}")
    report = {}
    if os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as f:
            report = json.load(f)
    report["step_breakdown"] = result
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    write_json(args.output, report)


if __name__ == "__main__":
    main()
