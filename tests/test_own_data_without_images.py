"""A shop's own training log without an image column (a catalogue with no pictures) or without titles (image-only
products, for some rows or all) trains, holds products out and evaluates them, instead of failing with
`KeyError: 'image'` while holding them out or `texts[i] must be a string` while training the tokenizer."""

import json

import datasets
import pytest
from PIL import Image

from make_hf.training import PretrainArguments, pretrain
from make_hf.training.sources import split_by_product
from test_pretrain import TINY

COLOURS = ["red", "blue", "green", "black", "white", "pink"]
THINGS = ["shoes", "shirt", "lamp", "mug", "charger", "cable", "bag", "hat"]


def _rows(count):
    return [{"query": f"{COLOURS[i % 6]} {THINGS[i % 8]}", "title": f"{COLOURS[i % 6]} {THINGS[i % 8]} model {i}",
             "product_id": f"sku-{i}"} for i in range(count)]


def test_products_held_out_of_a_log_without_images_have_no_image():
    data = split_by_product("log", datasets.Dataset.from_list(_rows(40)), fraction=0.1, seed=0)
    for products in (data.validation_products, data.test_products):
        assert len(products) > 0 and set(products["image"]) == {None}
        assert all(title.startswith(("red", "blue", "green", "black", "white", "pink")) for title in products["title"])
    assert "image" not in data.train.column_names


def test_a_log_without_images_trains_and_evaluates(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(row) + "\n" for row in _rows(120)))
    args = {**TINY, "dataset": str(log), "max_train_steps": 2}
    results = pretrain(PretrainArguments(output_dir=str(tmp_path / "run"), **args))
    assert results["steps"] == 2
    assert 0.0 <= results["title+image"]["overall"]["recall@10"] <= 1.0
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.parametrize("titled", ["none", "every_other"])
def test_a_log_with_image_only_products_trains_and_evaluates(tmp_path, titled):
    rows = []
    for i in range(120):
        colour = COLOURS[i % 4]
        Image.new("RGB", (24, 24), colour).save(tmp_path / f"{i}.png")
        row = {"query": f"{colour} thing", "image": f"{i}.png", "product_id": f"sku-{i}"}
        if titled == "every_other" and i % 2:
            row["title"] = f"{colour} thing model {i}"
        rows.append(row)
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = {**TINY, "dataset": str(log), "max_train_steps": 2}
    results = pretrain(PretrainArguments(output_dir=str(tmp_path / "run"), **args))
    assert results["steps"] == 2 and results["skipped_rows"]["total"] == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()
