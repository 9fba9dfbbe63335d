"""`pretrain` from Python: in-memory training rows and evaluation sets, callbacks that see validation and stop."""

import json

import datasets
import pytest
from PIL import Image

from make_hf import MakeModel
from make_hf.training import PretrainArguments, TrainingCallback, pretrain
from make_hf.training.in_memory import pretraining_data, run_arguments
from make_hf.training.sources import load_pretraining_data
from model_inputs import TINY_RUN

TINY = TINY_RUN
COLOURS = ["red", "blue", "green", "white", "black", "yellow"]
ITEMS = ["mug", "shirt", "lamp", "sock", "bag", "hat", "cap", "vase"]


def _rows(image=lambda colour, i: Image.new("RGB", (16, 16), colour)):
    """Two queries for each of 48 products (a colour and an item each)."""
    rows = []
    for i in range(48):
        colour, item = COLOURS[i % len(COLOURS)], ITEMS[i // len(COLOURS)]
        for query in (f"{colour} {item}", f"{item} {colour} {i % 3}"):
            rows.append({"query": query, "title": f"brand{i % 5} {colour} {item} model {i}",
                         "image": image(colour, i), "product_id": f"p{i}"})
    return rows


def _args(tmp_path, **overrides):
    return PretrainArguments(output_dir=str(tmp_path / "run"), **{**TINY, **overrides})


def test_a_list_of_dicts_trains_on_the_automatic_split_with_bad_rows_counted(tmp_path):
    rows = _rows()
    rows[3]["query"] = "  "
    rows[5]["title"] = 17  # a number where the title goes: skipped as in a JSON file
    rows[8]["image"] = str(tmp_path / "no-such.png")
    results = pretrain(_args(tmp_path), train_dataset=rows)

    assert results["steps"] == TINY["max_train_steps"]
    assert 0.0 <= results["title+image"]["overall"]["recall@10"] <= 1.0
    skipped = results["skipped_rows"]
    assert skipped["by_reason"] == {"empty_query": 1, "wrong_type": 1, "missing_image": 1}
    assert sorted((row["source"], row["index"]) for row in skipped["rows"]) == [
        ("train_dataset", 3), ("train_dataset", 5), ("train_dataset", 8)
    ]
    held_out = datasets.load_from_disk(str(tmp_path / "run" / "evaluation_sets"))
    assert len(held_out["validation_products"]) > 0 and len(held_out["test_products"]) > 0
    card = (tmp_path / "run" / "README.md").read_text()
    assert "--dataset train_dataset" in card


def test_the_automatic_split_is_the_split_of_the_same_rows_in_a_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()

    def path(colour, i):
        file = images / f"p{i}.png"
        if not file.exists():
            Image.new("RGB", (16, 16), colour).save(file)
        return str(file)

    rows = _rows(path)
    file = tmp_path / "logs.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    from_file = load_pretraining_data(_args(tmp_path, dataset=str(file)))
    in_memory = pretraining_data(_args(tmp_path), train_dataset=rows)
    for split in ("validation_products", "test_products"):
        assert getattr(in_memory, split)["product_id"] == getattr(from_file, split)["product_id"]
    assert in_memory.validation_queries.to_list() == from_file.validation_queries.to_list()
    assert in_memory.train["product_id"] == from_file.train["product_id"]


def test_given_evaluation_sets_replace_the_held_out_products(tmp_path):
    rows = _rows()
    products = [{"product_id": "e1", "title": "red mug", "image": None},
                {"product_id": "e2", "title": "blue lamp", "image": None}]
    queries = [{"query": "red mug", "relevant_ids": ["e1"]}, {"query": "lamp", "relevant_ids": ["e2"]}]
    test_rows = [{"query": "green sock", "title": "green sock", "image": None, "product_id": "t1"},
                 {"query": "socks", "title": "green sock", "image": None, "product_id": "t1"},
                 {"query": "socks", "title": "white sock", "image": None, "product_id": "t2"}]
    both = pretraining_data(_args(tmp_path), train_dataset=rows,
                            eval_dataset=datasets.DatasetDict({"products": datasets.Dataset.from_list(products),
                                                               "queries": datasets.Dataset.from_list(queries)}),
                            test_dataset=test_rows)
    assert len(both.train) == len(rows)  # nothing held out: both sets are given
    two_products = [row for row in rows if row["product_id"] in ("p0", "p1")]
    assert len(pretraining_data(_args(tmp_path), train_dataset=two_products, eval_dataset=(products, queries),
                                test_dataset=test_rows).train) == 4  # too few products to split: none needed
    assert both.validation_products["product_id"] == ["e1", "e2"]
    assert both.test_products["product_id"] == ["t1", "t2"]  # relevance derived from the rows
    assert both.test_queries.to_list() == [{"query": "green sock", "relevant_ids": ["t1"]},
                                          {"query": "socks", "relevant_ids": ["t1", "t2"]}]

    automatic = pretraining_data(_args(tmp_path), train_dataset=rows)
    only_eval = pretraining_data(_args(tmp_path), train_dataset=rows, eval_dataset=(products, queries))
    # Only the test products leave training; the products automatic validation would hold out train.
    assert only_eval.test_products["product_id"] == automatic.test_products["product_id"]
    test_ids = set(automatic.test_products["product_id"])
    assert len(only_eval.train) == sum(row["product_id"] not in test_ids for row in rows)
    assert len(automatic.train) < len(only_eval.train) < len(rows)


class _Recorder(TrainingCallback):
    def __init__(self):
        self.logged, self.evaluated, self.ended = [], [], None

    def on_log(self, step, logs):
        self.logged.append(step)
        assert "loss" in logs

    def on_evaluate(self, step, metrics, model):
        self.evaluated.append(step)

    def on_train_end(self, step, results, model):
        self.ended = (step, results)


def test_callbacks_receive_validation_metrics_at_the_eval_steps(tmp_path):
    seen = []

    def record(step, metrics, model):
        assert isinstance(model, MakeModel) and not model.training
        seen.append((step, metrics["recall@10"]))

    recorder = _Recorder()
    products = [{"product_id": f"e{i}", "title": f"{colour} {item} {i}", "image": Image.new("RGB", (16, 16), colour)}
                for i, (colour, item) in enumerate(zip(COLOURS, ITEMS))]
    queries = [{"query": f"{colour} {item}", "relevant_ids": [f"e{i}"]}
               for i, (colour, item) in enumerate(zip(COLOURS, ITEMS))]
    results = pretrain(_args(tmp_path, max_train_steps=6, eval_steps=2), train_dataset=datasets.Dataset.from_list(
        _rows()), eval_dataset={"products": products, "queries": queries}, callbacks=[record, recorder])

    assert [step for step, _ in seen] == [2, 4]  # not at the last step: the test split is scored there
    assert all(0.0 <= recall <= 1.0 for _, recall in seen)
    history = json.loads((tmp_path / "run" / "training_history.json").read_text())
    assert [(row["step"], row["recall@10"]) for row in history["validation"]] == seen
    assert recorder.logged == [1, 2, 3, 4, 5, 6] and recorder.evaluated == [2, 4]
    assert recorder.ended == (6, results)
    saved = datasets.load_from_disk(str(tmp_path / "run" / "evaluation_sets"))
    assert saved["validation_products"]["product_id"] == [row["product_id"] for row in products]


def test_a_callback_stops_the_run_and_the_model_is_still_saved_and_tested(tmp_path):
    calls = []

    def stop_at_second_evaluation(step, metrics, model):
        calls.append(step)
        return len(calls) == 2

    results = pretrain(_args(tmp_path, max_train_steps=8, eval_steps=1), train_dataset=_rows(),
                       callbacks=[stop_at_second_evaluation])
    assert calls == [1, 2]
    assert results["steps"] == 2
    assert "recall@10" in results["title+image"]["overall"]
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_bad_inputs_name_the_argument(tmp_path):
    args = _args(tmp_path)
    with pytest.raises(TypeError, match="`train_dataset` must be a datasets.Dataset"):
        pretraining_data(args, train_dataset="logs.jsonl")
    with pytest.raises(TypeError, match=r"`train_dataset\[1\]` is a str"):
        pretraining_data(args, train_dataset=[{"query": "a", "title": "b"}, "row"])
    with pytest.raises(TypeError, match="`train_dataset` is a DatasetDict"):
        pretraining_data(args, train_dataset=datasets.DatasetDict({"train": datasets.Dataset.from_list(_rows())}))
    with pytest.raises(ValueError, match="`train_dataset` has no column 'query'"):
        pretraining_data(args, train_dataset=datasets.Dataset.from_list([{"text": "a", "title": "b"}]))
    with pytest.raises(ValueError, match="`train_dataset`: no usable rows"):
        pretraining_data(args, train_dataset=[{"query": " ", "title": "b", "product_id": "p"}])
    with pytest.raises(ValueError, match="`eval_dataset` has no 'queries'"):
        pretraining_data(args, train_dataset=_rows(), eval_dataset={"products": [{"product_id": "a", "title": "b"}]})
    with pytest.raises(ValueError, match=r"`test_dataset\['products'\]` has no column 'product_id'"):
        pretraining_data(args, train_dataset=_rows(), test_dataset={
            "products": [{"title": "b"}], "queries": [{"query": "b", "relevant_ids": ["a"]}]})
    with pytest.raises(ValueError, match=r"`eval_dataset\['queries'\]` has no column 'relevant_ids'"):
        pretraining_data(args, train_dataset=_rows(), eval_dataset={
            "products": [{"product_id": "a", "title": "b"}], "queries": [{"query": "b"}]})
    with pytest.raises(ValueError, match="Both args.dataset"):
        run_arguments(_args(tmp_path, dataset="emoji-en"), train_dataset=_rows())
    with pytest.raises(TypeError, match="wrap a single one in a list"):
        pretrain(args, train_dataset=_rows(), callbacks=lambda step, metrics, model: None)
    with pytest.raises(TypeError, match=r"`callbacks\[0\]` is a str"):
        pretrain(args, train_dataset=_rows(), callbacks=["stop"])


def test_a_run_on_rows_given_is_named_for_them_and_keeps_off_the_synthetic_run_folder(tmp_path):
    rows = _rows()
    named = run_arguments(PretrainArguments(model="make-tiny"), rows)
    assert (named.dataset, named.output_dir) == ("train_dataset", "outputs/make-tiny-train_dataset")
    assert run_arguments(_args(tmp_path), rows).output_dir == str(tmp_path / "run")
    data = datasets.Dataset.from_list(rows)
    data.info.dataset_name = "my-shop"
    assert run_arguments(PretrainArguments(model="make-tiny"), data).output_dir == "outputs/make-tiny-my-shop"
