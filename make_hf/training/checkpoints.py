"""Training-state checkpoints: `checkpoint-<step>` folders written by `Accelerator.save_state`, and what a run says
when writing one (or the final model) fails.

A checkpoint is written into `.checkpoint-<step>.staging` (the same name on every process, since each writes its
own random state there) and renamed to `checkpoint-<step>` once complete, `trainer_state.json` last. So a kill or a
full disk never leaves a `checkpoint-<step>` folder that is only half written, and the checkpoints before it are
only pruned after it is complete.
"""

import contextlib
import errno
import os
import re
import shutil

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
_STAGING_PATTERN = re.compile(r"^\.checkpoint-(\d+)\.(staging|replaced)$")


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
    are saves that were interrupted and are never resumed from) and the staging folders of interrupted saves; return
    the deleted paths."""
    if not os.path.isdir(directory):
        return []
    complete = {path for _, path in list_checkpoints(directory)}
    names = sorted(name for name in os.listdir(directory)
                   if CHECKPOINT_PATTERN.match(name) or _STAGING_PATTERN.match(name))
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


def staging_path(directory: str, step: int) -> str:
    """Where the checkpoint of `step` is written before `publish_checkpoint` renames it into place."""
    return os.path.join(directory, f".checkpoint-{step}.staging")


def publish_checkpoint(directory: str, step: int) -> str:
    """Rename the complete staging folder of `step` to `checkpoint-<step>` (replacing one an earlier run left with
    that step); return its path. Main process only, after every process has finished writing."""
    path = os.path.join(directory, f"checkpoint-{step}")
    if os.path.isdir(path):
        replaced = os.path.join(directory, f".checkpoint-{step}.replaced")
        os.replace(path, replaced)
        os.replace(staging_path(directory, step), path)
        shutil.rmtree(replaced, ignore_errors=True)
    else:
        os.replace(staging_path(directory, step), path)
    return path


class TrainingSaveError(OSError):
    """Writing a checkpoint or the trained model failed (most often: the disk is full). What was saved before is
    intact; the message says where, and how to go on."""


_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# How a full disk reads when the writer does not pass errno on: safetensors (Rust) and torch's zip writer, whose
# short write shows as "unexpected pos".
_DISK_FULL_TEXTS = ("no space left", "os error 28", "storagefull", "quota exceeded", "unexpected pos")


def _disk_is_full(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(error).lower() for text in _DISK_FULL_TEXTS):
            return True
        error = error.__cause__ or error.__context__
    return False


def _write_errors():
    from safetensors import SafetensorError  # how safetensors reports a failed write, not an OSError

    return OSError, RuntimeError, SafetensorError


@contextlib.contextmanager
def explained_save_failure(what: str, folder: str, checkpoint_dir: str, cleanup: str | None = None):
    """Turn an `OSError` / `RuntimeError` / `SafetensorError` raised while saving `what` into `folder` into a
    `TrainingSaveError` that says whether the disk is full, which folder, which checkpoint is intact, and how to go on.
    `cleanup`, a folder the failed save was writing, is deleted first, which gives its space back."""
    try:
        yield
    except _write_errors() as error:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        cause = "the disk is full" if _disk_is_full(error) else "the write failed"
        detail = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        latest = latest_checkpoint(checkpoint_dir)
        if latest is not None:
            intact = (f"The last complete checkpoint, {latest!r}, is intact. Free disk space (or use an --output_dir "
                      "on a larger disk, or keep fewer checkpoints with --checkpoints_total_limit), then resume with "
                      "--resume_from_checkpoint latest.")
        else:
            intact = ("There is no complete checkpoint to resume from (write them with --checkpointing_steps). Free "
                      "disk space (or use an --output_dir on a larger disk), then train again.")
        raise TrainingSaveError(
            f"Saving {what} to {folder!r} failed: {cause} ({type(error).__name__}: {detail}). {intact}"
        ) from error


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
    "TrainingSaveError",
    "explained_save_failure",
    "list_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "publish_checkpoint",
    "remove_interrupted_checkpoints",
    "resolve_resume_path",
    "staging_path",
]
