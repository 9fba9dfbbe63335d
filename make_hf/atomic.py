"""Write files and folders so that a crash never leaves a half-written result behind."""

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid


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


# The random part of the names `tempfile.mkstemp` and `mkdtemp` make: eight of [a-z0-9_].
_RANDOM = r"[a-z0-9_]{8}"


def remove_interrupted_writes(path: str) -> list[str]:
    """Delete what `staged_directory(path)` and `atomic_path` leave when killed mid-write, and return the deleted
    paths: `.NAME.XXXXXXXX.staging` folders beside the folder `path`, and `.FILE.XXXXXXXX.tmp` files anywhere in it.

    Only for a folder that no other writer uses at the same time: its files in progress would be deleted too.
    """
    path = os.path.abspath(path)
    parent, name = os.path.dirname(path), os.path.basename(path)
    removed = []
    staging = re.compile(rf"^\.{re.escape(name)}\.{_RANDOM}\.staging$")
    for entry in os.listdir(parent) if os.path.isdir(parent) else []:
        if staging.match(entry) and os.path.isdir(os.path.join(parent, entry)):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            removed.append(os.path.join(parent, entry))
    temporary = re.compile(rf"^\..+\.{_RANDOM}\.tmp$")
    for root, _, files in os.walk(path):
        for entry in files:
            if temporary.match(entry):
                os.remove(os.path.join(root, entry))
                removed.append(os.path.join(root, entry))
    return removed


def _leftovers(path: str, kind: str) -> list[str]:
    """Sibling folders of `path` left by `replaced_directory`: `kind` "new" (being written) or "old" (moved aside),
    oldest first."""
    parent, prefix = os.path.dirname(path), f".{os.path.basename(path)}.{kind}-"
    try:
        names = [name for name in os.listdir(parent) if name.startswith(prefix)]
    except FileNotFoundError:
        return []
    return sorted((os.path.join(parent, name) for name in names), key=os.path.getmtime)


def readable_directory(path: str) -> str:
    """The folder to read `path` from: `path` itself, or, while a `replaced_directory` swap is between its two renames
    (or was killed there), the complete old folder it moved aside."""
    path = os.path.abspath(path)
    if os.path.lexists(path):
        return path
    moved_aside = _leftovers(path, "old")
    return moved_aside[-1] if moved_aside else path


def recover_directory(path: str) -> None:
    """Undo what an interrupted `replaced_directory` left: put back the old folder if it was moved aside and never
    replaced, and delete half-written new folders and old ones already replaced."""
    path = os.path.abspath(path)
    moved_aside = _leftovers(path, "old")
    if moved_aside and not os.path.lexists(path):
        os.rename(moved_aside.pop(), path)
    for leftover in moved_aside + _leftovers(path, "new"):
        shutil.rmtree(leftover, ignore_errors=True)


def _fsync(path: str) -> None:
    if os.name != "posix" and os.path.isdir(path):
        return  # only POSIX can open (and so sync) a directory
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@contextlib.contextmanager
def replaced_directory(path: str):
    """Yield a fresh folder next to `path`; if the block succeeds, swap it in for `path`, so that `path` holds either
    everything it held before or everything the block wrote, never a mix of the two.

    The block writes into `.NAME.new-XXXX`. On success, the entries of `path` it did not write are carried over (hard
    links where the file system has them, so nothing is copied and the old folder stays intact), everything is
    synced to disk, `path` is renamed to `.NAME.old-XXXX`, the new folder to `path`, and the old one is deleted.
    A crash before the first rename leaves `path` as it was; between the two, `readable_directory(path)` finds the
    complete old folder. Leftovers of an interrupted replacement are cleaned up (`recover_directory`) before the
    next one starts. One writer at a time: a second writer would delete the first one's new folder.
    """
    path = os.path.abspath(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{path!r} exists and is not a folder; remove it or choose another folder.")
    recover_directory(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.new-")
    try:
        yield staging
        if os.path.isdir(path):
            for name in os.listdir(path):
                source, target = os.path.join(path, name), os.path.join(staging, name)
                if os.path.lexists(target):
                    continue
                if os.path.islink(source):
                    os.symlink(os.readlink(source), target)
                elif os.path.isdir(source):
                    shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
                else:
                    _link_or_copy(source, target)
            mode = os.stat(path).st_mode & 0o7777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o777 & ~umask
        # mkdtemp creates the folder private (0700); give it the permissions of the folder it replaces.
        os.chmod(staging, mode)
        for root, _, files in os.walk(staging):
            for name in files:
                _fsync(os.path.join(root, name))
        _fsync(staging)
        if os.path.isdir(path):
            aside = os.path.join(parent, f".{os.path.basename(path)}.old-{uuid.uuid4().hex[:12]}")
            os.rename(path, aside)
            try:
                os.rename(staging, path)
            except BaseException:
                os.rename(aside, path)
                raise
            _fsync(parent)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(staging, path)
            _fsync(parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "atomic_path",
    "readable_directory",
    "recover_directory",
    "remove_interrupted_writes",
    "replaced_directory",
    "staged_directory",
    "write_text",
    "write_json",
]
