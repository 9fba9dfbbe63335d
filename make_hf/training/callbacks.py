"""What `pretrain(args, callbacks=[...])` calls during a run, and how a callback stops it early.

A callback is a function `fn(step, metrics, model)`, called after each validation evaluation, or a
`TrainingCallback` for more hooks. Returning `True` (exactly) from `on_evaluate` (or the function) or `on_log` stops
the run after that step: the model is saved and scored on the test split as at the end of a full run, and the results'
`steps` says where it stopped. A return value rather than a control object keeps a stopping rule one line long,
and a run with several callbacks stops when any of them asks.

Callbacks run on the main process only (where validation runs); a stop is shared with the other processes so that
every one of them leaves the loop at the same step.

Example, stopping when validation Recall@10 has not improved for `patience` evaluations:

    ```python
    >>> class EarlyStopping(TrainingCallback):
    ...     def __init__(self, patience=2):
    ...         self.best, self.stale, self.patience = 0.0, 0, patience
    ...
    ...     def on_evaluate(self, step, metrics, model):
    ...         if metrics["recall@10"] > self.best:
    ...             self.best, self.stale = metrics["recall@10"], 0
    ...         else:
    ...             self.stale += 1
    ...         return self.stale >= self.patience
    >>> pretrain(args, train_dataset=rows, callbacks=[EarlyStopping()])
    ```
"""

from collections.abc import Callable, Iterable
from typing import Any


class TrainingCallback:
    """Hooks of a pre-training run; override the ones you need (each does nothing by default)."""

    def on_log(self, step: int, logs: dict) -> bool | None:
        """After every `logging_steps` optimiser steps: `logs` holds each loss term, `lr` and `logit_scale`.
        Return True to stop after this step."""

    def on_evaluate(self, step: int, metrics: dict, model: Any) -> bool | None:
        """After each validation evaluation: `metrics` holds `recall@K`, `mrr@K`, `ndcg@K` (title + image) and the
        mean image weight per category; `model` is the unwrapped `MakeModel`, in eval mode (training mode is
        restored afterwards). Return True to stop after this step."""

    def on_train_end(self, step: int, results: dict, model: Any) -> None:
        """After the final test evaluation: `results` is what `pretrain` returns."""


class _FunctionCallback(TrainingCallback):
    def __init__(self, function: Callable):
        self.function = function

    def on_evaluate(self, step, metrics, model):
        return self.function(step, metrics, model)


def as_callbacks(callbacks: Iterable | None) -> list[TrainingCallback]:
    """`callbacks` as `TrainingCallback`s: a function becomes one whose `on_evaluate` it is."""
    if callbacks is None:
        return []
    if callable(callbacks) or isinstance(callbacks, TrainingCallback) or not isinstance(callbacks, Iterable):
        raise TypeError(
            f"`callbacks` must be a list of functions or TrainingCallbacks, got {type(callbacks).__name__}; wrap a "
            "single one in a list: callbacks=[fn]."
        )
    result = []
    for index, callback in enumerate(callbacks):
        if isinstance(callback, TrainingCallback):
            result.append(callback)
        elif callable(callback):
            result.append(_FunctionCallback(callback))
        else:
            raise TypeError(
                f"`callbacks[{index}]` is a {type(callback).__name__}; a callback is a function (step, metrics, model) "
                "or a TrainingCallback."
            )
    return result


def call_hooks(callbacks: list[TrainingCallback], accelerator: Any, hook: str, *arguments: Any) -> bool:
    """Call `hook` of every callback, on the main process only; whether one of them returned True (each is called:
    a later callback still sees the step)."""
    if not accelerator.is_main_process:
        return False
    answers = [getattr(callback, hook)(*arguments) for callback in callbacks]
    return any(answer is True for answer in answers)


def stop_requested(accelerator: Any, asked: bool) -> bool:
    """Whether a callback asked to stop on any process; called by every process at the same steps, as it is a
    collective (so that all of them leave the loop together)."""
    if asked:
        accelerator.set_trigger()
    return accelerator.check_trigger()


__all__ = ["TrainingCallback", "as_callbacks", "call_hooks", "stop_requested"]
