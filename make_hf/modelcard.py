"""Model cards for MAKE checkpoints: Hub metadata plus a readable page, filled from a run's config and evaluation.

`generate_model_card(config, evaluation)` returns a `huggingface_hub.ModelCard` whose YAML header carries
`library_name`, tags, license, datasets and a `model-index` with every retrieval metric of the
evaluation (Recall@k, MRR@10, NDCG@10), and whose body says what the model is, how to use it, how it was trained
and what it scored. The pre-training script saves it as the checkpoint's `README.md`; `make_hf.hub.push_to_hub`
writes one when a folder has none. Every sentence of the body is in the Jinja template
(`make_hf/templates/model_card.md`); this module computes the values it fills in (towers, run, metrics, tables
rendered by `make_hf.results_tables`) and which of its texts apply.

Metadata choices:

- `library_name: transformers`. A MAKE checkpoint is a plain `transformers` checkpoint (safetensors weights,
  `config.json` with an `auto_map`, the model code shipped next to it), so `transformers` alone loads it with
  `trust_remote_code=True`. The Hub knows that library: it shows the right "use this model" snippet and counts
  downloads. `make_hf` is a tag (the Hub lists no `make_hf` library, so that name would show nothing useful).
- No `pipeline_tag`. The model outputs embeddings, but `feature-extraction` would make the Hub offer
  `pipeline("feature-extraction")`, which cannot pass a product (title and image) to MAKE; without a tag the Hub
  shows the `AutoModel.from_pretrained(..., trust_remote_code=True)` snippet, which works. The Hub has no
  text-to-multimodal retrieval pipeline, and `sentence-similarity` means sentence-transformers.
- `model-index`: one result per group of metrics of the evaluation (`make_hf.model_index`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .loss_terms import LOSS_TERMS
from .model_index import (
    eval_results_from_groups,
    is_breakdown,
    metric_groups,
    metric_sort_key,
    pretty_metric,
    read_json,
)
from .results_tables import markdown_table, warning_lines

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"
"""The Jinja template of the card's body (the Hub's own template format: `{{ card_data }}` is the YAML header). It
holds every sentence of the card; this module computes the values it fills in and picks which texts apply."""

LIBRARY_NAME = "transformers"
PIPELINE_TAG = None
"""No pipeline of transformers encodes a MAKE product (see the module docstring)."""
DEFAULT_TAGS = (
    "make_hf",
    "make",
    "product-retrieval",
    "text-to-multimodal-retrieval",
    "e-commerce",
    "vision-language",
    "multimodal",
    "contrastive-learning",
    "dense-retrieval",
    "custom_code",
)

PRESET_TRAINING_COMMANDS: dict[str, str] = {
    "make-small": "accelerate launch examples/pretrain.py",
    "make-base": (
        "accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 examples/pretrain.py \\\n"
        "    --model make-base --dataset logs/train.jsonl --output_dir outputs/make-base \\\n"
        "    --init_from_towers bert-base-uncased google/vit-base-patch16-224-in21k \\\n"
        "    --per_device_train_batch_size 256 --max_train_steps 100000 \\\n"
        "    --push_to_hub --hub_model_id org/make-base"
    ),
}
"""How to train each published preset; the template holds what each preset is and what it needs. Other presets
get the generic text and the plain pre-training command."""

_PRESET_RECIPES = {"make-small": "synthetic"}
"""The `--dataset` a preset's summary says it was trained on (from scratch); a run on other data or from
pretrained towers gets a summary of its own."""

_KNOWN_DATASETS = ("synthetic", "emoji-en", "emoji-zh")
"""The `--dataset` values the template describes by name; any other is the user's own data."""


# --------------------------------------------------------------------------------------------------- the run


def _checkpoint_name(checkpoint: str) -> str:
    """A checkpoint as the card names it: a local folder by its basename (its path means nothing elsewhere), a hub
    id as given."""
    return os.path.basename(os.path.normpath(checkpoint)) if os.path.exists(checkpoint) else checkpoint


def tower_initialisation(training_args: Mapping[str, Any]) -> dict[str, Any]:
    """How a run's towers started, from the pre-training arguments (`model`, `init_from_towers`,
    `init_image_tower`, `lock_image_tower`): `text_checkpoint` (the query and title towers' checkpoint), `model` (a
    saved model every tower came from, when no text checkpoint was given), `image_checkpoint`, `locked` (the image
    tower was frozen) and `from_scratch` (all of them None / False). The template puts it in words."""
    towers = training_args.get("init_from_towers") or []
    towers = [towers] if isinstance(towers, str) else list(towers)
    image = towers[1] if len(towers) > 1 else training_args.get("init_image_tower")
    model = str(training_args.get("model") or "")
    from .configuration_make import PRESET_NAMES

    start = {
        "text_checkpoint": _checkpoint_name(towers[0]) if towers else None,
        "model": _checkpoint_name(model) if not towers and model and model not in PRESET_NAMES
        and not model.endswith(".json") else None,
        "image_checkpoint": _checkpoint_name(image) if image else None,
        "locked": bool(training_args.get("lock_image_tower")),
    }
    start["from_scratch"] = not any(start.values())
    return start


def _card_texts(training_args: Mapping[str, Any] | None, preset: str | None) -> dict[str, Any]:
    """Which of the template's texts the card uses: `card_preset` (the published preset whose description applies,
    or None for the generic one), `summary_kind` and, for a card written for a run (its arguments hold `dataset`),
    the data it trained on and how its towers started, so that a card never describes the built-in demo for
    another run."""
    card_preset = preset if preset in PRESET_TRAINING_COMMANDS else None
    texts: dict[str, Any] = {
        "card_preset": card_preset,
        "summary_kind": card_preset or "generic",
        "run": None,
        "training_command": PRESET_TRAINING_COMMANDS.get(card_preset or "", "accelerate launch examples/pretrain.py"),
    }
    if not training_args or "dataset" not in training_args:
        return texts
    dataset = str(training_args["dataset"])
    towers = tower_initialisation(training_args)
    command = ["accelerate launch examples/pretrain.py"]
    for name in ("model", "dataset", "init_from_towers", "init_image_tower"):
        value = training_args.get(name)
        if value:
            value = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            command.append(f"--{name} {value}")
    if training_args.get("lock_image_tower"):
        command.append("--lock_image_tower")
    texts["run"] = {"data_kind": dataset if dataset in _KNOWN_DATASETS else "own", "towers": towers}
    texts["training_command"] = " \\\n    ".join(command)
    if preset in _PRESET_RECIPES and (_PRESET_RECIPES[preset] != dataset or not towers["from_scratch"]):
        texts["summary_kind"] = "run_of_preset"
    elif card_preset is None:
        texts["summary_kind"] = "run"
    return texts


# --------------------------------------------------------------------------------------------------- config


def _config_dict(config) -> dict:
    """A config as a plain dict, from a `PretrainedConfig`, a mapping, a `config.json` or a model folder."""
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        return read_json(path, "The config file")
    raise TypeError(
        f"`config` must be a MakeConfig, a dict, a config.json path or a model folder, got {type(config).__name__}."
    )


def _sub_config(config: dict, name: str) -> dict:
    value = config.get(name) or {}
    return value.to_dict() if hasattr(value, "to_dict") else dict(value)


def _describe_text_tower(tower: dict) -> str:
    if not tower:
        return "-"
    parts = [tower.get("model_type", "text encoder")]
    if "num_hidden_layers" in tower and "hidden_size" in tower:
        parts.append(f"{tower['num_hidden_layers']} layers, hidden {tower['hidden_size']}")
    if "num_attention_heads" in tower:
        parts.append(f"{tower['num_attention_heads']} heads")
    if "vocab_size" in tower:
        parts.append(f"vocabulary {tower['vocab_size']:,}")
    return ", ".join(str(part) for part in parts)


def _describe_vision_tower(tower: dict) -> str:
    if not tower:
        return "-"
    if tower.get("model_type") == "timm_wrapper":
        size = (tower.get("pretrained_cfg") or {}).get("input_size", [None, None, None])[-1]
        features = f", {tower['num_features']} features" if "num_features" in tower else ""
        return f"timm {tower.get('architecture', 'model')}{features}" + (f", {size} px" if size else "")
    parts = [tower.get("model_type", "image encoder")]
    if "num_hidden_layers" in tower and "hidden_size" in tower:
        parts.append(f"{tower['num_hidden_layers']} layers, hidden {tower['hidden_size']}")
    if "image_size" in tower:
        patch = f", patch {tower['patch_size']}" if "patch_size" in tower else ""
        parts.append(f"{tower['image_size']} px{patch}")
    return ", ".join(str(part) for part in parts)


def _format_count(count: int | None) -> str | None:
    if count is None:
        return None
    if count >= 1e9:
        return f"{count / 1e9:.2f} B"
    if count >= 1e6:
        return f"{count / 1e6:.1f} M"
    return f"{count:,}"


def _template_variables(config: dict) -> dict:
    query, title, vision = (_sub_config(config, key) for key in ("query_config", "title_config", "vision_config"))
    shared = bool(config.get("share_text_encoder", False))
    keyword = bool(config.get("keyword_enhancement", True))
    used = [
        (term.label, config.get(term.weight_name, term.default_weight))
        for term in LOSS_TERMS
        if keyword or not term.uses_keywords
    ]
    from .configuration_make import ARRANGEMENT_BEFORE_SHARING  # here: `make-hf --help` must not import torch

    title_shares = [
        text
        for key, text in (("share_projection", "projection"), ("tie_word_embeddings", "word embeddings (tied)"))
        if config.get(key, ARRANGEMENT_BEFORE_SHARING[key])
    ]
    logit_scale = config.get("logit_scale_init_value", math.log(1 / 0.07))
    return {
        "query_tower": _describe_text_tower(query),
        "title_tower": _describe_text_tower(title),
        "shared_text_encoder": shared,
        "title_shares": " and ".join(title_shares),
        "image_tower": _describe_vision_tower(vision),
        "projection_dim": config.get("projection_dim", 256),
        "text_pooling": config.get("text_pooling", "mean"),
        "vision_pooling": config.get("vision_pooling", "cls"),
        "fusion": config.get("fusion", "modal_adaptation"),
        "keyword_enhancement": keyword,
        "false_negative_masking": bool(config.get("false_negative_masking", False)),
        "temperature": f"{math.exp(-logit_scale):.3g}",
        "logit_scale_max": config.get("logit_scale_max", 100.0),
        "loss_weights": ", ".join(f"{name} {value:g}" for name, value in used),
    }


# --------------------------------------------------------------------------------------------------- metrics


def _evaluation_tables(groups) -> list[dict]:
    """One Markdown table per condition (first path element; a single table when the groups are not nested),
    rendered by `make_hf.results_tables.markdown_table` as the printed evaluation results are."""
    columns = []
    for _, metrics in groups:
        columns.extend(metric for metric in metrics if metric not in columns)
    columns.sort(key=metric_sort_key)
    header = [pretty_metric(column) for column in columns]
    nested = all(path for path, _ in groups)
    tables: dict[str, list] = {}
    for path, metrics in groups:
        title, rest = (path[0], path[1:]) if nested else ("", path)
        label = " / ".join(part.replace("=", ": ") for part in rest) or "all queries"
        tables.setdefault(title, []).append(
            [label] + [f"{metrics[column]:.3f}" if column in metrics else "-" for column in columns]
        )
    return [{"condition": title or None, "markdown": markdown_table(["queries", *header], rows)}
            for title, rows in tables.items()]


def _image_weights(evaluation: Mapping) -> dict[str, Any]:
    """The Modal Adaptation health metric of `make_hf.evaluation`: the mean image weight over products with a title
    and an image (`mean_image_weight`, or None) and per category group, else per category (`image_weight_groups`)."""
    mean = evaluation.get("mean_image_weight")
    groups: list[tuple[str, float]] = []
    for key in ("image_weight_by_category_group", "image_weight_by_category"):
        if isinstance(evaluation.get(key), Mapping):
            groups = [(str(name), value) for name, value in evaluation[key].items() if isinstance(value, (int, float))]
            break
    return {"mean_image_weight": mean if isinstance(mean, (int, float)) else None, "image_weight_groups": groups}


# --------------------------------------------------------------------------------------------------- the card


def generate_model_card(
    config,
    evaluation: Mapping | str | os.PathLike | None = None,
    *,
    model_id: str | None = None,
    preset: str | None = None,
    dataset_name: str = "synthetic shop",
    dataset_id: str | None = None,
    dataset_split: str = "test",
    datasets: list[str] | None = None,
    training_args: Mapping[str, Any] | None = None,
    num_parameters: int | None = None,
    license: str = "apache-2.0",
    language: str | list[str] | None = None,
    base_model: str | list[str] | None = None,
    tags: list[str] | None = None,
    model_index_breakdowns: bool = False,
    template_path: str | os.PathLike | None = None,
    **template_kwargs,
) -> ModelCard:
    """Fill the MAKE model card from a run's config and evaluation.

    Args:
        config: the model's `MakeConfig`, its dict, a `config.json` path or a saved model folder.
        evaluation: the evaluation result (mapping or JSON path; see `metric_groups`), or None for a card without
            results (no `model-index`).
        model_id: the repo id (`org/make-base`) or name shown as the title, in the usage snippet and as the
            model-index name. Defaults to the preset name, else "make-model"; the snippets then load
            `path/to/<name>` (pass `repo_id=` for the folder the model is in).
        preset: the `MakeConfig` preset the run started from (`make-small`, `make-base`, ...): picks the
            description, training command and requirements written for it.
        dataset_name: readable name of the evaluation set (model-index `dataset.name`).
        dataset_id: its id (model-index `dataset.type`; a Hub dataset id when there is one). Defaults to a slug
            of `dataset_name`.
        dataset_split: the evaluated split.
        datasets: the training datasets for the `datasets` metadata. Defaults to `[dataset_id]` when
            `dataset_id` is given.
        training_args: hyper-parameters to list (name -> value), e.g. the training script's parsed arguments.
            With the script's `dataset` (and `model`, `init_from_towers`, `init_image_tower`,
            `lock_image_tower`), the card states the data and the tower initialisation of that run.
        num_parameters: the model's parameter count (`model.num_parameters()`), shown in the details table.
        license, language, base_model, tags: metadata; `tags` are added to the default MAKE tags.
        model_index_breakdowns: also put the breakdowns (per query bucket, per category group) in the
            `model-index`; by default it holds each condition's headline numbers, and the card's tables show all.
        template_path: another Jinja template (default: `make_hf/templates/model_card.md`).
        **template_kwargs: overrides of any template variable (`summary`, `training_description`,
            `training_command`, `requirements`, `evaluation_description`, `no_results_text`, ...).

    Returns:
        A `huggingface_hub.ModelCard`; `card.save(folder / "README.md")` writes it, `card.data` is its metadata.
    """
    config_dict = _config_dict(config)
    name = model_id or preset or "make-model"
    dataset_type = dataset_id or re.sub(r"[^a-z0-9]+", "-", dataset_name.lower()).strip("-")

    eval_results, tables, image_weights, sizes, warnings = None, [], _image_weights({}), None, []
    if evaluation is not None:
        if isinstance(evaluation, (str, os.PathLike)):
            evaluation = read_json(evaluation, "The evaluation file")
        groups = metric_groups(evaluation)
        indexed = [group for group in groups if model_index_breakdowns or not is_breakdown(group[0])]
        eval_results = eval_results_from_groups(
            indexed, dataset_name=dataset_name, dataset_type=dataset_type, dataset_split=dataset_split
        )
        tables = _evaluation_tables(groups)
        image_weights = _image_weights(evaluation)
        if isinstance(evaluation.get("num_queries"), int) and isinstance(evaluation.get("num_products"), int):
            sizes = {"queries": f"{evaluation['num_queries']:,}", "products": f"{evaluation['num_products']:,}"}
            from .metrics import small_catalogue_warnings  # imports torch, which `make-hf --help` does not need

            recall_ks = {int(metric.split("@")[1]) for _, metrics in groups for metric in metrics
                         if metric.startswith("recall@")}
            warnings = small_catalogue_warnings(evaluation["num_products"], recall_ks)

    card_data = ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        license=license,
        language=language,
        base_model=base_model,
        datasets=datasets if datasets is not None else ([dataset_id] if dataset_id else None),
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *(tags or [])])),
        metrics=["recall", "mrr", "ndcg"] if eval_results else None,
        model_name=name if eval_results else None,
        eval_results=eval_results,
    )
    hyperparameters = [(str(key), _format_value(value)) for key, value in (training_args or {}).items()]
    variables = {
        **_card_texts(training_args, preset),
        **_template_variables(config_dict),
        "preset": preset,
        "model_id": name,
        # Without a repo id the snippets load a local folder: a made-up hub id would point at someone else's repo.
        "repo_id": model_id or f"path/to/{name}",
        "num_parameters": _format_count(num_parameters),
        "hyperparameters": hyperparameters,
        "dataset_name": dataset_name,
        "dataset_split": dataset_split,
        "evaluation_size": sizes,
        "evaluation_tables": tables,
        "evaluation_warnings": warning_lines(warnings),
        **image_weights,
        **template_kwargs,
    }
    return ModelCard.from_template(card_data, template_path=str(template_path or TEMPLATE_PATH), **variables)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(item) for item in value)
    return str(value).replace("|", "\\|")


def _preset_parameter_count(config) -> int | None:
    """Parameters of a model built from `config`, counted on the meta device (no memory, no init)."""
    import torch

    from .modeling_make import MakeModel

    with torch.device("meta"):
        return MakeModel(config).num_parameters()


def main(argv=None) -> int:
    """Write the card of a preset (and optionally a run's evaluation): `python -m make_hf.modelcard --preset
    make-base --output model_cards/make-base/README.md`."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="a MakeConfig preset name")
    source.add_argument("--model", help="a saved model folder (its config.json)")
    parser.add_argument("--card-preset", help="preset whose description to use with --model")
    parser.add_argument("--evaluation", help="evaluation JSON of the run")
    parser.add_argument("--model-id", help="repo id shown in the card (default: org/<preset>)")
    parser.add_argument("--dataset-name", default="synthetic shop")
    parser.add_argument("--output", required=True, help="where to write the card (README.md)")
    args = parser.parse_args(argv)

    if args.preset:
        from .configuration_make import MakeConfig

        config, preset = MakeConfig.from_preset(args.preset), args.preset
        num_parameters = _preset_parameter_count(config)
    else:
        config, preset, num_parameters = args.model, args.card_preset, None
    card = generate_model_card(
        config,
        args.evaluation,
        model_id=args.model_id or f"org/{preset or 'make-model'}",
        preset=preset,
        dataset_name=args.dataset_name,
        num_parameters=num_parameters,
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    card.save(args.output)
    print(f"Wrote {args.output}")
    return 0


__all__ = [
    "DEFAULT_TAGS",
    "LIBRARY_NAME",
    "PIPELINE_TAG",
    "PRESET_TRAINING_COMMANDS",
    "TEMPLATE_PATH",
    "eval_results_from_groups",
    "generate_model_card",
    "is_breakdown",
    "metric_groups",
    "tower_initialisation",
]


if __name__ == "__main__":
    raise SystemExit(main())
