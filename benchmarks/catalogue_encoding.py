"""How does `make-hf encode` scale with processes? One process against `accelerate launch --num_processes 2`.

    python benchmarks/catalogue_encoding.py                     # 3,000 products, prints a table, writes the JSON
    python benchmarks/catalogue_encoding.py --num-products 6000 --shard-size 500

A catalogue of synthetic-shop products (title + 64 px PNG image, `make_hf.data.make_synthetic_shop`) is encoded
under `title+image` by an untrained `make-small` model (encoding costs the same whatever the weights) with the
`make-hf encode` command as a user runs it, in a fresh folder each time:

- `1 process`: `python -m make_hf.cli encode ...` with one torch thread;
- `2 processes`: `accelerate launch --multi_gpu --num_processes 2 -m make_hf.cli encode ...` (gloo on a machine
  without GPUs), one torch thread each.

Each row gives the wall time of the whole command (interpreter start, model load, encode, summary) and of the encode
alone (from the manifest's write to the last shard's, by file times), products/s of the latter, and the largest
difference from the one-process vectors. The load average is recorded before and after every run: on a machine
shared with other jobs the figures are only as good as it shows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch

from make_hf import MakeConfig, MakeModel, MakeProcessor, train_tokenizer
from make_hf.atomic import write_json
from make_hf.catalogue_encoding import MANIFEST_FILE
from make_hf.data import make_synthetic_shop
from make_hf.index import load_embeddings

RESULTS = Path(__file__).parent / "results" / "catalogue_encoding.json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_catalogue(folder: Path, num_products: int, seed: int) -> Path:
    """`num_products` synthetic-shop products as a JSONL catalogue with PNG files beside it."""
    shop = make_synthetic_shop(round(num_products / 0.9) + 3, split_fractions=(0.1, 0.45, 0.45), seed=seed)
    (folder / "images").mkdir(parents=True)
    rows = []
    for split in ("validation_products", "test_products"):
        for row in shop[split].cast_column("image", datasets.Image(decode=False)):
            if len(rows) == num_products:
                break
            image = f"images/{row['product_id']}.png"
            (folder / image).write_bytes(row["image"]["bytes"])
            rows.append({"product_id": row["product_id"], "title": row["title"], "image": image})
    if len(rows) < num_products:
        raise ValueError(f"The synthetic shop gave {len(rows)} catalogue products, fewer than {num_products}.")
    path = folder / "products.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def write_model(folder: Path, catalogue: Path) -> Path:
    """An untrained make-small model with a tokenizer and keyword extractor fitted on the catalogue's titles."""
    titles = [json.loads(line)["title"] for line in open(catalogue, encoding="utf-8")]
    config = MakeConfig.from_preset("make-small")
    tokenizer = train_tokenizer(titles, vocab_size=config.query_config.vocab_size)
    processor = MakeProcessor.from_config(config, tokenizer).fit_keywords(titles)
    torch.manual_seed(0)
    MakeModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def encode(processes: int, model: Path, catalogue: Path, output: Path, shard_size: int, batch_size: int) -> dict:
    """Run `make-hf encode` with `processes` processes; its times, load averages and exit status."""
    arguments = ["-m", "make_hf.cli", "encode", "--model", str(model), "--catalogue", str(catalogue),
                 "--output", str(output), "--shard-size", str(shard_size), "--batch-size", str(batch_size), "--quiet"]
    if processes == 1:
        command = [sys.executable, *arguments]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(_free_port()), *arguments]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    shards = [path for path in output.iterdir() if path.name.startswith("shard-")]
    encode_seconds = max(p.stat().st_mtime for p in shards) - (output / MANIFEST_FILE).stat().st_mtime
    return {
        "processes": processes,
        "torch_threads_per_process": 1,
        "wall_seconds": round(wall, 2),
        "encode_seconds": round(encode_seconds, 2),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "command": " ".join(command[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-products", type=int, default=3000)
    parser.add_argument("--shard-size", type=int, default=250, help="rows per shard (12 shards of 3,000 rows)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        catalogue = write_catalogue(root / "catalogue", args.num_products, args.seed)
        model = write_model(root / "make-small", catalogue)
        runs = []
        for processes in (1, 2):
            output = root / f"encoded-{processes}"
            runs.append(encode(processes, model, catalogue, output, args.shard_size, args.batch_size))
        reference = load_embeddings(root / "encoded-1")
        for run in runs:
            encoded = load_embeddings(root / f"encoded-{run['processes']}")
            assert encoded.product_ids == reference.product_ids, "the product order differs between runs"
            run["max_abs_difference"] = float((encoded.product_embeds - reference.product_embeds).abs().max())
            run["products_per_second"] = round(args.num_products / run["encode_seconds"], 1)

    for run in runs:
        run["encode_speedup"] = round(runs[0]["encode_seconds"] / run["encode_seconds"], 2)
        run["wall_speedup"] = round(runs[0]["wall_seconds"] / run["wall_seconds"], 2)
    result = {
        "benchmark": "make-hf encode, 1 process vs accelerate launch --num_processes 2",
        "model": "make-small (untrained)",
        "condition": "title+image",
        "num_products": args.num_products,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "runs": runs,
    }
    write_json(str(args.output), result)

    print(f"make-hf encode of {args.num_products} synthetic products (make-small, title+image, shards of "
          f"{args.shard_size}, batch {args.batch_size}) on {os.cpu_count()} CPU core(s)\n")
    print("| processes | wall s | encode s | products/s | encode speed-up | max abs diff | load avg before -> after |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        print(f"| {run['processes']} | {run['wall_seconds']} | {run['encode_seconds']} | {run['products_per_second']} "
              f"| {run['encode_speedup']}x | {run['max_abs_difference']:.1e} | {run['loadavg_before'][0]} -> "
              f"{run['loadavg_after'][0]} |")
    print(f"\n-> {args.output}")


if __name__ == "__main__":
    main()
