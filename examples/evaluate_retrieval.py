r"""Evaluate a saved MAKE model on a product search set and write the results as JSON and Markdown.

    # the test split of the embedded synthetic shop (the data `examples/pretrain.py` trains on by default)
    python examples/evaluate_retrieval.py --model outputs/make-small

    # Emoji-CLDR-3D, English, from the npm tarballs in a folder
    python examples/evaluate_retrieval.py --model outputs/make-small \
        --dataset emoji --emoji-source DIR_WITH_TARBALLS

    # your own catalogue and queries (JSONL/CSV/Parquet; image paths relative to the file)
    python examples/evaluate_retrieval.py --model outputs/make-small --products products.jsonl --queries queries.jsonl

Scores Recall@{1,5,10,50}, MRR@10 and NDCG@10 with exact search, for title+image, title only and image only,
broken down by query bucket and category group, plus the mean image weight that Modal Adaptation gives each
category. `make-hf evaluate` does the same from the shell; this script shows the library calls.
"""

import argparse
import json
import os

from make_hf import MakeModel, MakeProcessor
from make_hf.evaluation import CONDITIONS, evaluate_retrieval, format_results, load_evaluation_set


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="folder written by save_pretrained (model + processor)")
    parser.add_argument("--dataset", default=None,
                        help="'synthetic' (default without --products), 'emoji', or a folder saved with save_to_disk")
    parser.add_argument("--products", help="products file: product_id, title, image[, category, category_group]")
    parser.add_argument("--queries", help="queries file: query, relevant_ids[, bucket, category_group]")
    parser.add_argument("--split", default="test", choices=("test", "validation"))
    parser.add_argument("--num-products", type=int, default=1600, help="synthetic shop size (as in training)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic shop / emoji split seed (as in training)")
    parser.add_argument("--language", default=None, help="Emoji-CLDR-3D language (default en)")
    parser.add_argument("--emoji-source", default=None, help="folder with the Emoji-CLDR-3D npm tarballs")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output-dir", default=None, help="where to write evaluation.json / evaluation.md "
                        "(default: the model folder)")
    args = parser.parse_args(argv)
    if args.dataset is None and args.products is None:
        args.dataset = "synthetic"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = MakeModel.from_pretrained(args.model).to(args.device)
    processor = MakeProcessor.from_pretrained(args.model)
    products, queries = load_evaluation_set(
        args.dataset, split=args.split, products=args.products, queries=args.queries,
        num_products=args.num_products, seed=args.seed, language=args.language, emoji_source=args.emoji_source,
    )
    results = evaluate_retrieval(
        model, processor, products, queries,
        conditions=args.conditions, batch_size=args.batch_size, max_queries=args.max_queries,
    )
    table = format_results(results)
    print(table)

    output_dir = args.output_dir or args.model
    os.makedirs(output_dir, exist_ok=True)
    for name, text in (("evaluation.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n"),
                       ("evaluation.md", table)):
        path = os.path.join(output_dir, name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)  # never leave a half-written result behind
        print(f"-> {path}")
    return results


if __name__ == "__main__":
    main()
