"""MAKE model configuration.

`MakeConfig` describes the three encoders of MAKE (query, title, image), how their outputs are pooled, projected and
fused into one product vector, and how the contrastive pre-training losses are weighted. Named presets
(`MakeConfig.from_preset`) give the sizes used for tests, the CPU demo and a BERT-base/ViT-B/16 model, plus the
baselines and ablations, all of which are settings of the same code.

The abstract of MAKE (Zheng et al., WWW 2023 Companion, arXiv 2301.12646) gives no formulas; every field marked
"(ours)" below is a choice this implementation makes where the paper is silent.
"""

import copy
import math

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging

from .loss_terms import LOSS_TERMS, LOSS_WEIGHT_NAMES, check_loss_fields


logger = logging.get_logger(__name__)

TEXT_POOLING_MODES = ("mean", "cls")
VISION_POOLING_MODES = ("cls", "mean", "pooler")
FUSION_MODES = ("modal_adaptation", "mean", "title", "image")
# What a saved config without the tower-sharing fields was built with (both fields default to on).
ARRANGEMENT_BEFORE_SHARING = {"share_projection": False, "tie_word_embeddings": False}
_DEFAULT_WEIGHTS = {term.weight_name: term.default_weight for term in LOSS_TERMS}

# Tower sizes per preset size. Text towers are BERT, the image tower is ViT.
_TOWER_SIZES = {
    "tiny": {
        "text": dict(
            vocab_size=1024,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
        "vision": dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
        ),
        "projection_dim": 32,
    },
    "small": {
        "text": dict(
            vocab_size=8192,
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=1024,
            max_position_embeddings=128,
        ),
        "vision": dict(
            image_size=64,
            patch_size=8,
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=1024,
        ),
        "projection_dim": 256,
    },
    "base": {
        # BERT-base text towers and ViT-B/16 at 224 px.
        "text": dict(
            vocab_size=30522,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
        ),
        "vision": dict(
            image_size=224,
            patch_size=16,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
        ),
        "projection_dim": 256,
    },
}

# Method settings per preset name; sizes come from `_TOWER_SIZES`.
_PRESET_SETTINGS = {
    "make": {},
    "clip": dict(share_text_encoder=True, fusion="mean", keyword_enhancement=False),
    "make-no-ma": dict(fusion="mean"),
    "make-no-ke": dict(keyword_enhancement=False),
    "make-shared-encoder": dict(share_text_encoder=True),
    "make-fn-mask": dict(false_negative_masking=True),
}
PRESET_NAMES = (
    "make-tiny",
    "make-small",
    "make-base",
    "clip",
    "make-no-ma",
    "make-no-ke",
    "make-shared-encoder",
    "make-fn-mask",
)


class MakeConfig(PreTrainedConfig):
    r"""
    Configuration of a [`MakeModel`]: three encoders (query, title, image), projections into one space, Modal
    Adaptation fusion of title and image, and the weights of the contrastive losses.

    Args:
        query_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the query encoder, any Hugging Face text encoder (default: BERT). Also encodes the title
            keywords (Keyword Enhancement) and, with `share_text_encoder=True`, the titles.
        title_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the title encoder. Defaults to a copy of `query_config`. Must be left `None` when
            `share_text_encoder=True` (there is no title encoder then).
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the image encoder, any Hugging Face vision encoder (default: ViT). Its `image_size` is the size
            the processor must produce. A timm tower (`TimmWrapperConfig`, e.g. the EfficientNet-Lite of
            `make_hf.image_towers.convert_efficientnet_lite`) brings its preprocessing in `pretrained_cfg` and its
            width in `num_features` (used as its `hidden_size`); pool it with `vision_pooling="pooler"`.
        projection_dim (`int`, defaults to 256):
            Size of the shared embedding space; projections are bias-free linear maps.
        text_pooling (`str`, defaults to `"mean"`):
            `"mean"` over non-padding tokens or `"cls"` (first token) for the query, title and keyword encodings.
        vision_pooling (`str`, defaults to `"cls"`):
            (ours) `"cls"` (first token, ViT-style), `"mean"` over tokens / spatial positions, or `"pooler"` (the
            encoder's own `pooler_output`, e.g. for CNNs or CLIP vision towers).
        share_text_encoder (`bool`, defaults to `False`):
            If `True`, titles go through the query encoder and its projection (one text tower, as in CLIP); MAKE
            uses a separate query encoder.
        share_projection (`bool`, defaults to `True`):
            (ours) Project titles with the query encoder's projection: two text encoders, one map into the shared
            space (ADE-SPE in Dong et al. 2022, "Exploring Dual Encoder Architectures for Question Answering"). On by
            default: with a projection per tower the separate query encoder trains worse than one shared encoder
            (README, "Two text towers that train like one"). Needs equal query and title hidden sizes; implied by
            `share_text_encoder`.
        tie_word_embeddings (`bool`, defaults to `True`):
            (ours) The title encoder uses the query encoder's word-embedding matrix (ADE-STE in Dong et al. 2022),
            tied through transformers' tied-weights mechanism, so checkpoints store it once. On by default for the
            same reason; it matters most for towers trained from scratch, whose query tower would otherwise learn its
            words from short queries alone. Needs a title encoder with the query encoder's vocabulary and embedding
            size; implied by `share_text_encoder`. A saved config without these two fields predates them and loads
            with both off, the arrangement it was trained with.
        fusion (`str`, defaults to `"modal_adaptation"`):
            How title and image embeddings make the product embedding: `"modal_adaptation"` (learned per-product
            weights), `"mean"` (equal weights), `"title"` or `"image"` (one modality; the other is used only when the
            preferred one is missing). The last three are baselines.
        modal_adaptation_hidden_size (`int`, *optional*):
            (ours) Hidden size of the Modal Adaptation MLP over `[t, v, t*v]`; defaults to `projection_dim`.
        keyword_enhancement (`bool`, defaults to `True`):
            Train the query encoder on title keywords too: `k->t` against the title embedding and `q<->k` on pairs
            whose keyword terms cover every query term (ours, see "Design choices" in the README).
        false_negative_masking (`bool`, defaults to `False`):
            (ours) Remove from the query-side softmax the batch products, other than the positives, whose keyword
            terms cover every query term. Needs `query_term_ids` and `keyword_term_ids` in the batch.
        {loss_weights}: one weight per loss term of `make_hf.loss_terms.LOSS_TERMS` (listed from the table).
        logit_scale_init_value (`float`, defaults to 2.6592):
            Initial value of the learnable log logit scale, `log(1 / 0.07)` as in CLIP; shared by all losses.
        logit_scale_max (`float`, defaults to 100.0):
            Cap of the logit scale (not its log), as in CLIP.
        initializer_factor (`float`, defaults to 1.0):
            Multiplier of the standard deviations used to initialise the projections and the fusion MLP.

    Example:

    ```python
    >>> from make_hf import MakeConfig, MakeModel

    >>> config = MakeConfig.from_preset("make-small")
    >>> model = MakeModel(config)
    >>> config.vision_config.image_size
    64
    ```
    """

    model_type = "make"
    sub_configs_defaults = {
        "query_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "title_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", optional=True),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit"),
    }

    query_config: dict | PreTrainedConfig | None = None
    title_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 256
    text_pooling: str = "mean"
    vision_pooling: str = "cls"
    share_text_encoder: bool = False
    share_projection: bool = True
    tie_word_embeddings: bool = True
    fusion: str = "modal_adaptation"
    modal_adaptation_hidden_size: int | None = None
    keyword_enhancement: bool = True
    false_negative_masking: bool = False
    # One weight per row of LOSS_TERMS, defaults from the table (written out: dataclass fields cannot be generated).
    query_product_loss_weight: float = _DEFAULT_WEIGHTS["query_product_loss_weight"]
    title_image_loss_weight: float = _DEFAULT_WEIGHTS["title_image_loss_weight"]
    query_title_loss_weight: float = _DEFAULT_WEIGHTS["query_title_loss_weight"]
    query_image_loss_weight: float = _DEFAULT_WEIGHTS["query_image_loss_weight"]
    keyword_title_loss_weight: float = _DEFAULT_WEIGHTS["keyword_title_loss_weight"]
    query_keyword_loss_weight: float = _DEFAULT_WEIGHTS["query_keyword_loss_weight"]
    logit_scale_init_value: float = 2.6592
    logit_scale_max: float = 100.0
    initializer_factor: float = 1.0

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "MakeConfig":
        """Load a saved config; one saved before the tower-sharing fields existed keeps its separate arrangement."""
        return super().from_dict({**ARRANGEMENT_BEFORE_SHARING, **config_dict}, **kwargs)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.title_config is None and not self.share_text_encoder:
            self.title_config = copy.deepcopy(self.query_config)
        for sub_config in (self.query_config, self.title_config, self.vision_config):
            # timm towers (`TimmWrapperConfig`) name their output width `num_features`; MAKE projects `hidden_size`.
            if sub_config is not None and getattr(sub_config, "hidden_size", None) is None:
                if getattr(sub_config, "num_features", None) is not None:
                    sub_config.hidden_size = sub_config.num_features
        self.validate_make()

    def validate(self):
        """Run the generic transformers checks, then the MAKE-specific ones (also called at save time)."""
        super().validate()
        self.validate_make()

    def validate_make(self):
        """Raise a `ValueError` naming the field and what to do for any impossible combination of settings."""
        if self.text_pooling not in TEXT_POOLING_MODES:
            raise ValueError(f"`text_pooling` must be one of {TEXT_POOLING_MODES}, got {self.text_pooling!r}.")
        if self.vision_pooling not in VISION_POOLING_MODES:
            raise ValueError(f"`vision_pooling` must be one of {VISION_POOLING_MODES}, got {self.vision_pooling!r}.")
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"`fusion` must be one of {FUSION_MODES}, got {self.fusion!r}.")
        if not isinstance(self.projection_dim, int) or self.projection_dim <= 0:
            raise ValueError(f"`projection_dim` must be a positive integer, got {self.projection_dim!r}.")
        if self.modal_adaptation_hidden_size is not None and (
            not isinstance(self.modal_adaptation_hidden_size, int) or self.modal_adaptation_hidden_size <= 0
        ):
            raise ValueError(
                "`modal_adaptation_hidden_size` must be a positive integer or None (= projection_dim), got "
                f"{self.modal_adaptation_hidden_size!r}."
            )
        if self.share_text_encoder and self.title_config is not None:
            raise ValueError(
                "`title_config` must be None when `share_text_encoder=True`: titles then go through the query "
                "encoder. Drop `title_config`, or set `share_text_encoder=False` to keep a separate title encoder."
            )
        if not self.share_text_encoder and self.title_config is None:
            raise ValueError("`title_config` is None but `share_text_encoder=False`: give a title encoder config.")
        if getattr(self.vision_config, "model_type", None) == "timm_wrapper" and self.vision_pooling == "cls":
            raise ValueError(
                "`vision_pooling='cls'` takes the first token of a ViT, but the image encoder is a timm CNN whose "
                "last hidden state is a feature map; use `vision_pooling='pooler'` (its own pooled features) or "
                "'mean'."
            )
        if self.share_projection and self.title_config is not None:
            sizes = (self.query_config.hidden_size, self.title_config.hidden_size)
            if sizes[0] != sizes[1]:
                raise ValueError(
                    f"`share_projection=True` needs equal query and title hidden sizes, got {sizes[0]} and "
                    f"{sizes[1]}; use towers of one width or set `share_projection=False`"
                    + (" and `tie_word_embeddings=False`." if self.tie_word_embeddings else ".")
                )
        if self.tie_word_embeddings and self.title_config is not None:
            for attribute in ("vocab_size", "hidden_size"):
                values = (getattr(self.query_config, attribute, None), getattr(self.title_config, attribute, None))
                if values[0] != values[1]:
                    raise ValueError(
                        f"`tie_word_embeddings=True` needs the query and title encoders to share `{attribute}`, got "
                        f"{values[0]} and {values[1]}; use one tokenizer and width for both or set "
                        "`tie_word_embeddings=False`."
                    )
        for name in ("query_config", "title_config", "vision_config"):
            sub_config = getattr(self, name)
            if sub_config is not None and getattr(sub_config, "hidden_size", None) is None:
                raise ValueError(
                    f"`{name}` ({type(sub_config).__name__}) has no `hidden_size`; use an encoder config "
                    "(e.g. BertConfig, ViTConfig) whose outputs have a hidden size to project, or a timm tower config "
                    "with `num_features`."
                )
        for name in LOSS_WEIGHT_NAMES:
            weight = getattr(self, name)
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0 or math.isnan(weight):
                raise ValueError(f"`{name}` must be a non-negative number, got {weight!r}.")
        if all(getattr(self, n) == 0 for n in LOSS_WEIGHT_NAMES):
            raise ValueError("All loss weights are 0: set at least one `*_loss_weight` above 0.")
        if not self.logit_scale_max > 1.0:
            raise ValueError(f"`logit_scale_max` must be above 1.0, got {self.logit_scale_max!r}.")
        if self.logit_scale_init_value > math.log(self.logit_scale_max):
            raise ValueError(
                f"`logit_scale_init_value` ({self.logit_scale_init_value}) is above log(`logit_scale_max`) "
                f"({math.log(self.logit_scale_max):.4f}); lower it or raise `logit_scale_max`."
            )

    @classmethod
    def from_preset(cls, name: str, size: str | None = None, **overrides) -> "MakeConfig":
        """
        Build a named configuration.

        Args:
            name (`str`):
                `make-tiny` (tests), `make-small` (CPU demo), `make-base` (BERT-base text towers, ViT-B/16 at 224),
                or a baseline / ablation of the same code: `clip` (one shared text encoder, mean fusion, no keyword
                enhancement), `make-no-ma` (mean fusion), `make-no-ke` (no keyword losses), `make-shared-encoder`,
                `make-fn-mask` (false-negative masking on).
            size (`str`, *optional*):
                `tiny`, `small` or `base`: tower sizes for the baselines (default `small`).
            overrides:
                Any `MakeConfig` field (`projection_dim=128`, `fusion="mean"`, ...); `vocab_size` (both text
                encoders); `image_size` and `patch_size` (image encoder); or a sub-config attribute with a prefix:
                `text_` (both text encoders), `query_`, `title_`, `vision_`, e.g. `text_num_hidden_layers=2`.

        Example:

        ```python
        >>> config = MakeConfig.from_preset("clip", size="tiny", vocab_size=500)
        >>> config.share_text_encoder, config.query_config.vocab_size
        (True, 500)
        ```
        """
        if name not in PRESET_NAMES:
            raise ValueError(f"Unknown preset {name!r}; choose one of {PRESET_NAMES}.")
        if name in ("make-tiny", "make-small", "make-base"):
            preset_size = name.split("-")[1]
            if size is not None and size != preset_size:
                raise ValueError(
                    f"Preset {name!r} fixes size={preset_size!r}, got size={size!r}; pick the preset of that size "
                    "(make-tiny / make-small / make-base) instead."
                )
            size, settings = preset_size, _PRESET_SETTINGS["make"]
        else:
            size = size or "small"
            settings = _PRESET_SETTINGS[name]
        if size not in _TOWER_SIZES:
            raise ValueError(f"`size` must be one of {tuple(_TOWER_SIZES)}, got {size!r}.")

        sizes = _TOWER_SIZES[size]
        text = dict(sizes["text"])
        query, title, vision = dict(text), dict(text), dict(sizes["vision"])
        fields = {"projection_dim": sizes["projection_dim"], **settings}

        field_names = set(cls.__dataclass_fields__)
        reference = {"text": AutoConfig.for_model("bert"), "vision": AutoConfig.for_model("vit")}
        for key, value in overrides.items():
            if key in field_names:
                fields[key] = value
            elif key == "vocab_size":
                query[key] = title[key] = value
            elif key in ("image_size", "patch_size"):
                vision[key] = value
            else:
                for prefix, targets, kind in (
                    ("text_", (query, title), "text"),
                    ("query_", (query,), "text"),
                    ("title_", (title,), "text"),
                    ("vision_", (vision,), "vision"),
                ):
                    attribute = key[len(prefix) :]
                    if key.startswith(prefix) and hasattr(reference[kind], attribute):
                        for target in targets:
                            target[attribute] = value
                        break
                else:
                    raise ValueError(
                        f"Unknown override {key!r} for preset {name!r}: use a MakeConfig field, `vocab_size`, "
                        "`image_size`, `patch_size`, or a sub-config attribute prefixed with `text_`, `query_`, "
                        "`title_` or `vision_` (e.g. `text_num_hidden_layers=2`)."
                    )

        share = fields.get("share_text_encoder", False)
        if share and any(key.startswith("title_") and key not in field_names for key in overrides):
            raise ValueError(f"Preset {name!r} shares the text encoder: there is no title encoder to override.")
        fields.setdefault("query_config", {"model_type": "bert", **query})
        fields.setdefault("vision_config", {"model_type": "vit", **vision})
        if not share:
            fields.setdefault("title_config", {"model_type": "bert", **title})
        return cls(**fields)


check_loss_fields(MakeConfig, "weight_name")
MakeConfig.__doc__ = MakeConfig.__doc__.replace(
    "        {loss_weights}: one weight per loss term of `make_hf.loss_terms.LOSS_TERMS` (listed from the table).",
    "\n".join(
        f"        {term.weight_name} (`float`, defaults to {term.default_weight:g}): "
        + ("" if term.name == "query_product_loss" else "(ours) ")
        + f"weight of the {term.label} loss. {term.description}"
        for term in LOSS_TERMS
    ),
)
MakeConfig.register_for_auto_class()

__all__ = ["MakeConfig", "PRESET_NAMES"]

if __package__ == "make_hf":  # the installed package, not a copy loaded as remote code
    from .auto_registration import register_auto_classes

    register_auto_classes()
