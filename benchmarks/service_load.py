"""How many searches a second does `make-hf serve` answer, and how long does one take under load?

    # a retriever folder you have (MakeRetriever.save)
    python benchmarks/service_load.py --retriever shop-retriever
    # or build one: a trained model over the synthetic shop's test catalogue (images written as PNG files)
    python benchmarks/service_load.py --model outputs/make-small-synthetic --workdir /tmp/shop
    # and the same with an exported ONNX query tower (`make-hf export --format onnx`)
    python benchmarks/service_load.py --retriever shop-retriever --onnx shop-onnx

`run_service_load` starts a real `make-hf serve` subprocess on 127.0.0.1, waits for it, sends a bounded load
(`requests` GET /search requests, k=10, from `concurrency` threads, each with its own keep-alive connection;
standard library only), and stops it. Each request is timed from sending to the last byte of the answer. The
server encodes one request at a time (see `make_hf.serving.service`), so concurrency measures queueing, not
parallel encoding. The machine's load average before and after is recorded: on a shared machine other processes'
work shows up as latency here.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "service_load.json")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _catalogue_queries(retriever_dir: str, limit: int = 500) -> list[str]:
    """Short queries from the catalogue: the first two or three words of each title."""
    queries = []
    with open(os.path.join(retriever_dir, "index", "catalogue.jsonl"), encoding="utf-8") as f:
        for number, line in enumerate(f):
            title = json.loads(line).get("title")
            if title:
                queries.append(" ".join(title.split()[: 2 + number % 2]))
    if not queries:
        raise ValueError(f"{retriever_dir!r}: the catalogue has no titles to make queries of; pass `queries`.")
    return list(dict.fromkeys(queries))[:limit]


def _get(connection: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read()


def _start_server(retriever_dir: str, onnx_dir: str | None, threads: int | None, port: int,
                  timeout: float) -> subprocess.Popen:
    command = [sys.executable, "-m", "make_hf.cli", "serve", "--retriever", retriever_dir, "--port", str(port)]
    if onnx_dir is not None:
        command += ["--onnx", onnx_dir]
    if threads is not None:
        command += ["--threads", str(threads)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"make-hf serve exited with {process.returncode}:\n{process.stdout.read()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"make-hf serve did not listen on port {port} within {timeout:.0f} s") from None
            time.sleep(0.2)


def run_service_load(
    retriever_dir: str,
    onnx_dir: str | None = None,
    requests: int = 2000,
    concurrency: int = 8,
    queries: list[str] | None = None,
    k: int = 10,
    warmup: int = 20,
    start_timeout: float = 300.0,
    threads: int | None = None,
) -> dict:
    """Serve `retriever_dir` (with the ONNX query tower of `onnx_dir`, if given) and load it.

    Returns a JSON-able dict: `requests_per_s`, `p50_ms`, `p90_ms`, `p99_ms`, `mean_ms`, `errors` (answers other
    than 200, and failed connections), the settings, the service's `/health`, and `loadavg_before` /
    `loadavg_after` (`os.getloadavg()`). `threads` is the server's `--threads` (query encoder CPU threads; None: the
    library's default).
    """
    if requests < 1 or concurrency < 1:
        raise ValueError(f"`requests` and `concurrency` must be >= 1, got {requests} and {concurrency}.")
    queries = queries or _catalogue_queries(retriever_dir)
    paths = [f"/search?{urllib.parse.urlencode({'q': q, 'k': k})}" for q in queries]
    port = _free_port()
    server = _start_server(retriever_dir, onnx_dir, threads, port, start_timeout)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        health = json.loads(_get(connection, "/health")[1])
        for n in range(warmup):
            _get(connection, paths[n % len(paths)])
        connection.close()

        latencies: list[float] = []
        errors: list[str] = []
        counter = iter(range(requests))
        lock = threading.Lock()

        def worker() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    break
                started = time.perf_counter()
                try:
                    status, _ = _get(connection, paths[n % len(paths)])
                except (OSError, http.client.HTTPException) as error:
                    status = repr(error)
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if status != 200:
                        errors.append(str(status))
            connection.close()

        loadavg_before = os.getloadavg()
        workers = [threading.Thread(target=worker) for _ in range(concurrency)]
        started = time.perf_counter()
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        wall = time.perf_counter() - started
        loadavg_after = os.getloadavg()
    finally:
        server.terminate()
        server.wait(timeout=60)

    ms = sorted(1000 * t for t in latencies)

    def percentile(p: float) -> float:
        return ms[min(len(ms) - 1, int(round(p / 100 * (len(ms) - 1))))]

    return {
        "query_encoder": "onnx" if onnx_dir else "torch",
        "retriever": os.path.abspath(retriever_dir),
        "onnx": os.path.abspath(onnx_dir) if onnx_dir else None,
        "requests": requests,
        "concurrency": concurrency,
        "threads": threads,
        "k": k,
        "distinct_queries": len(queries),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "wall_s": round(wall, 3),
        "requests_per_s": round(requests / wall, 2),
        "p50_ms": round(percentile(50), 2),
        "p90_ms": round(percentile(90), 2),
        "p99_ms": round(percentile(99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "health": health,
        "loadavg_before": [round(x, 2) for x in loadavg_before],
        "loadavg_after": [round(x, 2) for x in loadavg_after],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def build_synthetic_retriever(model_dir: str, output_dir: str, num_products: int = 3200, seed: int = 0,
                              kind: str = "hnsw") -> tuple[str, list[str]]:
    """Save a retriever over the synthetic shop's test catalogue (`make_synthetic_shop(num_products, seed)`), its
    images written as PNG files under `output_dir/images`; returns the folder and the test split's queries."""
    from make_hf import MakeRetriever
    from make_hf.data.synthetic import make_synthetic_shop

    shop = make_synthetic_shop(num_products, seed=seed)
    queries = list(dict.fromkeys(shop["test_queries"]["query"]))
    config_path = os.path.join(output_dir, "index", "index_config.json")
    if os.path.isfile(config_path):  # built before from the same model and shop: reuse it
        with open(config_path, encoding="utf-8") as f:
            metadata = json.load(f).get("metadata", {})
        if metadata.get("model") == os.path.abspath(model_dir) and metadata.get("shop") == [num_products, seed]:
            return output_dir, queries
    images = os.path.join(output_dir, "images")
    os.makedirs(images, exist_ok=True)
    rows = []
    for product in shop["test_products"]:
        path = os.path.join(images, f"{product['product_id']}.png")
        product["image"].save(path)
        rows.append({"product_id": product["product_id"], "title": product["title"], "image": path})
    retriever = MakeRetriever.from_pretrained(model_dir)
    metadata = {"model": os.path.abspath(model_dir), "dataset": "synthetic", "shop": [num_products, seed]}
    retriever.build_index(rows, kind=kind, metadata=metadata)
    retriever.save(output_dir)
    return output_dir, queries


def format_table(results: list[dict]) -> str:
    lines = ["| query encoder | threads | requests | concurrency | errors | requests/s | p50 ms | p90 ms | p99 ms | "
             "load avg |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        threads = r["threads"] if r["threads"] is not None else "default"
        lines.append(f"| {r['query_encoder']} | {threads} | {r['requests']} | {r['concurrency']} | {r['errors']} | "
                     f"{r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--retriever", help="a folder written by MakeRetriever.save")
    where.add_argument("--model", help="a trained model: serve it over the synthetic shop's test catalogue")
    parser.add_argument("--workdir", default="/tmp/make-hf-service-load", help="where --model's retriever goes")
    parser.add_argument("--num-products", type=int, default=3200, help="synthetic shop size (--model)")
    parser.add_argument("--onnx", help="also measure with this exported ONNX query tower")
    parser.add_argument("--threads", type=int, nargs="+", default=[1],
                        help="query encoder threads of the server (`make-hf serve --threads`): one run per value")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args(argv)

    from make_hf.atomic import write_json

    queries = None
    retriever = args.retriever
    if args.model:
        retriever, queries = build_synthetic_retriever(args.model, args.workdir, num_products=args.num_products)
    runs = []
    for threads in args.threads:
        for onnx in [None, args.onnx] if args.onnx else [None]:
            runs.append(run_service_load(retriever, onnx, args.requests, args.concurrency, queries=queries,
                                         threads=threads))
            print(format_table(runs[-1:]).splitlines()[-1], flush=True)
    print(format_table(runs), end="")
    write_json(args.output, {
        "benchmark": "service_load",
        "model": os.path.abspath(args.model) if args.model else None,
        "catalogue": f"synthetic shop test split ({args.num_products} products in all)" if args.model else None,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "runs": runs,
    })
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
