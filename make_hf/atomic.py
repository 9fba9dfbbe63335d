"""Write files and folders so that a crash never leaves a half-written result behind."""

import contextlib
import json
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary file name next to `path`; rename it onto `path` only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        # mkstemp creates the file private (0600); give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> str:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return path


def write_json(path: str, data) -> str:
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


@contextlib.contextmanager
def staged_directory(path: str):
    """Yield an empty staging folder next to `path`; on success move each file in it into `path`.

    Everything is written (and can fail) in the staging folder first; the moves that follow are renames on the
    same file system, so files already in `path` (checkpoints, logs) are kept and none is ever half-written.
    """
    os.makedirs(path, exist_ok=True)
    parent = os.path.dirname(os.path.abspath(path))
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(path))}.", suffix=".staging")
    try:
        yield staging
        for root, _, files in os.walk(staging):
            relative = os.path.relpath(root, staging)
            target_dir = os.path.normpath(os.path.join(path, relative))
            os.makedirs(target_dir, exist_ok=True)
            for name in files:
                os.replace(os.path.join(root, name), os.path.join(target_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = ["atomic_path", "staged_directory", "write_text", "write_json"]
