"""make_hf: MAKE (Modal Adaptation and Keyword Enhancement) for text-to-multimodal product retrieval.

`import make_hf` imports neither torch nor transformers: each name of `__all__` is imported from its module on first
use (`from make_hf import MakeModel`, `make_hf.ProductIndex`), as transformers does, so that the `make-hf` command
line answers `--help` at once.

As soon as `configuration_make`, `modeling_make` or `processing_make` is imported, by a name of this package
(`from make_hf import MakeConfig`) or directly (`from make_hf.processing_make import MakeProcessor`), the three of
them are imported and `MakeConfig` / `MakeModel` / `MakeProcessor` are registered with `AutoConfig` / `AutoModel` /
`AutoProcessor`. From then on `AutoModel.from_pretrained(folder)` of a saved MAKE model works without
`trust_remote_code`, and so does `MakeProcessor.from_pretrained(folder)`, whose tokenizer loading reads the folder's
`config.json` through `AutoConfig`. A process that only runs `import make_hf` and then loads through the Auto classes
calls `make_hf.register_auto_classes()` first.
"""

from __future__ import annotations

import importlib
import sys
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
}
_REGISTERING_MODULES = ("configuration_make", "modeling_make", "processing_make")

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


def register_auto_classes() -> None:
    """Register `MakeConfig`, `MakeModel` and `MakeProcessor` with transformers' `AutoConfig`, `AutoModel` and
    `AutoProcessor` (model type `"make"`). Idempotent; done when one of their modules is first imported."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    from .configuration_make import MakeConfig
    from .modeling_make import MakeModel
    from .processing_make import MakeProcessor

    AutoConfig.register("make", MakeConfig, exist_ok=True)
    AutoModel.register(MakeConfig, MakeModel, exist_ok=True)
    AutoProcessor.register(MakeConfig, MakeProcessor, exist_ok=True)


class _RegisteringLoader:
    """Runs a registering module's own loader, then `register_auto_classes` once no registering module is still
    executing (`modeling_make` imports `configuration_make`: registering at the end of the inner one would import the
    half-executed outer one). Everything else is the wrapped loader's (`get_source`, `get_resource_reader`, ...)."""

    _executing: set[str] = set()
    _registering = False

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._executing.add(module.__name__)
        try:
            self._loader.exec_module(module)
        finally:
            self._executing.discard(module.__name__)
        if not self._executing and not _RegisteringLoader._registering:
            _RegisteringLoader._registering = True  # the imports it makes do not register again
            try:
                register_auto_classes()
            finally:
                _RegisteringLoader._registering = False

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _RegisterOnImport:
    """A meta-path finder that finds `configuration_make`, `modeling_make` and `processing_make` the usual way (the
    finders after it) and gives them a `_RegisteringLoader`, so that however they are imported, `MakeProcessor` and
    the Auto classes find the `make` model type registered."""

    _names = frozenset(f"{__name__}.{module}" for module in _REGISTERING_MODULES)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self._names:
            return None
        for finder in sys.meta_path:
            if isinstance(finder, _RegisterOnImport) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and not isinstance(spec.loader, _RegisteringLoader):
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


if not any(type(finder).__name__ == "_RegisterOnImport" for finder in sys.meta_path):  # once, also on reload
    sys.meta_path.insert(0, _RegisterOnImport())


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
