"""Atomic output: write to a temporary file beside the target, then rename.

An interrupted run (Ctrl-C, a crash, an error half-way) leaves either the complete old file,
the complete new file, or nothing, never a half-written one. Inputs are never opened for
writing: ``atomic_path`` refuses a target that is one of the declared inputs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from pbpk_models.errors import InputError

__all__ = ["atomic_path", "write_text_atomic", "write_csv_atomic"]


def _default_mode() -> int:
    # mkstemp creates 0600 files; give outputs the permissions a plain open() would (umask).
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(target, inputs=(), suffix: str | None = None):
    """Yield a temporary path next to ``target``; on success rename it onto ``target``.

    ``suffix`` defaults to the target's own (so writers that infer the format from the name,
    e.g. SimpleITK with ``.nii.gz``, still work). ``inputs``: paths that must not be overwritten.
    """
    target = Path(target)
    for p in inputs:
        if p is not None and Path(p).exists() and target.exists() and \
                os.path.samefile(Path(p), target):
            raise InputError(f"refusing to overwrite the input file {target}; choose another --out")
    if target.exists() and target.is_dir():
        raise InputError(f"output {target} is a directory; give a file name")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"output folder {parent} does not exist; create it first")
    if suffix is None:
        name = target.name
        suffix = "".join(Path(name).suffixes[-2:]) if name.endswith(".nii.gz") else target.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix, dir=parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _default_mode())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(target, text: str, inputs=()) -> Path:
    with atomic_path(target, inputs=inputs) as tmp:
        Path(tmp).write_text(text)
    return Path(target)


def write_csv_atomic(df, target, inputs=(), **kwargs) -> Path:
    """Write a pandas DataFrame as CSV atomically (index off by default)."""
    kwargs.setdefault("index", False)
    with atomic_path(target, inputs=inputs) as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(target)
