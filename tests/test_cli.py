"""The make-hf console script, run in-process: encode -> index -> search, and evaluate."""

import csv
import json
import os
import subprocess
import sys

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


@pytest.fixture(scope="module")
def small_index(workspace):
    folder = workspace / "small-index"
    vectors = torch.nn.functional.normalize(torch.randn(4, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    ProductIndex.build(vectors, ["a", "b", "c", "d"], metadata={"model": str(workspace / "model")}).save(folder)
    return folder


def test_a_query_that_is_not_utf8_is_a_one_line_error(small_index, capsys):
    # Bytes 0xff on a command line reach Python as the lone surrogate U+DCFF.
    status, out, err = _run(capsys, "search", "--index", small_index, "red mug", "caf\udcff")
    assert status == 1 and out == ""
    assert "make-hf search: error: query argument 2 b'caf\\xff' is not valid UTF-8 (byte 0xff at character 4)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    status, out, _ = _run(capsys, "search", "--index", small_index, "café", "-k", 2)  # UTF-8 beyond ASCII is fine
    assert status == 0 and out.startswith("café\n")


def test_a_query_that_is_not_utf8_from_a_shell(small_index):
    env = dict(os.environ, OMP_NUM_THREADS="1", LC_ALL="C.UTF-8")
    result = subprocess.run([sys.executable, "-m", "make_hf.cli", "search", "--index", str(small_index), b"caf\xff"],
                            env=env, capture_output=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.decode().strip() == (
        "make-hf search: error: query argument 1 b'caf\\xff' is not valid UTF-8 (byte 0xff at character 4); pass it "
        "as UTF-8 text (from a UTF-8 terminal or locale, e.g. LANG=C.UTF-8) or in a UTF-8 --queries-file."
    )


def test_a_text_option_that_is_not_utf8_is_named(tmp_path, capsys):
    status, _, err = _run(capsys, "push", tmp_path, "org/name", "--commit-message", "r\udce9sum\udce9",
                          "--endpoint", "http://127.0.0.1:9")
    assert status == 1 and "make-hf push: error: --commit-message b'r\\xe9sum\\xe9' is not valid UTF-8" in err
    status, _, err = _run(capsys, "push", tmp_path, "org/name", "--token", "hf_\udcff",
                          "--endpoint", "http://127.0.0.1:9")
    assert status == 1 and "--token is not valid UTF-8 (byte 0xff at character 4)" in err and "hf_" not in err


def test_files_that_are_not_utf8_are_named_with_their_line(workspace, small_index, tmp_path, capsys):
    queries_file = tmp_path / "queries.txt"
    queries_file.write_bytes(b"red mug\nblue \xff charger\n")
    status, _, err = _run(capsys, "search", "--index", small_index, "--queries-file", queries_file)
    assert status == 1 and "Traceback" not in err
    assert (f"make-hf search: error: --queries-file {str(queries_file)!r}, line 2: not valid UTF-8 (byte 0xff at "
            "column 6); save the file as UTF-8.") in err

    catalogue = tmp_path / "products.jsonl"
    rows = [json.dumps({"product_id": f"p{i}", "title": f"mug {i}", "image": None}).encode() for i in range(3)]
    rows[2] = rows[2].replace(b"mug", b"m\xe9g")  # Latin-1, not UTF-8
    catalogue.write_bytes(b"\n".join(rows) + b"\n")
    status, _, err = _run(capsys, "encode", "--model", workspace / "model", "--catalogue", catalogue,
                          "--output", tmp_path / "out.safetensors", "--quiet")
    assert status == 1 and f"--catalogue {str(catalogue)!r}, line 3: not valid UTF-8 (byte 0xe9 at column" in err
