"""PNG plots of a pre-training run: loss curves, and validation Recall@K over steps with the final test result."""

import os

import matplotlib

matplotlib.use("Agg")  # headless: training machines have no display
import matplotlib.pyplot as plt  # noqa: E402

from ..atomic import atomic_path  # noqa: E402


def plot_losses(history: list[dict], path: str) -> str:
    """Plot every loss term logged in `history` (dicts with `step` and `*loss` keys) against the step."""
    terms = sorted({key for row in history for key in row if key.endswith("loss")})
    fig, ax = plt.subplots(figsize=(7, 4))
    for term in terms:
        points = [(row["step"], row[term]) for row in history if row.get(term) is not None]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=term, linewidth=2.0 if term == "loss" else 1.0)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("MAKE pre-training losses")
    return _save(fig, path)


def plot_recall(evaluations: list[dict], path: str, test: dict | None = None) -> str:
    """Plot validation Recall@K (keys `recall@K` in each evaluation dict, plus `step`) against the step, and the
    test split's Recall@K (`test`, with its `step`) as separate labelled stars.

    The test result is another catalogue, so joining it to the validation curve would draw a change that never
    happened. With fewer than two validation points a line would mean nothing either: they are drawn as markers.
    """
    keys = {key for row in [*evaluations, test or {}] for key in row if key.startswith("recall@")}
    keys = sorted(keys, key=lambda k: int(k[7:]))
    fig, ax = plt.subplots(figsize=(7, 4))
    for index, key in enumerate(keys):
        color = f"C{index}"
        points = [(row["step"], row[key]) for row in evaluations if key in row]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", linestyle="-" if len(points) > 1 else "none", color=color,
                    label=f"validation {key}")
        if test is not None and key in test:
            ax.plot([test["step"]], [test[key]], marker="*", markersize=12, linestyle="none", color=color,
                    label=f"test {key} {test[key]:.3f}")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Recall@K (title + image): validation during training, test at the end")
    return _save(fig, path)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


__all__ = ["plot_losses", "plot_recall"]
