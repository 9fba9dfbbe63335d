"""The training stack: the packages that pre-training and dataset building need and serving does not.

`pip install make-hf` gives the model, the processor, the retriever, the product index and `make-hf search`;
`pip install "make-hf[train]"` adds `accelerate`, `datasets`, `evaluate` and `matplotlib` for `make_hf.training`,
`make_hf.data` and the evaluation metrics. The code that needs them calls `require_training_stack` first, so a
serving install that reaches it gets an `ImportError` saying what to install instead of `No module named ...`.
"""

import importlib.util

TRAINING_STACK = ("accelerate", "datasets", "evaluate", "matplotlib")
"""The packages of the `train` extra (pyproject.toml), none of which `import make_hf` or serving imports."""

INSTALL_COMMAND = 'pip install "make-hf[train]"'


def require_training_stack(feature: str, packages: tuple[str, ...] = TRAINING_STACK) -> None:
    """Raise an `ImportError` naming `feature`, the missing `packages` and the install command, if any is missing."""
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"{feature} needs {', '.join(missing)}, part of make_hf's training stack, which this install lacks "
            f"(`pip install make-hf` is the serving install: model, processor, retriever, index, search). Install "
            f"it with `{INSTALL_COMMAND}` (in a checkout: `pip install -e \".[train]\"`)."
        )


__all__ = ["INSTALL_COMMAND", "TRAINING_STACK", "require_training_stack"]
