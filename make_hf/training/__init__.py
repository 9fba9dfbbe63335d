"""MAKE pre-training on Accelerate. Imported on demand: `import make_hf` does not load the training stack."""

from .arguments import PretrainArguments
from .trainer import pretrain

__all__ = ["PretrainArguments", "pretrain"]
