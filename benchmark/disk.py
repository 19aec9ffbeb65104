"""Writes that end in one message, and leave nothing half-written.

Every file the suite writes (the dataset cache, run artifacts, reports, the gate reference,
a training checkpoint) goes through `writing` or `write_text_atomic`: a full disk, a quota, a
read-only folder or a missing permission becomes a `WriteError` naming the path, what was
being written, how much it needed where that is known, and what is free, instead of a
traceback from deep inside NumPy or MLflow. The writes themselves go to a temporary name and
are renamed into place, so a failure leaves the previous file (or none) behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medad_bench.errors import BenchError

#: errno values that mean "this place cannot take the write", as opposed to a bug.
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


class WriteError(BenchError):
    """A write the disk refused (full, read-only, no permission), with the path and the fix."""


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def free_space(path: Path) -> int | None:
    """Bytes free on the file system holding `path` (its nearest existing parent)."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def write_error(exc: OSError, path: Path, what: str, needed: int | None = None,
                fix: str = "") -> WriteError | None:
    """The user's message for an OSError raised writing `what` to `path`; None when the error
    is not about the disk (a bug, to be seen with its traceback)."""
    free = free_space(path)
    free_text = f"{human_bytes(free)} free there" if free is not None else "free space unknown"
    need_text = f"; it needs about {human_bytes(needed)}" if needed else ""
    if exc.errno in DISK_FULL:
        problem = f"no space left on the device ({free_text}{need_text})"
        remedy = fix or "Free some space there, or point the suite at another disk"
    elif exc.errno in NOT_WRITABLE:
        problem = f"the folder is not writable ({os.strerror(exc.errno)})"
        remedy = fix or "Make the folder writable, or point the suite at a writable one"
    else:
        return None
    return WriteError(f"could not write {what} to {path}: {problem}. {remedy}. Nothing "
                      f"half-written was left behind.")


@contextlib.contextmanager
def writing(path: Path, what: str, needed: int | None = None, fix: str = "") -> Iterator[None]:
    """Turn a disk's refusal inside the block into a WriteError about `path`."""
    try:
        yield
    except OSError as exc:
        error = write_error(exc, Path(path), what, needed, fix)
        if error is None:
            raise
        raise error from exc


def write_text_atomic(path: Path, text: str, what: str, fix: str = "") -> Path:
    """Write `text` to `path` through a temporary sibling renamed into place: a full disk or a
    kill leaves the old file (or none), never half of the new one."""
    path = Path(path)
    with writing(path, what, len(text.encode()), fix):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return path


def preallocated_npy(path: Path, dtype: object, shape: tuple[int, ...]) -> object:
    """A writable memory-mapped .npy whose blocks are reserved up front: on a full disk the
    reservation raises ENOSPC here, where `writing` turns it into a message, instead of a
    SIGBUS when a page of the map is first written."""
    from numpy.lib.format import open_memmap

    array = open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    try:
        with open(path, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
    except BaseException:
        del array  # unmapped now, not when the traceback is dropped
        raise
    return array
