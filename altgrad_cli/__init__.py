"""altgrad: did the optimizer step actually move your low-precision weights?

The public library API, listed once. Importing it loads torch but not typer or rich.
"""

from altgrad_cli.errors import AltgradError, FormatError, InputError, UsageError
from altgrad_cli.formats import Format, get_format, registry
from altgrad_cli.quantize import Scale, Scaling, compute_scale, decode, encode, quantize

__version__ = "0.1.0"

__all__ = [
    "AltgradError",
    "Format",
    "FormatError",
    "InputError",
    "Scale",
    "Scaling",
    "UsageError",
    "__version__",
    "compute_scale",
    "decode",
    "encode",
    "get_format",
    "quantize",
    "registry",
]
