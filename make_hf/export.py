"""Export a trained MAKE model for serving: ONNX query and product encoders, and the query tower as a
SentenceTransformer.

```python
from make_hf.export import OnnxQueryEncoder, export_onnx, export_sentence_transformers

export_onnx("outputs/make-small-synthetic", "make-onnx", quantize="int8")
OnnxQueryEncoder("make-onnx", int8=True).encode(["red sneakers"])     # (1, D) float32, L2-normalised

export_sentence_transformers("outputs/make-small-synthetic", "make-st")
SentenceTransformer("make-st").encode(["red sneakers"])              # = MakeRetriever.encode_queries
```

`export_onnx` writes `query_encoder.onnx` (`input_ids`, `attention_mask` -> `query_embeds`), `product_encoder.onnx`
(`title_input_ids`, `title_attention_mask`, `pixel_values`, `image_mask` -> `product_embeds`, `modal_weights`: the
`"title+image"` condition of `make_hf.encoding.encode_products`), the processor (tokenise and preprocess exactly as
the model was trained) and `onnx_export.json`, which lists the files, their inputs and outputs and how closely each
matched PyTorch. Batch and sequence axes are dynamic.

The graphs come from the dynamo exporter (`torch.onnx.export(..., dynamo=True)`, onnxscript), the exporter torch
supports going forward; the TorchScript one is deprecated. Neither exports `MakeModel.get_query_features` as it
stands: its "a row with no tokens attends to its first position" fix is a Python `if` on tensor values, which
torch.export refuses and TorchScript tracing freezes. The graphs below compute the same thing with tensor ops
(`torch.where`), and every written model is run with onnxruntime against PyTorch before the folder is swapped in.

`quantize="int8"` adds `query_encoder.int8.onnx`: onnxruntime dynamic quantisation (int8 weights, activations
quantised per batch at run time) of the query encoder, the one that runs per request. Weights get one scale per
output channel: on a MiniLM-L6 query tower that keeps the mean cosine to fp32 at 0.992 (min 0.98) on the synthetic
shop's test queries, where one scale per matrix gives 0.960 (min 0.91). The product encoder stays
fp32: it runs offline over the catalogue, where latency does not count, its vectors are stored once (an error there
stays in the index for every query), and dynamic quantisation covers the text tower's matrix products, not the image
tower's convolutions.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from .atomic import replaced_directory, write_json

EXPORT_FILE = "onnx_export.json"
"""The description of an ONNX export folder: files, inputs, outputs and the check against PyTorch."""

QUERY_FILE = "query_encoder.onnx"
QUERY_INT8_FILE = "query_encoder.int8.onnx"
PRODUCT_FILE = "product_encoder.onnx"

ONNX_TOLERANCE = 1e-4
"""Largest absolute difference between an fp32 ONNX output and PyTorch (unit vectors, weights in [0, 1])."""

SENTENCE_TRANSFORMERS_TOLERANCE = 1e-5
"""Largest absolute difference between the SentenceTransformer export and `MakeRetriever.encode_queries`."""

QUANTIZE_CHOICES = ("int8",)

# Queries the checks encode: short and long (truncated), Latin and CJK, one that is a single character.
CHECK_QUERIES = (
    "red sneakers",
    "usb c fast charger 65w for laptop and phone with a long braided cable and a travel case included",
    "ceramic coffee mug",
    "a",
    "蓝色 连衣裙",
)
CHECK_TITLES = ("red cotton summer dress with flowers", None, "usb c charger 65w gan fast charging", "steel screws")


# ------------------------------------------------------------------------------------------------ loading


def _load(model_dir: str):
    """The model (eval, CPU, fp32) and processor of a folder written by `save_pretrained`."""
    from .modeling_make import MakeModel
    from .processing_make import MakeProcessor

    model_dir = os.fspath(model_dir)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(
            f"`model_dir` {model_dir!r} is not a saved MAKE model (no config.json): pass a folder written by "
            "`save_pretrained` (e.g. the --output_dir of examples/pretrain.py)."
        )
    model = MakeModel.from_pretrained(model_dir).float().eval()
    processor = MakeProcessor.from_pretrained(model_dir)
    return model, processor


def _check_output_dir(output_dir: str, model_dir: str, marker: str) -> str:
    """Refuse to write over a folder that holds something other than an earlier export (`marker` names its file)."""
    output_dir = os.path.abspath(os.fspath(output_dir))
    if output_dir == os.path.abspath(os.fspath(model_dir)):
        raise ValueError(f"`output_dir` {output_dir!r} is the model folder; export into another folder.")
    if os.path.exists(output_dir):
        if not os.path.isdir(output_dir):
            raise ValueError(f"`output_dir` {output_dir!r} exists and is not a folder; choose another path.")
        if os.listdir(output_dir) and not os.path.isfile(os.path.join(output_dir, marker)):
            raise ValueError(
                f"`output_dir` {output_dir!r} is not empty and holds no earlier export ({marker}); choose an empty or "
                "new folder."
            )
    return output_dir


# ------------------------------------------------------------------------------------------------ graphs


def _text_features(model, tower, projection, input_ids, attention_mask):
    """`MakeModel._encode_text` (pool, project, normalise) with its empty-row fix as tensor ops, so it exports."""
    import torch
    import torch.nn.functional as F

    from .modeling_make import masked_mean_pool

    first = torch.arange(attention_mask.shape[-1], device=attention_mask.device) == 0
    empty = (attention_mask.sum(dim=-1, keepdim=True) == 0) & first
    attention_mask = torch.where(empty, torch.ones_like(attention_mask), attention_mask)
    hidden_states = tower(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
    if model.config.text_pooling == "mean":
        pooled = masked_mean_pool(hidden_states, attention_mask)
    else:
        pooled = hidden_states[:, 0]
    return F.normalize(projection(pooled), dim=-1)


def _graphs():
    """The two exported modules (built here so that importing this file needs no torch)."""
    import torch

    class QueryEncoder(torch.nn.Module):
        """Token ids and mask of queries -> L2-normalised query vectors (`get_query_features`)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            model = self.model
            return _text_features(model, model.query_model, model.query_projection, input_ids, attention_mask)

    class ProductEncoder(torch.nn.Module):
        """Title ids and mask, pixels and image mask -> product vectors and `[title, image]` weights
        (`get_product_features` with both title and image inputs; a row's masks say which it has)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, title_input_ids, title_attention_mask, pixel_values, image_mask):
            model = self.model
            tower = model.query_model if model.title_model is None else model.title_model
            projection = model.query_projection if model.title_projection is None else model.title_projection
            title_embeds = _text_features(model, tower, projection, title_input_ids, title_attention_mask)
            image_embeds = model.get_image_features(pixel_values)
            has_title = title_attention_mask.sum(dim=-1) > 0
            return model._fuse(title_embeds, image_embeds, has_title, image_mask.bool())

    return QueryEncoder, ProductEncoder


def _export(module, example: dict, dynamic: dict, output_names: list[str], path: str) -> None:
    import torch

    dims = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
    dynamic_shapes = {name: {axis: dims[label] for axis, label in axes.items()} for name, axes in dynamic.items()}
    program = torch.onnx.export(
        module.eval(),
        args=(),
        kwargs=example,
        input_names=list(example),
        output_names=output_names,
        dynamic_shapes=dynamic_shapes,
        dynamo=True,
        verbose=False,
    )
    program.save(path, external_data=False)


def _session(path: str, threads: int | None = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _compare(name: str, onnx_outputs: Sequence[np.ndarray], torch_outputs: Sequence[Any], output_names, case) -> float:
    worst = 0.0
    for output_name, got, expected in zip(output_names, onnx_outputs, torch_outputs):
        expected = expected.detach().float().cpu().numpy()
        if got.shape != expected.shape or not np.isfinite(got).all():
            raise RuntimeError(
                f"The exported {name} gives {output_name} of shape {got.shape} (finite: {bool(np.isfinite(got).all())})"
                f" for {case}, PyTorch {expected.shape}; the export was not written."
            )
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > ONNX_TOLERANCE:
        raise RuntimeError(
            f"The exported {name} differs from PyTorch by {worst:.2e} (tolerance {ONNX_TOLERANCE:.0e}) for {case}; "
            "the export was not written."
        )
    return worst


def _query_inputs(processor, queries) -> dict[str, np.ndarray]:
    batch = processor(query=list(queries), return_tensors="np", padding="longest")
    return {"input_ids": batch["query_input_ids"].astype(np.int64),
            "attention_mask": batch["query_attention_mask"].astype(np.int64)}


def _check_images(processor) -> list:
    from PIL import Image

    height, width = processor.image_size
    images = []
    for row, colour in enumerate([(200, 40, 40), (30, 60, 220), (40, 160, 60), (240, 240, 240)]):
        picture = Image.new("RGB", (width + 7, height + 3), colour)
        picture.paste((row * 60, 255 - row * 60, 128), (row * 3, 2, row * 3 + width // 2, 2 + height // 3))
        images.append(picture)
    return images


def _product_inputs(processor, titles, images) -> dict[str, np.ndarray]:
    batch = processor(title=list(titles), images=list(images), return_tensors="np", padding="longest")
    return {
        "title_input_ids": batch["title_input_ids"].astype(np.int64),
        "title_attention_mask": batch["title_attention_mask"].astype(np.int64),
        "pixel_values": batch["pixel_values"].astype(np.float32),
        "image_mask": batch["image_mask"].astype(np.int64),
    }


def _check_query_encoder(path: str, model, processor, name: str) -> float:
    import torch

    session = _session(path, threads=1)
    worst = 0.0
    for queries in (CHECK_QUERIES, CHECK_QUERIES[:1], CHECK_QUERIES[2:4]):
        inputs = _query_inputs(processor, queries)
        with torch.inference_mode():
            expected = model.get_query_features(**processor(query=list(queries)))
        got = session.run(["query_embeds"], inputs)
        worst = max(worst, _compare(name, got, [expected], ["query_embeds"], f"queries {list(queries)!r}"))
    return worst


def _check_product_encoder(path: str, model, processor) -> float:
    import torch

    session = _session(path, threads=1)
    images = _check_images(processor)
    # Rows with title and image, image only, title only; then a batch of one.
    cases = [(CHECK_TITLES, [images[0], images[1], None, images[3]]), (CHECK_TITLES[2:3], images[2:3])]
    worst = 0.0
    for titles, pictures in cases:
        inputs = _product_inputs(processor, titles, pictures)
        with torch.inference_mode():
            expected = model.get_product_features(**processor(title=list(titles), images=list(pictures)))
        got = session.run(["product_embeds", "modal_weights"], inputs)
        case = f"titles {list(titles)!r} with {sum(p is not None for p in pictures)} of {len(pictures)} images"
        worst = max(worst, _compare("product encoder", got, [expected.product_embeds, expected.modal_weights],
                                    ["product_embeds", "modal_weights"], case))
    return worst


def _int8_cosine(fp32_path: str, int8_path: str, processor) -> float:
    """Smallest cosine between int8 and fp32 query vectors of the check queries (recorded, not enforced)."""
    inputs = _query_inputs(processor, CHECK_QUERIES)
    fp32 = _session(fp32_path, threads=1).run(["query_embeds"], inputs)[0]
    int8 = _session(int8_path, threads=1).run(["query_embeds"], inputs)[0]
    int8 = int8 / np.linalg.norm(int8, axis=-1, keepdims=True)
    return float((fp32 * int8).sum(-1).min())


def _describe(processor, model) -> dict:
    dim = model.config.projection_dim
    height, width = processor.image_size
    token = {"dtype": "int64", "shape": ["batch", "sequence"]}
    return {
        QUERY_FILE: {
            "inputs": {"input_ids": token, "attention_mask": token},
            "outputs": {"query_embeds": {"dtype": "float32", "shape": ["batch", dim], "normalized": True}},
        },
        PRODUCT_FILE: {
            "inputs": {
                "title_input_ids": token,
                "title_attention_mask": {**token, "note": "all zeros in a row = no title"},
                "pixel_values": {"dtype": "float32", "shape": ["batch", 3, height, width]},
                "image_mask": {"dtype": "int64", "shape": ["batch"], "note": "0 = no image"},
            },
            "outputs": {
                "product_embeds": {"dtype": "float32", "shape": ["batch", dim], "normalized": True},
                "modal_weights": {"dtype": "float32", "shape": ["batch", 2], "note": "[title weight, image weight]"},
            },
        },
    }


def export_onnx(model_dir: str | os.PathLike, output_dir: str | os.PathLike, quantize: str | None = None) -> dict:
    """Export the query and product encoders of a saved MAKE model to ONNX, with the processor, into `output_dir`.

    Each model is checked with onnxruntime against PyTorch (`ONNX_TOLERANCE`) on queries, titles and images of
    several batch sizes and lengths; a mismatch raises `RuntimeError` and leaves `output_dir` as it was. The folder is
    swapped in whole (`make_hf.atomic.replaced_directory`): files of an earlier export that this one does not write
    stay, unlisted in `onnx_export.json`.

    Args:
        model_dir: a folder written by `save_pretrained` (model and processor).
        output_dir: the folder to write; new, empty, or an earlier ONNX export.
        quantize: None, or `"int8"` to add `query_encoder.int8.onnx` (dynamic quantisation, int8 weights).

    Returns:
        The description written to `onnx_export.json`.
    """
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise ValueError(f"`quantize` must be None or one of {QUANTIZE_CHOICES}, got {quantize!r}.")
    output_dir = _check_output_dir(output_dir, model_dir, EXPORT_FILE)
    model, processor = _load(model_dir)
    QueryEncoder, ProductEncoder = _graphs()
    description = {
        "format": "make-hf-onnx",
        "version": 1,
        "source_model": os.path.abspath(os.fspath(model_dir)),
        "projection_dim": model.config.projection_dim,
        "query_max_length": processor.query_max_length,
        "title_max_length": processor.title_max_length,
        "files": {},
        "models": _describe(processor, model),
    }
    with replaced_directory(output_dir) as staging:
        query_path = os.path.join(staging, QUERY_FILE)
        query_example = _query_inputs(processor, CHECK_QUERIES[:3])
        _export(QueryEncoder(model), _as_torch(query_example),
                {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}},
                ["query_embeds"], query_path)
        difference = _check_query_encoder(query_path, model, processor, "query encoder")
        description["files"]["query_encoder"] = {"file": QUERY_FILE, "max_abs_difference_to_pytorch": difference}

        product_path = os.path.join(staging, PRODUCT_FILE)
        images = _check_images(processor)
        product_example = _product_inputs(processor, CHECK_TITLES, [images[0], images[1], None, images[3]])
        _export(ProductEncoder(model), _as_torch(product_example),
                {"title_input_ids": {0: "batch", 1: "sequence"}, "title_attention_mask": {0: "batch", 1: "sequence"},
                 "pixel_values": {0: "batch"}, "image_mask": {0: "batch"}},
                ["product_embeds", "modal_weights"], product_path)
        difference = _check_product_encoder(product_path, model, processor)
        description["files"]["product_encoder"] = {"file": PRODUCT_FILE, "max_abs_difference_to_pytorch": difference}

        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8_path = os.path.join(staging, QUERY_INT8_FILE)
            quantize_dynamic(query_path, int8_path, weight_type=QuantType.QInt8, per_channel=True)
            description["files"]["query_encoder_int8"] = {
                "file": QUERY_INT8_FILE,
                "quantization": "onnxruntime quantize_dynamic, QInt8 weights, per output channel",
                "min_cosine_to_fp32": _int8_cosine(query_path, int8_path, processor),
            }
        processor.save_pretrained(staging)
        write_json(os.path.join(staging, EXPORT_FILE), description)
    return description


def _as_torch(inputs: dict[str, np.ndarray]) -> dict:
    import torch

    return {name: torch.from_numpy(value) for name, value in inputs.items()}


# ------------------------------------------------------------------------------------------------ serving


class OnnxQueryEncoder:
    """Encode queries with an exported query encoder (onnxruntime, CPU), tokenised by the exported processor.

    Args:
        folder: a folder written by `export_onnx`.
        int8: False for `query_encoder.onnx`, True for the int8 model of the export, or the file name of another
            `.onnx` file in the folder.
        threads: onnxruntime intra-op threads (None: onnxruntime's default, every core).

    `encode(texts)` gives the vectors of `MakeRetriever.encode_queries(texts)` (fp32: to ~1e-6): the same tokens as
    `MakeProcessor(query=...)`, padded to the batch's longest query instead of `query_max_length` (masked positions
    change nothing but the work).
    """

    def __init__(self, folder: str | os.PathLike, int8: bool | str = False, threads: int | None = None):
        from .processing_make import MakeProcessor

        folder = os.fspath(folder)
        description_path = os.path.join(folder, EXPORT_FILE)
        if not os.path.isfile(description_path):
            raise FileNotFoundError(
                f"{folder!r} is not an ONNX export (no {EXPORT_FILE}); write one with `make-hf export --format onnx`."
            )
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"`threads` must be None or an integer >= 1, got {threads!r}.")
        with open(description_path, encoding="utf-8") as f:
            self.description = json.load(f)
        files = self.description.get("files", {})
        if int8 is True:
            if "query_encoder_int8" not in files:
                raise FileNotFoundError(
                    f"{folder!r} holds no int8 query encoder; export with `--quantize int8` (quantize='int8')."
                )
            name = files["query_encoder_int8"]["file"]
        elif int8 is False or int8 is None:
            name = files.get("query_encoder", {}).get("file", QUERY_FILE)
        elif isinstance(int8, str):
            name = int8
        else:
            raise ValueError(f"`int8` must be a bool or a file name in the folder, got {int8!r}.")
        path = os.path.join(folder, name)
        if os.path.dirname(os.path.normpath(name)) or not os.path.isfile(path):
            raise FileNotFoundError(f"No ONNX model {name!r} in {folder!r}; files: {sorted(os.listdir(folder))}.")
        self.model_path = path
        self.session = _session(path, threads)
        self.processor = MakeProcessor.from_pretrained(folder)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_path!r})"

    @property
    def dim(self) -> int:
        return int(self.description["projection_dim"])

    def encode(self, texts: str | Sequence[str], batch_size: int = 32) -> np.ndarray:
        """`(len(texts), D)` float32 L2-normalised query vectors; `texts` are non-empty strings (one string is a batch
        of one)."""
        from .encoding import check_query_texts

        texts = check_query_texts(texts, "texts")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
        outputs = [np.zeros((0, self.dim), dtype=np.float32)]
        for start in range(0, len(texts), batch_size):
            inputs = _query_inputs(self.processor, texts[start : start + batch_size])
            outputs.append(self.session.run(["query_embeds"], inputs)[0])
        embeds = np.concatenate(outputs).astype(np.float32, copy=False)
        # int8 outputs are close to, not exactly, unit length.
        return embeds / np.maximum(np.linalg.norm(embeds, axis=-1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------------ sentence-transformers


def _save_plain_tokenizer(tokenizer, folder: str) -> None:
    """Save `tokenizer` without its link to `MakeProcessor`, which would make sentence-transformers load the whole
    processor (and ask for remote code) instead of the tokenizer."""
    tokenizer.save_pretrained(folder)
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config.pop("processor_class", None)
    config.pop("auto_map", None)
    write_json(path, config)


def export_sentence_transformers(model_dir: str | os.PathLike, output_dir: str | os.PathLike) -> str:
    """Write the query tower of a saved MAKE model as a SentenceTransformer folder (Transformer, Pooling,
    Dense without bias or activation, Normalize), so that `SentenceTransformer(output_dir).encode(queries)` equals
    `MakeRetriever.from_pretrained(model_dir).encode_queries(queries)`.

    It loads offline with standard modules only (no `trust_remote_code`). The written folder is loaded back and
    checked against the model (`SENTENCE_TRANSFORMERS_TOLERANCE`) before it is swapped in; a mismatch raises
    `RuntimeError`. Returns the folder.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    from .encoding import encode_queries

    output_dir = _check_output_dir(output_dir, model_dir, "modules.json")
    model, processor = _load(model_dir)
    hidden_size = model.config.query_config.hidden_size
    with tempfile.TemporaryDirectory() as tower_dir, replaced_directory(output_dir) as staging:
        model.query_model.save_pretrained(tower_dir)
        _save_plain_tokenizer(processor.tokenizer, tower_dir)
        transformer = Transformer(tower_dir, max_seq_length=processor.query_max_length)
        dense = Dense(hidden_size, model.config.projection_dim, bias=False, activation_function=torch.nn.Identity(),
                      init_weight=model.query_projection.weight.detach().clone())
        pooling = Pooling(hidden_size, pooling_mode=model.config.text_pooling)
        sentence_model = SentenceTransformer(modules=[transformer, pooling, dense, Normalize()], device="cpu",
                                             similarity_fn_name="cosine")
        sentence_model.save(staging)
        reloaded = SentenceTransformer(staging, device="cpu")
        expected = encode_queries(model, processor, list(CHECK_QUERIES), show_progress=False).numpy()
        got = reloaded.encode(list(CHECK_QUERIES), convert_to_numpy=True)
        difference = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        if difference > SENTENCE_TRANSFORMERS_TOLERANCE:
            raise RuntimeError(
                f"The SentenceTransformer export differs from the model's query vectors by {difference:.2e} "
                f"(tolerance {SENTENCE_TRANSFORMERS_TOLERANCE:.0e}); the export was not written."
            )
    return output_dir


__all__ = [
    "EXPORT_FILE",
    "OnnxQueryEncoder",
    "export_onnx",
    "export_sentence_transformers",
]
