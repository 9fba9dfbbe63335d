"""evaluate_retrieval end to end on a tiny random MAKE model, checked against an independent computation."""

import math

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from make_hf import MakeConfig, MakeModel, MakeProcessor, train_tokenizer
from make_hf.evaluation import (
    CONDITIONS,
    encode_products,
    encode_queries,
    evaluate_retrieval,
    exact_search,
    flatten_results,
    format_results,
)
from make_hf.metrics import retrieval_metrics_from_scores

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "black": (10, 10, 10)}
CATEGORIES = {"dress": "image_decided", "mug": "image_decided", "charger": "title_decided"}


def _product_image(rgb, row):
    # A white mark placed by row keeps two products of one colour apart: their image scores never tie exactly, so
    # the check against an independent computation does not hinge on how float noise breaks ties.
    image = Image.new("RGB", (20, 20), rgb)
    image.paste((255, 255, 255), (row, 2 * (row % 5), row + 4, 2 * (row % 5) + 4))
    return image


def _catalogue():
    products, row = [], 0
    for category in CATEGORIES:
        for colour, rgb in COLOURS.items():
            products.append(
                {
                    "product_id": f"{category}-{colour}",
                    "title": f"2024 new {category} brand{row % 3} cotton size {row} free shipping",
                    "image": _product_image(rgb, row),
                    "category": category,
                    "category_group": CATEGORIES[category],
                }
            )
            row += 1
    products[1]["image"] = None  # dress-blue: title only
    products[6]["title"] = None  # mug-green: image only
    products[9]["title"] = "   "  # charger-blue: a blank title is no title
    queries = [
        {"query": "red dress", "relevant_ids": ["dress-red"], "bucket": "seen"},
        {"query": "dress", "relevant_ids": [f"dress-{c}" for c in COLOURS], "bucket": "seen"},
        {"query": "blue things", "relevant_ids": ["dress-blue", "mug-blue", "charger-blue"], "bucket": "new"},
        {"query": "green mug", "relevant_ids": ["mug-green"], "bucket": "new"},
        {"query": "brand1 charger", "relevant_ids": ["charger-red", "charger-black"], "bucket": "title_only"},
        {"query": "black mug cotton", "relevant_ids": ["mug-black"], "bucket": "title_only"},
    ]
    return products, queries


@pytest.fixture(scope="module")
def setup():
    products, queries = _catalogue()
    config = MakeConfig.from_preset("make-tiny")
    texts = [q["query"] for q in queries] + [p["title"] for p in products if p["title"]]
    tokenizer = train_tokenizer(texts * 3, vocab_size=config.query_config.vocab_size, min_frequency=1)
    processor = MakeProcessor.from_config(config, tokenizer, title_max_length=24)
    processor.fit_keywords([p["title"] for p in products if p["title"] and p["title"].strip()])
    torch.manual_seed(0)
    model = MakeModel(config)
    return model, processor, products, queries


def test_end_to_end_result_layout(setup):
    model, processor, products, queries = setup
    model.train()
    results = evaluate_retrieval(model, processor, products, queries, batch_size=5, show_progress=False)
    assert model.training, "the model's mode is restored"
    metric_names = ["recall@1", "recall@5", "recall@10", "recall@50", "mrr@10", "ndcg@10"]
    assert results["num_products"] == 12 and results["num_queries"] == 6
    for condition in CONDITIONS:
        section = results[condition]
        assert list(section["overall"]) == metric_names + ["num_queries"]
        assert all(0.0 <= section["overall"][name] <= 1.0 for name in metric_names)
        assert {k: v["num_queries"] for k, v in section["by_bucket"].items()} == {"new": 2, "seen": 2, "title_only": 2}
        # The queries have no category_group column: it comes from their relevant products.
        assert {k: v["num_queries"] for k, v in section["by_category_group"].items()} == {
            "image_decided": 4, "mixed": 1, "title_decided": 1
        }
    assert results["title+image"]["num_retrievable_products"] == 12
    assert results["title"]["num_retrievable_products"] == 10  # mug-green and charger-blue have no title
    assert results["image"]["num_retrievable_products"] == 11  # dress-blue has no image
    # 12 products, 3 without both modalities: the image weight is averaged over the other 9.
    assert set(results["image_weight_by_category"]) == set(CATEGORIES)
    assert set(results["image_weight_by_category_group"]) == {"image_decided", "title_decided"}
    assert 0.0 < results["mean_image_weight"] < 1.0
    # With 12 products, everything is within the top 50.
    assert results["title+image"]["overall"]["recall@50"] == 1.0


def test_metrics_match_an_independent_computation(setup):
    model, processor, products, queries = setup
    results = evaluate_retrieval(model, processor, products, queries, conditions=("title+image", "image"),
                                 show_progress=False)
    ids = [p["product_id"] for p in products]
    relevant = [[ids.index(pid) for pid in q["relevant_ids"]] for q in queries]
    titles = [p["title"] if p["title"] and p["title"].strip() else None for p in products]
    with torch.no_grad():
        model.eval()
        query_inputs = processor(query=[q["query"] for q in queries])
        query_embeds = model.get_query_features(query_inputs["query_input_ids"], query_inputs["query_attention_mask"])
        fused = model.get_product_features(**processor(title=titles, images=[p["image"] for p in products]))
        fused, weights = fused.product_embeds, fused.modal_weights
        with_image = [i for i, p in enumerate(products) if p["image"] is not None]
        image_only = model.get_product_features(**processor(images=[products[i]["image"] for i in with_image]))
        image_only = image_only.product_embeds
    expected = retrieval_metrics_from_scores(query_embeds @ fused.T, relevant)
    assert results["title+image"]["overall"] == pytest.approx({**expected, "num_queries": 6}, abs=1e-6)
    image_scores = torch.full((len(queries), len(products)), -math.inf)
    image_scores[:, with_image] = query_embeds @ image_only.T
    expected = retrieval_metrics_from_scores(image_scores, relevant)
    assert results["image"]["overall"] == pytest.approx({**expected, "num_queries": 6}, abs=1e-6)
    both = [i for i, p in enumerate(products) if p["image"] is not None and titles[i] is not None]
    mugs = [i for i in both if products[i]["category"] == "mug"]
    assert results["image_weight_by_category"]["mug"] == pytest.approx(float(weights[mugs, 1].mean()), abs=1e-6)
    assert results["mean_image_weight"] == pytest.approx(float(weights[both, 1].mean()), abs=1e-6)


def test_encoding_does_not_depend_on_batch_size(setup):
    model, processor, products, _ = setup
    one = encode_products(model, processor, products, batch_size=3, show_progress=False)
    many = encode_products(model, processor, products, batch_size=64, show_progress=False)
    for condition in CONDITIONS:
        torch.testing.assert_close(one.embeds[condition], many.embeds[condition], atol=1e-5, rtol=1e-4)
    assert one.retrievable["image"].tolist() == [p["image"] is not None for p in products]
    assert one.embeds["image"][1].abs().sum() == 0  # the row without an image stays empty
    assert torch.allclose(one.embeds["title+image"].norm(dim=1), torch.ones(12), atol=1e-5)
    assert one.modal_weights.shape == (12, 2)
    assert one.modal_weights[1].tolist() == pytest.approx([1.0, 0.0])  # no image: all weight on the title
    assert one.modal_weights[6].tolist() == pytest.approx([0.0, 1.0])  # no title: all weight on the image


def test_inputs_as_dataset_rows_or_columns_and_reuse(setup):
    model, processor, products, queries = setup
    as_rows = evaluate_retrieval(model, processor, products, queries, conditions="title", show_progress=False)
    columns = {name: [p[name] for p in products] for name in products[0]}
    dataset = datasets.Dataset.from_dict(
        {name: [q[name] for q in queries] for name in queries[0]}
    )
    encoded = encode_products(model, processor, columns, conditions=("title",), show_progress=False)
    reused = evaluate_retrieval(model, processor, None, dataset, conditions=("title",), encoded_products=encoded,
                                show_progress=False)
    assert flatten_results(reused) == pytest.approx(flatten_results(as_rows))
    with pytest.raises(ValueError, match=r"encoded without condition\(s\) \['image'\]"):
        evaluate_retrieval(model, processor, None, queries, conditions=("image",), encoded_products=encoded)


def test_max_queries_takes_an_evenly_spaced_subset(setup):
    model, processor, products, queries = setup
    encoded = encode_products(model, processor, products, conditions=("title+image",), show_progress=False)
    results = evaluate_retrieval(model, processor, products, queries, conditions=("title+image",), max_queries=3,
                                 encoded_products=encoded, show_progress=False)
    assert results["num_queries"] == 3
    # Rows 0, 2 (round(2.5) == 2) and 5: one query from each bucket.
    assert {k: v["num_queries"] for k, v in results["title+image"]["by_bucket"].items()} == {
        "seen": 1, "new": 1, "title_only": 1
    }


def test_encode_queries(setup):
    model, processor, _, _ = setup
    embeds = encode_queries(model, processor, ["red dress", "mug", "charger"], batch_size=2, show_progress=False)
    assert embeds.shape == (3, model.config.projection_dim) and embeds.dtype == torch.float32
    with pytest.raises(ValueError, match=r"queries\[1\] is ''"):
        encode_queries(model, processor, ["red dress", ""], show_progress=False)


def test_exact_search_matches_brute_force(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    queries, products = torch.randn(7, 8, generator=generator), torch.randn(50, 8, generator=generator)
    retrievable = torch.ones(50, dtype=torch.bool)
    retrievable[::3] = False
    monkeypatch.setattr("make_hf.exhaustive_search._SEARCH_ELEMENTS", 100)  # two queries per chunk
    scores, indices = exact_search(queries, products, k=5, retrievable=retrievable)
    reference = queries @ products.T
    reference[:, ~retrievable] = -math.inf
    top = reference.topk(5, dim=1)
    torch.testing.assert_close(scores, top.values)
    assert torch.equal(indices, top.indices)
    assert not np.isin(indices.numpy(), np.arange(0, 50, 3)).any()
    assert exact_search(queries, products[:3], k=10)[0].shape == (7, 3)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p, q: q[0].update(relevant_ids=["nope"]),
         r"queries\[0\] \('red dress'\) names relevant product\(s\) \['nope'\]"),
        (lambda p, q: q[1].update(relevant_ids=[]), r"queries\[1\]\['relevant_ids'\] is empty"),
        (lambda p, q: q[2].update(query=" "), r"queries\[2\]\['query'\] is ' '"),
        (lambda p, q: p[3].update(image=None, title=None), r"products\[3\] \(product_id 'dress-black'\) has neither"),
        (lambda p, q: p[4].update(product_id="dress-red"),
         r"products\[4\]\['product_id'\] = 'dress-red' repeats products\[0\]"),
        (lambda p, q: [r.pop("relevant_ids") for r in q], "`queries` has no column 'relevant_ids'"),
    ],
)
def test_errors_name_the_row(setup, change, message):
    model, processor, _, _ = setup
    products, queries = _catalogue()
    change(products, queries)
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval(model, processor, products, queries, conditions=("title",), show_progress=False)


def test_unknown_condition(setup):
    model, processor, products, queries = setup
    with pytest.raises(ValueError, match=r"Unknown condition\(s\) \['title_image'\]"):
        evaluate_retrieval(model, processor, products, queries, conditions=("title_image",))


def test_flatten_and_format(setup):
    model, processor, products, queries = setup
    results = evaluate_retrieval(model, processor, products, queries, conditions=("title+image", "title"),
                                 show_progress=False)
    flat = flatten_results(results)
    assert flat["title+image/overall/recall@10"] == results["title+image"]["overall"]["recall@10"]
    assert flat["title/by_bucket/seen/num_queries"] == 2
    assert "image_weight_by_category/mug" in flat
    table = format_results(results)
    assert table.startswith("6 queries, 12 products.")
    assert "| title+image | " in table and "| title | seen | " in table and "| mug | " in table
    assert "| image |" not in table  # not evaluated


def test_recall_on_a_catalogue_under_ten_times_k_is_flagged(setup, caplog):
    model, processor, products, queries = setup
    with caplog.at_level("WARNING", logger="make_hf.evaluation"):
        results = evaluate_retrieval(model, processor, products, queries, conditions=("title",), show_progress=False)
    # 12 products: Recall@5, @10 and @50 need 50, 100 and 500; Recall@1 (10 products) is fine.
    assert [w.split(" is ")[0] for w in results["warnings"]] == [
        "Recall@5 on 12 products", "Recall@10 on 12 products", "Recall@50 on 12 products"
    ]
    assert all(warning in caplog.text for warning in results["warnings"])


def test_small_catalogue_rule():
    from make_hf.metrics import small_catalogue_warnings

    assert small_catalogue_warnings(100, (1, 5, 10)) == []
    assert len(small_catalogue_warnings(99, (1, 5, 10, 50))) == 2


def test_read_rows_reads_evaluation_files_with_the_training_reader(tmp_path):
    from make_hf.evaluation import read_rows

    queries = tmp_path / "queries.csv"
    queries.write_text('query,relevant_ids,bucket\nred mug,mug-red|mug-blue,\n"mug","[""mug-red""]",seen\n')
    rows = read_rows(queries)
    assert rows == [{"query": "red mug", "relevant_ids": ["mug-red", "mug-blue"], "bucket": None},
                    {"query": "mug", "relevant_ids": ["mug-red"], "bucket": "seen"}]
    products = tmp_path / "products.json"  # an object of columns, as training reads it too
    products.write_text('{"product_id": [7, "p8"], "title": ["mug", ""], "image": ["img/7.png", null]}')
    assert read_rows(products) == [
        {"product_id": "7", "title": "mug", "image": str(tmp_path / "img" / "7.png")},
        {"product_id": "p8", "title": None, "image": None},
    ]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"query": "mug", "relevant_ids": ["a"]}\n{"query": \n')
    with pytest.raises(ValueError, match=r"broken.jsonl, line 2: not valid JSON"):
        read_rows(broken)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("query,relevant_ids\nmug,a,b\n")
    with pytest.raises(ValueError, match=r"ragged.csv, line 2: 3 fields where the header has 2"):
        read_rows(ragged)


def test_a_catalogue_without_images_reports_no_image_weight_and_stays_valid_json(setup):
    import json

    model, processor, products, queries = setup
    title_only = [{key: value for key, value in row.items() if key not in ("image", "category", "category_group")}
                  for row in products if row["title"] and row["title"].strip()]
    known = {row["product_id"] for row in title_only}
    kept = [dict(q, relevant_ids=[i for i in q["relevant_ids"] if i in known]) for q in queries]
    kept = [q for q in kept if q["relevant_ids"]]
    results = evaluate_retrieval(model, processor, title_only, kept, show_progress=False)
    assert results["mean_image_weight"] is None
    json.dumps(results, allow_nan=False)  # NaN would not be JSON
    assert "nan" not in format_results(results).lower()
