"""Match tensors by name across n+1 checkpoints of one run; every name left out comes with its reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from altgrad_cli.errors import InputError
from altgrad_cli.io.checkpoint import Checkpoint, TensorInfo
from altgrad_cli.io.pairing import Skipped, common_name_prefix, names_by_stripped
from altgrad_cli.io.regex import compile_name_filter


@dataclass(frozen=True)
class Track:
    """One tensor to follow: its (prefix-stripped) name and where it lives in each checkpoint."""

    name: str
    infos: tuple[TensorInfo, ...]


def _reason(name: str, found: list[TensorInfo | None]) -> str | None:
    missing = [t for t, info in enumerate(found) if info is None]
    if missing:
        return "missing from " + ", ".join(f"C{t}" for t in missing)
    infos = [info for info in found if info is not None]
    first = infos[0]
    for t, info in enumerate(infos[1:], start=1):
        if info.shape != first.shape:
            return f"shape mismatch: C0 {list(first.shape)}, C{t} {list(info.shape)}"
    if not all(info.is_float for info in infos):
        odd = next(info for info in infos if not info.is_float)
        return f"not a floating dtype ({odd.dtype})"
    for t, info in enumerate(infos[1:], start=1):
        if info.dtype != first.dtype:
            return f"dtype mismatch: C0 {first.dtype}, C{t} {info.dtype}"
    return None


def align_tensors(
    checkpoints: Sequence[Checkpoint],
    *,
    strip_prefixes: tuple[str, ...] = (),
    include: str | None = None,
    exclude: str | None = None,
) -> tuple[list[Track], list[Skipped]]:
    """Tracks in name order, and the skipped names with reasons. Raises when nothing is left."""
    inc, exc = compile_name_filter(include, "--include"), compile_name_filter(exclude, "--exclude")
    maps = [names_by_stripped(ckpt, strip_prefixes) for ckpt in checkpoints]
    tracks: list[Track] = []
    skipped: list[Skipped] = []
    for name in sorted(set().union(*maps)):
        if (inc and not inc.search(name)) or (exc and exc.search(name)):
            continue
        found = [m.get(name) for m in maps]
        reason = _reason(name, found)
        if reason is not None:
            skipped.append(Skipped(name, reason))
        else:
            tracks.append(Track(name, tuple(info for info in found if info is not None)))
    common = set(maps[0]).intersection(*maps[1:])
    if not tracks and not common and all(maps):
        hints = [
            f"C{t} names start with {p!r}"
            for t, m in enumerate(maps)
            if (p := common_name_prefix(list(m)))
        ]
        hint = f" ({'; '.join(hints)}: try --strip-prefix)" if hints else ""
        raise InputError(checkpoints[0].path, f"no tensor name is in every checkpoint{hint}")
    if not tracks and skipped:
        reason, count = Counter(s.reason for s in skipped).most_common(1)[0]
        raise InputError(
            checkpoints[0].path,
            f"nothing to follow: all {len(skipped)} tensors were skipped "
            f"(commonest reason, {count} of them: {reason})",
        )
    if not tracks:
        raise InputError(checkpoints[0].path, "nothing to follow: no tensors selected")
    return tracks, skipped
