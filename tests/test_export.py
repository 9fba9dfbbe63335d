"""`make-hf export` on a tiny model with a tokenizer trained on the synthetic shop: the ONNX query and product encoders
give PyTorch's vectors, the int8 query encoder stays close to fp32, the SentenceTransformer folder gives
`encode_queries`, and bad arguments are named."""

import json
import os

import numpy as np
import onnxruntime
import pytest
import torch
from sentence_transformers import SentenceTransformer

import make_hf.export
from make_hf import MakeModel, MakeProcessor, MakeRetriever, cli, train_tokenizer
from make_hf.data.synthetic import make_synthetic_shop
from make_hf.encoding import encode_products
from make_hf.export import EXPORT_FILE, OnnxQueryEncoder, export_onnx
from model_inputs import single_torch_thread, tiny_config  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def shop():
    return make_synthetic_shop(64, image_size=32, seed=3)


def _save_model(folder, shop, preset="make-tiny", **overrides):
    config = tiny_config(preset, **overrides)
    texts = list(shop["train"]["title"]) + list(shop["train"]["query"])
    tokenizer = train_tokenizer(texts, vocab_size=config.query_config.vocab_size, min_frequency=1)
    processor = MakeProcessor.from_config(config, tokenizer, title_max_length=24)
    torch.manual_seed(0)
    MakeModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shop):
    return _save_model(tmp_path_factory.mktemp("model"), shop)


@pytest.fixture(scope="module")
def retriever(model_dir):
    return MakeRetriever.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory, model_dir):
    output = str(tmp_path_factory.mktemp("export") / "onnx")
    assert cli.main(["export", "--model", model_dir, "--format", "onnx", "--quantize", "int8", "--output", output]) == 0
    return output


@pytest.fixture(scope="module")
def test_queries(shop):
    return list(shop["test_queries"]["query"])


def _cosines(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_export_folder_describes_and_reloads_its_files(onnx_dir):
    with open(os.path.join(onnx_dir, EXPORT_FILE), encoding="utf-8") as f:
        description = json.load(f)
    files = {entry["file"] for entry in description["files"].values()}
    assert files == {"query_encoder.onnx", "product_encoder.onnx", "query_encoder.int8.onnx"}
    assert all(os.path.isfile(os.path.join(onnx_dir, name)) for name in files)
    assert description["files"]["query_encoder"]["max_abs_difference_to_pytorch"] <= make_hf.export.ONNX_TOLERANCE
    session = onnxruntime.InferenceSession(os.path.join(onnx_dir, "product_encoder.onnx"))
    assert [i.name for i in session.get_inputs()] == list(description["models"]["product_encoder.onnx"]["inputs"])
    assert [o.name for o in session.get_outputs()] == ["product_embeds", "modal_weights"]
    # Dynamic axes: batch and sequence are symbolic, not the export example's sizes.
    assert all(isinstance(dim, str) for dim in session.get_inputs()[0].shape)
    MakeProcessor.from_pretrained(onnx_dir)(query=["red dress"])  # the processor travels with the models


def test_onnx_query_encoder_matches_pytorch(onnx_dir, retriever, test_queries):
    expected = retriever.encode_queries(test_queries)
    got = OnnxQueryEncoder(onnx_dir, threads=1).encode(test_queries, batch_size=7)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert _cosines(got, expected).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
    single = OnnxQueryEncoder(onnx_dir).encode(test_queries[5])
    np.testing.assert_allclose(single, expected[5:6], atol=1e-5)


def test_onnx_product_encoder_matches_pytorch(onnx_dir, retriever, shop):
    products = shop["test_products"].select(range(12)).to_list()
    products[1]["image"] = None  # title only
    products[2]["title"] = None  # image only
    expected = encode_products(retriever.model, retriever.processor, products, conditions=("title+image",),
                               show_progress=False)
    batch = retriever.processor(title=[p["title"] for p in products], images=[p["image"] for p in products],
                                return_tensors="np", padding="longest")
    session = onnxruntime.InferenceSession(os.path.join(onnx_dir, "product_encoder.onnx"))
    names = ("title_input_ids", "title_attention_mask", "pixel_values", "image_mask")
    embeds, weights = session.run(None, {name: batch[name] for name in names})
    assert _cosines(embeds, expected.embeds["title+image"].numpy()).min() >= 0.9999
    np.testing.assert_allclose(weights, expected.modal_weights.numpy(), atol=1e-5)
    np.testing.assert_array_equal(weights[1], [1.0, 0.0])
    np.testing.assert_array_equal(weights[2], [0.0, 1.0])


def test_int8_query_encoder_stays_close_to_fp32(onnx_dir, test_queries):
    fp32 = OnnxQueryEncoder(onnx_dir, threads=1).encode(test_queries)
    int8_encoder = OnnxQueryEncoder(onnx_dir, int8=True, threads=1)
    assert int8_encoder.model_path.endswith("query_encoder.int8.onnx")
    assert _cosines(int8_encoder.encode(test_queries), fp32).min() >= 0.99
    assert os.path.getsize(int8_encoder.model_path) < os.path.getsize(os.path.join(onnx_dir, "query_encoder.onnx"))


def test_sentence_transformers_export_equals_encode_queries(tmp_path, model_dir, retriever, test_queries):
    output = str(tmp_path / "st")
    assert cli.main(["export", "--model", model_dir, "--format", "sentence-transformers", "--output", output]) == 0
    with open(os.path.join(output, "modules.json"), encoding="utf-8") as f:
        types = [module["type"].rsplit(".", 1)[-1] for module in json.load(f)]
    assert types == ["Transformer", "Pooling", "Dense", "Normalize"]
    got = SentenceTransformer(output, device="cpu").encode(test_queries)
    np.testing.assert_allclose(got, retriever.encode_queries(test_queries), atol=1e-5, rtol=0)


def test_sentence_transformers_export_of_a_shared_cls_pooled_encoder(tmp_path, shop, test_queries):
    model_dir = _save_model(tmp_path / "model", shop, "make-shared-encoder", text_pooling="cls")
    output = make_hf.export.export_sentence_transformers(model_dir, tmp_path / "st")
    expected = MakeRetriever.from_pretrained(model_dir, device="cpu").encode_queries(test_queries)
    np.testing.assert_allclose(SentenceTransformer(output, device="cpu").encode(test_queries), expected, atol=1e-5,
                               rtol=0)


def test_a_mismatch_raises_and_writes_nothing(tmp_path, model_dir, monkeypatch):
    monkeypatch.setattr(make_hf.export, "ONNX_TOLERANCE", -1.0)
    with pytest.raises(RuntimeError, match="query encoder differs from PyTorch.*not written"):
        export_onnx(model_dir, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []


def test_bad_arguments_are_named(tmp_path, model_dir, onnx_dir, capsys):
    def error(argv):
        assert cli.main(["export", *argv]) == 1
        return capsys.readouterr().err

    assert "--quantize applies to --format onnx only" in error(
        ["--model", model_dir, "--format", "sentence-transformers", "--quantize", "int8", "--output", str(tmp_path)]
    )
    assert "no such folder" in error(["--model", str(tmp_path / "nope"), "--format", "onnx", "--output", "x"])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    assert "not empty and holds no earlier export" in error(
        ["--model", model_dir, "--format", "onnx", "--output", str(tmp_path / "busy")]
    )
    assert "is the model folder" in error(["--model", model_dir, "--format", "onnx", "--output", model_dir])
    with pytest.raises(SystemExit):
        cli.main(["export", "--model", model_dir, "--format", "tflite", "--output", "x"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="`quantize` must be None or one of"):
        export_onnx(model_dir, tmp_path / "q", quantize="fp16")
    with pytest.raises(FileNotFoundError, match="not an ONNX export"):
        OnnxQueryEncoder(tmp_path)
    with pytest.raises(FileNotFoundError, match="No ONNX model 'fp16.onnx'"):
        OnnxQueryEncoder(onnx_dir, int8="fp16.onnx")
    with pytest.raises(ValueError, match=r"texts\[1\] is ''"):
        OnnxQueryEncoder(onnx_dir).encode(["red dress", ""])
    with pytest.raises(ValueError, match="`threads` must be None or an integer >= 1"):
        OnnxQueryEncoder(onnx_dir, threads=0)
