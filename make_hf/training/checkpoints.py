"""Training-state checkpoints: `checkpoint-<step>` folders written by `Accelerator.save_state`."""

import os
import re
import shutil

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    """Return `(step, path)` for every complete checkpoint folder in `directory`, oldest first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = CHECKPOINT_PATTERN.match(name)
        path = os.path.join(directory, name)
        if match and os.path.isfile(os.path.join(path, "trainer_state.json")):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str) -> str | None:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1][1] if checkpoints else None


def remove_interrupted_checkpoints(directory: str) -> list[str]:
    """Delete the `checkpoint-<step>` folders in `directory` without `trainer_state.json` (written last, so these
    are saves that were interrupted and are never resumed from); return the deleted paths."""
    if not os.path.isdir(directory):
        return []
    complete = {path for _, path in list_checkpoints(directory)}
    names = sorted(name for name in os.listdir(directory) if CHECKPOINT_PATTERN.match(name))
    folders = [os.path.join(directory, name) for name in names]
    interrupted = [path for path in folders if os.path.isdir(path) and path not in complete]
    for path in interrupted:
        shutil.rmtree(path, ignore_errors=True)
    return interrupted


def prune_checkpoints(directory: str, keep: int | None) -> list[str]:
    """Delete all but the newest `keep` checkpoints; return the deleted paths. `None` keeps everything."""
    if keep is None:
        return []
    if keep < 1:
        raise ValueError(f"`checkpoints_total_limit` must be at least 1 (got {keep}); use None to keep all.")
    stale = [path for _, path in list_checkpoints(directory)[:-keep]]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def resolve_resume_path(resume_from_checkpoint: str, checkpoint_dir: str) -> str:
    """Turn `--resume_from_checkpoint` ("latest" or a folder) into a checkpoint folder, with an actionable error."""
    if resume_from_checkpoint == "latest":
        path = latest_checkpoint(checkpoint_dir)
        if path is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: no complete checkpoint-<step> folder in {checkpoint_dir!r}. "
                "Train with --checkpointing_steps first, or pass a checkpoint folder."
            )
        return path
    if not os.path.isfile(os.path.join(resume_from_checkpoint, "trainer_state.json")):
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a complete checkpoint folder "
            "(it has no trainer_state.json). Pass a checkpoint-<step> folder written by this script, or 'latest'."
        )
    return resume_from_checkpoint


__all__ = [
    "list_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "remove_interrupted_checkpoints",
    "resolve_resume_path",
]
