"""`make-hf serve` through a real uvicorn server on 127.0.0.1: search with titles and modal weights, product images
(and no file outside the image folder), JSON errors naming the parameter, the search page, and `make-hf search` both
against the server (`--url`) and locally (`--retriever`, `--index`)."""

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import types
import urllib.parse

import numpy as np
import pytest
import torch
from PIL import Image

from make_hf import MakeModel, MakeProcessor, MakeRetriever, train_tokenizer
from make_hf.cli import main
from make_hf.serving.limits import MAX_K, MAX_QUERIES, MAX_QUERY_CHARS
from make_hf.serving.loading import load_service
from make_hf.serving.service import SearchService
from model_inputs import single_torch_thread, tiny_config  # noqa: F401 (autouse fixture)

SCREWS = "steel screws pack of one hundred"
PRODUCTS = [  # product_id, title, image file (under images/ unless it starts with "../"), colour
    ("mug-red", "red ceramic coffee mug", "red.png", (220, 30, 30)),
    ("charger-blue", "blue usb c charger 65w", "blue.png", (30, 60, 220)),
    ("screws", SCREWS, None, None),
    ("shelf/green", "green wooden wall shelf", "green.png", (30, 180, 60)),  # an id with a slash
    ("outside", "secret outside the image folder", "../secret.png", (0, 0, 0)),
    ("linked", "a link pointing out of the image folder", "link.png", None),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A saved retriever over six products (images as real PNG files) and its in-memory twin."""
    root = tmp_path_factory.mktemp("shop")
    images = root / "images"
    images.mkdir()
    rows = []
    for product_id, title, image, colour in PRODUCTS:
        path = None
        if image is not None:
            path = (images / image).resolve() if not image.startswith("../") else (root / image[3:]).resolve()
            if colour is not None:
                Image.new("RGB", (24, 24), colour).save(path)
        rows.append({"product_id": product_id, "title": title, "image": str(path) if path else None})
    os.symlink(root / "secret.png", images / "link.png")

    # One text tower for queries and titles: a random model then ranks a title-only product whose title is the query
    # first, so the right top product is known without training.
    config = tiny_config("make-shared-encoder")
    texts = [title for _, title, _, _ in PRODUCTS]
    tokenizer = train_tokenizer(texts * 3, vocab_size=config.query_config.vocab_size, min_frequency=1)
    processor = MakeProcessor.from_config(config, tokenizer, title_max_length=24).fit_keywords(texts)
    torch.manual_seed(0)
    retriever = MakeRetriever(MakeModel(config).eval(), processor)
    retriever.build_index(rows, kind="flat")
    retriever.save(root / "retriever")
    return types.SimpleNamespace(root=root, images=images, folder=root / "retriever", retriever=retriever, rows=rows)


def _serve(*options: str):
    """`make-hf serve OPTIONS` in a subprocess on a free loopback port, once it listens."""
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    process = subprocess.Popen([sys.executable, "-m", "make_hf.cli", "serve", *options, "--port", str(port)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            pytest.fail(f"make-hf serve exited with {process.returncode}:\n{process.stdout.read()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("make-hf serve did not listen within 180 s")
            time.sleep(0.2)
    return types.SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, process=process)


def _stop(server) -> None:
    server.process.terminate()
    server.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(shop):
    """`make-hf serve --retriever` for the whole module."""
    server = _serve("--retriever", str(shop.folder), "--images", str(shop.images))
    yield server
    _stop(server)


def _request(server, method: str, path: str, body=None, raw: bytes | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    connection.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, response.getheader("content-type"), payload


def _get_json(server, path: str):
    status, _, payload = _request(server, "GET", path)
    return status, json.loads(payload)


def _search_path(**params) -> str:
    return "/search?" + urllib.parse.urlencode(params)


# ------------------------------------------------------------------ search


def test_get_search_answers_titles_scores_and_weights(server, shop):
    status, answer = _get_json(server, _search_path(q=f"  {SCREWS} ", k=4))
    assert status == 200 and answer["query"] == SCREWS
    hits = answer["results"]
    assert len(hits) == 4
    assert list(hits[0]) == ["product_id", "title", "score", "title_weight", "image_weight", "image_url"]
    assert hits[0]["product_id"] == "screws" and hits[0]["title"] == SCREWS
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert (hits[0]["title_weight"], hits[0]["image_weight"], hits[0]["image_url"]) == (1.0, 0.0, None)

    expected = shop.retriever.search([SCREWS], k=4)[0]
    assert [hit["product_id"] for hit in hits] == [hit["product_id"] for hit in expected]
    assert [hit["score"] for hit in hits] == pytest.approx([hit["score"] for hit in expected], abs=1e-5)
    for hit, row in zip(hits, expected):
        assert hit["title"] == row["title"]
        assert [hit["title_weight"], hit["image_weight"]] == pytest.approx(row["modal_weights"])
        assert hit["image_weight"] + hit["title_weight"] == pytest.approx(1.0)
        quoted = urllib.parse.quote(hit["product_id"], safe="")
        assert hit["image_url"] == (f"/products/{quoted}/image" if row["image"] else None)


def test_post_search_answers_each_query_in_order(server, shop):
    queries = ["red ceramic coffee mug", SCREWS, "blue usb c charger 65w"]
    status, _, payload = _request(server, "POST", "/search", {"queries": queries, "k": 2})
    assert status == 200
    results = json.loads(payload)["results"]
    assert [result["query"] for result in results] == queries
    expected = shop.retriever.search(queries, k=2)
    assert [[hit["product_id"] for hit in r["results"]] for r in results] == [
        [hit["product_id"] for hit in hits] for hits in expected
    ]
    assert results[1]["results"][0]["product_id"] == "screws"


def test_k_larger_than_the_catalogue_returns_the_whole_catalogue(server):
    status, answer = _get_json(server, _search_path(q="mug", k=MAX_K))
    assert status == 200 and len(answer["results"]) == len(PRODUCTS)


def test_health_and_the_search_page(server):
    status, health = _get_json(server, "/health")
    assert status == 200
    assert health["status"] == "ok" and health["products"] == len(PRODUCTS) and health["index"] == "flat"
    assert health["query_encoder"] == "torch"
    assert health["limits"] == {"max_query_chars": MAX_QUERY_CHARS, "k": [1, MAX_K], "max_queries": MAX_QUERIES}
    status, content_type, page = _request(server, "GET", "/")
    assert status == 200 and content_type.startswith("text/html")
    assert b'<form id="search">' in page and b"/search?" in page and b"title_weight" in page


# ------------------------------------------------------------------ images


def test_a_product_image_is_served_with_its_bytes(server, shop):
    status, answer = _get_json(server, _search_path(q="red ceramic coffee mug", k=len(PRODUCTS)))
    by_id = {hit["product_id"]: hit for hit in answer["results"]}
    for product_id, filename in (("mug-red", "red.png"), ("shelf/green", "green.png")):
        status, content_type, payload = _request(server, "GET", by_id[product_id]["image_url"])
        assert status == 200 and content_type == "image/png"
        assert payload == (shop.images / filename).read_bytes()


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/products/outside/image", 403, "lies outside the served image folder"),
        ("/products/linked/image", 403, "lies outside the served image folder"),  # a symlink is followed
        ("/products/..%2Fsecret.png/image", 404, "Unknown product_id '../secret.png'"),
        ("/products/../secret.png/image", 404, ""),
        ("/products/%2E%2E/%2E%2E/secret.png/image", 404, "Unknown product_id"),
        ("/products/screws/image", 404, "Product 'screws' has no image"),
        ("/products/no-such-product/image", 404, "Unknown product_id 'no-such-product'"),
    ],
)
def test_images_outside_the_folder_or_of_unknown_products_are_refused(server, shop, path, status, message):
    found, content_type, payload = _request(server, "GET", path)
    assert found == status and content_type == "application/json"
    assert payload != (shop.root / "secret.png").read_bytes()
    assert message in json.loads(payload)["error"]["message"]


# ------------------------------------------------------------------ bad requests


@pytest.mark.parametrize(
    "method, path, body, parameter, message",
    [
        ("GET", "/search", None, "q", "`q` is required"),
        ("GET", _search_path(q=""), None, "q", "`q` is empty"),
        ("GET", _search_path(q="   "), None, "q", "`q` is empty"),
        ("GET", _search_path(q="a" * (MAX_QUERY_CHARS + 1)), None, "q", f"at most {MAX_QUERY_CHARS}"),
        ("GET", _search_path(q="mug", k=0), None, "k", f"integer from 1 to {MAX_K}, got 0"),
        ("GET", _search_path(q="mug", k=MAX_K + 1), None, "k", f"got {MAX_K + 1}"),
        ("GET", _search_path(q="mug", k="ten"), None, "k", "valid integer"),
        ("GET", _search_path(q="mug", k=10**30), None, "k", f"got {10**30}"),
        ("GET", "/search?q=caf%FF", None, "q", "`q` is not valid UTF-8"),
        ("GET", "/search?q=red%00mug", None, "q", "control character U+0000"),
        ("GET", "/search?q=red%0Amug", None, "q", "control character U+000A"),
        ("POST", "/search", {"queries": []}, "queries", "non-empty list"),
        ("POST", "/search", {"queries": ["mug"] * (MAX_QUERIES + 1)}, "queries", f"at most {MAX_QUERIES} per"),
        ("POST", "/search", {"queries": ["mug", " "]}, "queries[1]", "`queries[1]` is empty"),
        ("POST", "/search", {"queries": ["mug", 7]}, "queries[1]", "valid string"),
        ("POST", "/search", {"queries": ["mug"], "k": -3}, "k", "got -3"),
        ("POST", "/search", {"queries": ["mug"], "k": True}, "k", "valid integer"),
        ("POST", "/search", {"queries": ["mug"], "k": "5"}, "k", "valid integer"),
        ("POST", "/search", {"queries": "mug"}, "queries", "valid list"),
        ("POST", "/search", [1, 2], "body", "valid dictionary"),
        ("POST", "/search", {"k": 5}, "queries", "`queries` is required"),
        ("POST", "/search", b"{not json", "body", "not valid JSON"),
    ],
)
def test_bad_requests_get_a_4xx_json_error_naming_the_parameter(server, method, path, body, parameter, message):
    raw = body if isinstance(body, bytes) else None
    status, content_type, payload = _request(server, method, path, None if raw else body, raw=raw)
    assert status == 422 and content_type == "application/json"
    error = json.loads(payload)["error"]
    assert error["parameter"] == parameter and message in error["message"]


def test_an_unknown_route_is_a_json_404(server):
    status, answer = _get_json(server, "/nowhere")
    assert status == 404 and answer["error"]["message"] == "Not Found: GET /nowhere"


# ------------------------------------------------------------------ make-hf search


def _run(capsys, *argv):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_search_url_prints_titles_from_the_running_service(server, capsys):
    status, out, err = _run(capsys, "search", "--url", server.url, "-k", 2, SCREWS, "red ceramic coffee mug")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == SCREWS and lines[1].startswith("    1. screws  1.0000  steel screws pack of one hundred")
    assert lines[3] == "red ceramic coffee mug" and len(lines) == 6
    status, out, _ = _run(capsys, "search", "--url", server.url + "/", "--json", "-k", 3, SCREWS)
    found = json.loads(out)
    assert status == 0 and found[0]["query"] == SCREWS and found[0]["results"][0]["title"] == SCREWS


def test_search_url_errors_are_one_line(server, capsys):
    status, _, err = _run(capsys, "search", "--url", server.url, "-k", 0, "mug")
    assert status == 1 and f"answered 422: `k` must be an integer from 1 to {MAX_K}, got 0." in err
    status, _, err = _run(capsys, "search", "--url", f"http://127.0.0.1:{_free_port()}", "mug")
    assert status == 1 and "no search service answered" in err and "Traceback" not in err
    status, _, err = _run(capsys, "search", "--url", server.url, "--ef-search", 16, "mug")
    assert status == 1 and "--ef-search: the service at --url searches with its own model and index" in err
    status, _, err = _run(capsys, "search", "--url", "127.0.0.1:8000", "mug")
    assert status == 1 and "must start with http:// or https://" in err


def test_search_retriever_json_gives_the_full_hits(shop, capsys):
    status, out, err = _run(capsys, "search", "--retriever", shop.folder, "--json", "-k", 3, SCREWS, "green shelf")
    assert status == 0, err
    found = json.loads(out)
    assert found == [{"query": q, "results": hits}
                     for q, hits in zip([SCREWS, "green shelf"], shop.retriever.search([SCREWS, "green shelf"], k=3))]
    assert list(found[0]["results"][0]) == ["product_id", "score", "title", "image", "modal_weights"]


def test_search_index_prints_titles_from_the_catalogue_next_to_it(shop, capsys):
    status, out, err = _run(capsys, "search", "--index", shop.folder / "index", "--model", shop.folder, "-k", 1,
                            SCREWS)
    assert status == 0, err
    assert out.splitlines() == [SCREWS, f"    1. screws  1.0000  {SCREWS}"]


def test_search_index_prints_titles_from_the_products_file_it_was_encoded_from(shop, tmp_path, capsys):
    catalogue = shop.images / "encoded-products.jsonl"
    with open(catalogue, "w") as f:
        for row in shop.rows[:4]:
            f.write(json.dumps({**row, "image": os.path.basename(row["image"]) if row["image"] else None}) + "\n")
    assert _run(capsys, "encode", "--model", shop.folder, "--catalogue", catalogue, "--output", tmp_path / "embeddings",
                "--quiet")[0] == 0
    assert _run(capsys, "index", "--embeddings", tmp_path / "embeddings", "--output", tmp_path / "index",
                "--kind", "flat")[0] == 0
    status, out, err = _run(capsys, "search", "--index", tmp_path / "index", "-k", 2, SCREWS)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[1] == f"    1. screws  1.0000  {SCREWS}" and len(lines) == 3
    titles = {row["product_id"]: row["title"] for row in shop.rows}
    product_id = lines[2].split()[1]
    assert lines[2].endswith(f"  {titles[product_id]}")


# ------------------------------------------------------------------ the query encoder and the start-up modes


def test_serve_onnx_answers_as_the_torch_query_tower_does(shop, server, tmp_path, capsys):
    onnx_dir = tmp_path / "onnx"
    assert _run(capsys, "export", "--model", shop.folder, "--format", "onnx", "--output", onnx_dir)[0] == 0
    onnx_server = _serve("--retriever", str(shop.folder), "--onnx", str(onnx_dir), "--threads", "1")
    try:
        status, health = _get_json(onnx_server, "/health")
        assert status == 200 and health["query_encoder"] == f"onnx ({onnx_dir})"
        queries = [SCREWS, "red ceramic coffee mug", "green shelf"]
        _, _, onnx_answer = _request(onnx_server, "POST", "/search", {"queries": queries, "k": 4})
        _, _, torch_answer = _request(server, "POST", "/search", {"queries": queries, "k": 4})
    finally:
        _stop(onnx_server)
    onnx_results, torch_results = json.loads(onnx_answer)["results"], json.loads(torch_answer)["results"]
    for by_onnx, by_torch in zip(onnx_results, torch_results):
        assert [hit["product_id"] for hit in by_onnx["results"]] == [hit["product_id"] for hit in by_torch["results"]]
        assert [hit["score"] for hit in by_onnx["results"]] == pytest.approx(
            [hit["score"] for hit in by_torch["results"]], abs=1e-4)


def test_an_onnx_query_encoder_is_used_and_its_dimension_checked(shop, monkeypatch):
    calls = []

    class OnnxQueryEncoder:
        """Stands in for make_hf.export's encoder: the retriever's query tower, or vectors of another size."""

        def __init__(self, folder, threads=None):
            self.dim = 8 if folder.endswith("other-model") else None
            calls.append(("threads", threads))

        def encode(self, texts):
            calls.append(list(texts))
            if self.dim is not None:
                return np.ones((len(texts), self.dim), dtype=np.float32) / np.sqrt(self.dim)
            return shop.retriever.encode_queries(texts)

    monkeypatch.setitem(sys.modules, "make_hf.export", types.SimpleNamespace(OnnxQueryEncoder=OnnxQueryEncoder))
    (shop.root / "exported").mkdir(exist_ok=True)
    service = load_service(str(shop.folder), onnx=str(shop.root / "exported"), threads=1)
    assert service.query_encoder_name.startswith("onnx (") and service.health()["query_encoder"].startswith("onnx")
    assert ("threads", 1) in calls
    assert service.search([SCREWS], k=1)[0][0]["product_id"] == "screws" and calls[-1] == [SCREWS]

    (shop.root / "other-model").mkdir(exist_ok=True)
    with pytest.raises(ValueError, match=r"gives 8-dimensional vectors but the index holds 32-dimensional products"):
        load_service(str(shop.folder), onnx=str(shop.root / "other-model"))
    with pytest.raises(FileNotFoundError, match=r"--onnx '.*missing': no such folder; write one with `make-hf export`"):
        load_service(str(shop.folder), onnx=str(shop.root / "missing"))


def test_a_model_and_a_catalogue_file_are_indexed_at_start_up(shop):
    catalogue = shop.images / "products.jsonl"
    with open(catalogue, "w") as f:
        for row in shop.rows[:4]:
            image = os.path.relpath(row["image"], shop.images) if row["image"] else None
            f.write(json.dumps({**row, "image": image}) + "\n")
    service = load_service(model=str(shop.folder), catalogue=str(catalogue))
    assert len(service.index) == 4 and service.image_folder == os.path.realpath(shop.images)
    assert service.search([SCREWS], k=1)[0][0]["title"] == SCREWS
    assert service.image_file("mug-red") == (os.path.realpath(shop.images / "red.png"), "image/png")


def test_what_to_serve_must_be_given(shop):
    with pytest.raises(ValueError, match="Give --retriever .* or both --model and --catalogue"):
        load_service(model=str(shop.folder))
    with pytest.raises(ValueError, match=r"--threads must be an integer >= 1, got 0"):
        load_service(str(shop.folder), threads=0)
    with pytest.raises(ValueError, match="has no index to serve"):
        SearchService(MakeRetriever(shop.retriever.model, shop.retriever.processor))
