"""Register MAKE's config, model and processor with transformers' Auto classes (model type `make`).

Each of `configuration_make`, `modeling_make` and `processing_make` calls `register_auto_classes` as its last
statement, so importing any of them, however (`from make_hf import MakeProcessor`, `from make_hf.modeling_make
import MakeModel`), makes `AutoConfig` / `AutoModel` / `AutoProcessor.from_pretrained(folder)` of a saved MAKE model
work without `trust_remote_code`, as an eager `import make_hf` used to. Copies of those modules loaded as remote code
(`trust_remote_code=True`) do not register: the registry stays the installed package's.
"""

import importlib
import sys

_CLASSES = (("configuration_make", "MakeConfig"), ("modeling_make", "MakeModel"), ("processing_make", "MakeProcessor"))


def register_auto_classes() -> None:
    """Register `MakeConfig`, `MakeModel` and `MakeProcessor` (importing whichever is not imported yet); idempotent.

    While one of the three modules is still being imported (it imported a sibling, whose last statement called this),
    nothing is registered yet: that module calls this again as its own last statement, when its class exists.
    """
    classes = {}
    for module_name, class_name in _CLASSES:
        name = f"{__package__}.{module_name}"
        module = sys.modules.get(name) or importlib.import_module(name)
        if not hasattr(module, class_name):
            return
        classes[class_name] = getattr(module, class_name)
    from transformers import AutoConfig, AutoModel, AutoProcessor

    AutoConfig.register("make", classes["MakeConfig"], exist_ok=True)
    AutoModel.register(classes["MakeConfig"], classes["MakeModel"], exist_ok=True)
    AutoProcessor.register(classes["MakeConfig"], classes["MakeProcessor"], exist_ok=True)


__all__ = ["register_auto_classes"]
