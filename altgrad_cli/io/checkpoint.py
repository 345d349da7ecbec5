"""Open safetensors files and sharded folders lazily; list tensors and hand out zero-copy views.

The header is parsed and validated here (lengths, JSON, dtypes, offsets, overlaps) before any
tensor is touched, so a corrupt file is one clear error, never a crash or a huge allocation.
Tensors are views into a copy-on-write memory map: reading them costs page cache, not
anonymous memory, and nothing is ever written back to the file.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from altgrad_cli.errors import InputError
from altgrad_cli.io import sigbus
from altgrad_cli.io.files import load_json, open_regular, parse_json

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
MAX_HEADER = 16 * 1024 * 1024
"""About 190,000 tensors; the largest single-file checkpoints hold tens of thousands. A header
is parsed in time linear in its length, but a 100 MB one still takes seconds and a GiB of memory."""
MAX_INDEX_BYTES = 64 * 1024 * 1024
"""A model.safetensors.index.json of a 100k-tensor model is about 10 MB."""


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
        self._fd = -1
        self._data_start = 0
        self._read_header()

    def _fail(self, problem: str) -> InputError:
        return InputError(self.path, problem)

    def _read_header(self) -> None:
        with open_regular(self.path, "a .safetensors file") as handle:
            self._parse(handle)

    def _parse(self, handle) -> None:
        try:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if size < 8 or len(prefix) < 8:
                raise self._fail(f"not a safetensors file: {size} bytes, too short for a header")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER:
                raise self._fail(f"header length {length} exceeds the {MAX_HEADER}-byte limit")
            if 8 + length > size:
                raise self._fail(
                    f"corrupt or truncated: header length {length} goes beyond the file ({size} bytes)"
                )
            raw = handle.read(length)
        except OSError as error:
            raise self._fail(f"cannot read: {error.strerror or error}") from error
        if len(raw) < length:
            raise self._fail("truncated while reading the header")
        try:
            header = parse_json(raw, max_depth=None)  # every entry is checked below
        except ValueError as error:  # bad UTF-8 or JSON, a name listed twice, NaN, huge ints
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
        needed = self._data_start + info.end
        if self._map is None:
            with open_regular(self.path, "a .safetensors file") as handle:
                try:
                    self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
                except (OSError, ValueError) as error:
                    raise self._fail(f"cannot map: {error}") from error
                self._fd = os.dup(handle.fileno())  # to fstat the mapped file, not its path
            weakref.finalize(self, os.close, self._fd)
            sigbus.register(self.path, len(self._map))
        # the file may have shrunk since the header was read: check before touching the pages
        # (a shrink in the middle of a tensor is left to the SIGBUS guard, io/sigbus.py)
        try:
            size = os.fstat(self._fd).st_size
        except OSError as error:
            raise self._fail(f"cannot read: {error.strerror or error}") from error
        if len(self._map) < needed or size < needed:
            raise self._fail(
                f"truncated while reading: tensor {name!r} needs {needed} bytes, the file has {size}"
            )
        flat = torch.frombuffer(
            self._map, dtype=dtype, count=info.numel, offset=self._data_start + info.begin
        )
        return flat.reshape(info.shape)


class Checkpoint:
    """A checkpoint: one file, a sharded folder (index with weight_map, or every *.safetensors), or an index file.

    Every tensor name must be unambiguous: a name in two files of an index-less folder, or a
    shard that disagrees with its index, is an input error rather than a silent first-wins."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.files: list[SafetensorsFile] = []
        self.tensors: dict[str, tuple[SafetensorsFile, TensorInfo]] = {}
        weight_map, index = self._resolve(Path(path))
        for file_path in self._shards:
            st = SafetensorsFile(file_path)
            self.files.append(st)
            for name, info in st.tensors.items():
                if weight_map is not None and weight_map.get(name) != file_path:
                    where = weight_map.get(name)
                    said = f"maps it to {where.name!r}" if where else "does not list it"
                    raise InputError(
                        index,
                        f"tensor {name!r} is in shard {file_path.name!r} but the index {said}",
                    )
                if name in self.tensors:
                    raise InputError(
                        self.path,
                        f"tensor {name!r} is in both {self.tensors[name][0].path} and {st.path}",
                    )
                self.tensors[name] = (st, info)
        if weight_map is not None:
            for name, file_path in weight_map.items():
                if name not in self.tensors:
                    raise InputError(
                        index,
                        f"the index maps {name!r} to shard {file_path.name!r}, which lacks it",
                    )

    def _resolve(self, path: Path) -> tuple[dict[str, Path] | None, Path | None]:
        """Sets `_shards`; returns the index's name -> shard map (None without an index)."""
        try:
            exists, is_dir = path.exists(), path.is_dir()
        except (OSError, ValueError) as error:
            raise InputError(path, f"cannot open: {error}") from error
        if not exists:
            raise InputError(path, "no such file or directory")
        if is_dir:
            indexes = sorted(path.glob("*.safetensors.index.json"))
            if len(indexes) > 1:
                names = ", ".join(i.name for i in indexes)
                raise InputError(path, f"holds several index files ({names}): name one of them")
            if indexes:
                return self._from_index(indexes[0]), indexes[0]
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise InputError(path, "directory holds no *.safetensors files")
            self._shards = files
            return None, None
        if path.name.endswith(".json"):
            return self._from_index(path), path
        self._shards = [path]
        return None, None

    def _from_index(self, index: Path) -> dict[str, Path]:
        data = load_json(index, "safetensors index", limit=MAX_INDEX_BYTES)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise InputError(index, "index has no weight_map of tensor name -> shard file")
        folder = os.path.realpath(index.parent)
        resolved: dict[str, Path] = {}
        by_real: dict[str, Path] = {}  # `a.safetensors` and `./a.safetensors` are one shard
        for shard in sorted(set(weight_map.values())):
            real = self._shard_path(index, folder, shard)
            resolved[shard] = by_real.setdefault(real, index.parent / shard)
        self._shards = sorted(set(resolved.values()))
        return {name: resolved[shard] for name, shard in weight_map.items()}

    @staticmethod
    def _shard_path(index: Path, folder: str, shard: str) -> str:
        """The shard's path; it must resolve (after symlinks) inside the index's folder."""
        if not shard or "\x00" in shard or os.path.isabs(shard):
            raise InputError(index, f"shard {shard!r} is not a file name inside the index's folder")
        real = os.path.realpath(os.path.join(folder, shard))
        if os.path.commonpath([folder, real]) != folder or real == folder:
            raise InputError(index, f"shard {shard!r} resolves outside the index's folder")
        if not os.path.isfile(real):
            raise InputError(index, f"index names missing shard {shard!r}")
        return real

    def info(self, name: str) -> TensorInfo:
        return self.tensors[name][1]

    def tensor(self, name: str) -> torch.Tensor:
        st, _ = self.tensors[name]
        return st.tensor(name)

    def names(self) -> list[str]:
        return sorted(self.tensors)
