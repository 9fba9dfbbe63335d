"""`ImageFeatureCache`: a locked image tower's features, computed once per distinct image and kept on disk.

With a locked (frozen, eval-mode) image tower (LiT, Zhai et al. 2022) an image gets the same pooled tower output at
every step and in every run that uses the same tower and image preprocessing. Computing it once turns the most
expensive part of a training step (a 224 px CNN forward per row) into a table lookup, so a pretrained tower costs
about what a tiny tower trained from scratch costs.

Entries are keyed by the image's *content* (a hash of its encoded bytes), inside a folder named by a fingerprint of
the tower's weights and config and of the image processor's settings: two runs with the same tower share entries,
a different tower or resolution never reads them. Each `fill` writes one new shard file atomically, so an
interrupted fill loses only its own work and never leaves a half-written shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .atomic import atomic_path
from .image_utils import load_image

FINGERPRINT_LENGTH = 16


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def image_content_key(image: Any) -> str | None:
    """A hash of the image's content, or None for a missing image.

    Encoded images (bytes, a `datasets` image dict, a file path) are hashed without decoding them; a decoded image
    (PIL, array) is hashed from its pixels. The same file given as a path or as bytes gets the same key.
    """
    if image is None:
        return None
    if isinstance(image, dict):
        if image.get("bytes") is not None:
            return image_content_key(image["bytes"])
        if image.get("path") not in (None, ""):
            return image_content_key(image["path"])
        return None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _digest(bytes(image))
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if path == "":
            return None
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no image file at {path!r}.")
        with open(path, "rb") as f:
            return _digest(f.read())
    rgb = load_image(image)
    return _digest(f"{rgb.mode}{rgb.size}".encode() + rgb.tobytes())


# Config entries that do not change what the tower computes: where it was loaded from, the version that saved it,
# and the labels of a classifier head the tower does not use.
_IRRELEVANT_CONFIG_KEYS = ("transformers_version", "architectures", "id2label", "label2id", "num_labels")


def tower_fingerprint(model, processor) -> str:
    """A hash of the image tower's weights and architecture and of the image processor's settings."""
    digest = hashlib.blake2b(digest_size=FINGERPRINT_LENGTH // 2)
    config = {
        key: value
        for key, value in model.config.vision_config.to_dict().items()
        if not key.startswith("_") and key not in _IRRELEVANT_CONFIG_KEYS
    }
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(json.dumps(model.config.vision_pooling).encode())
    digest.update(processor.image_processor.to_json_string().encode())
    for name, tensor in sorted(model.vision_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().flatten().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def keep_images_encoded(dataset, column: str = "image"):
    """`dataset` with its `datasets.Image` column left undecoded (`{"bytes", "path"}` dicts): with a feature cache
    an image is only hashed, never decoded, after its first encoding."""
    import datasets

    feature = (getattr(dataset, "features", None) or {}).get(column)
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


class ImageFeatureCache:
    """Pooled image-tower outputs of a locked tower, keyed by image content, kept in `directory`.

    Args:
        directory: where the cache lives; entries go to `directory/<tower fingerprint>/`.
        model (`MakeModel`): the model whose image tower is (or will be) locked; its tower computes missing entries.
        processor (`MakeProcessor`): its image processor prepares the pixels.
        batch_size: images per tower forward when filling.

    Example:

    ```python
    >>> cache = ImageFeatureCache("outputs/image_features", model.lock_image_tower(), processor)
    >>> cache.fill(train_dataset["image"])                        # each distinct image encoded once, ever
    >>> features, has_image = cache.lookup(batch_images)          # (B, vision_width), (B,)
    >>> model(query_input_ids=..., title_input_ids=..., image_features=features, image_mask=has_image)
    ```
    """

    def __init__(self, directory: str | os.PathLike, model, processor, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.directory = Path(directory) / tower_fingerprint(model, processor)
        self._rows: dict[str, int] = {}
        self._features: torch.Tensor | None = None
        self.failures: dict[str, str] = {}  # key -> why the image could not be encoded (skipped rows)
        self._load()

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def _load(self) -> None:
        if not self.directory.is_dir():
            return
        for shard in sorted(self.directory.glob("shard-*.safetensors")):
            features = load_file(shard)["features"]
            keys = json.loads(shard.with_suffix(".json").read_text(encoding="utf-8"))
            if len(keys) != features.shape[0]:
                raise ValueError(f"{shard}: {len(keys)} keys for {features.shape[0]} feature rows; delete the shard.")
            self._append(keys, features)

    def _append(self, keys: list[str], features: torch.Tensor) -> None:
        offset = 0 if self._features is None else self._features.shape[0]
        self._features = features if self._features is None else torch.cat([self._features, features])
        for row, key in enumerate(keys):
            self._rows.setdefault(key, offset + row)

    @torch.no_grad()
    def fill(self, images: Sequence[Any], show_progress: bool = False) -> int:
        """Encode every distinct image of `images` that the cache lacks; return how many were added.

        An image that cannot be read is recorded in `self.failures` (key -> reason) and left out: `lookup` then
        reports it as missing, so the row it belongs to can be skipped and counted.
        """
        missing: dict[str, Any] = {}
        for image in images:
            try:
                key = image_content_key(image)
            except FileNotFoundError:
                continue  # reported by whoever checks the row
            if key is not None and key not in self._rows and key not in self.failures:
                missing.setdefault(key, image)
        if not missing:
            return 0
        device = self.model.image_projection.weight.device
        keys, batches = [], []
        pending = list(missing.items())
        was_training = self.model.vision_model.training
        self.model.vision_model.eval()
        try:
            for start in tqdm(range(0, len(pending), self.batch_size), desc="Caching image features",
                              disable=not show_progress):
                chunk_keys, chunk_images = [], []
                for key, image in pending[start : start + self.batch_size]:
                    try:
                        chunk_images.append(load_image(image, "image"))
                    except (ValueError, OSError) as error:
                        self.failures[key] = str(error)
                        continue
                    chunk_keys.append(key)
                if not chunk_keys:
                    continue
                pixels = self.processor.image_processor(chunk_images, return_tensors="pt")["pixel_values"]
                features = self.model.get_image_features(pixels.to(device), project=False)
                keys.extend(chunk_keys)
                batches.append(features.float().cpu())
        finally:
            self.model.vision_model.train(was_training)
        if not keys:
            return 0
        features = torch.cat(batches)
        self._write_shard(keys, features)
        self._append(keys, features)
        return len(keys)

    def _write_shard(self, keys: list[str], features: torch.Tensor) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"shard-{_digest(''.join(keys).encode())}"
        # The key list is written first and the tensor file last: `_load` only reads shards whose tensor exists.
        with atomic_path(str(self.directory / f"{name}.json")) as tmp:
            Path(tmp).write_text(json.dumps(keys), encoding="utf-8")
        with atomic_path(str(self.directory / f"{name}.safetensors")) as tmp:
            save_file({"features": features.contiguous()}, tmp)

    def lookup(self, images: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features `(B, vision_width)` of `images` and a `(B,)` mask, 0 for a missing or uncached image."""
        if self._features is None:
            raise ValueError("The image feature cache is empty: call `fill` with the images first.")
        rows, present = [], []
        for image in images:
            try:
                key = image_content_key(image)
            except FileNotFoundError:
                key = None
            row = self._rows.get(key) if key is not None else None
            rows.append(0 if row is None else row)
            present.append(row is not None)
        features = self._features[torch.tensor(rows, dtype=torch.long)]
        mask = torch.tensor(present, dtype=torch.long)
        return features * mask[:, None].to(features.dtype), mask


__all__ = ["ImageFeatureCache", "image_content_key", "keep_images_encoded", "tower_fingerprint"]
