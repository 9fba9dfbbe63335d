"""Each data rule has one definition that every path applies: what a query is (`is_query_text`), whether a training
row is usable (`check_row`, before training and again in the collator), the stable 64-bit hash behind every id
(`stable_hash64`), and the names of the evaluation splits (`make_hf.data.evaluation_splits`)."""

import io
import re

import pytest
from PIL import Image

from make_hf import MakeConfig, MakeProcessor, train_tokenizer
from make_hf.data import MakeCollator, derive_product_id, hash_product_id, make_synthetic_shop
from make_hf.data.evaluation_splits import EVALUATION_SPLITS, HELD_OUT_SPLITS, products_split, queries_split
from make_hf.data.files import check_row
from make_hf.data.synthetic import _stable_int
from make_hf.encoding import check_query_texts
from make_hf.keywords import hash_term, stable_hash64
from make_hf.processing_make import is_query_text
from make_hf.training.sources import EVALUATION_SPLITS as TRAINING_EVALUATION_SPLITS
from make_hf.training.sources import split_by_product

NOT_QUERIES = ["", "   ", "\t\n", "\u3000", None, 3, b"red tee", ["red tee"]]
QUERIES = ["red tee", "  usb c  ", "充电器", "x"]


@pytest.fixture(scope="module")
def processor():
    titles = ["zerel tshirt", "usb charger", "desk lamp"]
    tokenizer = train_tokenizer(titles + QUERIES, vocab_size=120, min_frequency=1)
    config = MakeConfig.from_preset("make-tiny", vocab_size=len(tokenizer))
    return MakeProcessor.from_config(config, tokenizer).fit_keywords(titles, titles)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_path_accepts_and_refuses_the_same_queries(processor):
    assert [is_query_text(text) for text in QUERIES] == [True] * len(QUERIES)
    assert [is_query_text(text) for text in NOT_QUERIES] == [False] * len(NOT_QUERIES)
    for text in QUERIES:
        assert check_query_texts([text]) == [text]
        assert check_row(text, "zerel tshirt", None, "p1") is None
        assert processor(query=[text])["query_input_ids"].shape[0] == 1
    collator = MakeCollator(processor)
    for row, text in enumerate(NOT_QUERIES):
        with pytest.raises(ValueError):
            check_query_texts([text])
        with pytest.raises(ValueError):  # InvalidInputTypeError, for a non-string, is a ValueError too
            processor(query=[text])
        assert check_row(text, "zerel tshirt", None, "p1") == ("empty_query", "the query is empty")
        collator([{"query": "red tee", "title": "zerel tshirt", "image": None, "product_id": "ok"},
                  {"query": text, "title": "zerel tshirt", "image": None, "product_id": "p1", "source_row": row}])
    assert collator.skipped_rows.counts == {"empty_query": len(NOT_QUERIES)}


def without_address(text: str) -> str:
    return re.sub(r"0x[0-9a-f]+", "0x", text)  # PIL's message names its BytesIO object by address


ROWS = {
    "missing_image": lambda tmp_path: ("red tee", "t", str(tmp_path / "gone.png"), "a"),
    "corrupt_image": lambda tmp_path: ("red tee", "t", b"\x89PNG broken", "b"),
    "empty_query": lambda tmp_path: (" ", "t", _png(), "c"),
    "missing_product_id": lambda tmp_path: ("red tee", "t", None, " "),
    "no_title_or_image": lambda tmp_path: ("red tee", None, None, "d"),
}


@pytest.mark.parametrize("reason", sorted(ROWS))
def test_the_collator_drops_a_row_for_the_reason_and_detail_loading_does(processor, tmp_path, reason):
    query, title, image, product_id = ROWS[reason](tmp_path)
    expected = check_row(query, title, image, product_id)
    assert expected is not None and expected[0] == reason
    collator = MakeCollator(processor)
    collator([{"query": "red tee", "title": "zerel tshirt", "image": _png(), "product_id": "ok"},
              {"query": query, "title": title, "image": image, "product_id": product_id, "source_row": 3}])
    (skipped,) = collator.skipped_rows.rows
    assert (skipped.reason, without_address(skipped.detail)) == (expected[0], without_address(expected[1]))


def test_every_id_comes_from_the_one_stable_hash():
    # The values ids had before the hash was shared: training data, saved datasets and results depend on them.
    assert hash_product_id("sku00001") == 5219410527894180728
    assert hash_product_id(12) == 7744513373483970787
    assert hash_term("red") == 1002358433242564772 and hash_term("充电器") == 1879365589845664502
    assert derive_product_id("zerel tshirt", None) == "pbc6b7acef63a7d92"
    assert derive_product_id("a", {"bytes": b"xy", "path": None}) == "pc7b3e39fd686d96c"
    assert _stable_int("typo", "shoes") == 5142151407774037967
    # ... and all of them are `stable_hash64`.
    assert hash_product_id("sku00001") == stable_hash64("sku00001") & ((1 << 63) - 1)
    assert hash_term("red") == stable_hash64("red") % (2**62 - 1) + 1
    assert derive_product_id("zerel tshirt", None) == "p" + format(stable_hash64(b"zerel tshirt\0"), "016x")
    assert _stable_int("typo", "shoes") == stable_hash64("typo|shoes", byteorder="little")
    assert stable_hash64("red") == stable_hash64(b"red") != stable_hash64("red ")


def test_every_dataset_has_the_same_evaluation_splits():
    assert HELD_OUT_SPLITS == ("validation", "test")
    assert EVALUATION_SPLITS == ("validation_products", "validation_queries", "test_products", "test_queries")
    assert TRAINING_EVALUATION_SPLITS == EVALUATION_SPLITS
    assert [products_split("test"), queries_split("test")] == ["test_products", "test_queries"]
    shop = make_synthetic_shop(48, seed=0)
    assert set(shop) == {"train", *EVALUATION_SPLITS}
    own = split_by_product("own", shop["train"], fraction=0.2, seed=0)
    assert all(len(getattr(own, split)) > 0 for split in EVALUATION_SPLITS)
    for split in HELD_OUT_SPLITS:
        assert {"query", "relevant_ids"} <= set(shop[queries_split(split)].column_names)
        assert set(getattr(own, queries_split(split)).column_names) == {"query", "relevant_ids"}
