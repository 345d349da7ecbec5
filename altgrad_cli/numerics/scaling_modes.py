"""The scaling value object: what `--scaling` and `FORMAT@SCALING` say, parsed once.

No torch here, so the CLI can name and list recipes (`altgrad formats`) without loading it;
numerics/scaling.py turns a Scaling into scales.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from altgrad_cli.errors import UsageError


class ScaleMode(enum.Enum):
    """How many scales a tensor gets and how they are grouped."""

    TENSOR = "tensor"
    POW2 = "pow2"
    CHANNEL = "channel"
    BLOCK = "block"
    NVFP4 = "nvfp4"
    NONE = "none"


class ScaleRule(enum.Enum):
    """How a block's scale is chosen from its amax: four power-of-two (E8M0) rules, or float32."""

    FLOOR = "floor"
    RCEIL = "rceil"
    CEIL = "ceil"
    EVEN = "even"
    FP32 = "fp32"


NVFP4_BLOCK = 16
E8M0_EXP = 127  # E8M0 holds 2^-127 .. 2^127
E4M3_MIN, E4M3_MAX = 2.0**-6, 448.0  # NVFP4's block-scale clamp
_RULES = ", ".join(r.value for r in ScaleRule)
MAX_BLOCK = 1 << 16
"""Recipes use blocks of 16 to 128 elements a side; more than 65,536 is a typo."""
_SCALING = re.compile(r"(tensor|pow2|channel|none|nvfp4)|block:(\d+)(?:x(\d+))?(?::([a-z0-9]+))?")


@dataclass(frozen=True)
class Scaling:
    """A scaling mode; block modes carry their tile (rows × cols, `block:N` is 1 × N) and rule."""

    mode: ScaleMode
    cols: int = 0
    rows: int = 1
    rule: ScaleRule = ScaleRule.FLOOR

    def __post_init__(self) -> None:  # accept the plain strings too: Scaling("tensor")
        object.__setattr__(self, "mode", ScaleMode(self.mode))
        object.__setattr__(self, "rule", ScaleRule(self.rule))
        if self.mode is ScaleMode.NVFP4:
            object.__setattr__(self, "cols", NVFP4_BLOCK)

    @property
    def block(self) -> int:
        """Elements per block along the last dim (0 unless block-like)."""
        return self.cols

    @property
    def is_blocked(self) -> bool:
        return self.mode in (ScaleMode.BLOCK, ScaleMode.NVFP4)

    @property
    def grouping(self) -> tuple:
        """Recipes with equal groupings share one amax pass (nvfp4 reads 1 × 16 block amaxes)."""
        if self.mode in (ScaleMode.TENSOR, ScaleMode.POW2):
            return ("tensor",)
        if self.is_blocked:
            return ("block", self.rows, self.cols)
        return (self.mode.value,)

    def __str__(self) -> str:
        if self.mode is not ScaleMode.BLOCK:
            return self.mode.value
        tile = f"{self.rows}x{self.cols}" if self.rows > 1 else str(self.cols)
        return f"block:{tile}:{self.rule.value}"


def parse_scaling(text: str | Scaling) -> Scaling:
    """Parse `tensor`, `pow2`, `channel`, `none`, `nvfp4` or `block:N|RxC[:RULE]`."""
    if isinstance(text, Scaling):
        return text
    match = _SCALING.fullmatch(text.strip())
    if match is None:
        raise UsageError(
            f"unknown scaling {text!r}; choose tensor, pow2, channel, none, nvfp4 or "
            f"block:N[:RULE] / block:RxC[:RULE] with RULE one of {_RULES}"
        )
    if match[1]:
        return Scaling(ScaleMode(match[1]))
    if any(len(d) > 12 for d in (match[2], match[3] or "")):  # never int() 5000 digits
        raise UsageError(f"scaling {text[:40]!r}: the block size must be at most {MAX_BLOCK}")
    first, second, rule = int(match[2]), match[3], match[4] or "floor"
    rows, cols = (first, int(second)) if second is not None else (1, first)
    if rows < 1 or cols < 1:
        raise UsageError(f"scaling {text!r}: the block size must be at least 1")
    if rows > MAX_BLOCK or cols > MAX_BLOCK:
        raise UsageError(f"scaling {text[:40]!r}: the block size must be at most {MAX_BLOCK}")
    if rule not in {r.value for r in ScaleRule}:
        raise UsageError(f"scaling {text!r}: unknown block rule {rule!r}; choose {_RULES}")
    return Scaling(ScaleMode.BLOCK, cols, rows, ScaleRule(rule))


# ----------------------------------------------------------------------------- scale values
