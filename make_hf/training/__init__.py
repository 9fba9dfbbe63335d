"""MAKE pre-training on Accelerate. Imported on demand: `import make_hf` does not load the training stack."""

from ..training_stack import require_training_stack

require_training_stack("make_hf.training (pre-training)")

from .arguments import PretrainArguments  # noqa: E402
from .callbacks import TrainingCallback  # noqa: E402
from .trainer import pretrain  # noqa: E402

__all__ = ["PretrainArguments", "TrainingCallback", "pretrain"]
