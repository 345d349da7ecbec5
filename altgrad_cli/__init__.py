"""altgrad: did the optimizer step actually move your low-precision weights?

The public library API, listed once. Names load on first use (PEP 562), so `import altgrad_cli`
is cheap and loads no torch: the commands that only read a saved report or the format registry
(`altgrad check`, `formats`, `schema`, `--help`) never pay for it. Type checkers see the names
through the imports under TYPE_CHECKING below.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it. No public name equals a submodule's name, so an
# attribute never changes meaning once that submodule has been imported.
_SOURCES: dict[str, str] = {
    "AltgradError": "altgrad_cli.errors",
    "FormatError": "altgrad_cli.errors",
    "InputError": "altgrad_cli.errors",
    "UsageError": "altgrad_cli.errors",
    "Format": "altgrad_cli.numerics.formats",
    "get_format": "altgrad_cli.numerics.formats",
    "registry": "altgrad_cli.numerics.formats",
    "encode": "altgrad_cli.numerics.quantize",
    "quantize": "altgrad_cli.numerics.quantize",
    "decode": "altgrad_cli.numerics.rounding",
    "Scale": "altgrad_cli.numerics.scaling",
    "Scaling": "altgrad_cli.numerics.scaling",
    "compute_scale": "altgrad_cli.numerics.scaling",
    "compute_stall_ratio": "altgrad_cli.engine.tensor",
    "tensor_metrics": "altgrad_cli.engine.tensor",
    "analyze": "altgrad_cli.pipeline",
    "compute_stiffness_field": "altgrad_cli.training.seed",
    "compute_ulp_distance": "altgrad_cli.training.seed",
    "gradient_stiffness_correlation": "altgrad_cli.training.seed",
    "grid_alignment_error": "altgrad_cli.training.seed",
    "grid_alignment_statistics": "altgrad_cli.training.seed",
    "ulp_statistics": "altgrad_cli.training.seed",
    "WeightFlipTracker": "altgrad_cli.training.tracker",
    "trajectory": "altgrad_cli.trajectories",
    "Recipe": "altgrad_cli.numerics.recipes",
    "get_recipe": "altgrad_cli.numerics.recipes",
    "StoredWeights": "altgrad_cli.training.stored",
    "stored_weights": "altgrad_cli.training.stored",
}

# The seed's format constants (registry lookups) and its name for the format class.
_SEED_FORMATS = ("E0M7", "E1M6", "E2M5", "E3M4", "E4M3", "E5M2", "E6M1", "E7M0")
_ALIASES = {"FP8Format": "Format"}

__all__ = [
    "E0M7",
    "E1M6",
    "E2M5",
    "E3M4",
    "E4M3",
    "E5M2",
    "E6M1",
    "E7M0",
    "AltgradError",
    "FP8Format",
    "Format",
    "FormatError",
    "InputError",
    "Recipe",
    "Scale",
    "Scaling",
    "StoredWeights",
    "UsageError",
    "WeightFlipTracker",
    "analyze",
    "__version__",
    "compute_scale",
    "compute_stall_ratio",
    "compute_stiffness_field",
    "compute_ulp_distance",
    "decode",
    "encode",
    "get_format",
    "get_recipe",
    "gradient_stiffness_correlation",
    "grid_alignment_error",
    "grid_alignment_statistics",
    "quantize",
    "registry",
    "stored_weights",
    "tensor_metrics",
    "trajectory",
    "ulp_statistics",
]


def __getattr__(name: str) -> Any:
    """Import the module behind a public name on first use, then keep the value as a global."""
    if name in _SEED_FORMATS:
        value: Any = import_module("altgrad_cli.numerics.formats").get_format(name)
    elif name in _ALIASES:
        value = __getattr__(_ALIASES[name])
    elif name in _SOURCES:
        value = getattr(import_module(_SOURCES[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from altgrad_cli.engine.tensor import compute_stall_ratio, tensor_metrics
    from altgrad_cli.errors import AltgradError, FormatError, InputError, UsageError
    from altgrad_cli.numerics.formats import Format, get_format, registry
    from altgrad_cli.numerics.quantize import encode, quantize
    from altgrad_cli.numerics.recipes import Recipe, get_recipe
    from altgrad_cli.numerics.rounding import decode
    from altgrad_cli.numerics.scaling import Scale, Scaling, compute_scale
    from altgrad_cli.pipeline import analyze
    from altgrad_cli.training.seed import (
        compute_stiffness_field,
        compute_ulp_distance,
        gradient_stiffness_correlation,
        grid_alignment_error,
        grid_alignment_statistics,
        ulp_statistics,
    )
    from altgrad_cli.training.stored import StoredWeights, stored_weights
    from altgrad_cli.training.tracker import WeightFlipTracker
    from altgrad_cli.trajectories import trajectory

    FP8Format = Format
    E0M7: Format
    E1M6: Format
    E2M5: Format
    E3M4: Format
    E4M3: Format
    E5M2: Format
    E6M1: Format
    E7M0: Format
