"""Mined hard negatives are safely wrong: never a positive of the row's query, never a product whose keywords cover
the query, never within the relative margin of the positive; and `make-hf mine-negatives` writes them as a column."""

import json

import pytest
import torch

from make_hf import MakeModel, MakeProcessor, train_tokenizer
from make_hf.cli import main
from make_hf.data.synthetic import make_synthetic_shop
from make_hf.hard_negatives import mine_hard_negatives, query_key
from model_inputs import single_torch_thread, tiny_config  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def shop_rows():
    train = make_synthetic_shop(96, image_size=16, seed=3)["train"]
    return [dict(row) for row in train]


@pytest.fixture(scope="module")
def model_and_processor(shop_rows):
    # One text tower for queries and titles: a random model already ranks a title close to a query sharing its
    # words, so the top candidates include positives and keyword-covered products for the filters to remove.
    config = tiny_config("make-shared-encoder")
    titles = [row["title"] for row in shop_rows]
    queries = [row["query"] for row in shop_rows]
    tokenizer = train_tokenizer(titles + queries, vocab_size=config.query_config.vocab_size, min_frequency=1)
    processor = MakeProcessor.from_config(config, tokenizer, title_max_length=32).fit_keywords(titles, queries)
    torch.manual_seed(0)
    return MakeModel(config).eval(), processor


def _covers(processor, query, title):
    """The keyword rule restated on strings: every term of the query is among the title's keyword terms."""
    extractor = processor.keyword_extractor
    keyword_terms = set(extractor.terms(" ".join(extractor.extract(title, processor.num_keywords))))
    query_terms = set(extractor.terms(query))
    return bool(query_terms) and query_terms <= keyword_terms


def test_mined_negatives_are_never_positives_keyword_covered_or_within_the_margin(model_and_processor, shop_rows):
    model, processor = model_and_processor
    mined = mine_hard_negatives(model, processor, shop_rows, num_negatives=4, top_k=24, relative_margin=0.05,
                                show_progress=False)
    assert len(mined.negatives) == len(shop_rows)
    positives, titles = {}, {}
    for row in shop_rows:
        positives.setdefault(query_key(row["query"]), set()).add(row["product_id"])
        titles[row["product_id"]] = row["title"]
    # Every filter had something to remove, so the assertions below are tested against real candidates.
    assert mined.counts["dropped_positive"] > 0 and mined.counts["dropped_keywords"] > 0
    assert mined.counts["rows_with_negatives"] > 10
    for row, negatives, scores in zip(shop_rows, mined.negatives, mined.scores):
        assert len(negatives) <= 4 and len(set(negatives)) == len(negatives)
        assert scores == sorted(scores, reverse=True)
        for negative in negatives:
            assert negative not in positives[query_key(row["query"])]
            assert not _covers(processor, row["query"], titles[negative])


def test_a_positive_spelled_differently_a_keyword_covered_product_and_the_margin(model_and_processor):
    model, processor = model_and_processor
    rows = [
        {"query": "red dress", "product_id": "a", "title": "red cotton dress", "image": None},
        {"query": "Red   DRESS", "product_id": "b", "title": "red dress summer", "image": None},
        {"query": "steel screws", "product_id": "c", "title": "steel screws pack", "image": None},
        {"query": "zinc box", "product_id": "e", "title": "steel screws zinc box", "image": None},
        {"query": "blue mug", "product_id": "d", "title": "blue ceramic mug", "image": None},
    ]
    assert _covers(processor, "steel screws", "steel screws zinc box")
    mined = mine_hard_negatives(model, processor, rows, num_negatives=4, top_k=5, relative_margin=0.0,
                                show_progress=False)
    assert "b" not in mined.negatives[0] and "a" not in mined.negatives[1]
    assert "e" not in mined.negatives[2] and mined.counts["dropped_keywords"] >= 1
    # A margin close to 1 keeps only candidates scoring at most a sliver of the positive's score.
    strict = mine_hard_negatives(model, processor, rows, num_negatives=4, top_k=5, relative_margin=0.999,
                                 show_progress=False)
    assert strict.counts["dropped_margin"] > mined.counts["dropped_margin"]
    assert sum(map(len, strict.negatives)) < sum(map(len, mined.negatives))


@pytest.mark.parametrize("argument, value", [("num_negatives", 0), ("top_k", -1), ("relative_margin", 1.0)])
def test_bad_settings_are_refused_by_name(model_and_processor, shop_rows, argument, value):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match=argument):
        mine_hard_negatives(model, processor, shop_rows[:4], show_progress=False, **{argument: value})


def test_the_command_writes_the_rows_with_a_negatives_column(model_and_processor, shop_rows, tmp_path):
    model, processor = model_and_processor
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    rows = [{key: row[key] for key in ("query", "title", "product_id")} for row in shop_rows]
    source = tmp_path / "logs.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    output = tmp_path / "mined.jsonl"
    code = main(["mine-negatives", "--model", str(tmp_path / "model"), "--dataset", str(source),
                 "--output", str(output), "--num-negatives", "2", "--top-k", "16", "--quiet"])
    assert code == 0
    written = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [row["query"] for row in written] == [row["query"] for row in rows]
    expected = mine_hard_negatives(model, processor, rows, num_negatives=2, top_k=16, show_progress=False)
    assert [row["negatives"] for row in written] == expected.negatives


# ------------------------------------------------------------------ training on the negatives column


def _rows_with_negatives(shop_rows, count=8):
    rows = [dict(row) for row in shop_rows[:count]]
    rows[0]["negatives"] = [shop_rows[20]["product_id"], rows[1]["product_id"], "not-a-product"]
    rows[1]["negatives"] = [shop_rows[20]["product_id"], shop_rows[30]["product_id"]]
    for row in rows[2:]:
        row["negatives"] = []
    return rows


def test_the_collator_appends_negatives_as_product_only_rows(model_and_processor, shop_rows):
    from make_hf.data import MakeCollator, catalogue_of, hash_product_id

    model, processor = model_and_processor
    rows = _rows_with_negatives(shop_rows)
    collator = MakeCollator(processor, products=catalogue_of(shop_rows))
    batch = collator(rows)
    plain = MakeCollator(processor)([{k: v for k, v in row.items() if k != "negatives"} for row in rows])
    # Two new products (row 1's own product and a repeat are not appended again; an unknown id is counted).
    extra = [shop_rows[20]["product_id"], shop_rows[30]["product_id"]]
    assert batch["product_ids"].tolist() == plain["product_ids"].tolist() + [hash_product_id(p) for p in extra]
    assert collator.unknown_negatives == 1
    masks = model.modality_masks(**batch)
    assert masks["has_query"].tolist() == [True] * 8 + [False, False]
    assert masks["has_product"].all() and not masks["has_keywords"][8:].any()
    with torch.no_grad():
        with_negatives, without = model(**batch), model(**plain)
    # One more candidate per query can only raise the query -> product InfoNCE; nothing else anchors on them.
    assert torch.isfinite(with_negatives.loss)
    assert with_negatives.query_product_loss > without.query_product_loss
    model.zero_grad()
    model(**batch).loss.backward()  # the all-padding query rows must not turn a gradient into NaN
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad()


def test_negatives_without_a_catalogue_are_refused(model_and_processor, shop_rows):
    from make_hf.data import MakeCollator

    _, processor = model_and_processor
    with pytest.raises(ValueError, match="products="):
        MakeCollator(processor)(_rows_with_negatives(shop_rows))


def test_pretrain_takes_a_negatives_column(tmp_path, model_and_processor):
    from make_hf.training import PretrainArguments, pretrain

    rows = []
    for i in range(48):
        colour = ("red", "blue", "green", "black")[i % 4]
        rows.append({"query": f"{colour} mug", "title": f"ceramic {colour} mug number {i}", "product_id": f"p{i}"})
    for i, row in enumerate(rows):
        row["negatives"] = [f"p{(i + 1) % 48}", f"p{(i + 2) % 48}"]
    data = tmp_path / "logs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    results = pretrain(PretrainArguments(
        model="make-tiny", dataset=str(data), output_dir=str(tmp_path / "run"), per_device_train_batch_size=8,
        max_train_steps=3, warmup_steps=1, eval_steps=0, logging_steps=1, eval_batch_size=64,
    ))
    assert results["steps"] == 3
    # The negatives of validation and test products are not brought into training.
    assert results["unknown_negatives"] > 0
