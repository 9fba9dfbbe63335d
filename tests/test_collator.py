"""MakeCollator: the model's keys plus stable product ids; bad rows dropped and reported, never raised."""

import io

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from make_hf import MakeConfig, MakeModel, MakeProcessor, train_tokenizer
from make_hf.data import MakeCollator, SkippedRows, hash_product_id, make_synthetic_shop

MODEL_KEYS = {
    "query_input_ids", "query_attention_mask", "title_input_ids", "title_attention_mask", "pixel_values",
    "image_mask", "keyword_input_ids", "keyword_attention_mask", "query_term_ids", "keyword_term_ids",
}


@pytest.fixture(scope="module")
def shop():
    return make_synthetic_shop(48, seed=0)


@pytest.fixture(scope="module")
def config_and_processor(shop):
    train = shop["train"]
    tokenizer = train_tokenizer(list(train["query"]) + list(train["title"]), vocab_size=300)
    config = MakeConfig.from_preset("make-tiny", vocab_size=len(tokenizer))
    processor = MakeProcessor.from_config(config, tokenizer).fit_keywords(list(train["title"]), list(train["query"]))
    return config, processor


@pytest.fixture()
def processor(config_and_processor):
    return config_and_processor[1]


def _png(colour="red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_batch_has_the_model_keys_and_trains(shop, config_and_processor):
    config, processor = config_and_processor
    loader = DataLoader(shop["train"], batch_size=8, shuffle=False, collate_fn=MakeCollator(processor))
    batch = next(iter(loader))
    assert set(batch) == MODEL_KEYS | {"product_ids"}
    assert batch["pixel_values"].shape == (8, 3, config.vision_config.image_size, config.vision_config.image_size)
    assert batch["product_ids"].dtype == torch.int64 and batch["product_ids"].shape == (8,)
    assert (batch["product_ids"] >= 0).all()
    expected = [hash_product_id(pid) for pid in shop["train"][:8]["product_id"]]
    assert batch["product_ids"].tolist() == expected
    outputs = MakeModel(config)(**batch, return_loss=True)
    assert torch.isfinite(outputs.loss)


def test_product_id_hash_is_stable_and_equal_for_equal_ids():
    # A fixed value: the id must not change between Python runs, processes or machines.
    assert hash_product_id("sku00001") == 5219410527894180728
    assert hash_product_id("sku00001") == hash_product_id("sku00001") != hash_product_id("sku00002")
    assert 0 <= hash_product_id("") < 2**63
    assert hash_product_id(42) == hash_product_id("42")


def test_rows_of_one_product_share_an_id(processor):
    rows = [
        {"query": "red tee", "title": "zerel tshirt", "image": _png(), "product_id": "p1"},
        {"query": "crimson tshirt", "title": "zerel tshirt", "image": _png(), "product_id": "p1"},
        {"query": "blue tee", "title": "zerel tshirt", "image": _png("blue"), "product_id": "p2"},
    ]
    ids = MakeCollator(processor)(rows)["product_ids"].tolist()
    assert ids[0] == ids[1] != ids[2]


def test_bad_rows_are_dropped_counted_and_named(processor, tmp_path):
    good = {"query": "red tee", "title": "zerel tshirt", "image": _png(), "product_id": "good"}
    rows = [
        good,
        {"query": "blue tee", "title": "t", "image": str(tmp_path / "gone.png"), "product_id": "a", "source_row": 7},
        {"query": "tee", "title": "t", "image": b"\x89PNG broken", "product_id": "b", "source_row": 8},
        {"query": "   ", "title": "t", "image": _png(), "product_id": "c", "source_row": 9},
        {"query": "tee", "title": None, "image": None, "product_id": "d", "source_row": 10},
        {"query": "tee", "title": "no image is fine", "image": None, "product_id": "e"},
    ]
    collator = MakeCollator(processor, source="train.jsonl")
    batch = collator(rows)
    assert batch["query_input_ids"].shape[0] == 2
    assert batch["image_mask"].tolist() == [1, 0]
    assert batch["product_ids"].tolist() == [hash_product_id("good"), hash_product_id("e")]
    report = collator.skipped_rows
    assert report.counts == {"missing_image": 1, "corrupt_image": 1, "empty_query": 1, "no_title_or_image": 1}
    assert report.indices == [7, 8, 9, 10]
    # The next epoch meets the same rows again: still four skipped rows.
    collator(rows)
    assert len(report) == 4
    assert "train.jsonl row 7: missing_image" in report.report()


def test_a_batch_of_only_bad_rows_is_empty_not_an_error(processor):
    collator = MakeCollator(processor)
    batch = collator([{"query": "", "title": "t", "image": None, "product_id": "x"}])
    assert len(batch) == 0
    assert collator.skipped_rows.counts == {"empty_query": 1}
    assert "product 'x'" in collator.skipped_rows.rows[0].detail


def test_shared_report_and_custom_columns(processor):
    skipped = SkippedRows()
    collator = MakeCollator(processor, query_column="q", title_column="name", image_column="picture",
                            product_id_column="sku", skipped_rows=skipped)
    batch = collator([
        {"q": "red tee", "name": "zerel tshirt", "picture": Image.new("RGBA", (9, 9)), "sku": "1"},
        {"q": "tee", "name": "zerel tshirt", "picture": None, "sku": ""},
    ])
    assert batch["product_ids"].tolist() == [hash_product_id("1")]
    assert collator.skipped_rows is skipped and skipped.counts == {"missing_product_id": 1}


def test_product_rows_without_queries(processor):
    batch = MakeCollator(processor)([{"title": "zerel tshirt", "image": _png(), "product_id": "p"}])
    assert "query_input_ids" not in batch and {"title_input_ids", "pixel_values", "product_ids"} <= set(batch)


def test_collator_pads_text_to_the_longest_row_and_keeps_term_widths(processor):
    rows = [
        {"query": "red mug", "title": "ceramic red mug", "image": None, "product_id": "a"},
        {"query": "blue cup", "title": None, "image": Image.new("RGB", (8, 8), "blue"), "product_id": "b"},
    ]
    longest = MakeCollator(processor)(rows)
    fixed = MakeCollator(processor, padding="max_length")(rows)
    assert longest["title_input_ids"].shape[1] < processor.title_max_length
    assert fixed["title_input_ids"].shape[1] == processor.title_max_length
    assert longest["title_attention_mask"][1].sum() == 0  # no title: still an all-zero row
    width = longest["title_input_ids"].shape[1]
    assert torch.equal(longest["title_input_ids"], fixed["title_input_ids"][:, :width])
    assert longest["query_term_ids"].shape == fixed["query_term_ids"].shape
