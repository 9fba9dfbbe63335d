"""The synthetic shop: deterministic, split by product, buckets that mean what they say, and categories in which
only the image (or only the title) tells products apart."""

import itertools
from collections import defaultdict

import datasets
import numpy as np
import pytest

from make_hf.data.synthetic import (
    BUCKETS,
    CATEGORIES,
    COLOURS,
    IMAGE_DECIDED,
    PATTERNS,
    TITLE_DECIDED,
    TITLE_FILLER,
    make_synthetic_shop,
)

EVAL_SPLITS = ("validation", "test")


@pytest.fixture(scope="module")
def shop():
    return make_synthetic_shop(480, seed=0)


@pytest.fixture(scope="module")
def default_shop():
    return make_synthetic_shop()


def _raw(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.cast_column("image", datasets.Image(decode=False))


def _training_vocabulary(shop):
    queries = set(shop["train"]["query"])
    query_terms = {term for query in queries for term in query.split()}
    title_terms = {term for title in shop["train"]["title"] for term in title.split()}
    return queries, query_terms, title_terms


def _products(shop):
    return [row for split in EVAL_SPLITS for row in shop[f"{split}_products"]]


def test_layout_and_columns(shop):
    assert set(shop) == {"train", "validation_products", "validation_queries", "test_products", "test_queries"}
    assert {"query", "title", "image", "product_id", "category", "category_group"} <= set(shop["train"].column_names)
    for split in EVAL_SPLITS:
        assert {"product_id", "title", "image", "category", "category_group"} <= set(
            shop[f"{split}_products"].column_names
        )
        assert {"query", "relevant_ids", "bucket"} <= set(shop[f"{split}_queries"].column_names)
    image = shop["train"][0]["image"]
    assert image.size == (64, 64) and image.mode == "RGB"


def test_same_seed_same_shop_other_seed_other_shop():
    first, second, other = (make_synthetic_shop(64, seed=s) for s in (3, 3, 4))
    for split in first:
        assert _raw(first[split]).to_list() == _raw(second[split]).to_list(), split
    assert first["train"]["query"] != other["train"]["query"]


def test_splits_are_disjoint_by_product_and_cover_the_catalogue(shop):
    train = set(shop["train"]["product_id"])
    validation = set(shop["validation_products"]["product_id"])
    test = set(shop["test_products"]["product_id"])
    assert not (train & validation) and not (train & test) and not (validation & test)
    assert len(validation) == len(test) == 120
    # Every training product has queries, so the three splits together are the whole catalogue.
    assert len(train | validation | test) == 480
    for split in EVAL_SPLITS:
        assert set(shop[f"{split}_products"]["category"]) == {c.name for c in CATEGORIES}


def test_relevant_ids_are_split_products_and_depend_only_on_attributes(shop):
    attributes = ("category", "colour", "pattern", "brand", "material", "size")
    for split in EVAL_SPLITS:
        products = {row["product_id"]: row for row in shop[f"{split}_products"]}
        same_attributes = defaultdict(set)
        for product_id, row in products.items():
            same_attributes[tuple(row[a] for a in attributes)].add(product_id)
        for query in shop[f"{split}_queries"]:
            relevant = set(query["relevant_ids"])
            assert relevant and relevant <= set(products), query
            assert {products[p]["category"] for p in relevant} == {query["category"]}
            # Products with identical attributes are both relevant or both not: relevance is about attributes.
            for product_id in relevant:
                key = tuple(products[product_id][a] for a in attributes)
                assert same_attributes[key] <= relevant, query


def test_several_relevant_products_for_some_queries(default_shop):
    sizes = [len(ids) for split in EVAL_SPLITS for ids in default_shop[f"{split}_queries"]["relevant_ids"]]
    assert max(sizes) >= 4 and np.mean(sizes) > 1.5


def test_buckets_are_present_and_mean_what_they_say(shop):
    train_queries, train_query_terms, train_title_terms = _training_vocabulary(shop)
    for split in EVAL_SPLITS:
        queries = shop[f"{split}_queries"]
        assert set(queries["bucket"]) == set(BUCKETS), split
        for row in queries:
            terms = row["query"].split()
            unseen = [t for t in terms if t not in train_query_terms]
            if row["bucket"] == "seen_phrasing":
                assert row["query"] in train_queries
            elif row["bucket"] == "new_combination":
                assert row["query"] not in train_queries and not unseen
            else:
                # The term was never typed in training but was written in training titles.
                assert unseen and all(t in train_title_terms for t in unseen), row
        # Title-only terms come from title-decided products: the title states brand and material.
        groups = {g for g, b in zip(queries["category_group"], queries["bucket"]) if b == "title_only_term"}
        assert groups == {TITLE_DECIDED}


def test_title_only_values_never_reach_a_training_query(shop):
    _, train_query_terms, train_title_terms = _training_vocabulary(shop)
    for category in CATEGORIES:
        for value in category.title_only_values:
            assert value not in train_query_terms
            assert value in train_title_terms


def test_queries_are_short_with_a_query_title_shift(shop):
    queries = shop["train"]["query"]
    assert all(1 <= len(q.split()) <= 3 for q in queries)
    assert {len(q.split()) for q in queries} == {1, 2, 3}
    all_title_terms = {t for split in ("train",) for title in shop[split]["title"] for t in title.split()}
    colloquial = sum(any(t not in all_title_terms for t in q.split()) for q in queries) / len(queries)
    # Colours and patterns are never in titles, and many category/attribute words are colloquial or typos.
    assert colloquial > 0.5
    assert any(t in {"kicks", "tee", "brolly", "alu", "6ft"} for q in queries for t in q.split())
    per_product = defaultdict(int)
    for product_id in shop["train"]["product_id"]:
        per_product[product_id] += 1
    assert np.mean(list(per_product.values())) >= 4


def test_image_decided_products_differ_only_by_image(shop):
    stuffed = set(COLOURS) | set(PATTERNS)
    by_category = defaultdict(list)
    for row in _products(shop) + list(shop["train"].select_columns(["title", "category"])):
        by_category[row["category"]].append(row)
    for category in CATEGORIES:
        rows = by_category[category.name]
        if category.group == IMAGE_DECIDED:
            # The same title apart from sales filler and a list of colours and patterns the seller offers.
            informative = {frozenset(set(r["title"].split()) - set(TITLE_FILLER) - stuffed) for r in rows}
            assert len(informative) == 1, category.name
        else:
            # Brand, material and size are written in the title: different values, different titles.
            words = {(r["brand"], r["material"], r["size"]): set(r["title"].split()) - set(TITLE_FILLER)
                     for r in rows if "brand" in r}
            assert len(words) > 1
            for (attrs_a, words_a), (attrs_b, words_b) in itertools.combinations(words.items(), 2):
                assert words_a != words_b
                assert set(attrs_a) <= words_a


def test_colour_words_in_image_decided_titles_say_nothing_about_the_product(default_shop):
    rows = [r for split in EVAL_SPLITS for r in default_shop[f"{split}_products"].select_columns(
        ["title", "colour", "pattern", "category_group"]) if r["category_group"] == IMAGE_DECIDED]
    own_colour = np.mean([r["colour"] in r["title"].split() for r in rows])
    other_colour = np.mean([c in r["title"].split() for r in rows for c in COLOURS if c != r["colour"]])
    own_pattern = np.mean([r["pattern"] in r["title"].split() for r in rows])
    other_pattern = np.mean([p in r["title"].split() for r in rows for p in PATTERNS if p != r["pattern"]])
    assert 0.15 < other_colour < 0.35 and abs(own_colour - other_colour) < 0.05
    assert abs(own_pattern - other_pattern) < 0.05


def _body_colour(image) -> np.ndarray:
    """Median colour of the pixels that differ from the background (the corner): the object's main colour."""
    pixels = np.asarray(image, dtype=np.int64)
    return np.median(pixels[np.abs(pixels - pixels[0, 0]).sum(-1) > 30], axis=0)


def test_images_differ_in_image_decided_categories_only(shop):
    rows = _products(shop)
    body = {row["product_id"]: _body_colour(row["image"]) for row in rows}
    title_decided_gap, image_decided_gap, compared = 0.0, np.inf, 0
    for a, b in itertools.combinations(rows, 2):
        if a["category"] != b["category"]:
            continue
        gap = np.abs(body[a["product_id"]] - body[b["product_id"]]).max()
        if a["category_group"] == TITLE_DECIDED:
            title_decided_gap = max(title_decided_gap, gap)
        elif a["colour"] != b["colour"] and a["pattern"] == b["pattern"] and a["pattern"] in ("plain", "dotted",
                                                                                                  "floral"):
            # Patterns that leave most of the object in its colour, so the median is the colour.
            image_decided_gap = min(image_decided_gap, gap)
            compared += 1
    # Same object in the same colour (a few pixels of jitter apart) vs. another colour.
    assert compared > 10
    assert title_decided_gap < 10 and image_decided_gap > 40


def test_default_size_fits_a_cpu_demo(default_shop):
    assert 5000 <= default_shop["train"].num_rows <= 10000
    # 50 products per category and split: Recall@10 cannot be won by knowing the category alone.
    assert default_shop["validation_products"].num_rows == default_shop["test_products"].num_rows == 800
    assert default_shop["test_queries"].num_rows >= 1000
    counts = defaultdict(int)
    for bucket in default_shop["test_queries"]["bucket"]:
        counts[bucket] += 1
    assert min(counts.values()) >= 30, counts


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_products": 2}, "at least 3"),
        ({"num_products": 30, "split_fractions": (0.5, 0.3, 0.3)}, "summing to 1"),
        ({"num_products": 30, "image_size": 4}, "image_size"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic_shop(**kwargs)
