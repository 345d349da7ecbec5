"""Open safetensors files and sharded folders lazily; list tensors and hand out zero-copy views.

The header is parsed and validated here (lengths, JSON, dtypes, offsets, overlaps) before any
tensor is touched, so a corrupt file is one clear error, never a crash or a huge allocation.
Tensors are views into a copy-on-write memory map: reading them costs page cache, not
anonymous memory, and nothing is ever written back to the file.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from altgrad_cli.errors import InputError

FLOAT_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype string, shape and byte range in the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: str
    begin: int
    end: int

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class SafetensorsFile:
    """One .safetensors file: a validated header and a lazily created memory map."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.tensors: dict[str, TensorInfo] = {}
        self._map: mmap.mmap | None = None
        self._data_start = 0
        self._read_header()

    def _fail(self, problem: str) -> InputError:
        return InputError(self.path, problem)

    def _read_header(self) -> None:
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as handle:
                prefix = handle.read(8)
                if size < 8 or len(prefix) < 8:
                    raise self._fail(
                        f"not a safetensors file: {size} bytes, too short for a header"
                    )
                (length,) = struct.unpack("<Q", prefix)
                if length > MAX_HEADER or 8 + length > size:
                    raise self._fail(
                        f"corrupt or truncated: header length {length} goes beyond the file ({size} bytes)"
                    )
                raw = handle.read(length)
        except PermissionError as error:
            raise self._fail("permission denied") from error
        except IsADirectoryError as error:
            raise self._fail("is a directory, expected a .safetensors file") from error
        except FileNotFoundError as error:
            raise self._fail("no such file") from error
        except OSError as error:
            raise self._fail(f"cannot read: {error.strerror or error}") from error
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise self._fail(f"corrupt header JSON ({error})") from error
        if not isinstance(header, dict):
            raise self._fail("corrupt header: expected a JSON object")
        self._data_start = 8 + length
        data_size = size - self._data_start
        spans = []
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            info = self._validate_entry(name, entry, data_size)
            self.tensors[name] = info
            if info.end > info.begin:
                spans.append((info.begin, info.end, name))
        spans.sort()
        for (_, end_a, name_a), (begin_b, _, name_b) in zip(spans, spans[1:], strict=False):
            if begin_b < end_a:
                raise self._fail(f"corrupt header: tensors {name_a!r} and {name_b!r} overlap")

    def _validate_entry(self, name: str, entry: object, data_size: int) -> TensorInfo:
        if not isinstance(entry, dict):
            raise self._fail(f"corrupt header: entry {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in ITEMSIZE:
            raise self._fail(f"unknown dtype {dtype!r} for tensor {name!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise self._fail(f"corrupt header: bad shape {shape!r} for tensor {name!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise self._fail(f"corrupt header: bad data_offsets {offsets!r} for tensor {name!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise self._fail(
                f"tensor {name!r}: offsets [{begin}, {end}] lie outside the data ({data_size} bytes; truncated file?)"
            )
        numel = math.prod(shape)
        if numel * ITEMSIZE[dtype] != end - begin:
            raise self._fail(
                f"tensor {name!r}: shape {shape} of {dtype} needs {numel * ITEMSIZE[dtype]} bytes, offsets hold {end - begin}"
            )
        return TensorInfo(name, dtype, tuple(shape), self.path, begin, end)

    def tensor(self, name: str) -> torch.Tensor:
        """A zero-copy view of a floating tensor (copy-on-write: writes never reach the file)."""
        info = self.tensors[name]
        dtype = FLOAT_DTYPES[info.dtype]
        if info.numel == 0:
            return torch.empty(info.shape, dtype=dtype)
        if self._map is None:
            try:
                with open(self.path, "rb") as handle:
                    self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as error:
                raise self._fail(f"cannot map: {error}") from error
            if (
                len(self._map) < self._data_start + info.end
            ):  # the file shrank since the header was read
                raise self._fail("truncated while reading")
        flat = torch.frombuffer(
            self._map, dtype=dtype, count=info.numel, offset=self._data_start + info.begin
        )
        return flat.reshape(info.shape)


class Checkpoint:
    """A checkpoint: one file, a sharded folder (index with weight_map, or every *.safetensors), or an index file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.files: list[SafetensorsFile] = []
        self.tensors: dict[str, tuple[SafetensorsFile, TensorInfo]] = {}
        for file_path in self._resolve(Path(path)):
            st = SafetensorsFile(file_path)
            self.files.append(st)
            for name, info in st.tensors.items():
                self.tensors.setdefault(name, (st, info))

    def _resolve(self, path: Path) -> list[Path]:
        if not path.exists():
            raise InputError(path, "no such file or directory")
        if path.is_dir():
            indexes = sorted(path.glob("*.safetensors.index.json"))
            if indexes:
                return self._from_index(indexes[0])
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise InputError(path, "directory holds no *.safetensors files")
            return files
        if path.name.endswith(".json"):
            return self._from_index(path)
        return [path]

    def _from_index(self, index: Path) -> list[Path]:
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except PermissionError as error:
            raise InputError(index, "permission denied") from error
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(index, f"corrupt index JSON ({error})") from error
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise InputError(index, "index has no weight_map of tensor name -> shard file")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if not (index.parent / shard).is_file():
                raise InputError(index, f"index names missing shard {shard!r}")
        return [index.parent / shard for shard in shards]

    def info(self, name: str) -> TensorInfo:
        return self.tensors[name][1]

    def tensor(self, name: str) -> torch.Tensor:
        st, _ = self.tensors[name]
        return st.tensor(name)

    def names(self) -> list[str]:
        return sorted(self.tensors)
