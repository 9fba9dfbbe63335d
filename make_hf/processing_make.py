"""Processor for MAKE: one call turns queries, titles and product images into the inputs of `MakeModel`.

`MakeProcessor` bundles a BERT-style tokenizer (queries, titles and keyword strings), a PIL-backend image
processor (no torchvision needed) and a `KeywordExtractor` (Keyword Enhancement). Its output keys are the
argument names of `MakeModel.forward`, so `model(**processor(query=..., title=..., images=...))` just works.

The keyword extractor's fitted state is a JSON-able `__init__` argument (`keyword_extractor_state`), written to
`processor_config.json` by `save_pretrained` and restored by `from_pretrained` / `AutoProcessor`; `ProcessorMixin`
would silently drop it as a separate component. The image processor's backend (`image_backend`: "pil" for the
processors `from_config` builds) is recorded the same way and restored by `from_pretrained`: the saved image
processor JSON names the same class for the PIL and the torchvision backend, `AutoImageProcessor` picks torchvision
whenever it is installed, and the two resize differently, so without the record a reloaded processor would give
other pixel values (and a reloaded model other product embeddings) than the saved one.

Only torch, numpy, PIL, transformers, the standard library and the sibling modules are imported (relatively):
this file is copied next to a saved processor and loaded as remote code (`trust_remote_code=True`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import AutoImageProcessor, BatchFeature, ProcessorMixin
from transformers.utils import logging

from .hub_access import hub_access
from .image_towers import image_processor_for
from .image_utils import InvalidInputTypeError, load_images
from .keywords import KeywordExtractor, hash_term


logger = logging.get_logger(__name__)

LEGACY_IMAGE_BACKEND = "pil"
"""The backend of processors saved before the backend was recorded: MakeProcessor has always built PIL ones."""

MAX_TEXT_LENGTH = 8192
"""The largest `query_max_length` / `title_max_length` accepted. Every call pads to these lengths, so a crafted
`processor_config.json` with a huge value would allocate gigabytes on the first call; no MAKE text tower has
anywhere near this many position embeddings."""

MAX_NUM_KEYWORDS = 1024
"""The largest `num_keywords` accepted: the keyword string is truncated to `query_max_length` tokens anyway."""

# Tokenizers without a known limit report `transformers.tokenization_utils_base.VERY_LARGE_INTEGER` (1e30).
_UNSET_MODEL_MAX_LENGTH = 10**12


TEXT_KEYS = {
    "query": ("query_input_ids", "query_attention_mask"),
    "title": ("title_input_ids", "title_attention_mask"),
    "keywords": ("keyword_input_ids", "keyword_attention_mask"),
}


def is_query_text(value: Any) -> bool:
    """Whether `value` can be a query: a string with at least one non-blank character. The one rule the processor,
    the encoders, the training data and the evaluation sets all apply."""
    return isinstance(value, str) and bool(value.strip())


def _as_batch(value: Any, argument: str) -> list[Any]:
    """A single string -> a batch of one; a list/tuple -> a list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise InvalidInputTypeError(
        f"`{argument}` must be a string or a list of strings, got {type(value).__name__}."
    )


class MakeProcessor(ProcessorMixin):
    r"""Tokenizer + PIL image processor + keyword extractor for MAKE.

    Args:
        image_processor (`BaseImageProcessor`):
            A PIL-backend image processor (e.g. `ViTImageProcessorPil`, `CLIPImageProcessorPil`) producing what the
            vision tower expects. `MakeProcessor.from_config` builds the matching one
            (`make_hf.image_towers.image_processor_for`).
        tokenizer (`PreTrainedTokenizerBase`):
            The text tokenizer for queries, titles and keywords (e.g. from `make_hf.tokenization.train_tokenizer`).
        keyword_extractor_state (`dict` or `KeywordExtractor`, *optional*):
            The keyword extractor's state (`KeywordExtractor.to_dict()`); None starts an unfitted one. Fit it with
            `fit_keywords`.
        query_max_length (`int`, defaults to 16):
            Queries and keyword strings are padded/truncated to this many tokens (short, query-like). At most the
            tokenizer's `model_max_length` (when it has one) and `MAX_TEXT_LENGTH`.
        title_max_length (`int`, defaults to 64):
            Titles are padded/truncated to this many tokens; bounded like `query_max_length`.
        num_keywords (`int`, defaults to 8):
            Keywords extracted per title; at most `MAX_NUM_KEYWORDS`.
        extract_keywords (`bool`, defaults to True):
            Whether training-style calls (both `query` and `title` given, no `keywords`) extract keywords from
            the titles. Set from `config.keyword_enhancement` by `from_config`; a call's `extract_keywords=`
            overrides it.
        image_backend (`str`, *optional*):
            The backend (`"pil"` or `"torchvision"`) the image processor was saved with, passed by `from_pretrained`,
            which loads the image processor with that backend. The attribute of the same name always holds the
            backend of `image_processor` and is what `save_pretrained` records.

    Outputs (a `BatchFeature`, keys present when their inputs are):
        - `query_input_ids`, `query_attention_mask` (B, query_max_length)
        - `title_input_ids`, `title_attention_mask` (B, title_max_length); a row without a title (`None` or
          blank) is padding with an all-zero mask.
        - `pixel_values` (B, 3, H, W) float and `image_mask` (B,) long; rows without an image are zeros with mask 0.
        - `keyword_input_ids`, `keyword_attention_mask` (B, query_max_length): the keyword strings (the extracted
          terms joined by spaces, in title order). A title without informative terms, a missing title or a `None`
          explicit keyword row gives an empty string: `[CLS] [SEP]` and no terms.
        - `keyword_term_ids` (B, query_max_length) and, with a query, `query_term_ids` (B, query_max_length):
          hashed normalised terms (`make_hf.keywords.hash_term`), unique per row, padded with 0. Row i's keywords
          cover query j when query j's nonzero ids are a non-empty subset of row i's.

    Example:
        ```python
        >>> from make_hf import MakeConfig, MakeModel, MakeProcessor, train_tokenizer
        >>> config = MakeConfig.from_preset("make-tiny")
        >>> tokenizer = train_tokenizer(queries + titles, vocab_size=config.query_config.vocab_size)
        >>> processor = MakeProcessor.from_config(config, tokenizer).fit_keywords(titles, queries)
        >>> batch = processor(query=["red sneakers"], title=["2024 new red running sneakers"], images=[image])
        >>> outputs = MakeModel(config)(**batch, return_loss=True)
        ```
    """

    def __init__(
        self,
        image_processor,
        tokenizer,
        keyword_extractor_state: dict[str, Any] | KeywordExtractor | None = None,
        query_max_length: int = 16,
        title_max_length: int = 64,
        num_keywords: int = 8,
        extract_keywords: bool = True,
        image_backend: str | None = None,
    ):
        for name, value in (
            ("query_max_length", query_max_length),
            ("title_max_length", title_max_length),
            ("num_keywords", num_keywords),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if query_max_length < 3 or title_max_length < 3:
            raise ValueError(
                "`query_max_length` and `title_max_length` must leave room for [CLS], a token and [SEP] (>= 3)."
            )
        tokenizer_limit = getattr(tokenizer, "model_max_length", None)
        if not isinstance(tokenizer_limit, int) or not 0 < tokenizer_limit < _UNSET_MODEL_MAX_LENGTH:
            tokenizer_limit = None
        for name, value, bound, constant in (
            ("query_max_length", query_max_length, MAX_TEXT_LENGTH, "MAX_TEXT_LENGTH"),
            ("title_max_length", title_max_length, MAX_TEXT_LENGTH, "MAX_TEXT_LENGTH"),
            ("num_keywords", num_keywords, MAX_NUM_KEYWORDS, "MAX_NUM_KEYWORDS"),
        ):
            if value > bound:
                raise ValueError(
                    f"`{name}`={value} exceeds the bound {bound} (`make_hf.processing_make.{constant}`); lower the "
                    "value passed, or the one stored in `processor_config.json`."
                )
            if constant == "MAX_TEXT_LENGTH" and tokenizer_limit is not None and value > tokenizer_limit:
                raise ValueError(
                    f"`{name}`={value} exceeds the tokenizer's `model_max_length`={tokenizer_limit}; lower the value "
                    "passed, or the one stored in `processor_config.json`, or use a tokenizer that allows it."
                )
        self.query_max_length = query_max_length
        self.title_max_length = title_max_length
        self.num_keywords = num_keywords
        self.extract_keywords = bool(extract_keywords)
        if isinstance(keyword_extractor_state, KeywordExtractor):
            self.keyword_extractor = keyword_extractor_state
        elif keyword_extractor_state is None or isinstance(keyword_extractor_state, dict):
            self.keyword_extractor = KeywordExtractor.from_dict(keyword_extractor_state)
        else:
            raise InvalidInputTypeError(
                "`keyword_extractor_state` must be a dict from `KeywordExtractor.to_dict()`, a KeywordExtractor or "
                f"None, got {type(keyword_extractor_state).__name__}."
            )
        super().__init__(image_processor, tokenizer)
        self.image_backend = getattr(image_processor, "backend", None)
        if image_backend is not None and image_backend != self.image_backend:
            logger.warning(
                f"The processor was saved with the {image_backend!r} image backend but its image processor is "
                f"{type(image_processor).__name__} ({self.image_backend!r} backend), probably because "
                f"{image_backend!r} is not available here: pixel values, and so product embeddings, can differ "
                "slightly from those of the saved processor."
            )

    # ------------------------------------------------------------------ construction and state

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> MakeProcessor:
        """`ProcessorMixin.from_pretrained`, except that a repo id which is not cached while the Hub cannot be
        reached fails at once with what to do (a local folder, `HF_HUB_OFFLINE=1`). See `hub_access.py`."""
        with hub_access(pretrained_model_name_or_path, kwargs):
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """Load the image processor with the backend recorded in `processor_config.json` (PIL for folders saved
        before it was recorded; `from_pretrained(..., image_backend="torchvision")` overrides it) and the
        tokenizer as `ProcessorMixin` does. `ProcessorMixin` would let `AutoImageProcessor` pick the backend."""
        backend = kwargs.pop("image_backend", None) or (processor_dict or {}).get(
            "image_backend", LEGACY_IMAGE_BACKEND
        )
        subfolder = kwargs.pop("subfolder", "")
        image_processor = AutoImageProcessor.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, backend=backend, **kwargs
        )
        tokenizer = cls._load_tokenizer_from_pretrained(
            "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        return [image_processor, tokenizer]

    @classmethod
    def from_config(cls, config, tokenizer, **kwargs) -> MakeProcessor:
        """Build a processor matching a `MakeConfig`: the image processor its vision tower expects
        (`make_hf.image_towers.image_processor_for`: a `ViTImageProcessorPil` at `config.vision_config.image_size`,
        or a timm tower's own preprocessing) and keyword extraction on when `config.keyword_enhancement` is.

        `kwargs` go to `MakeProcessor.__init__` (e.g. `query_max_length=24`, `keyword_extractor_state=...`).
        The max lengths must fit the text towers' `max_position_embeddings`.
        """
        image_processor = image_processor_for(config.vision_config)
        kwargs.setdefault("extract_keywords", bool(getattr(config, "keyword_enhancement", True)))
        processor = cls(image_processor, tokenizer, **kwargs)
        for argument, tower in (("query_max_length", "query_config"), ("title_max_length", "title_config")):
            limit = getattr(getattr(config, tower, None), "max_position_embeddings", None)
            if limit is not None and getattr(processor, argument) > limit:
                raise ValueError(
                    f"`{argument}`={getattr(processor, argument)} exceeds `config.{tower}.max_position_embeddings`"
                    f"={limit}; lower it or use a larger text tower."
                )
        return processor

    def fit_keywords(self, titles: Sequence[str], queries: Sequence[str] | None = None) -> MakeProcessor:
        """Fit the keyword extractor on the training titles (and the queries aligned with them). Returns self."""
        self.keyword_extractor.fit(titles, queries)
        return self

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["keyword_extractor_state"] = self.keyword_extractor.to_dict()
        return output

    def __repr__(self) -> str:
        # The default dumps the whole config, fitted vocabulary included, and `from_pretrained` formats it.
        settings = {
            key: getattr(self, key)
            for key in (
                "query_max_length", "title_max_length", "num_keywords", "extract_keywords", "image_backend"
            )
        }
        return (
            f"{type(self).__name__}:\n- image_processor: {self.image_processor!r}\n- tokenizer: {self.tokenizer!r}\n"
            f"- keyword_extractor: {self.keyword_extractor!r}\n{json.dumps(settings, indent=2)}"
        )

    @property
    def model_input_names(self) -> list[str]:
        return [
            "query_input_ids",
            "query_attention_mask",
            "title_input_ids",
            "title_attention_mask",
            "pixel_values",
            "image_mask",
            "keyword_input_ids",
            "keyword_attention_mask",
            "query_term_ids",
            "keyword_term_ids",
        ]

    # ------------------------------------------------------------------ the call

    def __call__(
        self,
        query: str | Sequence[str] | None = None,
        title: str | Sequence[str | None] | None = None,
        images: Any = None,
        keywords: str | Sequence[str | Sequence[str] | None] | None = None,
        return_tensors: str | None = "pt",
        extract_keywords: bool | None = None,
        padding: str = "max_length",
    ) -> BatchFeature:
        """Prepare any subset of queries, titles, images and keywords for `MakeModel`.

        Args:
            query: a query or a list of queries (non-empty strings).
            title: a title or a list of titles; `None` (or a blank string) in a list means "no title".
            images: one image or a list of images (`None` = no image) as PIL images, numpy arrays, torch tensors,
                file paths, bytes or `datasets` image dicts; or a 4-D array/tensor batch. See
                `make_hf.image_utils.load_image`.
            keywords: explicit keyword strings (or lists of terms) per row; they take precedence over extraction.
            return_tensors: `"pt"` (default), `"np"`, or None for Python lists.
            extract_keywords: extract keywords from `title`. None (default): when `self.extract_keywords` is on
                and both `query` and `title` are given (a training batch; keywords are a training-time signal).
            padding: `"max_length"` (default: fixed shapes, the query / title max lengths) or `"longest"` (pad each
                text field to its longest row in this batch, never beyond the max length; cheaper training steps
                when texts are much shorter than the max length). Term id widths are fixed either way.

        Returns:
            A `BatchFeature` with the keys listed in the class docstring.

        Raises:
            ValueError: nothing given, batch sizes that differ, an empty query, a product row with neither title
                nor image, an unreadable image (naming the argument and index).
            FileNotFoundError: an image path that does not exist.
            InvalidInputTypeError: an argument of the wrong type (also a `ValueError` and a `TypeError`).
        """
        if query is None and title is None and images is None and keywords is None:
            raise ValueError(
                "Nothing to process: pass at least one of `query`, `title`, `images` or `keywords`, e.g. "
                "`processor(query=['red sneakers'])`."
            )
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"`return_tensors` must be 'pt', 'np' or None, got {return_tensors!r}.")

        queries = self._check_queries(query) if query is not None else None
        titles = self._check_titles(title) if title is not None else None
        loaded_images = load_images(images, "images") if images is not None else None
        keyword_strings = self._check_keywords(keywords) if keywords is not None else None

        sizes = {
            name: len(values)
            for name, values in (
                ("query", queries),
                ("title", titles),
                ("images", loaded_images),
                ("keywords", keyword_strings),
            )
            if values is not None
        }
        if len(set(sizes.values())) > 1:
            described = ", ".join(f"`{name}` has {size}" for name, size in sizes.items())
            raise ValueError(f"All inputs must have the same batch size, but {described}.")
        if 0 in sizes.values():
            raise ValueError(f"Empty batch: {', '.join(f'`{name}`' for name in sizes)} given as empty lists.")

        if titles is not None or loaded_images is not None:
            self._check_products(titles, loaded_images)

        if extract_keywords is None:
            extract_keywords = self.extract_keywords and queries is not None and titles is not None
        if keyword_strings is None and extract_keywords:
            if titles is None:
                raise ValueError("`extract_keywords=True` needs `title`: keywords are extracted from titles.")
            keyword_strings = [
                " ".join(self.keyword_extractor.extract(text, self.num_keywords)) if text is not None else ""
                for text in titles
            ]

        if padding not in ("max_length", "longest"):
            raise ValueError(f"`padding` must be 'max_length' or 'longest', got {padding!r}.")
        data: dict[str, Any] = {}
        if queries is not None:
            data.update(self._tokenize(queries, "query", self.query_max_length, padding))
        if titles is not None:
            data.update(self._tokenize(titles, "title", self.title_max_length, padding))
        if loaded_images is not None:
            data.update(self._process_images(loaded_images))
        if keyword_strings is not None:
            data.update(self._tokenize(keyword_strings, "keywords", self.query_max_length, padding))
            if queries is not None:
                data["query_term_ids"] = self.term_ids(queries)
            data["keyword_term_ids"] = self.term_ids(keyword_strings)
        if return_tensors is None:
            data = {key: value.tolist() if isinstance(value, np.ndarray) else value for key, value in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------ pieces

    @staticmethod
    def _check_queries(query: Any) -> list[str]:
        queries = _as_batch(query, "query")
        for index, text in enumerate(queries):
            if not isinstance(text, str):
                raise InvalidInputTypeError(f"`query[{index}]` must be a string, got {type(text).__name__}.")
            if not is_query_text(text):
                raise ValueError(f"`query[{index}]` is empty; a query needs at least one non-blank character.")
        return queries

    @staticmethod
    def _check_titles(title: Any) -> list[str | None]:
        titles = _as_batch(title, "title")
        checked: list[str | None] = []
        for index, text in enumerate(titles):
            if text is not None and not isinstance(text, str):
                raise InvalidInputTypeError(
                    f"`title[{index}]` must be a string or None (no title), got {type(text).__name__}."
                )
            checked.append(text if text is not None and text.strip() else None)
        return checked

    @staticmethod
    def _check_keywords(keywords: Any) -> list[str]:
        rows = _as_batch(keywords, "keywords")
        strings = []
        for index, row in enumerate(rows):
            if row is None:
                strings.append("")
            elif isinstance(row, str):
                strings.append(row)
            elif isinstance(row, (list, tuple)) and all(isinstance(term, str) for term in row):
                strings.append(" ".join(row))
            else:
                raise InvalidInputTypeError(
                    f"`keywords[{index}]` must be a string, a list of strings or None, got {type(row).__name__}."
                )
        return strings

    @staticmethod
    def _check_products(titles: list[str | None] | None, images: list[Any] | None) -> None:
        size = len(titles) if titles is not None else len(images)
        for index in range(size):
            has_title = titles is not None and titles[index] is not None
            has_image = images is not None and images[index] is not None
            if not (has_title or has_image):
                title_part = f"`title[{index}]` is empty" if titles is not None else "no `title` was given"
                image_part = f"`images[{index}]` is None" if images is not None else "no `images` were given"
                raise ValueError(
                    f"Product row {index} has neither a title nor an image ({title_part}, {image_part}). "
                    "Give every product at least one of them, or drop the row."
                )

    def _tokenize(self, texts: list[str | None], name: str, max_length: int, padding: str) -> dict[str, Any]:
        ids_key, mask_key = TEXT_KEYS[name]
        encoded = self.tokenizer(
            [text if text is not None else "" for text in texts],
            padding=padding,
            truncation=True,
            max_length=max_length,
            return_attention_mask=True,
            return_token_type_ids=False,
        )
        input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for row, text in enumerate(texts):
            if text is None:
                width = len(input_ids[row])
                input_ids[row] = [pad_id] * width
                attention_mask[row] = [0] * width
        return {ids_key: input_ids, mask_key: attention_mask}

    def _process_images(self, images: list[Any]) -> dict[str, Any]:
        present = [index for index, image in enumerate(images) if image is not None]
        image_mask = np.zeros(len(images), dtype=np.int64)
        image_mask[present] = 1
        if present:
            pixels = self.image_processor([images[i] for i in present], return_tensors="np")["pixel_values"]
            pixel_values = np.zeros((len(images),) + pixels.shape[1:], dtype=np.float32)
            pixel_values[present] = pixels
        else:
            pixel_values = np.zeros((len(images), 3) + self.image_size, dtype=np.float32)
        return {"pixel_values": pixel_values, "image_mask": image_mask}

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of `pixel_values`, from the image processor's crop or resize size."""
        size = self.image_processor.size
        if getattr(self.image_processor, "do_center_crop", False) and getattr(self.image_processor, "crop_size", None):
            size = self.image_processor.crop_size
        if "height" in size:
            return int(size["height"]), int(size["width"])
        edge = int(size.get("shortest_edge", size.get("longest_edge")))
        return edge, edge

    def term_ids(self, texts: Sequence[str]) -> np.ndarray:
        """Hashed terms (`KeywordExtractor.terms` + `hash_term`) per text, padded with 0 to `query_max_length`."""
        width = self.query_max_length
        output = np.zeros((len(texts), width), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [hash_term(term) for term in self.keyword_extractor.terms(text)[:width]]
            output[row, : len(ids)] = ids
        return output


MakeProcessor.register_for_auto_class("AutoProcessor")


__all__ = ["MAX_NUM_KEYWORDS", "MAX_TEXT_LENGTH", "MakeProcessor", "is_query_text"]

if __package__ == "make_hf":  # the installed package, not a copy loaded as remote code
    from .auto_registration import register_auto_classes

    register_auto_classes()
