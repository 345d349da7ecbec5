"""Match BEFORE / AFTER / GRADS tensors by name; every name left out comes back with its reason."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

from altgrad_cli.errors import InputError
from altgrad_cli.io.checkpoint import Checkpoint, TensorInfo
from altgrad_cli.io.regex import compile_name_filter
from altgrad_cli.report.records import Skipped


@dataclass(frozen=True)
class Pair:
    """One tensor to analyse: its (prefix-stripped) name and where each side lives."""

    name: str
    before: TensorInfo
    after: TensorInfo
    grad: TensorInfo | None


def _strip(name: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if prefix and name.startswith(prefix):
            return name[len(prefix) :]
    return name


def names_by_stripped(ckpt: Checkpoint, prefixes: tuple[str, ...]) -> dict[str, TensorInfo]:
    """Names after --strip-prefix; two names that become one are an error, not first-wins."""
    out: dict[str, TensorInfo] = {}
    for name in ckpt.names():
        key = _strip(name, prefixes)
        if key in out:
            raise InputError(
                ckpt.path,
                f"tensors {out[key].name!r} and {name!r} are both {key!r} after --strip-prefix",
            )
        out[key] = ckpt.info(name)
    return out


def common_name_prefix(names: list[str]) -> str:
    prefix = os.path.commonprefix(names)
    return prefix[: prefix.rfind(".") + 1] if "." in prefix else ""


def pair_tensors(
    before: Checkpoint,
    after: Checkpoint,
    grads: Checkpoint | None = None,
    *,
    strip_prefixes: tuple[str, ...] = (),
    include: str | None = None,
    exclude: str | None = None,
) -> tuple[list[Pair], list[Skipped]]:
    """Pairs in name order, and the skipped names with reasons. Raises when nothing pairs at all."""
    inc = compile_name_filter(include, "--include")
    exc = compile_name_filter(exclude, "--exclude")
    b, a = names_by_stripped(before, strip_prefixes), names_by_stripped(after, strip_prefixes)
    g = names_by_stripped(grads, strip_prefixes) if grads is not None else {}
    pairs: list[Pair] = []
    skipped: list[Skipped] = []
    for name in sorted(set(b) | set(a)):
        if (inc and not inc.search(name)) or (exc and exc.search(name)):
            continue
        reason = None
        if name not in a:
            reason = "only in before"
        elif name not in b:
            reason = "only in after"
        elif b[name].shape != a[name].shape:
            reason = f"shape mismatch: before {list(b[name].shape)}, after {list(a[name].shape)}"
        elif not b[name].is_float or not a[name].is_float:
            reason = f"not a floating dtype ({b[name].dtype})"
        elif b[name].dtype != a[name].dtype:
            reason = f"dtype mismatch: before {b[name].dtype}, after {a[name].dtype}"
        grad = g.get(name)
        if reason is None and grad is not None:
            if grad.shape != b[name].shape:
                reason = (
                    f"gradient shape mismatch: {list(grad.shape)} vs weight {list(b[name].shape)}"
                )
            elif not grad.is_float:
                reason = f"gradient is not a floating dtype ({grad.dtype})"
        if reason is not None:
            skipped.append(Skipped(name, reason))
        else:
            pairs.append(Pair(name, b[name], a[name], grad))
    if not pairs and not (set(b) & set(a)) and b and a:
        hints = [
            f"{label} names start with {p!r}"
            for label, names in (("before", list(b)), ("after", list(a)))
            if (p := common_name_prefix(names))
        ]
        hint = f" ({'; '.join(hints)}: try --strip-prefix)" if hints else ""
        raise InputError(before.path, f"no tensor names in common with {after.path}{hint}")
    if not pairs and not skipped:
        raise InputError(before.path, "nothing to compare: no tensors selected")
    if not pairs:
        reason, count = Counter(s.reason for s in skipped).most_common(1)[0]
        raise InputError(
            before.path,
            f"nothing to compare: all {len(skipped)} tensors were skipped "
            f"(commonest reason, {count} of them: {reason})",
        )
    return pairs, skipped
