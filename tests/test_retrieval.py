"""MakeRetriever and the processor-key feature methods on tiny random models: encoders agree with the feature methods,
search finds a product by its own title, a saved retriever searches the same, and bad input is named."""

import inspect
import json
import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import make_hf.encoding
import make_hf.evaluation
from make_hf import MakeModel, MakeProcessor, MakeProductOutput, MakeRetriever, ProductIndex, train_tokenizer
from make_hf.modeling_make import _BATCH_KEYS
from make_hf.retrieval import CATALOGUE_FILE, INDEX_FOLDER
from model_inputs import random_batch, single_torch_thread, tiny_config  # noqa: F401 (autouse fixture)

QUERY = "usb c fast charger 65w"
TITLES = [
    "red cotton summer dress with flowers",
    QUERY,
    None,
    "large ceramic coffee mug blue glaze",
    "steel screws pack of one hundred",
    "wireless gaming mouse black",
]
COLOURS = [(220, 30, 30), None, (30, 60, 220), (30, 180, 60), (10, 10, 10), None]


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    # FAISS's OpenMP threads spin on a busy machine; one thread keeps these tiny searches fast.
    faiss = pytest.importorskip("faiss")
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    """Six products, images as files (so that the catalogue keeps their paths): two title-only, one image-only."""
    folder = tmp_path_factory.mktemp("images")
    rows = []
    for row, (title, colour) in enumerate(zip(TITLES, COLOURS)):
        image = None
        if colour is not None:
            image = str(folder / f"{row}.png")
            picture = Image.new("RGB", (20, 20), colour)
            picture.paste((255, 255, 255), (row, row, row + 5, row + 5))
            picture.save(image)
        rows.append({"product_id": f"p{row}", "title": title, "image": image})
    return rows


def _processor(config):
    texts = [QUERY, "red dress", "coffee mug", "screws"] + [t for t in TITLES if t]
    tokenizer = train_tokenizer(texts * 3, vocab_size=config.query_config.vocab_size, min_frequency=1)
    processor = MakeProcessor.from_config(config, tokenizer, title_max_length=24)
    return processor.fit_keywords([t for t in TITLES if t], [QUERY] + [t for t in TITLES if t][:4])


@pytest.fixture(scope="module")
def retriever():
    # One text tower for queries and titles: a random model then maps a query and an identical title (of a product
    # without an image) to the same vector, so the right top product is known without training.
    config = tiny_config("make-shared-encoder")
    torch.manual_seed(0)
    return MakeRetriever(MakeModel(config).eval(), _processor(config))


@pytest.fixture(scope="module")
def separate_towers():
    config = tiny_config()
    torch.manual_seed(0)
    return MakeModel(config).eval(), _processor(config)


# ------------------------------------------------------------------ feature methods take the processor's keys


def test_processor_output_unpacks_into_every_feature_method(separate_towers, products):
    model, processor = separate_towers
    images = [row["image"] for row in products]
    titles = [row["title"] for row in products]
    # A training-style call: queries, titles, images, keywords and term ids in one batch.
    batch = processor(query=[QUERY] * 6, title=titles, images=images)
    assert {"keyword_input_ids", "query_term_ids", "keyword_term_ids"} <= set(batch)
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_query_features(**processor(query=[QUERY])),
            model.get_query_features(batch["query_input_ids"][:1], batch["query_attention_mask"][:1]),
        )
        torch.testing.assert_close(
            model.get_query_features(**batch),
            model.get_query_features(input_ids=batch["query_input_ids"], attention_mask=batch["query_attention_mask"]),
        )
        torch.testing.assert_close(
            model.get_title_features(**processor(title=[TITLES[0]])),
            model.get_title_features(batch["title_input_ids"][:1], batch["title_attention_mask"][:1]),
        )
        torch.testing.assert_close(
            model.get_keyword_features(**batch),
            model.get_keyword_features(batch["keyword_input_ids"], batch["keyword_attention_mask"]),
        )
        torch.testing.assert_close(
            model.get_image_features(**processor(images=[images[0]])),
            model.get_image_features(batch["pixel_values"][:1]),
        )
        product = model.get_product_features(**batch)
        forward = model(**batch, return_loss=False)
    assert isinstance(product, MakeProductOutput)
    torch.testing.assert_close(product.product_embeds, forward.product_embeds)
    torch.testing.assert_close(product.modal_weights, forward.modal_weights)


def test_feature_methods_still_reject_what_is_not_theirs(separate_towers):
    model, processor = separate_towers
    queries = processor(query=[QUERY])
    with pytest.raises(TypeError, match=r"`get_query_features` got an unexpected argument `query_input_id`; it takes"):
        model.get_query_features(query_input_id=queries["query_input_ids"])
    with pytest.raises(TypeError, match=r"got an unexpected argument `return_loss`"):
        model.get_query_features(**queries, return_loss=False)
    with pytest.raises(TypeError, match=r"got `input_ids` twice \(as `input_ids` and as `query_input_ids`\)"):
        model.get_query_features(input_ids=queries["query_input_ids"], query_input_ids=queries["query_input_ids"])
    with pytest.raises(TypeError, match=r"`get_product_features` got an unexpected argument `input_ids`"):
        model.get_product_features(input_ids=queries["query_input_ids"])
    with pytest.raises(TypeError, match=r"`get_title_features`: missing a required argument: 'input_ids'.*`title_"):
        model.get_title_features(**queries)  # a query batch has no titles


def test_batch_keys_are_the_model_inputs(separate_towers):
    model, processor = separate_towers
    forward_inputs = set(inspect.signature(MakeModel.forward).parameters) - {"self", "return_loss", "return_dict"}
    assert _BATCH_KEYS == forward_inputs
    assert set(processor.model_input_names) <= _BATCH_KEYS


def test_product_output_reads_by_name_and_position_but_does_not_unpack(separate_towers):
    model, processor = separate_towers
    with torch.no_grad():
        output = model.get_product_features(**processor(title=TITLES[:2]))
    assert output.product_embeds.shape == (2, model.config.projection_dim) and output.modal_weights.shape == (2, 2)
    assert output[0] is output.product_embeds and output.to_tuple()[1] is output.modal_weights
    assert list(output.keys()) == ["product_embeds", "modal_weights"]
    with pytest.raises(TypeError, match="not iterable: read `.product_embeds` and `.modal_weights`"):
        product_embeds, modal_weights = output


# ------------------------------------------------------------------ encoders


def test_encode_queries_equals_the_query_features(retriever):
    texts = [QUERY, "red dress", "coffee mug"]
    embeds = retriever.encode_queries(texts, batch_size=2)
    with torch.no_grad():
        expected = retriever.model.get_query_features(**retriever.processor(query=texts))
    assert isinstance(embeds, np.ndarray) and embeds.dtype == np.float32 and embeds.shape == tuple(expected.shape)
    np.testing.assert_allclose(embeds, expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(embeds, axis=1), 1.0, rtol=1e-6)
    as_tensor = retriever.encode_queries(texts, convert_to_numpy=False)
    assert isinstance(as_tensor, torch.Tensor)
    torch.testing.assert_close(as_tensor, torch.from_numpy(embeds))
    assert retriever.encode_queries(QUERY).shape == (1, embeds.shape[1])


def test_encode_products_equals_the_product_features(retriever, products):
    rows = [{"title": row["title"], "image": row["image"]} for row in products]
    encoded = retriever.encode_products(rows, batch_size=4)
    with torch.no_grad():
        expected = retriever.model.get_product_features(
            **retriever.processor(title=[row["title"] for row in rows], images=[row["image"] for row in rows])
        )
    assert encoded.product_ids is None
    np.testing.assert_allclose(encoded.embeddings, expected.product_embeds.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoded.modal_weights, expected.modal_weights.numpy(), rtol=1e-5, atol=1e-6)
    assert encoded.modal_weights[1].tolist() == [1.0, 0.0] and encoded.modal_weights[2].tolist() == [0.0, 1.0]
    from_dataset = retriever.encode_products(datasets.Dataset.from_list(products), convert_to_numpy=False)
    assert from_dataset.product_ids == [row["product_id"] for row in products]
    torch.testing.assert_close(from_dataset.embeddings, torch.from_numpy(encoded.embeddings))


def test_evaluation_keeps_exporting_the_encoders():
    assert make_hf.evaluation.encode_products is make_hf.encoding.encode_products
    assert make_hf.evaluation.encode_queries is make_hf.encoding.encode_queries


# ------------------------------------------------------------------ index, search, save / load


def test_search_returns_catalogue_rows_and_finds_a_product_by_its_title(retriever, products):
    index = retriever.build_index(products, kind="flat")
    assert isinstance(index, ProductIndex) and len(index) == 6 and index.metadata["condition"] == "title+image"
    results = retriever.search([QUERY, "wireless gaming mouse black"], k=3)
    assert [len(hits) for hits in results] == [3, 3]
    assert results[0][0]["product_id"] == "p1" and results[1][0]["product_id"] == "p5"
    top = results[0][0]
    assert list(top) == ["product_id", "score", "title", "image", "modal_weights"]
    assert top["title"] == QUERY and top["image"] is None and top["modal_weights"] == [1.0, 0.0]
    assert top["score"] == pytest.approx(1.0, abs=1e-4)
    scores = [hit["score"] for hit in results[0]]
    assert scores == sorted(scores, reverse=True)
    by_id = {row["product_id"]: row for row in products}
    for hit in results[0] + results[1]:
        assert hit["title"] == by_id[hit["product_id"]]["title"] and hit["image"] == by_id[hit["product_id"]]["image"]
    assert len(retriever.search(QUERY, k=50)[0]) == 6  # at most the catalogue


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_save_and_load_search_the_same(retriever, products, tmp_path, kind):
    options = {"ef_search": 16} if kind == "hnsw" else {}
    retriever.build_index(products, kind=kind, **options)
    queries = [QUERY, "red dress", "coffee mug", "screws"]
    expected = retriever.search(queries, k=4)
    folder = retriever.save(tmp_path / "retriever")
    assert {"config.json", "processor_config.json", INDEX_FOLDER} <= set(os.listdir(folder))
    assert {"index.faiss", "product_ids.json", CATALOGUE_FILE} <= set(os.listdir(os.path.join(folder, INDEX_FOLDER)))
    loaded = MakeRetriever.load(folder, device="cpu")
    assert loaded.index.kind == kind and loaded.catalogue == retriever.catalogue
    assert loaded.search(queries, k=4) == expected

    # Saving again replaces index and catalogue together and leaves no staging folder behind.
    retriever.build_index(products[:3], kind=kind, **options)
    retriever.save(folder)
    assert not [name for name in os.listdir(folder) if name.startswith(".")]
    resaved = MakeRetriever.load(folder)
    assert [row["product_id"] for row in resaved.catalogue] == ["p0", "p1", "p2"]
    assert resaved.search(queries, k=4) == retriever.search(queries, k=4)


def test_an_index_without_a_catalogue_gives_ids_and_scores(retriever, products):
    encoded = retriever.encode_products(products)
    index = ProductIndex.build(encoded.embeddings, encoded.product_ids)
    bare = MakeRetriever(retriever.model, retriever.processor, index=index)
    top = bare.search(QUERY, k=1)[0][0]
    assert top["product_id"] == "p1" and top["title"] is None and top["modal_weights"] is None


def test_load_refuses_a_catalogue_that_does_not_match_its_index(retriever, products, tmp_path):
    retriever.build_index(products)
    folder = retriever.save(tmp_path / "retriever")
    path = os.path.join(folder, INDEX_FOLDER, CATALOGUE_FILE)
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    rows[0], rows[1] = rows[1], rows[0]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    with pytest.raises(ValueError, match=r"inconsistent: catalogue\[0\] is product 'p1' but index row 0 is 'p0'"):
        MakeRetriever.load(folder)


# ------------------------------------------------------------------ errors name the argument or row


def test_bad_input_is_named(retriever, products):
    with pytest.raises(ValueError, match=r"texts\[1\] is ''; a query must be a non-empty string"):
        retriever.encode_queries([QUERY, ""])
    with pytest.raises(ValueError, match=r"`batch_size` must be an integer >= 1, got 0"):
        retriever.encode_queries([QUERY], batch_size=0)
    with pytest.raises(ValueError, match=r"rows\[1\] has neither a title nor an image"):
        retriever.encode_products([{"title": "mug"}, {"title": " ", "image": None}])
    with pytest.raises(ValueError, match=r"`rows` needs a 'title' or an 'image' column"):
        retriever.encode_products([{"name": "mug"}])
    with pytest.raises(ValueError, match=r"`rows` is a dict whose values are not columns"):
        retriever.encode_products({"title": "mug", "image": None})
    bad = [dict(row) for row in products]
    bad[2].update(title=None, image=None)
    with pytest.raises(ValueError, match=r"products\[2\] \(product_id 'p2'\) has neither a title nor an image"):
        retriever.build_index(bad)
    with pytest.raises(ValueError, match=r"`products` has no column 'product_id'"):
        retriever.build_index([{"title": "mug"}])
    with pytest.raises(ValueError, match=r"Unknown index kind 'exact'"):
        retriever.build_index(products, kind="exact")
    with pytest.raises(TypeError, match=r"Unknown index option\(s\) 'ef_serch'"):
        retriever.build_index(products, kind="hnsw", ef_serch=16)

    empty = MakeRetriever(retriever.model, retriever.processor)
    with pytest.raises(ValueError, match="no index to search: call `build_index"):
        empty.search([QUERY])
    retriever.build_index(products)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=rf"`k` must be an integer >= 1, got {k!r}"):
            retriever.search([QUERY], k=k)
    with pytest.raises(ValueError, match=r"queries\[0\] is '  '; a query must be a non-empty string"):
        retriever.search(["  "])
    assert retriever.search([]) == []
