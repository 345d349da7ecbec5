"""Write before / after / grads safetensors around one optimizer step, from inside a training loop.

    with capture_step(model, "step_1000/"):
        optimizer.step()

writes step_1000/before.safetensors, after.safetensors and grads.safetensors, ready for
`altgrad analyze step_1000/before.safetensors step_1000/after.safetensors --grads step_1000/grads.safetensors`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file


def _named_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # named_parameters() yields a tied/shared parameter once, under its first name
    return {name: p.detach() for name, p in model.named_parameters()}


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.contiguous().cpu().clone() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


@contextmanager
def capture_step(model: torch.nn.Module, out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Snapshot weights and gradients on entry, weights again on exit, and write the three files.

    Parameters without a gradient are left out of grads.safetensors (altgrad then falls back to
    after != before for them). Nothing is written if the block raises.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    before = {name: t.clone() for name, t in _named_tensors(model).items()}
    grads = {name: p.grad.detach().clone() for name, p in params.items() if p.grad is not None}
    yield out
    after = _named_tensors(model)
    _save_atomic(before, out / "before.safetensors")
    _save_atomic(after, out / "after.safetensors")
    _save_atomic(grads, out / "grads.safetensors")
