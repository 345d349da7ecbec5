"""altgrad: did the optimizer step actually move your low-precision weights?

The public library API, listed once. Importing it loads torch but not typer or rich.
"""

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

__version__ = "0.1.0"

# The seed's format constants.
E0M7 = get_format("E0M7")
E1M6 = get_format("E1M6")
E2M5 = get_format("E2M5")
E3M4 = get_format("E3M4")
E4M3 = get_format("E4M3")
E5M2 = get_format("E5M2")
E6M1 = get_format("E6M1")
E7M0 = get_format("E7M0")
FP8Format = Format

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
