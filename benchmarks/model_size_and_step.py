"""Parameter counts of the MAKE size presets and the time of one training step, against a two-tower peer.

A training step is forward (all six loss terms: queries, titles, images, keywords, term ids, product ids) + backward +
AdamW step + logit-scale clamp, in fp32, on random inputs. The peer is transformers' `VisionTextDualEncoderModel`
(CLIP-style: one text tower on the titles, one image tower, one symmetric loss) with the same text and image tower
sizes, timed in the same run so that the ratio holds across machines.

    python benchmarks/model_size_and_step.py                       # make-small, batch 64
    python benchmarks/model_size_and_step.py --preset make-tiny --batch_size 16 --steps 3
    python benchmarks/model_size_and_step.py --output outputs/benchmarks/size_and_step.json

On a machine whose cores are busy with other work, time with `--threads 1` (or set `OMP_WAIT_POLICY=PASSIVE`):
OpenMP threads otherwise spin-wait for a preempted sibling and a step can take several times longer, erratically.
The JSON keeps the process CPU time and the load average next to the wall-clock time for that reason.
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch
from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

from make_hf import MakeConfig, MakeModel


SIZE_PRESETS = ("make-tiny", "make-small", "make-base")


def parameter_counts(model: MakeModel) -> dict:
    """Total and per-part parameter counts; a shared parameter (tied word embeddings) counts for the query tower."""
    parts = {
        "query_tower": model.query_model,
        "title_tower": model.title_model,
        "image_tower": model.vision_model,
    }
    seen, counts = set(), {}
    for name, part in parts.items():
        own = [p for p in ([] if part is None else part.parameters()) if id(p) not in seen]
        seen.update(map(id, own))
        counts[name] = sum(p.numel() for p in own)
    counts["total"] = sum(p.numel() for p in model.parameters())
    counts["heads"] = counts["total"] - counts["query_tower"] - counts["title_tower"] - counts["image_tower"]
    return counts


def make_batch(config: MakeConfig, batch_size: int, query_length: int, title_length: int, num_terms: int):
    generator = torch.Generator().manual_seed(0)
    vocab_size = config.query_config.vocab_size
    image_size = config.vision_config.image_size

    def ids(length):
        return torch.randint(5, vocab_size, (batch_size, length), generator=generator)

    def terms(width):
        return torch.randint(1, 50, (batch_size, width), generator=generator)

    return {
        "query_input_ids": ids(query_length),
        "query_attention_mask": torch.ones(batch_size, query_length, dtype=torch.long),
        "title_input_ids": ids(title_length),
        "title_attention_mask": torch.ones(batch_size, title_length, dtype=torch.long),
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size, generator=generator),
        "image_mask": torch.ones(batch_size, dtype=torch.long),
        "keyword_input_ids": ids(query_length),
        "keyword_attention_mask": torch.ones(batch_size, query_length, dtype=torch.long),
        "query_term_ids": terms(2),
        "keyword_term_ids": terms(num_terms),
        "product_ids": torch.arange(batch_size),
    }


def time_steps(step, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds of each step (CPU time is what a step costs when the machine is shared)."""
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(steps):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def make_step(model: MakeModel, batch: dict):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        output = model(**batch)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        model.clamp_logit_scale()

    return step


def peer_step(config: MakeConfig, batch: dict):
    """CLIP-style dual encoder with MAKE's title and image tower sizes, trained on (title, image) pairs."""
    peer = VisionTextDualEncoderModel(
        VisionTextDualEncoderConfig(
            text_config=config.title_config.to_dict() if config.title_config else config.query_config.to_dict(),
            vision_config=config.vision_config.to_dict(),
            projection_dim=config.projection_dim,
        )
    ).train()
    optimizer = torch.optim.AdamW(peer.parameters(), lr=1e-4)

    def step():
        output = peer(
            input_ids=batch["title_input_ids"],
            attention_mask=batch["title_attention_mask"],
            pixel_values=batch["pixel_values"],
            return_loss=True,
        )
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()

    return step, sum(p.numel() for p in peer.parameters())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="make-small", help="preset whose training step is timed")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--query_length", type=int, default=16, help="query and keyword tokens")
    parser.add_argument("--title_length", type=int, default=64)
    parser.add_argument("--num_keyword_terms", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no_peer", action="store_true", help="skip the VisionTextDualEncoderModel step")
    parser.add_argument("--output", default="outputs/benchmarks/model_size_and_step.json")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes = {}
    for name in SIZE_PRESETS:
        with torch.device("meta"):  # counting needs shapes only
            sizes[name] = parameter_counts(MakeModel(MakeConfig.from_preset(name)))

    config = MakeConfig.from_preset(args.preset)
    model = MakeModel(config).train()
    batch = make_batch(config, args.batch_size, args.query_length, args.title_length, args.num_keyword_terms)
    make_times, make_cpu = time_steps(make_step(model, batch), args.warmup, args.steps)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            # Other work on the machine slows the step down: the load average says how busy it was.
            "load_average_1min_before": os.getloadavg()[0],
        },
        "parameters": sizes,
        "step": {
            "preset": args.preset,
            "batch_size": args.batch_size,
            "query_length": args.query_length,
            "keyword_length": args.query_length,
            "title_length": args.title_length,
            "image_size": config.vision_config.image_size,
            "make_seconds_median": statistics.median(make_times),
            "make_seconds_all": make_times,
            "make_cpu_seconds_median": statistics.median(make_cpu),
        },
    }
    if not args.no_peer:
        step, peer_parameters = peer_step(config, batch)
        peer_times, peer_cpu = time_steps(step, args.warmup, args.steps)
        result["step"].update(
            peer="VisionTextDualEncoderModel (title tower + image tower, same sizes)",
            peer_parameters=peer_parameters,
            peer_seconds_median=statistics.median(peer_times),
            peer_seconds_all=peer_times,
            peer_cpu_seconds_median=statistics.median(peer_cpu),
            make_over_peer=statistics.median(make_times) / statistics.median(peer_times),
        )

    print(f"{'preset':<12} {'total':>12} {'query tower':>12} {'title tower':>12} {'image tower':>12} {'heads':>9}")
    for name, counts in sizes.items():
        print(
            f"{name:<12} {counts['total']:>12,} {counts['query_tower']:>12,} {counts['title_tower']:>12,} "
            f"{counts['image_tower']:>12,} {counts['heads']:>9,}"
        )
    step_info = result["step"]
    print(
        f"\n{args.preset} training step (forward + backward + AdamW), batch {args.batch_size}, query/keywords "
        f"{args.query_length} tokens, titles {args.title_length} tokens, images {step_info['image_size']} px, "
        f"{torch.get_num_threads()} torch threads on {result['machine']['processor']} ({os.cpu_count()} CPUs):"
    )
    print(
        f"  MAKE (3 towers, 6 losses): {step_info['make_seconds_median']:.3f} s wall, "
        f"{step_info['make_cpu_seconds_median']:.3f} s CPU (medians of {args.steps})"
    )
    if "peer_seconds_median" in step_info:
        print(
            f"  peer {step_info['peer']}: {step_info['peer_seconds_median']:.3f} s wall, "
            f"{step_info['peer_cpu_seconds_median']:.3f} s CPU"
        )
        print(f"  MAKE / peer (wall): {step_info['make_over_peer']:.2f}x")
    print(f"  load average (1 min) before the run: {result['machine']['load_average_1min_before']:.2f}")

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
