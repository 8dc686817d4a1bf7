"""Read a GGUF's header (metadata + tensor table) without touching the weights.

One reader for every stage: `inspect`, `chat`, the budget, the quantize report and the TUI.
gguf-py's `GGUFReader` builds a numpy view per vocabulary string (35-110 s for Gemma's 262k
tokens on a busy 2-core machine); this walks the same layout (ggml/docs/gguf.md) with
`struct` in well under a second, using gguf-py's type tables. Arrays longer than
`array_limit` are summarized as "[N items]" (their length is in `array_lengths`) and long
string arrays are skipped without decoding.

A hostile or damaged file cannot make it hang or allocate: every count read from the file
(key/value and tensor counts, string and array lengths, dimensions) is checked against the
bytes left in the file before it is used, arrays nest at most `MAX_NESTING` deep, the
alignment must be a power of two, and any failure is one `EdgeError`.

`inspect_gguf` / `edge inspect` summarize a file from that header: tensor types, bits per
weight, which matrices an ARM phone repacks, and the metadata.

    edge inspect model.gguf [--json]
    from edge.ggufinfo import read_gguf
    info = read_gguf("model.gguf"); info.metadata["general.architecture"]; info.tensors[0].type
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import EdgeError, printable

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3  # the only version read: gguf-py's gguf.GGUF_VERSION, what llama.cpp writes since 2023
MAX_NESTING = 2          # an array of arrays is the deepest llama.cpp writes (none in practice)
MAX_DIMS = 4             # GGML_MAX_DIMS (ggml.h)
MAX_ALIGNMENT = 1 << 16  # llama.cpp writes 32; a power of two, bounded


def gguf_py():
    """gguf-py (llama.cpp's own Python package): its tables name every type, key and token kind."""
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - a broken install
        raise EdgeError("the gguf package is missing; run the README's set-up (pip install gguf)") from e
    return gguf


def version_error(path, version: int) -> EdgeError:
    return EdgeError(f"{path} is GGUF version {version}; only version {GGUF_VERSION} (llama.cpp since 2023) "
                     "is read: re-convert it with a current llama.cpp")


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order (fastest-varying dimension first)
    type: str  # gguf.GGMLQuantizationType name
    n_elements: int
    n_bytes: int
    offset: int  # absolute, in the file


@dataclass
class GGUFInfo:
    path: str
    version: int
    metadata: dict
    tensors: list[GGUFTensor]
    size_bytes: int
    array_lengths: dict[str, int] = field(default_factory=dict)  # every array key -> its length

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float | None:
        return bits_per_weight(self.tensor_bytes, self.n_params)


def bits_per_weight(tensor_bytes: int, n_params: int) -> float | None:
    """Bits per weight over all tensors (8 x tensor bytes / tensor elements), as every report,
    `edge inspect`, the export result and the budget give it; None for a file without tensors."""
    return 8.0 * tensor_bytes / n_params if n_params else None


def read_gguf(path, full_arrays: bool = False, array_limit: int = 8) -> GGUFInfo:
    """Parse a GGUF header. A missing, non-GGUF, truncated or damaged file -> EdgeError."""
    import gguf as g

    path = Path(path)
    if path.is_dir():
        raise EdgeError(f"{path} is a folder; give the path of a .gguf file")
    if not path.is_file():
        raise EdgeError(f"GGUF file {path} not found; give the path of a .gguf file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
            if magic != GGUF_MAGIC:
                raise EdgeError(f"{path} is not a GGUF file (it starts with {magic!r}); give a .gguf file")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise EdgeError(f"cannot read {path}: {e.strerror or e}") from None
    V = g.GGUFValueType
    scalar = {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
              V.FLOAT32: "<f", V.BOOL: "<?", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d"}
    np_types = {V.UINT8: "<u1", V.INT8: "<i1", V.UINT16: "<u2", V.INT16: "<i2", V.UINT32: "<u4",
                V.INT32: "<i4", V.FLOAT32: "<f4", V.BOOL: "?", V.UINT64: "<u8", V.INT64: "<i8", V.FLOAT64: "<f8"}
    pos = 4
    lengths: dict[str, int] = {}

    def take(fmt: str):
        nonlocal pos
        v = struct.unpack_from(fmt, mm, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def count(n: int, min_bytes: int, what: str) -> int:
        """A count read from the file: each item takes at least `min_bytes`, so it cannot
        exceed what is left of the file."""
        if n * min_bytes > size - pos:
            raise ValueError(f"{what} {n:,} cannot fit in the {size - pos:,} bytes left")
        return n

    def string() -> str:
        nonlocal pos
        n = count(take("<Q"), 1, "string length")
        v = mm[pos:pos + n].decode("utf-8", errors="replace")
        pos += n
        return v

    def value_type() -> "g.GGUFValueType":
        t = take("<I")
        try:
            return V(t)
        except ValueError:
            raise ValueError(f"unknown value type {t}") from None

    def value(vtype, key: str = "", depth: int = 0):
        nonlocal pos
        if vtype == V.STRING:
            return string()
        if vtype == V.FLOAT32:
            return float(f"{take('<f'):.7g}")  # 0.95, not 0.949999988079071
        if vtype in scalar:
            return take(scalar[vtype])
        if depth >= MAX_NESTING:
            raise ValueError(f"arrays nested more than {MAX_NESTING} deep")
        sub, n = value_type(), take("<Q")
        if key:
            lengths[key] = n
        keep = full_arrays or n <= array_limit
        if sub in np_types:
            width = np.dtype(np_types[sub]).itemsize
            count(n, width, "array length")
            out = np.frombuffer(mm, dtype=np_types[sub], count=n, offset=pos).tolist() if keep else f"[{n} items]"
            pos += n * width
            return out
        count(n, 8 if sub == V.STRING else 12, "array length")  # a string: its 8-byte length at least
        if sub == V.STRING and not keep:  # the vocabulary: skip without decoding (a tight loop:
            length, p = struct.Struct("<Q").unpack_from, pos   # 262,144 strings in Gemma 3)
            for _ in range(n):
                p += 8 + length(mm, p)[0]
                if p > size:
                    raise ValueError("string past the end")
            pos = p
            return f"[{n} items]"
        items = [value(sub, depth=depth + 1) for _ in range(n)]
        return items if keep else f"[{n} items]"

    try:
        version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
        if version != GGUF_VERSION:
            raise version_error(path, version)
        count(n_kv, 8 + 4 + 1, "key/value count")          # key length, type, one byte of value
        count(n_tensors, 8 + 4 + 4 + 8, "tensor count")      # name length, dims, type, offset
        meta = {}
        for _ in range(n_kv):
            key = string()
            meta[key] = value(value_type(), key)
        raw = []
        for _ in range(n_tensors):
            name = string()
            dims = take("<I")
            if dims > MAX_DIMS:
                raise ValueError(f"tensor {name!r} has {dims} dimensions (at most {MAX_DIMS})")
            shape = tuple(take("<Q") for _ in range(dims))
            t = take("<I")
            try:
                qtype = g.GGMLQuantizationType(t)
            except ValueError:
                raise ValueError(f"tensor {name!r} has unknown type {t}") from None
            raw.append((name, shape, qtype, take("<Q")))
        align = meta.get("general.alignment", g.GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or isinstance(align, bool) or not 0 < align <= MAX_ALIGNMENT \
                or align & (align - 1):
            raise ValueError(f"general.alignment {printable(align, 40)} is not a power of two up to {MAX_ALIGNMENT}")
        data_start = (pos + align - 1) // align * align
        tensors = []
        for name, shape, qtype, off in raw:
            block, type_size = g.GGML_QUANT_SIZES[qtype]
            n = math.prod(shape)
            if shape and shape[0] % block:
                raise ValueError(f"tensor {name!r}: rows of {shape[0]} are not whole {qtype.name} blocks")
            nbytes = n // block * type_size
            if data_start + off + nbytes > size:
                raise EdgeError(f"{path} is truncated (tensor {printable(name, 80)} runs past the end of the "
                                f"{size:,}-byte file); re-export or re-copy it")
            tensors.append(GGUFTensor(name, shape, qtype.name, n, nbytes, data_start + off))
    except (struct.error, ValueError, IndexError, KeyError, OverflowError, MemoryError, TypeError) as e:
        raise EdgeError(f"{path} is not a readable GGUF: damaged or truncated ({printable(e, 200)}); "
                        "re-export or re-copy it") from None
    finally:
        mm.close()
    return GGUFInfo(str(path), version, meta, tensors, size, lengths)


def inspect_gguf(path) -> dict:
    info = read_gguf(path)
    g = gguf_py()
    types: dict[str, dict] = {}
    for t in info.tensors:
        e = types.setdefault(t.type, {"tensors": 0, "params": 0, "bytes": 0})
        e["tensors"] += 1
        e["params"] += t.n_elements
        e["bytes"] += t.n_bytes
    n_params, tensor_bytes, bpw = info.n_params, info.tensor_bytes, info.bits_per_weight
    meta = info.metadata
    ft = meta.get("general.file_type")
    try:
        ft_name = g.LlamaFileType(int(ft)).name if ft is not None else None
    except (ValueError, TypeError):
        ft_name = str(ft)
    return {
        "path": info.path,
        "size_bytes": info.size_bytes,
        "architecture": meta.get("general.architecture"),
        "name": meta.get("general.name"),
        "file_type": ft_name,
        "n_tensors": len(info.tensors),
        "n_params": n_params,
        "tensor_bytes": tensor_bytes,
        "bits_per_weight": round(bpw, 3) if bpw is not None else None,
        "tensor_types": types,
        "arm_repack": _arm_repack(info),
        "metadata": meta,
    }


def _arm_repack(info) -> str:
    """Which matrices llama.cpp repacks at load on an ARM CPU with dotprod/i8mm (quantize/repack.py)."""
    from quantize.repack import label

    return label([(t.name, t.type, tuple(int(d) for d in t.shape)) for t in info.tensors])


def inspect_cmd(file: str, *, json: bool = False) -> dict:
    """Show a GGUF file's metadata, tensor types, size and bits per weight.

    Args:
        file: the .gguf file to read.
        json: print the result as JSON instead of a table.
    """
    info = inspect_gguf(file)
    if json:
        return info
    print(f"{printable(info['path'])}: {printable(info['architecture'], 40)} '{printable(info['name'], 80)}', "
          f"{printable(info['file_type'], 40)}, "
          f"{info['size_bytes'] / 1e6:.1f} MB, {info['n_params'] / 1e6:.1f}M parameters, "
          f"{info['bits_per_weight']} bits/weight, {info['n_tensors']} tensors")
    print("\ntensor type   tensors      params       MB")
    for name, e in sorted(info["tensor_types"].items(), key=lambda kv: -kv[1]["bytes"]):
        print(f"{name:<12} {e['tensors']:>8} {e['params']:>11,} {e['bytes'] / 1e6:>8.1f}")
    print(f"\nARM phones: {info['arm_repack']}")
    print("\nmetadata")
    keys = {k: printable(k, 60) for k in info["metadata"]}
    width = max(map(len, keys.values()), default=0)
    for k, v in info["metadata"].items():  # escapes and newlines from the file are shown, not obeyed
        print(f"  {keys[k]:<{width}}  {printable(v, 100)}")
    return info
