"""State dicts (name → tensor) as checkpoints, so a training loop can call `analyze()` on the
tensors it holds without writing files first. Same interface as `Checkpoint`."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from altgrad_cli.errors import InputError
from altgrad_cli.io.checkpoint import FLOAT_DTYPES, Checkpoint, TensorInfo

_NAME_OF_DTYPE = {dtype: name for name, dtype in FLOAT_DTYPES.items()}
_OTHER_DTYPES = {
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class StateDictCheckpoint:
    """The tensors of a state dict, detached and on the CPU, named as in the dict."""

    def __init__(self, state: Mapping[str, torch.Tensor], label: str) -> None:
        self.path = label
        self._tensors: dict[str, torch.Tensor] = {}
        self._infos: dict[str, TensorInfo] = {}
        for name, tensor in state.items():
            if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
                raise InputError(label, f"not a state dict of name -> tensor (entry {name!r})")
            dtype = _NAME_OF_DTYPE.get(tensor.dtype) or _OTHER_DTYPES.get(tensor.dtype)
            if dtype is None:
                raise InputError(label, f"tensor {name!r} has unsupported dtype {tensor.dtype}")
            self._tensors[name] = tensor.detach().cpu()
            self._infos[name] = TensorInfo(name, dtype, tuple(tensor.shape), label, 0, 0)

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def tensor(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def names(self) -> list[str]:
        return sorted(self._tensors)


def open_checkpoint(source: object, role: str) -> Checkpoint | StateDictCheckpoint:
    """A file, folder or index path, or a state dict (labelled `<role state dict>` in reports)."""
    if isinstance(source, Mapping):
        return StateDictCheckpoint(source, f"<{role} state dict>")
    return Checkpoint(source)  # type: ignore[arg-type]
