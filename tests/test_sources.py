"""Own data is split by product into training, validation and test catalogues large enough to measure."""

import datasets
import pytest

from make_hf.training.sources import split_by_product


def _rows(num_products, queries_per_product=2):
    return datasets.Dataset.from_list([
        {"query": f"query {p % 37} {q}", "title": f"title {p}", "image": None, "product_id": f"p{p}"}
        for p in range(num_products)
        for q in range(queries_per_product)
    ])


@pytest.mark.parametrize("num_products, held_out", [(300, 75), (1000, 200), (3000, 300), (12, 3)])
def test_held_out_catalogues_reach_200_products_while_most_products_train(num_products, held_out):
    data = split_by_product("shop", _rows(num_products), 0.1, seed=0)
    assert len(data.validation_products) == len(data.test_products) == held_out
    assert len(set(data.train["product_id"])) == num_products - 2 * held_out
    seen = set(data.train["product_id"])
    assert not seen & set(data.test_products["product_id"]) and not seen & set(data.validation_products["product_id"])
