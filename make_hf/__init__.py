"""make_hf: MAKE (Modal Adaptation and Keyword Enhancement) for text-to-multimodal product retrieval.

`import make_hf` imports neither torch nor transformers: each name of `__all__` is imported from its module on first
use (`from make_hf import MakeModel`, `make_hf.ProductIndex`), as transformers does, so that the `make-hf` command
line answers `--help` at once.

Importing any of `MakeConfig`, `MakeModel` or `MakeProcessor` registers all three with transformers' Auto classes
(`make_hf/auto_registration.py`). A process that only runs `import make_hf` and then loads through the Auto classes
calls `make_hf.register_auto_classes()` first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module of make_hf that defines it.
_LAZY_NAMES = {
    "PRESET_NAMES": "configuration_make",
    "MakeConfig": "configuration_make",
    "MakeModel": "modeling_make",
    "MakeOutput": "modeling_make",
    "MakePreTrainedModel": "modeling_make",
    "MakeProductOutput": "modeling_make",
    "ModalAdaptation": "modeling_make",
    "MakeProcessor": "processing_make",
    "load_image": "image_utils",
    "load_images": "image_utils",
    "KeywordExtractor": "keywords",
    "hash_term": "keywords",
    "train_tokenizer": "tokenization",
    "evaluate_retrieval": "evaluation",
    "ProductIndex": "index",
    "MakeRetriever": "retrieval",
    "register_auto_classes": "auto_registration",
}

if TYPE_CHECKING:
    from .configuration_make import PRESET_NAMES, MakeConfig
    from .evaluation import evaluate_retrieval
    from .image_utils import load_image, load_images
    from .index import ProductIndex
    from .keywords import KeywordExtractor, hash_term
    from .modeling_make import MakeModel, MakeOutput, MakePreTrainedModel, MakeProductOutput, ModalAdaptation
    from .processing_make import MakeProcessor
    from .retrieval import MakeRetriever
    from .tokenization import train_tokenizer
    from .auto_registration import register_auto_classes


def __getattr__(name: str) -> Any:
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_NAMES})


__all__ = [
    "__version__",
    "MakeConfig",
    "MakeModel",
    "MakeOutput",
    "MakePreTrainedModel",
    "MakeProductOutput",
    "ModalAdaptation",
    "KeywordExtractor",
    "MakeProcessor",
    "hash_term",
    "load_image",
    "load_images",
    "register_auto_classes",
    "train_tokenizer",
    "PRESET_NAMES",
    "ProductIndex",
    "MakeRetriever",
    "evaluate_retrieval",
]
