"""MAKE's loss (`make_hf.losses.make_loss`): each of the six terms of `LOSS_TERMS` against a hand-written formula.

The embeddings are 2-d unit vectors whose dot products are easy to read; every expected value is computed with plain
Python floats (`math.exp`, `math.log`) from the InfoNCE definition, never with the functions under test.
"""

import dataclasses
import math

import pytest
import torch

from make_hf import MakeConfig, MakeOutput
from make_hf.loss_terms import LOSS_TERM_NAMES, LOSS_TERMS, LOSS_WEIGHT_NAMES, check_loss_fields
from make_hf.losses import make_loss

SCALE = 2.0
A, B, C, D = (1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (0.8, 0.6)


def tensor(*vectors):
    return torch.tensor(vectors, dtype=torch.float64)


def everyone(n):
    return torch.ones(n, dtype=torch.bool)


def logits(anchors, candidates):
    return [[SCALE * sum(x * y for x, y in zip(a, c)) for c in candidates] for a in anchors]


def nce(row, positives, candidates=None):
    """-1/|P| * sum_{j in P} log softmax over the candidates (positives always included) of row, at j."""
    candidates = sorted(set(range(len(row)) if candidates is None else candidates) | set(positives))
    norm = math.log(sum(math.exp(row[k]) for k in candidates))
    return -sum(row[j] - norm for j in positives) / len(positives)


def transpose(matrix):
    return [list(column) for column in zip(*matrix)]


def only(name, **inputs):
    """`make_loss` with `name` the only weighted term (weight 1)."""
    return make_loss(logit_scale=torch.tensor(SCALE, dtype=torch.float64), weights={name: 1.0}, **inputs)


def test_query_product_is_symmetric_with_multi_positive_targets_by_product_id():
    queries, products = [A, B, C], [A, C, D]
    out = only(
        "query_product_loss",
        query_embeds=tensor(*queries), product_embeds=tensor(*products),
        has_query=everyone(3), has_product=everyone(3), product_ids=torch.tensor([7, 7, 9]),
    )
    # Rows 0 and 1 hit the same product: each is a positive of the other, in both directions.
    positives = [[0, 1], [0, 1], [2]]
    L = logits(queries, products)
    forward = sum(nce(L[i], positives[i]) for i in range(3)) / 3
    backward = sum(nce(transpose(L)[j], positives[j]) for j in range(3)) / 3
    assert list(out.terms) == ["query_product_loss"]
    assert out.terms["query_product_loss"].item() == pytest.approx((forward + backward) / 2, rel=1e-12)
    assert out.loss.item() == pytest.approx((forward + backward) / 2, rel=1e-12)
    torch.testing.assert_close(out.logits_per_query, torch.tensor(L, dtype=torch.float64))
    torch.testing.assert_close(out.logits_per_product, torch.tensor(transpose(L), dtype=torch.float64))


def test_query_product_false_negative_masking_leaves_covering_products_out_of_the_query_side():
    queries, products = [A, B], [C, D]
    out = make_loss(
        logit_scale=torch.tensor(SCALE, dtype=torch.float64), weights={"query_product_loss": 1.0},
        query_embeds=tensor(*queries), product_embeds=tensor(*products),
        has_query=everyone(2), has_product=everyone(2),
        # Query 0's terms {5} are covered by both keyword rows; query 1's terms {6} only by its own.
        query_term_ids=torch.tensor([[5], [6]]), keyword_term_ids=torch.tensor([[5, 0], [5, 6]]),
        false_negative_masking=True,
    )
    L = logits(queries, products)
    forward = (nce(L[0], [0], candidates=[0]) + nce(L[1], [1])) / 2  # product 1 masked for query 0
    backward = (nce(transpose(L)[0], [0]) + nce(transpose(L)[1], [1])) / 2  # the product side is not masked
    assert out.terms["query_product_loss"].item() == pytest.approx((forward + backward) / 2, rel=1e-12)
    assert out.masked_negatives.item() == pytest.approx(0.5)  # one masked negative over two query rows


def test_title_image_leaves_out_rows_missing_a_modality():
    titles, images = [A, B, C], [D, C, A]
    out = only(
        "title_image_loss",
        title_embeds=tensor(*titles), image_embeds=tensor(*images),
        has_title=everyone(3), has_image=torch.tensor([True, True, False]),
    )
    L = logits(titles, images)
    # Row 2 has no image: it is no candidate, and as an anchor it has no positive.
    forward = (nce(L[0], [0], [0, 1]) + nce(L[1], [1], [0, 1])) / 2
    backward = (nce(transpose(L)[0], [0]) + nce(transpose(L)[1], [1])) / 2
    assert out.terms["title_image_loss"].item() == pytest.approx((forward + backward) / 2, rel=1e-12)


def test_query_title_is_symmetric_infonce():
    queries, titles = [A, B], [C, D]
    out = only(
        "query_title_loss",
        query_embeds=tensor(*queries), title_embeds=tensor(*titles), has_query=everyone(2), has_title=everyone(2),
    )
    L = logits(queries, titles)
    expected = ((nce(L[0], [0]) + nce(L[1], [1])) / 2 + (nce(transpose(L)[0], [0]) + nce(transpose(L)[1], [1])) / 2) / 2
    assert out.terms["query_title_loss"].item() == pytest.approx(expected, rel=1e-12)


def test_query_image_ignores_queries_that_are_empty():
    queries, images = [A, B, D], [C, D, B]
    out = only(
        "query_image_loss",
        query_embeds=tensor(*queries), image_embeds=tensor(*images),
        has_query=torch.tensor([True, False, True]), has_image=everyone(3),
    )
    L = logits(queries, images)
    forward = (nce(L[0], [0]) + nce(L[2], [2])) / 2
    backward = (nce(transpose(L)[0], [0], [0, 2]) + nce(transpose(L)[2], [2], [0, 2])) / 2
    assert out.terms["query_image_loss"].item() == pytest.approx((forward + backward) / 2, rel=1e-12)


def test_keyword_title_is_one_directional():
    keywords, titles = [A, B], [D, C]
    out = only(
        "keyword_title_loss",
        keyword_embeds=tensor(*keywords), title_embeds=tensor(*titles), has_keywords=everyone(2), has_title=everyone(2),
    )
    L = logits(keywords, titles)
    expected = (nce(L[0], [0]) + nce(L[1], [1])) / 2  # keywords -> titles only
    assert out.terms["keyword_title_loss"].item() == pytest.approx(expected, rel=1e-12)
    assert out.logits_per_query is None


def test_query_keyword_positives_are_the_covering_pairs():
    queries, keywords = [A, B, C], [D, B, A]
    out = only(
        "query_keyword_loss",
        query_embeds=tensor(*queries), keyword_embeds=tensor(*keywords), has_query=everyone(3),
        has_keywords=everyone(3),
        # Query 0 {5} is covered by keyword rows 0 and 1; query 1 {6, 8} by row 2 only; query 2 {9} by none.
        query_term_ids=torch.tensor([[5, 0], [6, 8], [9, 0]]),
        keyword_term_ids=torch.tensor([[5, 1, 0], [2, 5, 0], [8, 6, 3]]),
    )
    L = logits(queries, keywords)
    forward = (nce(L[0], [0, 1]) + nce(L[1], [2])) / 2  # query 2 has no positive: no row
    columns = transpose(L)
    backward = (nce(columns[0], [0]) + nce(columns[1], [0]) + nce(columns[2], [1])) / 3
    assert out.terms["query_keyword_loss"].item() == pytest.approx((forward + backward) / 2, rel=1e-12)
    # Without term ids there are no positives to form: the term is not computed.
    without_ids = only(
        "query_keyword_loss",
        query_embeds=tensor(*queries), keyword_embeds=tensor(*keywords), has_query=everyone(3),
        has_keywords=everyone(3),
    )
    assert without_ids.terms == {} and without_ids.loss is None


def test_the_loss_is_the_weighted_sum_in_table_order_and_zero_weights_drop_terms():
    vectors = tensor(A, B, C)
    embeds = {f"{kind}_embeds": vectors for kind in ("query", "title", "image", "product", "keyword")}
    masks = {f"has_{kind}": everyone(3) for kind in ("query", "title", "image", "product", "keywords")}
    ids = dict(query_term_ids=torch.tensor([[5], [6], [7]]), keyword_term_ids=torch.tensor([[5], [6], [7]]))
    weights = {"query_product_loss": 1.0, "title_image_loss": 0.5, "query_title_loss": 0.0, "query_image_loss": 2.0,
               "keyword_title_loss": 0.25, "query_keyword_loss": 3.0}
    out = make_loss(logit_scale=torch.tensor(SCALE, dtype=torch.float64), weights=weights, **embeds, **masks, **ids)
    assert list(out.terms) == [name for name in LOSS_TERM_NAMES if weights[name] > 0]
    # Every pair scores the same vectors with one positive each: each symmetric term is the same number.
    L = logits([A, B, C], [A, B, C])
    one = sum(nce(L[i], [i]) for i in range(3)) / 3
    expected = one * sum(weights.values())
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_an_embedding_without_its_mask_is_refused():
    with pytest.raises(ValueError, match="has_title"):
        make_loss(logit_scale=torch.tensor(1.0), weights={"title_image_loss": 1.0}, title_embeds=torch.ones(2, 2),
                  image_embeds=torch.ones(2, 2), has_image=everyone(2))


def test_config_output_and_table_agree():
    config_fields = {field.name: field.default for field in dataclasses.fields(MakeConfig)}
    assert {name: config_fields[name] for name in LOSS_WEIGHT_NAMES} == {
        term.weight_name: term.default_weight for term in LOSS_TERMS
    }
    output_losses = [field.name for field in dataclasses.fields(MakeOutput) if field.name.endswith("_loss")]
    assert output_losses == list(LOSS_TERM_NAMES)
    for term in LOSS_TERMS:
        assert f"{term.weight_name} (`float`, defaults to {term.default_weight:g})" in MakeConfig.__doc__
        assert f"{term.name} (`torch.FloatTensor` of shape `()`, *optional*):\n            {term.description}" in (
            MakeOutput.__doc__
        )

    @dataclasses.dataclass
    class WithoutOneTerm:
        query_product_loss: float = 0.0

    with pytest.raises(TypeError, match="title_image_loss"):
        check_loss_fields(WithoutOneTerm, "name")
