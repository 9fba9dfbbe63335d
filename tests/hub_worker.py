"""Load `org/make-base` in a fresh process and write what it computes, for `test_hub.py`.

Run as `python tests/hub_worker.py MODE INPUTS_JSON OUTPUT`, with `HF_ENDPOINT` / `HF_HOME` / `HF_HUB_OFFLINE` set in
the environment (huggingface_hub reads them at import). Modes:

- `make_hf`: `MakeModel` / `MakeProcessor.from_pretrained`, then `AutoModel` / `AutoProcessor` without
  `trust_remote_code` (the classes registered by `import make_hf`);
- `offline`: `MakeModel` / `MakeProcessor.from_pretrained` only (run with `HF_HUB_OFFLINE=1`);
- `remote_code`: `make_hf` made unimportable first, then `AutoModel` / `AutoProcessor.from_pretrained(...,
  trust_remote_code=True)`: the code comes from the repo.

`embed` is also what the test runs on the pushed model in its own process, so both sides compute the same things.
"""

import importlib
import importlib.abc
import json
import os
import sys

REPO_ID = "org/make-base"


def embed(model, processor, inputs: dict) -> dict:
    """Every tensor the processor and the model's feature methods give for `inputs` (queries, titles, images)."""
    import torch

    queries = processor(query=inputs["queries"], return_tensors="pt")
    products = processor(title=inputs["titles"], images=inputs["images"], return_tensors="pt")
    training = processor(query=inputs["queries"], title=inputs["train_titles"], images=inputs["train_images"])
    with torch.no_grad():
        query_embeds = model.get_query_features(queries["query_input_ids"], queries["query_attention_mask"])
        product = model.get_product_features(**products)
        product_embeds, modal_weights = product.product_embeds, product.modal_weights
        keyword_embeds = model.get_query_features(training["keyword_input_ids"], training["keyword_attention_mask"])
    tensors = {"query_embeds": query_embeds, "product_embeds": product_embeds, "modal_weights": modal_weights,
               "keyword_embeds": keyword_embeds}
    for prefix, batch in (("query/", queries), ("product/", products), ("training/", training)):
        tensors.update({prefix + key: value for key, value in batch.items() if isinstance(value, torch.Tensor)})
    return tensors


class _BlockMakeHf(importlib.abc.MetaPathFinder):
    """Makes `import make_hf` fail, as on a machine where it is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "make_hf" or name.startswith("make_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)", name=name)
        return None


def main(mode: str, inputs_path: str, output_path: str) -> None:
    if mode == "remote_code":
        sys.meta_path.insert(0, _BlockMakeHf())
    import torch

    torch.set_num_threads(int(os.environ.get("MAKE_TEST_THREADS", torch.get_num_threads())))
    with open(inputs_path) as handle:
        inputs = json.load(handle)
    results, info = {}, {}
    if mode in ("make_hf", "offline"):
        from make_hf import MakeModel, MakeProcessor

        model, processor = MakeModel.from_pretrained(REPO_ID).eval(), MakeProcessor.from_pretrained(REPO_ID)
        results["make"] = embed(model, processor, inputs)
    if mode == "make_hf":
        from transformers import AutoModel, AutoProcessor

        model, processor = AutoModel.from_pretrained(REPO_ID).eval(), AutoProcessor.from_pretrained(REPO_ID)
        info["auto_classes"] = [type(model).__module__, type(processor).__module__]
        results["auto"] = embed(model, processor, inputs)
    if mode == "remote_code":
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained(REPO_ID, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(REPO_ID, trust_remote_code=True)
        info["auto_classes"] = [type(model).__module__, type(processor).__module__]
        try:
            importlib.import_module("make_hf")
            info["make_hf_importable"] = True
        except ImportError:
            info["make_hf_importable"] = False
        results["auto"] = embed(model, processor, inputs)
    info["make_hf_loaded"] = sorted(name for name in sys.modules if name.split(".")[0] == "make_hf")
    torch.save({"results": results, "info": info}, output_path)


if __name__ == "__main__":
    main(*sys.argv[1:4])
