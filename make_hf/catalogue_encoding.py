"""Encode a product catalogue into a folder of fixed-size shards, across processes, and resume a killed encode.

`make-hf encode` writes this folder; `make-hf index` (through `make_hf.index.load_embeddings`) reads it:

```
OUTPUT/
  manifest.json                        what is encoded: the catalogue's SHA-256 and rows, the model's fingerprint,
                                       the condition, the shard size and the number of shards
  shard-00000-of-00003.safetensors     catalogue rows [0, shard_size): the vectors, ids and modal weights of the
  shard-00001-of-00003.safetensors     rows the condition can encode (`save_embeddings` files), with the ids of
  shard-00002-of-00003.safetensors     those it cannot in their header
```

Shard `i` holds rows `[i * shard_size, (i + 1) * shard_size)`. The shards still missing are dealt out in turn to the
processes (`accelerate launch --multi_gpu --num_processes N -m make_hf.cli encode ...`; one process without
accelerate), each writes its shards atomically (temporary file + rename), and every shard is encoded the same way
whichever process encodes it, so the folder holds the same vectors, in the same product order, whatever the number of
processes. Rerunning the same command after a kill keeps the complete shards, deletes the temporary files of the
killed ones and encodes only the missing ones. A shard counts as complete only if its header names the manifest's
encoding, so shards of a different catalogue, model, condition or shard size are never mixed in: such a rerun is
refused (`--overwrite` deletes the old shards and starts afresh).

One encode per folder at a time: a second one would delete the first one's files in progress.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .atomic import remove_interrupted_writes, write_json
from .encoding import check_product_ids, encode_product_rows
from .index import EMBEDDINGS_KEY, ProductEmbeddings, load_embeddings, save_embeddings

MANIFEST_FILE = "manifest.json"
FORMAT = "make_hf.catalogue_encoding"
FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 10_000
"""Catalogue rows per shard: the most a killed encode loses, and the unit of work dealt out to the processes."""

_SHARD_NAME = re.compile(r"^shard-\d{5,}-of-\d{5,}\.safetensors$")
# What must agree between a folder's manifest and a rerun for its shards to be reused, and how to name it.
_MUST_AGREE = {
    "catalogue_sha256": "catalogue (its SHA-256)",
    "num_rows": "catalogue size (rows)",
    "model_fingerprint": "model (weights, config or processor)",
    "condition": "--condition",
    "shard_size": "--shard-size",
}
# Model config entries that do not change what the model computes.
_IRRELEVANT_CONFIG_KEYS = ("transformers_version", "_name_or_path", "architectures", "auto_map")


def catalogue_fingerprint(path: str | os.PathLike) -> str:
    """The SHA-256 of the catalogue file's bytes (images it names are not hashed: replace an image under a new name)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(model: torch.nn.Module, processor: Any) -> str:
    """A hash of what decides a product's vector: the model's weights and config, and the processor's settings and
    vocabulary. The same model loaded from another folder has the same fingerprint."""
    digest = hashlib.blake2b(digest_size=16)
    config = {k: v for k, v in model.config.to_dict().items() if k not in _IRRELEVANT_CONFIG_KEYS}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(processor.to_json_string().encode())
    digest.update(json.dumps(sorted(processor.tokenizer.get_vocab().items())).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().flatten().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def shard_file(index: int, num_shards: int) -> str:
    """The file name of shard `index` of `num_shards`."""
    return f"shard-{index:05d}-of-{num_shards:05d}.safetensors"


def encoding_manifest(
    *, catalogue: str, catalogue_sha256: str, num_rows: int, model: str, model_fingerprint: str, condition: str,
    shard_size: int,
) -> dict[str, Any]:
    """The manifest of an encode: what `_MUST_AGREE` compares, where it came from, and the encoding id every shard
    header carries (a hash of the compared fields)."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"--shard-size must be an integer >= 1, got {shard_size!r}.")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "catalogue": catalogue,
        "catalogue_sha256": catalogue_sha256,
        "num_rows": num_rows,
        "model": model,
        "model_fingerprint": model_fingerprint,
        "condition": condition,
        "shard_size": shard_size,
        "num_shards": -(-num_rows // shard_size),
    }
    agreed = json.dumps({key: manifest[key] for key in _MUST_AGREE}, sort_keys=True)
    manifest["encoding_id"] = hashlib.sha256(agreed.encode()).hexdigest()[:32]
    return manifest


@dataclass
class ProcessGroup:
    """Where this process stands among those encoding together: `accelerate.PartialState` has these members; the
    default is a single process."""

    process_index: int = 0
    num_processes: int = 1

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    def wait_for_everyone(self) -> None:
        pass


def current_process_group() -> Any:
    """The processes `accelerate launch` started (an `accelerate.PartialState`; over gloo on a machine without
    GPUs, where `--multi_gpu` would otherwise give each process a world of its own), or one process without it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ProcessGroup()
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


@dataclass
class EncodeSummary:
    """What an encode left in its folder (complete: every process had finished when it was made).

    Attributes:
        num_products: products encoded (all shards together).
        skipped_products: catalogue rows left out because the condition cannot encode them.
        dim: the embedding dimension.
        num_shards: shards of the catalogue.
        encoded_shards: shards this run encoded (all processes together), in order.
        kept_shards: shards found complete from an earlier run and kept.
        removed: temporary files of killed writes that were deleted (the main process deletes them; empty on the
            others).
    """

    num_products: int
    skipped_products: int
    dim: int
    num_shards: int
    encoded_shards: list[int]
    kept_shards: list[int]
    removed: list[str]


def _read_manifest(folder: str) -> dict[str, Any] | None:
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path!r} cannot be read as JSON ({error}); delete the folder and encode again.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not the manifest of a `make-hf encode` folder.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path!r} has format_version {manifest.get('format_version')!r}; this make_hf reads version "
            f"{FORMAT_VERSION}. Encode the catalogue again with this version."
        )
    return manifest


def _check_reusable(folder: str, existing: dict[str, Any], expected: dict[str, Any]) -> None:
    differences = [
        f"{what}: {existing.get(key)!r} before, {expected[key]!r} now"
        for key, what in _MUST_AGREE.items()
        if existing.get(key) != expected[key]
    ]
    if differences:
        raise ValueError(
            f"--output {folder!r} holds shards of a different encode ({'; '.join(differences)}; encoded from "
            f"{existing.get('catalogue')!r} with {existing.get('model')!r}). They cannot be mixed with this one: "
            "pass --overwrite to delete them and encode afresh, or choose another --output."
        )


def _own_files(folder: str) -> list[str]:
    return [name for name in os.listdir(folder) if name == MANIFEST_FILE or _SHARD_NAME.match(name)]


def _prepare_folder(folder: str, expected: dict[str, Any], overwrite: bool) -> None:
    """Refuse a folder that is not this encode's, or (with `overwrite`) delete the shards of another one."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise ValueError(
            f"--output {folder!r} is a file (an embeddings file of an older `make-hf encode`?); `make-hf encode` "
            "writes a folder: choose a new or empty folder."
        )
    if not os.path.isdir(folder):
        return
    if overwrite and os.path.isfile(os.path.join(folder, MANIFEST_FILE)):
        return
    existing = _read_manifest(folder)
    if existing is None:
        unknown = [name for name in os.listdir(folder) if not name.startswith(".")]
        if unknown:
            raise ValueError(
                f"--output {folder!r} holds files but no {MANIFEST_FILE} (e.g. {sorted(unknown)[0]!r}): it is not a "
                "`make-hf encode` folder. Choose a new or empty folder."
            )
    else:
        _check_reusable(folder, existing, expected)


def _shard_header(folder: str, manifest: dict[str, Any], index: int) -> dict[str, Any] | None:
    """The header metadata of shard `index`, with its `num_products` and `dim`, read without its vectors; None if the
    shard is missing, unreadable, or written by another encode."""
    from safetensors import safe_open

    path = os.path.join(folder, shard_file(index, manifest["num_shards"]))
    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, framework="pt") as f:
            metadata = json.loads((f.metadata() or {})["metadata"])
            num_products, dim = f.get_slice(EMBEDDINGS_KEY).get_shape()
    except Exception:  # safetensors raises its own error type; a shard it cannot read is not complete
        return None
    if not isinstance(metadata, dict) or metadata.get("encoding_id") != manifest["encoding_id"]:
        return None
    if metadata.get("shard") != index:
        return None
    return {**metadata, "num_products": num_products, "dim": dim}


def _complete_shards(folder: str, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The headers of all shards; `ValueError` naming the missing ones when some are missing."""
    headers = [_shard_header(folder, manifest, index) for index in range(manifest["num_shards"])]
    missing = [index for index, header in enumerate(headers) if header is None]
    if missing:
        raise ValueError(
            f"{folder!r} is incomplete: shard(s) {', '.join(map(str, missing))} of {manifest['num_shards']} are "
            "missing or written by another encode (an encode was killed or is still running). Rerun the same "
            "`make-hf encode` command to encode only those."
        )
    return headers


def _encode_shard(
    model, processor, products: Sequence[dict], folder: str, manifest: dict[str, Any], index: int, *,
    batch_size: int, show_progress: bool,
) -> str:
    start = index * manifest["shard_size"]
    end = min(start + manifest["shard_size"], manifest["num_rows"])
    rows = products[start:end]
    condition = manifest["condition"]
    product_ids = [row.get("product_id") for row in rows]
    encoded = encode_product_rows(
        model, processor, rows, conditions=(condition,), batch_size=batch_size, show_progress=show_progress,
        product_ids=product_ids, argument=f"products[{start}:{end}]",
    )
    keep = encoded.retrievable[condition]
    kept = keep.tolist()
    weights = encoded.modal_weights[keep] if encoded.modal_weights is not None else None
    header = {
        "encoding_id": manifest["encoding_id"],
        "shard": index,
        "rows": [start, end],
        "skipped_product_ids": [pid for pid, ok in zip(product_ids, kept) if not ok],
    }
    path = os.path.join(folder, shard_file(index, manifest["num_shards"]))
    ids = [pid for pid, ok in zip(product_ids, kept) if ok]
    return save_embeddings(path, encoded.embeds[condition][keep], ids, modal_weights=weights, metadata=header)


def encode_catalogue(
    model: torch.nn.Module,
    processor: Any,
    products: Sequence[dict],
    folder: str | os.PathLike,
    manifest: dict[str, Any],
    *,
    batch_size: int = 64,
    overwrite: bool = False,
    group: Any = None,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> EncodeSummary:
    """Encode the shards of `products` missing from `folder` that fall to this process, and wait for the others.

    Every process of `group` calls this with the same arguments. The main process checks the folder (refusing one
    of another encode unless `overwrite`), deletes what killed writes left and writes the manifest; then the shards
    still missing are dealt out in turn, `log` reports each one a process encodes, and after the last one every
    process returns the same summary.

    Args:
        products: the catalogue rows (`make_hf.evaluation.read_rows`), as for `encode_products`.
        manifest: from `encoding_manifest` for this catalogue, model, condition and shard size.
        group: `accelerate.PartialState` (or anything with `process_index`, `num_processes`, `is_main_process`
            and `wait_for_everyone`); default one process.
    """
    group = group or ProcessGroup()
    folder = os.path.abspath(os.fspath(folder))
    if len(products) != manifest["num_rows"]:
        raise ValueError(f"The manifest counts {manifest['num_rows']} catalogue rows but {len(products)} were given.")
    if not products:
        raise ValueError("The catalogue is empty: there is nothing to encode.")
    check_product_ids([product.get("product_id") for product in products])
    # Every process checks (reading only) before the main one changes anything, so that all refuse a folder together.
    _prepare_folder(folder, manifest, overwrite)
    group.wait_for_everyone()
    removed = []
    if group.is_main_process:
        os.makedirs(folder, exist_ok=True)
        removed = remove_interrupted_writes(folder)
        if overwrite:
            for name in _own_files(folder):
                os.remove(os.path.join(folder, name))
        if _read_manifest(folder) is None:
            write_json(os.path.join(folder, MANIFEST_FILE), manifest)
    group.wait_for_everyone()
    missing = [i for i in range(manifest["num_shards"]) if _shard_header(folder, manifest, i) is None]
    # All processes have listed the missing shards before any writes one, so that they all deal out the same list.
    group.wait_for_everyone()
    for index in missing[group.process_index :: group.num_processes]:
        path = _encode_shard(model, processor, products, folder, manifest, index, batch_size=batch_size,
                             show_progress=show_progress)
        if log is not None:
            log(f"Process {group.process_index}: encoded shard {index} of {manifest['num_shards']} -> {path}")
    group.wait_for_everyone()
    headers = _complete_shards(folder, manifest)
    return EncodeSummary(
        num_products=sum(header["num_products"] for header in headers),
        skipped_products=sum(len(header["skipped_product_ids"]) for header in headers),
        dim=headers[0]["dim"],
        num_shards=manifest["num_shards"],
        encoded_shards=missing,
        kept_shards=[i for i in range(manifest["num_shards"]) if i not in set(missing)],
        removed=removed,
    )


def load_encoded_catalogue(folder: str | os.PathLike) -> ProductEmbeddings:
    """Read a folder written by `encode_catalogue` (`make-hf encode`): the shards' vectors, ids and modal weights in
    catalogue order, and metadata with the manifest's fields and `skipped_products`.

    Raises `ValueError` when shards are missing or belong to another encode."""
    folder = os.fspath(folder)
    manifest = _read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(
            f"{folder!r} has no {MANIFEST_FILE}: it is not a folder written by `make-hf encode`; encode the "
            "catalogue with it."
        )
    _complete_shards(folder, manifest)
    shards = [load_embeddings(os.path.join(folder, shard_file(index, manifest["num_shards"])))
              for index in range(manifest["num_shards"])]
    weights = [shard.modal_weights for shard in shards]
    metadata = {key: manifest[key] for key in ("model", "condition", "catalogue", "catalogue_sha256",
                                                "model_fingerprint", "shard_size", "num_shards")}
    metadata["skipped_products"] = sum(len(shard.metadata["skipped_product_ids"]) for shard in shards)
    return ProductEmbeddings(
        product_embeds=torch.cat([shard.product_embeds for shard in shards]),
        product_ids=[pid for shard in shards for pid in shard.product_ids],
        modal_weights=torch.cat(weights) if all(w is not None for w in weights) else None,
        metadata=metadata,
    )


__all__ = [
    "DEFAULT_SHARD_SIZE",
    "EncodeSummary",
    "MANIFEST_FILE",
    "ProcessGroup",
    "catalogue_fingerprint",
    "check_product_ids",
    "current_process_group",
    "encode_catalogue",
    "encoding_manifest",
    "load_encoded_catalogue",
    "model_fingerprint",
    "shard_file",
]
