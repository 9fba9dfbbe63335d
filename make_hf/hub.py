"""Publish a MAKE checkpoint to the Hugging Face Hub: model, processor, code and model card in one commit.

`push_to_hub(folder_or_model, repo_id)` takes a folder written by `save_pretrained` (the pre-training script's output)
or a live `MakeModel` (plus its `MakeProcessor`), creates the repo if needed and uploads, as one commit, what a model
repository needs and nothing else:

- the weights, `config.json` and the processor files;
- the model and processor code (`configuration_make.py`, `modeling_make.py`, `processing_make.py` and what they
  import) with `auto_map` entries, so that `AutoModel` / `AutoProcessor.from_pretrained(repo_id,
  trust_remote_code=True)` work where `make_hf` is not installed. A folder saved by a registered class already has
  them; anything missing is added to the upload, the local folder is never modified;
- a `README.md` model card: the one given, else the folder's own, else one generated from `config.json` (and the
  evaluation, when given) by `make_hf.modelcard.generate_model_card`;
- the evaluation results (`eval_results.json` / `.md`) and plots (`*.png`) next to them.

What is uploaded is an allow-list (`MODEL_REPO_FILES` plus the code files), matched against the folder's top level
only: a training output also holds `checkpoints/` (optimizer, scheduler and RNG state, local paths), the image
feature cache, the training history and whatever else a run or a user leaves there, and a new kind of local file must
never be published because nobody thought of excluding it. `files_to_upload(folder)` says what would go and what
stays.

The same is available from a shell: `make-hf push FOLDER REPO_ID`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import filter_repo_objects

from .hub_access import _is_network_failure
from .modelcard import generate_model_card


logger = logging.getLogger(__name__)

MODEL_REPO_FILES = (
    "config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "README.md",
    "eval_results.json",
    "eval_results.md",
    "*.png",
)
"""Top-level file names (globs) of a model folder that `push_to_hub` uploads, besides the code files
(`CODE_MODULES` and what they import). Anything else in the folder, and anything in a sub-folder, stays local."""

CODE_MODULES = ("configuration_make", "modeling_make", "processing_make")
"""The modules whose files (and relative imports) a pushed checkpoint carries as remote code."""

# auto_map entries a pushed checkpoint needs, by JSON file: (Auto class, module, class name).
_MODEL_AUTO_MAP = (("AutoConfig", "configuration_make", "MakeConfig"), ("AutoModel", "modeling_make", "MakeModel"))
_PROCESSOR_AUTO_MAP = (("AutoProcessor", "processing_make", "MakeProcessor"),)
_PROCESSOR_CONFIG_FILES = ("processor_config.json",)


class HubPushError(OSError):
    """A push that did not reach the Hub (refused, timed out, dropped half-way): no commit was made, so the repo
    holds what it held before (at most, a new empty repo was created)."""


def _sent_the_commit(error: BaseException) -> bool:
    """Whether the request that failed was the commit itself, whose answer, not its effect, may be what was lost."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        try:
            url = str(getattr(error, "request", None).url)
        except (AttributeError, RuntimeError):  # httpx raises RuntimeError when an error carries no request
            url = ""
        if "/commit/" in url:
            return True
        error = error.__cause__ or error.__context__
    return False


def _push_failed(source: str, repo_id: str, endpoint: str | None, error: BaseException, retry: str) -> HubPushError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if _sent_the_commit(error):
        outcome = ("The connection dropped while the commit was sent: the repo holds either all of this upload or "
                   "none of it (it is one commit); look at the repo, or push again, which is harmless.")
    else:
        outcome = "Nothing of this upload was committed."
    return HubPushError(
        f"Cannot push {source} to {repo_id!r}: the Hugging Face Hub at {endpoint or hub_constants.ENDPOINT} "
        f"cannot be reached ({type(error).__name__}{': ' + reason if reason else ''}). {outcome} Check the network, "
        f"proxy settings and HF_ENDPOINT (or --endpoint), then {retry}."
    )


def _package_module_file(module: str) -> Path:
    return Path(__file__).parent / f"{module}.py"


def _code_files(modules) -> dict[str, Path]:
    """The package files of `modules` and, recursively, of their relative imports (what remote code loads)."""
    from transformers.dynamic_module_utils import get_relative_import_files

    files = {}
    for module in modules:
        path = _package_module_file(module)
        if not path.is_file():
            raise FileNotFoundError(f"make_hf ships no {path.name}; reinstall make_hf (`pip install -e .`).")
        files[path.name] = path
        for needed in get_relative_import_files(path):
            files[Path(needed).name] = Path(needed)
    return files


def _with_auto_map(config: dict, entries) -> dict | None:
    """`config` with the missing auto_map entries added, or None when nothing is missing."""
    auto_map = dict(config.get("auto_map") or {})
    missing = {auto: f"{module}.{name}" for auto, module, name in entries if auto not in auto_map}
    if not missing:
        return None
    return {**config, "auto_map": {**auto_map, **missing}}


def remote_code_additions(folder: str | os.PathLike) -> dict[str, bytes]:
    """Files (path in repo -> content) to add to `folder`'s upload so that it loads with `trust_remote_code=True`
    without make_hf: missing code files and `config.json` / `processor_config.json` with their `auto_map`.

    Empty for a folder that already has them. A folder that is not a MAKE model (its `config.json` has another
    `model_type`) gets nothing."""
    folder = Path(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") != "make":
        return {}
    additions: dict[str, bytes] = {}
    modules = {module for _, module, _ in _MODEL_AUTO_MAP}
    patched = _with_auto_map(config, _MODEL_AUTO_MAP)
    if patched is not None:
        additions["config.json"] = (json.dumps(patched, indent=2, sort_keys=True) + "\n").encode()
    for name in _PROCESSOR_CONFIG_FILES:
        path = folder / name
        if path.is_file():
            modules |= {module for _, module, _ in _PROCESSOR_AUTO_MAP}
            patched = _with_auto_map(json.loads(path.read_text(encoding="utf-8")), _PROCESSOR_AUTO_MAP)
            if patched is not None:
                additions[name] = (json.dumps(patched, indent=2, sort_keys=True) + "\n").encode()
    for filename, path in _code_files(sorted(modules)).items():
        if not (folder / filename).is_file():
            additions[filename] = path.read_bytes()
    return additions


def files_to_upload(
    folder: str | os.PathLike, ignore_patterns: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """`(uploaded, left_out)`: the files of `folder` that `push_to_hub` uploads, and what it leaves local (both
    sorted; a sub-folder is one entry ending in `/`, never looked into).

    Uploaded: top-level files matching `MODEL_REPO_FILES` or named like one of make_hf's code files, minus those
    matching `ignore_patterns`. Everything else is left out, whatever its name: sub-folders (`checkpoints/`,
    `image_features/`, ...) and any other file (`training_history.json`, notes, credentials)."""
    code_files = set(_code_files(CODE_MODULES))
    uploaded, left_out = [], []
    for path in sorted(Path(folder).iterdir()):
        if path.is_dir():
            left_out.append(f"{path.name}/")
        elif path.name in code_files or any(fnmatch.fnmatchcase(path.name, pattern) for pattern in MODEL_REPO_FILES):
            uploaded.append(path.name)
        else:
            left_out.append(path.name)
    if ignore_patterns:
        kept = set(filter_repo_objects(uploaded, ignore_patterns=list(ignore_patterns)))
        left_out = sorted([*left_out, *(name for name in uploaded if name not in kept)])
        uploaded = [name for name in uploaded if name in kept]
    return uploaded, left_out


def _card_bytes(model_card) -> bytes:
    if isinstance(model_card, ModelCard):
        return str(model_card).encode()
    if isinstance(model_card, (bytes, bytearray)):
        return bytes(model_card)
    if isinstance(model_card, str):
        return model_card.encode()
    raise TypeError(f"`model_card` must be a ModelCard, str or bytes, got {type(model_card).__name__}.")


def push_to_hub(
    folder_or_model,
    repo_id: str,
    *,
    processor=None,
    model_card: ModelCard | str | None = None,
    evaluation: Mapping | str | os.PathLike | None = None,
    card_kwargs: Mapping[str, Any] | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
    ignore_patterns: list[str] | None = None,
):
    """Upload a MAKE checkpoint (model, processor, code, model card) to `repo_id` as one commit.

    Only what a model repository needs is uploaded (see `files_to_upload`): the top-level files of the folder that
    match `MODEL_REPO_FILES` (config, weights, processor and tokenizer files, `README.md`, `eval_results.json` /
    `.md`, `*.png` plots) and make_hf's code files. Sub-folders (`checkpoints/`, `image_features/`) and every other
    file (`training_history.json`, ...) stay local, so a training output folder can be pushed as it is.

    Args:
        folder_or_model: a folder written by `save_pretrained` (it must hold `config.json`), or a `MakeModel`
            (saved to a temporary folder first, with `processor` when given).
        repo_id: the target repo, `namespace/name`; created (model repo) if it does not exist.
        processor: the `MakeProcessor` to save next to a model object. For a folder, save it there beforehand.
        model_card: the card to upload as `README.md`. Default: the folder's own `README.md`, else a card
            generated from `config.json` and `evaluation` (`generate_model_card(..., model_id=repo_id,
            **card_kwargs)`).
        evaluation: evaluation results for a generated card (mapping or JSON path; see `make_hf.modelcard`).
        card_kwargs: more arguments of `generate_model_card` (`preset`, `dataset_name`, `training_args`, ...).
        commit_message, commit_description: of the commit. Default message: "Upload MAKE model".
        private: visibility when the repo is created (ignored if it exists).
        token: Hub token; default: the saved login / `HF_TOKEN`.
        create_pr: open a pull request instead of committing to `main`.
        endpoint: Hub URL; default: `HF_ENDPOINT` or huggingface.co.
        ignore_patterns: glob patterns of allowed files to leave out as well (they never add files).

    Returns:
        The `huggingface_hub.CommitInfo` of the commit (`.oid`, `.commit_url`, `.pr_url`).

    Raises:
        HubPushError: the Hub could not be reached, or the connection dropped; the message says whether the commit
            can have been made (the upload is one commit: the repo holds all of it or none).
    """
    if isinstance(folder_or_model, (str, os.PathLike)):
        return _push_folder(
            Path(folder_or_model), repo_id, model_card=model_card, evaluation=evaluation, card_kwargs=card_kwargs,
            commit_message=commit_message, commit_description=commit_description, private=private, token=token,
            create_pr=create_pr, endpoint=endpoint, ignore_patterns=ignore_patterns,
            source=repr(os.fspath(folder_or_model)), retry=f"push again (`make-hf push {folder_or_model} {repo_id}`)",
        )
    if not hasattr(folder_or_model, "save_pretrained"):
        raise TypeError(
            f"`folder_or_model` must be a model folder path or a model with `save_pretrained`, got "
            f"{type(folder_or_model).__name__}."
        )
    with tempfile.TemporaryDirectory(prefix="make_hf_push_") as folder:
        folder_or_model.save_pretrained(folder)
        if processor is not None:
            processor.save_pretrained(folder)
        card_kwargs = dict(card_kwargs or {})
        if model_card is None and "num_parameters" not in card_kwargs and hasattr(folder_or_model, "num_parameters"):
            card_kwargs["num_parameters"] = folder_or_model.num_parameters()
        return _push_folder(
            Path(folder), repo_id, model_card=model_card, evaluation=evaluation, card_kwargs=card_kwargs,
            commit_message=commit_message, commit_description=commit_description, private=private, token=token,
            create_pr=create_pr, endpoint=endpoint, ignore_patterns=ignore_patterns,
            source=f"the {type(folder_or_model).__name__}", retry="call `push_to_hub` again",
        )


def _push_folder(
    folder: Path, repo_id: str, *, model_card, evaluation, card_kwargs, commit_message, commit_description, private,
    token, create_pr, endpoint, ignore_patterns, source, retry,
):
    if not folder.is_dir():
        raise FileNotFoundError(f"Model folder {str(folder)!r} does not exist; save the model there first.")
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"{str(folder)!r} holds no config.json: it is not a saved model. Save one with "
            "`model.save_pretrained(folder)` and `processor.save_pretrained(folder)`, then push the folder."
        )
    files, left_out = files_to_upload(folder, ignore_patterns)
    if left_out:
        logger.info(f"Not uploaded from {folder} (not part of a model repository): {', '.join(left_out)}")
    contents: dict[str, Path | bytes] = {name: folder / name for name in files}
    contents.update(remote_code_additions(folder))
    if model_card is not None:
        contents["README.md"] = _card_bytes(model_card)
    elif "README.md" not in contents:
        card = generate_model_card(folder, evaluation, model_id=repo_id, **dict(card_kwargs or {}))
        contents["README.md"] = str(card).encode()

    api = HfApi(endpoint=endpoint, token=token)
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(value) if isinstance(value, Path) else value)
        for name, value in sorted(contents.items())
    ]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or "Upload MAKE model",
            commit_description=commit_description,
            create_pr=create_pr,
        )
    except Exception as error:
        if not _is_network_failure(error):
            raise
        raise _push_failed(source, repo_id, endpoint, error, retry) from error


# --------------------------------------------------------------------------------------------------- CLI


def add_push_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of `make-hf push FOLDER REPO_ID`."""
    parser.description = (
        f"{parser.description or ''} Uploads only what a model repository needs: the folder's top-level "
        f"{', '.join(MODEL_REPO_FILES)} and make_hf's code files (*.py); sub-folders (checkpoints/, "
        "image_features/) and any other file (training_history.json, ...) stay local and are listed on stderr."
    ).strip()
    parser.add_argument("folder", help="folder written by save_pretrained or the pre-training script's output_dir")
    parser.add_argument("repo_id", help="target repo, namespace/name (created if missing)")
    parser.add_argument("--evaluation", help="evaluation JSON for the generated model card")
    parser.add_argument("--preset", help="preset the model was trained from (picks the card's description)")
    parser.add_argument("--dataset-name", default="synthetic shop", help="evaluation set name for the card")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of pushing to main")
    parser.add_argument("--token", default=None, help="Hub token (default: saved login or HF_TOKEN)")
    parser.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or huggingface.co)")
    return parser


def run_push(args: argparse.Namespace) -> int:
    """Run `make-hf push` with parsed `args`; prints the commit URL, and on stderr what was left local."""
    if os.path.isdir(args.folder):
        _, left_out = files_to_upload(args.folder)
        if left_out:
            print(f"Not uploaded (not part of a model repository): {', '.join(left_out)}", file=sys.stderr)
    card_kwargs = {"dataset_name": args.dataset_name}
    if args.preset:
        card_kwargs["preset"] = args.preset
    info = push_to_hub(
        args.folder,
        args.repo_id,
        evaluation=args.evaluation,
        card_kwargs=card_kwargs,
        commit_message=args.commit_message,
        private=True if args.private else None,
        token=args.token,
        create_pr=args.create_pr,
        endpoint=args.endpoint,
    )
    print(info.pr_url or info.commit_url)
    return 0


__all__ = [
    "CODE_MODULES",
    "HubPushError",
    "MODEL_REPO_FILES",
    "add_push_arguments",
    "files_to_upload",
    "push_to_hub",
    "remote_code_additions",
    "run_push",
]
