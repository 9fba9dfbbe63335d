"""`make-hf evaluate` on a shop's own data: a training log as the evaluation set, and the sets a training run saved."""

import json

import datasets
import pytest
import torch
from PIL import Image

from make_hf import MakeConfig, MakeModel, MakeProcessor, train_tokenizer
from make_hf.cli import main
from make_hf.evaluation import encode_products, encode_queries
from make_hf.evaluation_sets import evaluation_set_from_logs
from make_hf.training import PretrainArguments, pretrain

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60)}

# A log: one row per (query, product). "mug" was logged with two products, "cotton dress" with two rows of one.
LOG = [
    {"query": "red mug", "title": "ceramic red mug brand", "image": "images/mug-red.png", "product_id": "mug-red"},
    {"query": "mug", "title": "ceramic red mug brand", "image": "images/mug-red.png", "product_id": "mug-red"},
    {"query": "mug", "title": "ceramic blue mug brand", "image": "images/mug-blue.png", "product_id": "mug-blue"},
    {"query": "blue charger", "title": "usb c blue charger 65w", "image": None, "product_id": "charger-blue"},
    {"query": "cotton dress", "title": "green cotton dress", "image": "images/dress-green.png",
     "product_id": "dress-green"},
    {"query": "cotton dress", "title": "green cotton dress", "image": "images/dress-green.png",
     "product_id": "dress-green"},
    {"query": "green dress", "title": "green cotton dress", "image": "images/dress-green.png",
     "product_id": "dress-green"},
]
# What the log says, written out by hand.
RELEVANT = {"red mug": ["mug-red"], "mug": ["mug-red", "mug-blue"], "blue charger": ["charger-blue"],
            "cotton dress": ["dress-green"], "green dress": ["dress-green"]}
CATALOGUE = ["mug-red", "mug-blue", "charger-blue", "dress-green"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("own-data")
    (root / "images").mkdir()
    for name, colour in (("mug-red", "red"), ("mug-blue", "blue"), ("dress-green", "green")):
        Image.new("RGB", (16, 16), COLOURS[colour]).save(root / "images" / f"{name}.png")
    with open(root / "logs.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in LOG)

    config = MakeConfig.from_preset("make-tiny")
    texts = [row["title"] for row in LOG] + [row["query"] for row in LOG]
    tokenizer = train_tokenizer(texts * 3, vocab_size=config.query_config.vocab_size, min_frequency=1)
    processor = MakeProcessor.from_config(config, tokenizer, title_max_length=16).fit_keywords(texts)
    torch.manual_seed(0)
    MakeModel(config).save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root


def _evaluate(capsys, *argv):
    status = main(["evaluate", *map(str, argv), "--quiet"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _by_hand(scores, relevant, k):
    """Capped Recall@k and MRR@k of one query from its scores over the catalogue (no ties in a random model)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits = [rank for rank, i in enumerate(order, start=1) if i in relevant]
    recall = sum(rank <= k for rank in hits) / min(k, len(relevant))
    mrr = 1 / hits[0] if hits[0] <= k else 0.0
    return recall, mrr


def test_a_log_file_is_its_own_catalogue_and_relevance(shop, capsys):
    products, queries = evaluation_set_from_logs(shop / "logs.jsonl")
    assert [p["product_id"] for p in products] == CATALOGUE
    assert {q["query"]: q["relevant_ids"] for q in queries} == RELEVANT

    status, out, err = _evaluate(capsys, "--model", shop / "model", "--dataset", shop / "logs.jsonl",
                                 "--conditions", "title+image", "--output", shop / "eval.json")
    assert status == 0, err
    assert out.startswith("5 queries, 4 products.")
    results = json.loads((shop / "eval.json").read_text())
    assert results["num_products"] == 4 and results["num_queries"] == 5
    assert "skipped_rows" not in results  # no row was left out

    # The same numbers from the library's encoders and a ranking done here.
    model, processor = MakeModel.from_pretrained(shop / "model"), MakeProcessor.from_pretrained(shop / "model")
    catalogue = [{**p, "image": str(shop / p["image"]) if p["image"] else None}
                 for p in {row["product_id"]: row for row in LOG}.values()]
    encoded = encode_products(model, processor, catalogue, conditions=("title+image",), show_progress=False)
    assert encoded.product_ids == CATALOGUE
    texts = list(RELEVANT)
    scores = (encode_queries(model, processor, texts, show_progress=False) @ encoded.embeds["title+image"].T).tolist()
    overall = results["title+image"]["overall"]
    for k in (1, 5, 10):
        expected = [_by_hand(row, {CATALOGUE.index(pid) for pid in RELEVANT[text]}, k)[0]
                    for text, row in zip(texts, scores)]
        assert overall[f"recall@{k}"] == pytest.approx(sum(expected) / len(expected))
    expected_mrr = [_by_hand(row, {CATALOGUE.index(pid) for pid in RELEVANT[text]}, 10)[1]
                    for text, row in zip(texts, scores)]
    assert overall["mrr@10"] == pytest.approx(sum(expected_mrr) / len(expected_mrr))
    assert overall["recall@5"] == 1.0  # four products: every relevant one is in the top 5


def test_a_log_and_its_hand_written_queries_score_alike(shop, capsys, tmp_path):
    products = tmp_path / "products.jsonl"
    products.write_text("".join(json.dumps({**row, "image": str(shop / row["image"]) if row["image"] else None}) + "\n"
                                for row in {row["product_id"]: row for row in LOG}.values()))
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"query": q, "relevant_ids": ids}) + "\n" for q, ids in RELEVANT.items()))
    _, from_files, _ = _evaluate(capsys, "--model", shop / "model", "--products", products, "--queries", queries)
    _, from_log, _ = _evaluate(capsys, "--model", shop / "model", "--dataset", shop / "logs.jsonl")
    assert from_log == from_files


def test_a_bad_row_of_the_log_is_skipped_and_counted(shop, capsys, tmp_path):
    lines = [json.dumps({**row, "image": str(shop / row["image"]) if row["image"] else None}) for row in LOG]
    lines.insert(2, '{"query": "broken line", "title": ')  # does not parse
    lines.append(json.dumps({"query": "lamp", "title": "desk lamp", "image": str(shop / "images" / "lamp.png"),
                             "product_id": "lamp"}))  # no such image
    log = tmp_path / "logs.jsonl"
    log.write_text("\n".join(lines) + "\n")
    status, out, err = _evaluate(capsys, "--model", shop / "model", "--dataset", log, "--output", tmp_path / "e.json")
    assert status == 0, err
    assert "2 row(s) skipped (1 malformed_row, 1 missing_image)" in err
    assert "logs.jsonl row 2: malformed_row (line 3: not valid JSON" in err
    assert out.startswith("5 queries, 4 products.")  # the lamp is not in the catalogue
    skipped = json.loads((tmp_path / "e.json").read_text())["skipped_rows"]
    assert skipped["total"] == 2 and skipped["by_reason"] == {"malformed_row": 1, "missing_image": 1}
    assert sorted(row["index"] for row in skipped["rows"]) == [2, 8]


def test_the_small_catalogue_warning_is_printed(shop, capsys):
    status, out, _ = _evaluate(capsys, "--model", shop / "model", "--dataset", shop / "logs.jsonl")
    assert status == 0
    # 4 products: every cutoff from Recall@1 (10 products) up is flagged, in the printed results.
    for k in (1, 5, 10, 50):
        assert f"> **Warning:** Recall@{k} on 4 products is not meaningful (fewer than {10 * k}" in out


def test_a_log_given_as_queries_is_refused_before_encoding(shop, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the catalogue was encoded")

    monkeypatch.setattr("make_hf.evaluation.encode_products", refuse)
    status, _, err = _evaluate(capsys, "--model", shop / "model", "--products", shop / "logs.jsonl",
                               "--queries", shop / "logs.jsonl")
    assert status == 1 and "no relevant_ids column, but product_id: this is a training log" in err
    assert "--dataset FILE" in err


def test_an_unknown_relevant_id_fails_before_encoding(shop, capsys, monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("the catalogue was encoded")

    monkeypatch.setattr("make_hf.evaluation.encode_products", refuse)
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"query": "red mug", "relevant_ids": ["mug-purple"]}) + "\n")
    status, _, err = _evaluate(capsys, "--model", shop / "model", "--products", shop / "logs.jsonl",
                               "--queries", queries)
    assert status == 1 and "relevant product(s) ['mug-purple'] that are not in `products`" in err


def test_a_training_run_is_evaluated_again_on_the_test_set_it_saved(tmp_path, capsys):
    out = tmp_path / "run"
    results = pretrain(PretrainArguments(
        model="make-tiny", synthetic_products=96, per_device_train_batch_size=8, max_train_steps=4, warmup_steps=1,
        eval_steps=0, logging_steps=1, eval_batch_size=64, report_to="none", output_dir=str(out),
    ))
    capsys.readouterr()
    status, printed, err = _evaluate(capsys, "--model", out, "--output", tmp_path / "again.json")
    assert status == 0, err
    assert f"test set saved by the training run in {out}" in err
    again = json.loads((tmp_path / "again.json").read_text())
    for condition in ("title+image", "title", "image"):
        for metric, value in results[condition]["overall"].items():
            assert again[condition]["overall"][metric] == pytest.approx(value, abs=1e-6), (condition, metric)
    assert again["num_products"] == results["num_products"] and again["num_queries"] == results["num_queries"]
    # The table the run printed and wrote to eval_results.md, line for line.
    run_table = (out / "eval_results.md").read_text().split("\n\n", 1)[1].rstrip("\n")
    assert printed.rsplit("-> ", 1)[0].rstrip("\n") == run_table

    # The run's folder given as the evaluation source gives the same result.
    status, as_dataset, _ = _evaluate(capsys, "--model", out, "--dataset", out)
    assert status == 0 and as_dataset == printed.rsplit("-> ", 1)[0]

    saved = datasets.load_from_disk(str(out / "evaluation_sets"))
    status, printed, _ = _evaluate(capsys, "--model", out, "--split", "validation")
    assert status == 0
    assert printed.startswith(f"{len(saved['validation_queries'])} queries, {len(saved['validation_products'])} "
                              "products.")


def test_a_folder_that_holds_no_evaluation_set_is_named(shop, capsys, tmp_path):
    status, _, err = _evaluate(capsys, "--model", shop / "model", "--dataset", tmp_path)
    assert status == 1 and f"{tmp_path}: neither a training run's output_dir (no evaluation_sets/)" in err
    status, _, err = _evaluate(capsys, "--model", shop / "model")  # a model folder that no training run wrote
    assert status == 1 and "holds no evaluation sets of a training run" in err
