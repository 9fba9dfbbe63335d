"""The make-hf console script, run in-process: encode -> index -> search, and evaluate."""

import csv
import json
import os

import pytest
import torch
from PIL import Image

from make_hf import MakeConfig, MakeModel, MakeProcessor, train_tokenizer
from make_hf.cli import build_parser, main
from make_hf.data import make_synthetic_shop
from make_hf.evaluation import encode_products, encode_queries, exact_search
from make_hf.index import ProductIndex, load_embeddings

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60)}
QUERIES = ["red mug", "blue charger", "green dress cotton"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "images").mkdir()
    products = []
    for category in ("mug", "charger", "dress"):
        for colour, rgb in COLOURS.items():
            pid = f"{category}-{colour}"
            Image.new("RGB", (16, 16), rgb).save(root / "images" / f"{pid}.png")
            title = f"new {colour} {category} cotton brand"
            products.append({"product_id": pid, "title": title, "image": f"images/{pid}.png", "category": category})
    products[4]["image"] = None  # charger-blue has no picture
    with open(root / "products.jsonl", "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in products)
    queries = [
        {"query": "red mug", "relevant_ids": ["mug-red"], "bucket": "seen"},
        {"query": "charger", "relevant_ids": ["charger-red", "charger-blue", "charger-green"], "bucket": "seen"},
        {"query": "green dress", "relevant_ids": ["dress-green"], "bucket": "new"},
    ]
    with open(root / "queries.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["query", "relevant_ids", "bucket"])
        writer.writeheader()
        writer.writerows({**q, "relevant_ids": "|".join(q["relevant_ids"])} for q in queries)

    config = MakeConfig.from_preset("make-tiny")
    texts = [p["title"] for p in products] + QUERIES
    tokenizer = train_tokenizer(texts * 3, vocab_size=config.query_config.vocab_size, min_frequency=1)
    processor = MakeProcessor.from_config(config, tokenizer, title_max_length=16).fit_keywords(texts)
    torch.manual_seed(0)
    MakeModel(config).save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root


def _run(capsys, *argv):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_encode_index_search_matches_exact_search(workspace, capsys):
    model_dir, embeddings = workspace / "model", workspace / "out" / "products.safetensors"
    status, out, _ = _run(capsys, "encode", "--model", model_dir, "--catalogue", workspace / "products.jsonl",
                          "--output", embeddings, "--batch-size", 4, "--quiet")
    assert status == 0 and f"Encoded 9 products (title+image, dim 32) -> {embeddings}" in out
    stored = load_embeddings(embeddings)
    assert stored.product_ids[0] == "mug-red" and stored.product_embeds.shape == (9, 32)
    assert stored.modal_weights.shape == (9, 2) and stored.metadata["condition"] == "title+image"

    status, out, _ = _run(capsys, "index", "--embeddings", embeddings, "--output", workspace / "flat",
                          "--kind", "flat")
    assert status == 0 and "ProductIndex(kind='flat', num_products=9, dim=32)" in out
    assert ProductIndex.load(workspace / "flat").metadata["model"] == str(model_dir)

    status, out, _ = _run(capsys, "search", "--index", workspace / "flat", "--model", model_dir, "-k", 4, "--json",
                          *QUERIES)
    assert status == 0
    found = json.loads(out)
    assert [row["query"] for row in found] == QUERIES

    # The same ranking computed directly with the library.
    model, processor = MakeModel.from_pretrained(model_dir), MakeProcessor.from_pretrained(model_dir)
    products = [json.loads(line) for line in open(workspace / "products.jsonl")]
    for p in products:
        p["image"] = str(workspace / p["image"]) if p["image"] else None
    encoded = encode_products(model, processor, products, conditions=("title+image",), show_progress=False)
    scores, indices = exact_search(encode_queries(model, processor, QUERIES, show_progress=False),
                                   encoded.embeds["title+image"], k=4)
    for row, row_scores, row_indices in zip(found, scores, indices):
        assert [hit["product_id"] for hit in row["results"]] == [encoded.product_ids[i] for i in row_indices]
        assert [hit["score"] for hit in row["results"]] == pytest.approx(row_scores.tolist(), abs=1e-5)


def test_image_condition_leaves_out_products_without_image(workspace, capsys):
    embeddings = workspace / "image.safetensors"
    status, out, _ = _run(capsys, "encode", "--model", workspace / "model", "--catalogue",
                          workspace / "products.jsonl", "--output", embeddings, "--condition", "image", "--quiet")
    assert status == 0 and "Encoded 8 products (image, dim 32) (1 without what condition 'image' needs" in out
    stored = load_embeddings(embeddings)
    assert "charger-blue" not in stored.product_ids and stored.metadata["skipped_products"] == 1


def test_hnsw_index_search_uses_the_recorded_model(workspace, capsys):
    embeddings = workspace / "hnsw.safetensors"
    assert _run(capsys, "encode", "--model", workspace / "model", "--catalogue", workspace / "products.jsonl",
                "--output", embeddings, "--quiet")[0] == 0
    status, out, _ = _run(capsys, "index", "--embeddings", embeddings, "--output", workspace / "hnsw",
                          "--hnsw-m", 8, "--ef-construction", 16)
    assert status == 0 and "kind='hnsw'" in out and "hnsw_m=8" in out
    queries_file = workspace / "queries.txt"
    queries_file.write_text("blue charger\n\n")
    status, out, _ = _run(capsys, "search", "--index", workspace / "hnsw", "red mug", "--queries-file", queries_file,
                          "-k", 3)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "red mug" and lines[4] == "blue charger" and len(lines) == 8
    assert lines[1].lstrip().startswith("1. ")


def test_evaluate_files_prints_a_table_and_writes_json(workspace, capsys):
    output = workspace / "results" / "eval.json"
    status, out, _ = _run(capsys, "evaluate", "--model", workspace / "model", "--products",
                          workspace / "products.jsonl", "--queries", workspace / "queries.csv", "--output", output,
                          "--quiet")
    assert status == 0
    assert out.startswith("3 queries, 9 products.") and "| title+image |" in out and "| image | seen |" in out
    results = json.loads(output.read_text())
    assert results["image"]["num_retrievable_products"] == 8
    assert results["title"]["by_bucket"]["seen"]["num_queries"] == 2
    assert set(results["image_weight_by_category"]) == {"mug", "charger", "dress"}
    assert os.listdir(output.parent) == ["eval.json"]


def test_evaluate_on_the_synthetic_shop(workspace, capsys):
    status, out, err = _run(capsys, "evaluate", "--model", workspace / "model", "--dataset", "synthetic",
                            "--num-products", 40, "--split", "validation", "--conditions", "title+image",
                            "--max-queries", 4, "--quiet")
    assert status == 0, err
    num_products = len(make_synthetic_shop(40)["validation_products"])
    assert out.startswith(f"4 queries, {num_products} products.")
    assert "| title+image |" in out and "| image |" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["encode", "--model", "{model}", "--catalogue", "{root}/missing.jsonl", "--output", "{root}/x.safetensors"],
         "make-hf encode: error: No file at '{root}/missing.jsonl'"),
        (["evaluate", "--model", "{model}", "--products", "{root}/products.jsonl"],
         "make-hf evaluate: error: Give --dataset"),
        (["search", "--index", "{root}/flat-missing"], "make-hf search: error: No query given"),
        (["search", "--index", "{root}/flat-missing", "q"], "is not a saved ProductIndex"),
        (["encode", "--model", "{root}/no/such/model", "--catalogue", "{root}/products.jsonl", "--output", "{root}/y"],
         "--model '{root}/no/such/model': no such folder"),
        (["index", "--embeddings", "{root}/products.jsonl", "--output", "{root}/z"],
         "is not a make_hf embeddings file"),
    ],
)
def test_errors_are_one_line_with_status_1(workspace, capsys, argv, message):
    argv = [a.format(root=workspace, model=workspace / "model") for a in argv]
    status, _, err = _run(capsys, *argv)
    assert status == 1
    assert message.format(root=workspace) in err
    assert "Traceback" not in err


def test_argument_errors_exit_like_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "--embeddings", "e", "--output", "o", "--kind", "lsh"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'lsh'" in capsys.readouterr().err


def test_push_is_a_subcommand():
    args = build_parser().parse_args(["push", "some/folder", "org/make-small", "--private"])
    assert args.command == "push" and args.repo_id == "org/make-small" and args.private
