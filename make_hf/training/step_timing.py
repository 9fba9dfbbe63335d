"""`StepTimer`: where a training step's wall time goes, waiting for data or computing.

Data time is the time spent inside the data loader's `next()` (collating in the training process, or waiting for
a worker's batch and copying it to the device); compute time is the rest of the step (forward, backward, optimiser,
logging). A step whose data time is a large share of it is starved: raise --dataloader_num_workers or cache more.
On a GPU, kernels run asynchronously: the time the host waits for them lands where it synchronises (the loss
terms' copy to the host each step), so the split is of the host's wall time, and the two still add up to it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any


class StepTimer:
    """Sums data and compute seconds per optimiser step, over the logging window and over the run."""

    def __init__(self):
        self._data = 0.0
        self._mark: float | None = None
        self.window = {"data": 0.0, "compute": 0.0, "steps": 0}
        self.total = {"data": 0.0, "compute": 0.0, "steps": 0}

    def batches(self, loader: Iterable[Any]) -> Iterator[Any]:
        """Iterate `loader`, counting the time spent fetching each batch as data time."""
        iterator = iter(loader)
        while True:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            now = time.perf_counter()
            self._data += now - started
            if self._mark is None:
                self._mark = started
            yield batch

    def step_done(self) -> None:
        """Close an optimiser step: its wall time since the previous one, less its data time, is compute time."""
        now = time.perf_counter()
        wall = now - self._mark if self._mark is not None else self._data
        compute = max(wall - self._data, 0.0)
        for sums in (self.window, self.total):
            sums["data"] += self._data
            sums["compute"] += compute
            sums["steps"] += 1
        self._data, self._mark = 0.0, now

    def restart(self) -> None:
        """Forget the time since the last step (validation, checkpointing) so that it counts for no step."""
        self._data, self._mark = 0.0, None

    def window_means(self) -> dict[str, float]:
        """Mean data and compute seconds per step since the last call, for the log row; starts a new window."""
        means = _means(self.window)
        self.window = {"data": 0.0, "compute": 0.0, "steps": 0}
        return means

    def run_means(self) -> dict[str, float]:
        """Mean data and compute seconds per step over the run, and the data share of a step."""
        means = _means(self.total)
        wall = means.get("data_seconds", 0.0) + means.get("compute_seconds", 0.0)
        if wall > 0:
            means["data_share"] = round(means["data_seconds"] / wall, 4)
        return means


def _means(sums: dict) -> dict[str, float]:
    if not sums["steps"]:
        return {}
    return {"data_seconds": round(sums["data"] / sums["steps"], 5),
            "compute_seconds": round(sums["compute"] / sums["steps"], 5)}


__all__ = ["StepTimer"]
