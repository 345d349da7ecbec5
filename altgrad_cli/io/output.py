"""Writing reports without ever losing a file: output paths are checked before any input is read.

`guard_outputs` runs first: an output (`--out`, `--junit`, `GITHUB_STEP_SUMMARY`) that resolves
to an input file, through a symlink or a hard link, or that names the same file as another
output, or whose folder cannot be written (or, for the step summary, is missing), is a usage
error (exit 2) before the run starts; `--out` and `--junit` folders are created on writing.
`write_atomic` then writes through a short temporary name in the target's own folder and renames
it into place, so a failed run leaves the old file untouched and any legal file name works.

A symlink given as `--out` stays a symlink: the report replaces the file it points to (atomically,
in the target's folder). An existing FIFO or character device (`/dev/stdout`, `/dev/null`) is
written to directly, since it cannot be replaced.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from altgrad_cli.errors import InputError, UsageError

Identity = tuple[int, int]


def _identity(path: str | os.PathLike[str]) -> Identity | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _input_files(path: Path) -> list[Path]:
    """The files an input may read: itself, a folder's entries, the shards beside an index."""
    files = [path]
    with contextlib.suppress(OSError):
        if path.is_dir():
            files += [entry for entry in path.iterdir() if entry.is_file()]
        elif path.name.endswith(".json"):
            files += list(path.parent.glob("*.safetensors"))
    return files


def _reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


def _special(path: Path) -> int | None:
    """The mode of an existing non-regular file at `path` (after symlinks), else None."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else mode


def _existing_ancestor(folder: Path) -> Path:
    """The nearest folder above (or at) `folder` that exists: where missing ones get created."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_writable(label: str, path: Path, create_folders: bool) -> None:
    mode = _special(path)
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise UsageError(f"{label} {path}: is a directory")
        return  # a device or FIFO (/dev/stdout): written directly
    target = Path(os.path.realpath(path))
    folder = target.parent
    if not folder.is_dir():
        if not create_folders:
            raise UsageError(f"{label} {path}: folder {folder} does not exist")
        folder = _existing_ancestor(folder)
        if not folder.is_dir():
            raise UsageError(f"{label} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        try:
            read_only = os.statvfs(folder).f_flag & os.ST_RDONLY
        except OSError:
            read_only = False
        cause = "is on a read-only file system" if read_only else "is not writable"
        raise UsageError(f"{label} {path}: folder {folder} {cause}")


def guard_outputs(
    outputs: Mapping[str, str | os.PathLike[str] | None],
    inputs: Iterable[str | os.PathLike[str] | None],
    *,
    fixed_folders: Iterable[str] = ("GITHUB_STEP_SUMMARY",),
) -> None:
    """Raise UsageError when an output would overwrite an input or another output, or cannot
    be written at all. Call before reading anything. Missing folders of an output are created
    when it is written (`write_atomic`), except for the outputs in `fixed_folders`: a step
    summary whose folder is missing means the CI runner is misconfigured, not a new folder."""
    fixed = set(fixed_folders)
    taken: dict[Identity, str] = {}
    real_inputs: dict[str, str] = {}
    for given in inputs:
        if given is None:
            continue
        for file in _input_files(Path(given)):
            ident = _identity(file)
            if ident is not None:
                taken.setdefault(ident, f"input {file}")
            real_inputs.setdefault(os.path.realpath(file), f"input {file}")
    seen: dict[str, str] = {}
    for label, given in outputs.items():
        if given is None or str(given) == "":
            continue
        path = Path(given)
        real = os.path.realpath(path)
        ident = _identity(path)
        clash = (taken.get(ident) if ident is not None else None) or real_inputs.get(real)
        if clash is not None:
            raise UsageError(f"{label} {path} is the {clash}: refusing to overwrite it")
        if real in seen:
            raise UsageError(f"{label} {path} is the same file as {seen[real]}")
        seen[real] = f"{label} {path}"
        if ident is not None:
            taken[ident] = f"{label} {path}"
        _check_writable(label, path, create_folders=label not in fixed)


def _mode_for(target: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` (or, through a symlink, to its target) via a temporary file in
    the same folder and a rename: readers see the old file or the new one, never half of one."""
    given = Path(path)
    data = text.encode("utf-8")
    mode = _special(given)
    if mode is not None:  # /dev/stdout resolves to a pipe with no path: open the name itself
        _write_direct(given, given, mode, data)
        return
    target = Path(os.path.realpath(given))
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # guard_outputs checked where
        fd, tmp = tempfile.mkstemp(prefix=".ag", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _mode_for(target))
        os.replace(tmp, target)
        tmp = None
    except OSError as error:
        raise InputError(given, f"cannot write: {_reason(error)}") from error
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _write_direct(given: Path, target: Path, mode: int, data: bytes) -> None:
    if stat.S_ISDIR(mode):
        raise InputError(given, "cannot write: is a directory")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        cause = "FIFO has no reader" if stat.S_ISFIFO(mode) else _reason(error)
        raise InputError(given, f"cannot write: {cause}") from error
    try:
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as error:
        raise InputError(given, f"cannot write: {_reason(error)}") from error
    finally:
        os.close(fd)


def append_text(path: str | os.PathLike[str], text: str) -> None:
    """Append to a file (GitHub's step summary), creating it; never blocks on a FIFO."""
    given = Path(path)
    try:
        fd = os.open(
            given,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
            0o666,
        )
    except OSError as error:
        raise InputError(given, f"cannot append: {_reason(error)}") from error
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(given, "cannot append: not a regular file")
        os.set_blocking(fd, True)
        view = memoryview(text.encode("utf-8"))
        while view:
            view = view[os.write(fd, view) :]
    except OSError as error:
        raise InputError(given, f"cannot append: {_reason(error)}") from error
    finally:
        os.close(fd)
