"""Loading the encoders ("towers") that a MAKE model is composed of: from a config, a loaded model, or a checkpoint.

`compose_towers` is what `MakeModel.from_towers` runs: it loads the query, title and image encoders from hub ids or
local folders (plain transformers or sentence-transformers layout), drops their poolers (MAKE pools itself),
optionally shortens the query encoder to evenly spaced layers, and builds the `MakeConfig` that describes them.
`tower_from_config` and `without_pooler` are also what `MakeModel.__init__` builds its towers with.
"""

import copy
import inspect
import json
import os

from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.utils import cached_file, logging

from .configuration_make import MakeConfig


logger = logging.get_logger(__name__)

TowerSpec = str | os.PathLike | PreTrainedModel | PreTrainedConfig
"""A tower as `MakeModel.from_towers` takes it: a hub id or folder, a loaded model, or a config (random weights)."""


def _model_class_accepts(config: PreTrainedConfig, argument: str) -> bool:
    """Whether the class that `AutoModel` builds for `config` takes `argument` in its `__init__`."""
    try:
        model_class = AutoModel._model_mapping[type(config)]
    except (KeyError, ValueError):
        return False
    return argument in inspect.signature(model_class.__init__).parameters


def without_pooler(tower: PreTrainedModel) -> PreTrainedModel:
    """`tower` with its pooler removed, in place (returned for chaining)."""
    # Towers are pooled by MAKE itself; an unused pooler would hold parameters that never get a gradient.
    if isinstance(getattr(tower, "pooler", None), nn.Module):
        tower.pooler = None
    return tower


def tower_from_config(config: PreTrainedConfig, keep_pooler: bool) -> PreTrainedModel:
    """A randomly initialised `AutoModel` for `config`, built without a pooler unless `keep_pooler`."""
    kwargs = {}
    if not keep_pooler and _model_class_accepts(config, "add_pooling_layer"):
        kwargs["add_pooling_layer"] = False
    tower = AutoModel.from_config(config, **kwargs)
    return tower if keep_pooler else without_pooler(tower)


def sentence_transformers_layout(name_or_path: str, **hub_kwargs) -> tuple[str, str | None]:
    """
    The sub-folder holding the transformer of a sentence-transformers checkpoint and its pooling mode.

    Returns `("", None)` for a plain transformers checkpoint.
    """
    try:
        modules_file = cached_file(
            name_or_path,
            "modules.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
    except (OSError, ValueError):
        modules_file = None
    if modules_file is None:
        return "", None
    with open(modules_file, encoding="utf-8") as f:
        modules = json.load(f)
    subfolder, pooling = "", None
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("models.Transformer"):
            subfolder = module.get("path", "")
        elif kind.endswith("models.Pooling"):
            try:
                pooling_file = cached_file(name_or_path, f"{module['path']}/config.json", **hub_kwargs)
                with open(pooling_file, encoding="utf-8") as f:
                    pooling_config = json.load(f)
            except (OSError, ValueError, KeyError):
                continue
            if pooling_config.get("pooling_mode_mean_tokens"):
                pooling = "mean"
            elif pooling_config.get("pooling_mode_cls_token"):
                pooling = "cls"
            else:
                logger.warning(
                    f"{name_or_path}: sentence-transformers pooling {pooling_config} is neither mean nor CLS; MAKE "
                    "supports those two (`text_pooling`), using the MakeConfig default."
                )
    return subfolder, pooling


def load_tower(
    spec: TowerSpec, role: str, keep_pooler: bool, tower_kwargs: dict
) -> tuple[PreTrainedModel, str | None]:
    """Returns `(tower, pooling mode declared by a sentence-transformers checkpoint or None)`; `role` names the
    argument in errors."""
    if isinstance(spec, PreTrainedModel):
        return (spec if keep_pooler else without_pooler(spec)), None
    if isinstance(spec, PreTrainedConfig):
        return tower_from_config(spec, keep_pooler), None
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(
            f"`{role}` must be a hub id or folder, a PreTrainedModel or a PreTrainedConfig; got {type(spec)}."
        )
    spec = str(spec)
    hub_keys = ("revision", "cache_dir", "token", "local_files_only")
    hub_kwargs = {key: value for key, value in tower_kwargs.items() if key in hub_keys}
    subfolder, pooling = sentence_transformers_layout(spec, **hub_kwargs)
    if subfolder:
        hub_kwargs["subfolder"] = subfolder
    load_kwargs = dict(tower_kwargs)
    if subfolder:
        load_kwargs["subfolder"] = subfolder
    config = AutoConfig.from_pretrained(spec, **hub_kwargs)
    if not keep_pooler and _model_class_accepts(config, "add_pooling_layer"):
        load_kwargs["add_pooling_layer"] = False
    tower = AutoModel.from_pretrained(spec, config=config, **load_kwargs)
    return (tower if keep_pooler else without_pooler(tower)), pooling


def keep_evenly_spaced_layers(tower: PreTrainedModel, num_layers: int) -> PreTrainedModel:
    """
    Shorten a BERT-style text encoder (`tower.encoder.layer`) to `num_layers` evenly spaced layers, in place.

    Layers `i * L // num_layers` are kept (0, 2, 4 of 6), the initialisation DistilBERT uses for a student half the
    depth of its teacher; `config.num_hidden_layers` follows.
    """
    layers = getattr(getattr(tower, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"Cannot shorten a {type(tower).__name__}: it has no `encoder.layer` list; leave "
            "`query_num_hidden_layers` unset for this query encoder."
        )
    total = len(layers)
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= total:
        raise ValueError(f"`query_num_hidden_layers` must be an integer in [1, {total}], got {num_layers!r}.")
    tower.encoder.layer = nn.ModuleList(layers[index * total // num_layers] for index in range(num_layers))
    tower.config.num_hidden_layers = num_layers
    return tower


def compose_towers(
    query: TowerSpec,
    title: TowerSpec | None = None,
    vision: TowerSpec | None = None,
    tower_kwargs: dict | None = None,
    query_num_hidden_layers: int | None = None,
    **config_kwargs,
) -> tuple[MakeConfig, dict[str, PreTrainedModel | None]]:
    """
    Load the towers of a MAKE model and the `MakeConfig` describing them (see `MakeModel.from_towers`, which takes
    the same arguments).

    Returns:
        `(config, towers)`, `towers` being the `query_model`, `title_model` (None with `share_text_encoder=True`) and
        `vision_model` keyword arguments of `MakeModel`.
    """
    if vision is None:
        raise ValueError(
            "`vision` is required: pass an image encoder checkpoint (hub id or folder), a loaded model, or a "
            "vision config such as `ViTConfig(...)` for a randomly initialised one."
        )
    share = config_kwargs.get("share_text_encoder", False)
    if share and title is not None:
        raise ValueError("`title` must be omitted with `share_text_encoder=True`: titles use the query encoder.")
    tower_kwargs = dict(tower_kwargs or {})
    keep_vision_pooler = config_kwargs.get("vision_pooling", "cls") == "pooler"

    own_title_checkpoint = title is not None
    if not share and title is None:
        title = copy.deepcopy(query) if isinstance(query, (PreTrainedModel, PreTrainedConfig)) else query
    query_model, query_pooling = load_tower(query, "query", False, tower_kwargs)
    title_model = None
    if not share:
        if isinstance(title, (str, os.PathLike)) and os.fspath(title) == os.fspath(query):
            # One checkpoint for both text towers: load it once (one download, one load report) and copy it.
            title_model, title_pooling = copy.deepcopy(query_model), query_pooling
            own_title_checkpoint = False
        else:
            title_model, title_pooling = load_tower(title, "title", False, tower_kwargs)
        if query_pooling and title_pooling and query_pooling != title_pooling:
            logger.warning(
                f"The query checkpoint pools with {query_pooling!r} but the title checkpoint with "
                f"{title_pooling!r}; MAKE uses one `text_pooling` ({query_pooling!r})."
            )
    if query_num_hidden_layers is not None:
        query_model = keep_evenly_spaced_layers(query_model, query_num_hidden_layers)
    vision_model, _ = load_tower(vision, "vision", keep_vision_pooler, tower_kwargs)
    if vision_model.config.model_type == "timm_wrapper":
        # A timm CNN's last hidden state is a feature map; its own pooled features are what MAKE projects.
        config_kwargs.setdefault("vision_pooling", "pooler")
    if query_pooling is not None:
        config_kwargs.setdefault("text_pooling", query_pooling)

    # Copies: building the composite config resets the attention implementation of the sub-configs it is given.
    config = MakeConfig(
        query_config=copy.deepcopy(query_model.config),
        title_config=None if share else copy.deepcopy(title_model.config),
        vision_config=copy.deepcopy(vision_model.config),
        **config_kwargs,
    )
    if own_title_checkpoint and config.tie_word_embeddings:
        logger.warning(
            "The title encoder's word embeddings are replaced by the query encoder's (`tie_word_embeddings=True`, "
            "the default: one matrix for both text towers); pass `tie_word_embeddings=False` to keep its own."
        )
    return config, {"query_model": query_model, "title_model": title_model, "vision_model": vision_model}


__all__ = [
    "compose_towers",
    "keep_evenly_spaced_layers",
    "load_tower",
    "sentence_transformers_layout",
    "tower_from_config",
    "without_pooler",
]
