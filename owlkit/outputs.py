"""Output paths checked before the work starts, so that a bad one costs a line, not a run.

A folder that cannot be created or written (a path under a file, a read-only mount, a full
disk) is an :class:`~owlkit.errors.InputError` naming the option, the path and the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

from owlkit.errors import InputError


def os_reason(exc: OSError) -> str:
    """``No space left on device``, ``Not a directory``, ...: the OS's words for ``exc``."""
    return exc.strerror or str(exc) or type(exc).__name__


def writable_folder(path: str | os.PathLike, what: str) -> Path:
    """Create ``path`` (a folder) if needed and check that a file can be written in it."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".owlkit-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except FileExistsError:  # a parent is a file
        raise InputError(f"{what} {folder} cannot be created: a parent of it is a file") from None
    except OSError as exc:
        raise InputError(f"{what} {folder} cannot be created or written ({os_reason(exc)})") from None
    return folder


def writable_file(path: str | os.PathLike, what: str) -> Path:
    """Check that the file ``path`` can be written (appended to when it exists); its folder is created."""
    file = Path(path)
    if file.is_dir():
        raise InputError(f"{what} {file} is a folder; give a file name")
    writable_folder(file.parent if str(file.parent) else ".", f"the folder of {what}")
    if file.exists() and not os.access(file, os.W_OK):
        raise InputError(f"{what} {file} cannot be written (permission denied)")
    return file
