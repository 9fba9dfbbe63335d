"""How fast is the data entry point? MakeProcessor and KeywordExtractor throughput on this machine.

    python benchmarks/processor_throughput.py                      # batch 64, 224 px, prints a table
    python benchmarks/processor_throughput.py --batches 20 --output benchmarks/results/processor_throughput.json

Measured, single process (what one data-loader worker does):

- `MakeProcessor` on training batches (query + title + image at 224 px, keywords extracted) from three image
  sources: already decoded PIL images (256 px), PNG bytes as the synthetic shop stores them, and 800 px JPEG
  product photos on disk; in rows/s. Next to it, the peer every processor needs anyway: the bare tokenizer (query
  and title) plus the bare image processor on the same decoded images, so the overhead of MakeProcessor itself
  (image loading/conversion, keyword extraction, term ids, checks) is a ratio measured in the same run.
- A breakdown of one batch: tokenisation, keywords (extraction + tokenisation + term ids), image loading,
  image processor.
- `KeywordExtractor`: `fit` (titles + aligned queries) and `extract` in titles/s, on the synthetic shop's
  English titles and on Chinese titles (jieba).

Titles and queries come from the synthetic shop (`make_hf.data.make_synthetic_shop`); the tokenizer is trained on
them with `train_tokenizer` (vocab 8000); nothing is downloaded. Figures are for the machine printed in the table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from make_hf import KeywordExtractor, MakeProcessor, train_tokenizer
from make_hf.data import make_synthetic_shop
from make_hf.image_utils import load_images


CHINESE_WORDS = (
    "透气 跑步鞋 运动鞋 男女 网面 轻便 减震 休闲 韩版 女装 连衣裙 夏季 纯棉 短袖 T恤 真皮 钱包 男士 手机壳 防摔 透明 "
    "充电器 快充 数据线 蓝牙 耳机 降噪 保温杯 不锈钢 大容量 双肩包 学生 书包 防水 户外 登山 帐篷 儿童 玩具 积木 厨房 "
    "收纳 家用 洗发水 去屑 控油 维生素 螺丝 笔记本 加厚"
).split()
CHINESE_FILLER = "2024新款 包邮 热卖 爆款 特价 正品 官方旗舰店".split()


def chinese_titles(count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    titles, queries = [], []
    for _ in range(count):
        words = rng.sample(CHINESE_WORDS, 8)
        titles.append(rng.choice(CHINESE_FILLER) + "".join(words) + rng.choice(CHINESE_FILLER))
        queries.append("".join(rng.sample(words, 2)))
    return titles, queries


def product_photo(seed: int, size: int = 800) -> PIL.Image.Image:
    """A smooth product-like photo (gradient backdrop, a shape, some texture) so JPEG sizes are realistic."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    base = rng.integers(120, 255, 3).astype(np.float32)
    backdrop = base[None, None, :] * (0.75 + 0.25 * ramp[:, None, None]) * np.ones((1, size, 1), np.float32)
    noise = rng.normal(0, 6, (size, size, 3)).astype(np.float32)
    image = PIL.Image.fromarray(np.clip(backdrop + noise, 0, 255).astype(np.uint8))
    draw = PIL.ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(0, 200, 3))
    left, top = (int(v) for v in rng.integers(size // 8, size // 3, 2))
    draw.ellipse([left, top, size - left, size - top // 2], fill=colour)
    return image


def timed(function, repeats: int) -> list[float]:
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        durations.append(time.perf_counter() - start)
    return durations


def timed_round_robin(functions: dict, repeats: int) -> dict[str, list[float]]:
    """Time each function once per round, `repeats` rounds: a load spike on a shared machine hits all alike."""
    durations: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            durations[name] += timed(function, 1)
    return durations


def rate(items: int, durations: list[float]) -> float:
    return items / statistics.median(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", type=int, default=12, help="timed repetitions per measurement (median kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a data-loader worker uses 1)")
    parser.add_argument("--output", default="benchmarks/results/processor_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch_size = args.batch_size

    shop = make_synthetic_shop(num_products=1600, seed=0)["train"]
    titles, queries = shop["title"], shop["query"]
    tokenizer = train_tokenizer(list(dict.fromkeys(titles)) + list(dict.fromkeys(queries)), vocab_size=8000)
    from transformers import ViTImageProcessorPil

    image_processor = ViTImageProcessorPil(size={"height": args.image_size, "width": args.image_size})
    processor = MakeProcessor(image_processor, tokenizer, query_max_length=16, title_max_length=64)

    results: dict = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "batch_size": batch_size,
        "image_size": args.image_size,
        "processor_rows_per_s": {},
        "breakdown_ms_per_batch": {},
        "keywords_titles_per_s": {},
    }

    # ---------------------------------------------------------------- keyword extractor
    extractor = KeywordExtractor()
    fit_times = timed(lambda: extractor.fit(titles, queries), max(2, args.batches // 4))
    unique_titles = list(dict.fromkeys(titles))
    extract_times = timed(lambda: extractor.extract_batch(unique_titles, 8), max(2, args.batches // 4))
    results["keywords_titles_per_s"]["english_fit"] = rate(len(titles), fit_times)
    results["keywords_titles_per_s"]["english_extract"] = rate(len(unique_titles), extract_times)
    zh_titles, zh_queries = chinese_titles(5000)
    zh = KeywordExtractor()
    zh.terms("预热")  # jieba loads its dictionary once per process (~0.6 s); not part of the per-title cost
    zh_fit = timed(lambda: zh.fit(zh_titles, zh_queries), max(2, args.batches // 4))
    zh_extract = timed(lambda: zh.extract_batch(zh_titles, 8), max(2, args.batches // 4))
    results["keywords_titles_per_s"]["chinese_fit"] = rate(len(zh_titles), zh_fit)
    results["keywords_titles_per_s"]["chinese_extract"] = rate(len(zh_titles), zh_extract)
    processor.keyword_extractor = extractor

    # ---------------------------------------------------------------- processor
    rng = random.Random(0)
    rows = rng.sample(range(len(titles)), batch_size)
    batch_queries = [queries[i] for i in rows]
    batch_titles = [titles[i] for i in rows]
    png_bytes = [shop[i]["image"]["bytes"] if isinstance(shop[i]["image"], dict) else None for i in rows]
    if png_bytes[0] is None:  # the dataset decodes images: re-encode them as the PNG bytes the shop stores
        png_bytes = []
        for i in rows:
            buffer = io.BytesIO()
            shop[i]["image"].save(buffer, format="PNG")
            png_bytes.append(buffer.getvalue())
    decoded = [product_photo(i, 256) for i in range(batch_size)]
    with tempfile.TemporaryDirectory() as folder:
        jpeg_paths = []
        for i in range(batch_size):
            path = Path(folder) / f"product_{i}.jpg"
            product_photo(i, 800).save(path, quality=90)
            jpeg_paths.append(str(path))
        results["jpeg_kib_mean"] = statistics.mean(os.path.getsize(p) for p in jpeg_paths) / 1024

        sources = {"decoded PIL 256px": decoded, "PNG bytes (synthetic shop, 64px)": png_bytes,
                   "JPEG files 800px": jpeg_paths}  # fmt: skip
        peer = "bare tokenizer + image processor, decoded PIL 256px"

        def bare_components():
            tokenizer(batch_queries, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
            tokenizer(batch_titles, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
            image_processor(decoded, return_tensors="pt")

        calls = {
            name: (lambda images=images: processor(query=batch_queries, title=batch_titles, images=images))
            for name, images in sources.items()
        }
        calls[peer] = bare_components
        for function in calls.values():  # warm-up
            function()
        durations = timed_round_robin(calls, args.batches)
        for name in sources:
            results["processor_rows_per_s"][name] = rate(batch_size, durations[name])
        results["peer_rows_per_s"] = {peer: rate(batch_size, durations[peer])}

        keyword_strings = [" ".join(extractor.extract(t, 8)) for t in batch_titles]
        loaded = load_images(jpeg_paths)
        parts = {
            "tokenize query+title": lambda: (processor._tokenize(batch_queries, "query", 16),
                                             processor._tokenize(batch_titles, "title", 64)),
            "keywords: extract": lambda: [extractor.extract(t, 8) for t in batch_titles],
            "keywords: tokenize + term ids": lambda: (processor._tokenize(keyword_strings, "keywords", 16),
                                                      processor.term_ids(batch_queries),
                                                      processor.term_ids(keyword_strings)),
            "images: load JPEG 800px to RGB": lambda: load_images(jpeg_paths),
            "images: load PNG bytes to RGB": lambda: load_images(png_bytes),
            "images: image processor (resize+normalise)": lambda: processor._process_images(loaded),
        }  # fmt: skip
        for name, part_durations in timed_round_robin(parts, args.batches).items():
            results["breakdown_ms_per_batch"][name] = 1000 * statistics.median(part_durations)

    print(f"\nMakeProcessor throughput: batch {batch_size}, query + title + {args.image_size} px image, keywords on")
    print(f"machine: {results['machine']['processor']}, {results['machine']['cpu_count']} cores, "
          f"torch threads {results['machine']['torch_threads']}\n")  # fmt: skip
    print(f"{'input':<58}{'rows/s':>10}")
    for name, value in results["processor_rows_per_s"].items():
        print(f"{'MakeProcessor, ' + name:<58}{value:>10.0f}")
    for name, value in results["peer_rows_per_s"].items():
        print(f"{name:<58}{value:>10.0f}")
    decoded_ratio = results["processor_rows_per_s"]["decoded PIL 256px"] / results["peer_rows_per_s"][peer]
    results["processor_vs_bare_components_decoded"] = decoded_ratio
    print(f"{'MakeProcessor / bare components (decoded PIL)':<58}{decoded_ratio:>10.2f}")
    print(f"\n{'one batch of ' + str(batch_size) + ', broken down':<58}{'ms':>10}")
    for name, value in results["breakdown_ms_per_batch"].items():
        print(f"{name:<58}{value:>10.1f}")
    print(f"\n{'KeywordExtractor':<58}{'titles/s':>10}")
    for name, value in results["keywords_titles_per_s"].items():
        print(f"{name.replace('_', ' '):<58}{value:>10.0f}")

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
