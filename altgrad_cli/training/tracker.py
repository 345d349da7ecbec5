"""The seed's WeightFlipTracker: counts updates and code flips around optimizer steps in a training loop."""

from __future__ import annotations

from torch import Tensor

from altgrad_cli.engine.tensor import DEFAULT_GRAD_EPS, compute_stall_ratio
from altgrad_cli.numerics.formats import Format, get_format
from altgrad_cli.numerics.quantize import encode

__all__ = ["WeightFlipTracker", "compute_stall_ratio"]


class WeightFlipTracker:
    """Per-layer cumulative counts of attempted updates (|grad| > 1e-10) and of flips (code changes).

    Call `snapshot_pre_step` before `optimizer.step()` and `compute_flips_post_step` after it.
    A flip is a change of the weight's code on the format's grid under the given scale.
    """

    def __init__(self, grad_eps: float = DEFAULT_GRAD_EPS) -> None:
        self.grad_eps = grad_eps
        self.flip_counts: dict[str, int] = {}
        self.update_counts: dict[str, int] = {}
        self.flips_on_updates: dict[str, int] = {}
        self.numel: dict[str, int] = {}
        self._codes: dict[str, Tensor] = {}
        self._updated: dict[str, Tensor | None] = {}

    def snapshot_pre_step(
        self,
        name: str,
        weight: Tensor,
        format: Format | str,
        scale: Tensor | float | None = None,
        grad: Tensor | None = None,
    ) -> None:
        """Remember the weight's codes; with `grad`, add its non-zero count to the layer's updates."""
        fmt = get_format(format)
        self._codes[name] = encode(weight.detach(), fmt, scale)
        self.update_counts.setdefault(name, 0)
        self.flip_counts.setdefault(name, 0)
        self.flips_on_updates.setdefault(name, 0)
        self.numel[name] = self.numel.get(name, 0) + weight.numel()
        if grad is None:
            self._updated[name] = None
            return
        updated = grad.detach().abs() > self.grad_eps
        self._updated[name] = updated
        self.update_counts[name] += int(updated.sum())

    def compute_flips_post_step(
        self, name: str, weight: Tensor, format: Format | str, scale: Tensor | float | None = None
    ) -> int:
        """Count (and add to the layer's total) the elements whose code changed since the snapshot."""
        if name not in self._codes:
            raise KeyError(f"no snapshot for {name!r}: call snapshot_pre_step first")
        codes = encode(weight.detach(), get_format(format), scale)
        flipped = codes != self._codes.pop(name)
        flips = int(flipped.sum())
        self.flip_counts[name] = self.flip_counts.get(name, 0) + flips
        updated = self._updated.pop(name, None)
        on_updates = int((flipped & updated).sum()) if updated is not None else flips
        self.flips_on_updates[name] = self.flips_on_updates.get(name, 0) + on_updates
        return flips

    def get_flip_counts(self) -> dict[str, int]:
        return dict(self.flip_counts)

    def get_flip_rates(self) -> dict[str, float]:
        """Flips per tracked element (over every snapshot of the layer)."""
        return {
            n: (c / self.numel[n] if self.numel.get(n) else 0.0)
            for n, c in self.flip_counts.items()
        }

    def get_update_counts(self) -> dict[str, int]:
        return dict(self.update_counts)

    def get_stall_ratios(self) -> dict[str, float]:
        """1 − flips / updates per layer, counting flips of updated elements; 0.0 with no updates."""
        return {
            n: compute_stall_ratio(self.flips_on_updates.get(n, 0), u)
            for n, u in self.update_counts.items()
        }

    def reset(self) -> None:
        self.flip_counts.clear()
        self.update_counts.clear()
        self.flips_on_updates.clear()
        self.numel.clear()
        self._codes.clear()
        self._updated.clear()
