"""A saved model loads with `trust_remote_code=True` in a fresh process where `make_hf` cannot be imported."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from make_hf import MakeModel
from model_inputs import single_torch_thread, tiny_config  # noqa: F401 (autouse fixture)


# Runs in a fresh interpreter: -I keeps the working directory and PYTHON* variables off sys.path, and a meta-path
# hook refuses `make_hf` whatever way it is installed (editable finder, site-packages, ...).
CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class RefuseMakeHf(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "make_hf" or name.startswith("make_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)")
            return None

    sys.meta_path.insert(0, RefuseMakeHf())
    try:
        import make_hf  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("make_hf is importable: the test would not test remote code")

    import torch
    from transformers import AutoModel

    model_dir, without_code_dir, inputs_file = sys.argv[1:4]
    try:
        AutoModel.from_pretrained(without_code_dir, trust_remote_code=True)
    except Exception as error:  # no code and no registered "make" type: must fail
        without_code = type(error).__name__
    else:
        raise SystemExit("a folder without the model code loaded: remote code is not what made the load work")

    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    inputs = {key: torch.tensor(value) for key, value in json.load(open(inputs_file)).items()}
    with torch.no_grad():
        product = model.get_product_features(pixel_values=inputs["pixel_values"],
                                             title_input_ids=inputs["title_input_ids"]).product_embeds
        query = model.get_query_features(inputs["query_input_ids"])
    print(json.dumps({"module": type(model).__module__, "class": type(model).__name__,
                      "without_code": without_code, "query": query.tolist(), "product": product.tolist()}))
    """
)


def tiny_model(tmp_path):
    return MakeModel(tiny_config()), 32


def pretrained_image_tower_and_tied_text_embeddings(tmp_path):
    """The pretrained regime: the converted EfficientNet-Lite0 tower and text towers sharing one embedding matrix."""
    from make_hf.image_towers import convert_efficientnet_lite

    tower_dir = tmp_path / "efficientnet-lite0"
    convert_efficientnet_lite("lite0", output_dir=tower_dir)
    text = tiny_config().query_config
    model = MakeModel.from_towers(query=text, vision=str(tower_dir), tie_word_embeddings=True, projection_dim=32)
    assert model.title_model.get_input_embeddings().weight is model.query_model.get_input_embeddings().weight
    # The tower is fully convolutional: a small input keeps the test fast and the features exact.
    return model, 64


@pytest.mark.parametrize("build", [tiny_model, pretrained_image_tower_and_tied_text_embeddings])
def test_trust_remote_code_in_a_process_without_make_hf(tmp_path, build):
    torch.manual_seed(0)
    model, image_size = build(tmp_path)
    model.eval()
    model_dir, without_code_dir = tmp_path / "model", tmp_path / "without_code"
    model.save_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_make.MakeConfig",
        "AutoModel": "modeling_make.MakeModel",
    }
    assert {"configuration_make.py", "modeling_make.py", "losses.py"} <= set(os.listdir(model_dir))
    shutil.copytree(model_dir, without_code_dir, ignore=shutil.ignore_patterns("*.py"))

    generator = torch.Generator().manual_seed(0)
    inputs = {
        "query_input_ids": torch.randint(5, 1000, (3, 6), generator=generator),
        "title_input_ids": torch.randint(5, 1000, (3, 12), generator=generator),
        "pixel_values": torch.randn(3, 3, image_size, image_size, generator=generator),
    }
    inputs_file = tmp_path / "inputs.json"
    inputs_file.write_text(json.dumps({key: value.tolist() for key, value in inputs.items()}))
    with torch.no_grad():
        expected_product = model.get_product_features(
            title_input_ids=inputs["title_input_ids"], pixel_values=inputs["pixel_values"]
        ).product_embeds
        expected_query = model.get_query_features(inputs["query_input_ids"])

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, str(model_dir), str(without_code_dir), str(inputs_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["class"] == "MakeModel" and loaded["module"].startswith("transformers_modules.")
    assert loaded["without_code"]
    torch.testing.assert_close(torch.tensor(loaded["query"]), expected_query, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(loaded["product"]), expected_product, rtol=1e-5, atol=1e-6)

    reloaded = MakeModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        product = reloaded.get_product_features(
            title_input_ids=inputs["title_input_ids"], pixel_values=inputs["pixel_values"]
        ).product_embeds
        torch.testing.assert_close(product, expected_product, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(reloaded.get_query_features(inputs["query_input_ids"]), expected_query)
