"""How much do approximate indexes lose, and what do they buy? FAISS HNSW / IVF-PQ against exact torch search.

    # real embeddings: a trained model's product vectors over a whole catalogue, its own queries
    python benchmarks/index_recall.py --model outputs/make-small --num-products 20000
    # no model at hand: clustered synthetic vectors (labelled as such in the table and the JSON)
    python benchmarks/index_recall.py --num-vectors 100000 --dim 256

Ground truth is exact search with torch (`(queries @ products.T).topk`), the way `make_hf.evaluation` scores.
For each index the table gives recall@k against it, batch throughput (all queries in one call), the latency of
one query at a time (what a search request sees), and the build time; torch brute force and a FAISS flat index
are measured in the same run, so the speed-ups are ratios on one machine (named in the output).

Recall@k here is tie-aware: a returned product counts when its exact score is at least the k-th best exact
score (minus 1e-6). Without ties that is the usual |approximate top-k ∩ exact top-k| / k; with near-duplicate
products (the synthetic shop has many) it does not punish an index for returning one of two equal products.

With `--model`, the catalogue is every distinct product of the dataset (training products included, so that
the index is searched at a realistic size) encoded under `--condition`, and the queries are the dataset's
distinct query strings (a random `--num-queries` of them), encoded by the model's query tower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from make_hf.evaluation import CONDITIONS, exact_search
from make_hf.index import ProductIndex


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=None, help="trained model folder; without it: synthetic vectors")
    parser.add_argument("--dataset", default="synthetic", help="with --model: 'synthetic', 'emoji' or a saved folder")
    parser.add_argument("--num-products", type=int, default=20000, help="with --model: synthetic shop size")
    parser.add_argument("--language", default="en", help="with --model and emoji: language")
    parser.add_argument("--emoji-source", default=None, help="with --model and emoji: npm tarball folder")
    parser.add_argument("--condition", default="title+image", choices=CONDITIONS)
    parser.add_argument("--batch-size", type=int, default=256, help="with --model: encoding batch size")
    parser.add_argument("--num-vectors", type=int, default=100000, help="without --model: catalogue size")
    parser.add_argument("--dim", type=int, default=256, help="without --model: dimension")
    parser.add_argument("--clusters", type=int, default=1000, help="without --model: number of clusters")
    parser.add_argument("--num-queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--nlist", type=int, default=None, help="IVF-PQ lists (default: from the catalogue size)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--pq-m", type=int, default=None)
    parser.add_argument("--pq-bits", type=int, default=None)
    parser.add_argument("--latency-queries", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and FAISS threads (default: their own defaults, usually one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/index_recall.json")
    return parser.parse_args(argv)


def synthetic_vectors(num_vectors: int, dim: int, clusters: int, num_queries: int, seed: int):
    """Clustered unit vectors (cluster centres + noise), and queries near random catalogue vectors.

    Embeddings of a trained retrieval model are clustered (by category, brand, ...), not uniform on the sphere;
    uniform random vectors would make every index look worse than it is on real data.
    """
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(clusters, dim, generator=generator), dim=1)
    assignment = torch.randint(0, clusters, (num_vectors,), generator=generator)
    products = torch.nn.functional.normalize(
        centres[assignment] + 0.6 * torch.randn(num_vectors, dim, generator=generator) / dim**0.5, dim=1
    )
    anchors = torch.randint(0, num_vectors, (num_queries,), generator=generator)
    queries = torch.nn.functional.normalize(
        products[anchors] + 0.6 * torch.randn(num_queries, dim, generator=generator) / dim**0.5, dim=1
    )
    ids = [f"v{i}" for i in range(num_vectors)]
    return products, queries, ids


def model_vectors(args: argparse.Namespace):
    """A trained model's product embeddings over the dataset's whole catalogue, and its query embeddings."""
    import datasets

    from make_hf import MakeModel, MakeProcessor
    from make_hf.evaluation import encode_products, encode_queries

    if args.dataset == "synthetic":
        from make_hf.data import make_synthetic_shop

        data = make_synthetic_shop(args.num_products, seed=args.seed)
    elif args.dataset == "emoji":
        from make_hf.data import build_emoji_cldr_3d

        data = build_emoji_cldr_3d(args.emoji_source, languages=args.language, verbose=False)
    else:
        data = datasets.load_from_disk(args.dataset)
    products, queries = {}, set()
    for name, split in data.items():
        columns = set(split.column_names)
        if "query" in columns:
            queries.update(split["query"])
        if {"product_id", "title", "image"} <= columns:
            if isinstance(split.features["image"], datasets.Image):
                split = split.cast_column("image", datasets.Image(decode=False))
            for row in split.select_columns(["product_id", "title", "image"]):
                products.setdefault(row["product_id"], row)
    catalogue = list(products.values())
    queries = sorted(queries)
    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(len(queries), min(args.num_queries, len(queries)), replace=False)
    queries = [queries[i] for i in sorted(chosen)]

    model = MakeModel.from_pretrained(args.model).eval()
    processor = MakeProcessor.from_pretrained(args.model)
    encoded = encode_products(model, processor, catalogue, conditions=(args.condition,), batch_size=args.batch_size)
    keep = encoded.retrievable[args.condition]
    ids = [pid for pid, ok in zip(encoded.product_ids, keep.tolist()) if ok]
    query_embeds = encode_queries(model, processor, queries, batch_size=args.batch_size)
    return encoded.embeds[args.condition][keep], query_embeds.cpu(), ids


def best_time(function, repeats: int = 3) -> tuple[float, object]:
    """Fastest of `repeats` runs (after one warm-up), and the last result."""
    result = function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def single_query_latency_ms(function, queries: torch.Tensor, count: int) -> float:
    """Median milliseconds of one-query calls (what one search request pays)."""
    samples = []
    for i in range(min(count, queries.shape[0])):
        one = queries[i : i + 1]
        start = time.perf_counter()
        function(one)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def tie_aware_recall(
    rows: np.ndarray, queries: torch.Tensor, products: torch.Tensor, kth_exact: torch.Tensor
) -> float:
    """Mean fraction of the k returned products whose exact score reaches the k-th best exact score."""
    valid = torch.from_numpy(rows) >= 0
    returned = products[torch.from_numpy(rows).clamp(min=0)]  # (Q, k, D)
    exact_scores = torch.einsum("qd,qkd->qk", queries, returned)
    hits = (exact_scores >= kth_exact[:, None] - 1e-6) & valid
    return float(hits.float().sum(1).div(rows.shape[1]).mean())


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    if args.model:
        products, queries, ids = model_vectors(args)
        source = f"model {args.model} ({args.dataset}, {args.condition} product embeddings)"
    else:
        products, queries, ids = synthetic_vectors(args.num_vectors, args.dim, args.clusters, args.num_queries,
                                                   args.seed)
        source = f"SYNTHETIC clustered vectors, no model ({args.clusters} clusters)"
    products, queries = products.float().contiguous(), queries.float().contiguous()
    num_products, dim = products.shape
    k = min(args.k, num_products)
    print(f"{source}: {num_products} products x {dim}, {queries.shape[0]} queries, k={k}, "
          f"torch threads {torch.get_num_threads()}")

    rows = []
    exact_seconds, (exact_values, _) = best_time(lambda: exact_search(queries, products, k))
    kth_exact = exact_values[:, -1]
    exact_latency = single_query_latency_ms(lambda q: exact_search(q, products, k), queries, args.latency_queries)
    rows.append({"method": "torch exact", "params": "", "recall": 1.0, "batch_seconds": exact_seconds,
                 "latency_ms": exact_latency, "build_seconds": 0.0, "bytes_per_product": 4 * dim})

    def measure(name: str, params: str, index: ProductIndex, build_seconds: float, bytes_per_product: float,
                **search_params) -> None:
        index.set_search_params(**search_params)
        seconds, (_, found) = best_time(lambda: index.search_rows(queries, k))
        latency = single_query_latency_ms(lambda q: index.search_rows(q, k), queries, args.latency_queries)
        rows.append({"method": name, "params": params, "recall": tie_aware_recall(found, queries, products, kth_exact),
                     "batch_seconds": seconds, "latency_ms": latency, "build_seconds": build_seconds,
                     "bytes_per_product": bytes_per_product})
        print(f"  {name} {params}: recall@{k} {rows[-1]['recall']:.4f}")

    start = time.perf_counter()
    flat = ProductIndex.build(products, ids, kind="flat")
    measure("faiss flat", "", flat, time.perf_counter() - start, 4 * dim)

    start = time.perf_counter()
    hnsw = ProductIndex.build(products, ids, kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    hnsw_build = time.perf_counter() - start
    for ef_search in args.ef_search:
        measure("faiss hnsw", f"M={args.hnsw_m} efC={args.ef_construction} efSearch={ef_search}", hnsw, hnsw_build,
                4 * dim + 8 * args.hnsw_m, ef_search=ef_search)

    start = time.perf_counter()
    ivfpq = ProductIndex.build(products, ids, kind="ivfpq", nlist=args.nlist, pq_m=args.pq_m, pq_bits=args.pq_bits,
                               seed=args.seed)
    ivfpq_build = time.perf_counter() - start
    p = ivfpq.params
    for nprobe in sorted({min(n, p["nlist"]) for n in args.nprobe}):
        measure("faiss ivfpq", f"nlist={p['nlist']} m={p['pq_m']} bits={p['pq_bits']} nprobe={nprobe}", ivfpq,
                ivfpq_build, p["pq_m"] * p["pq_bits"] / 8, nprobe=nprobe)

    for row in rows:
        row["queries_per_second"] = queries.shape[0] / row["batch_seconds"]
        row["speedup_vs_torch"] = exact_seconds / row["batch_seconds"]
        row["latency_speedup_vs_torch"] = exact_latency / row["latency_ms"]

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    try:
        import faiss

        machine["faiss"] = faiss.__version__
        machine["faiss_threads"] = faiss.omp_get_max_threads()
    except ImportError:
        pass
    if torch.cuda.is_available():
        machine["gpu_present_unused"] = torch.cuda.get_device_name(0)

    header = (f"| method | params | recall@{k} | queries/s (batch) | x torch | 1-query latency ms | x torch "
              "| build s | bytes/product |")
    lines = [f"\n{source}: {num_products} products x {dim}, {queries.shape[0]} queries; {machine['processor']}, "
             f"{machine['cpu_count']} CPUs, torch {machine['torch_threads']} threads", "", header,
             "|" + "---|" * 9]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['params']} | {row['recall']:.4f} | {row['queries_per_second']:,.0f} | "
            f"{row['speedup_vs_torch']:.2f} | {row['latency_ms']:.3f} | {row['latency_speedup_vs_torch']:.1f} | "
            f"{row['build_seconds']:.1f} | {row['bytes_per_product']:.0f} |"
        )
    print("\n".join(lines))

    result = {"source": source, "synthetic": not args.model, "num_products": num_products, "dim": dim,
              "num_queries": int(queries.shape[0]), "k": k, "machine": machine, "args": vars(args), "rows": rows}
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output + ".tmp", "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        os.replace(args.output + ".tmp", args.output)
        print(f"\nwrote {args.output}")
    return result


if __name__ == "__main__":
    main()
