"""Raw GGUF bytes for tests: any header a hostile or damaged file could have.

Follows ggml/docs/gguf.md (version 3): magic, version, tensor count, key/value count, the
key/values, the tensor infos, padding to `general.alignment`, the data. Values are given as
(type, payload) so a test can write the wrong type, a lying length or a deep nesting.

    from tests.ggufbytes import model_kv, gguf_bytes, s, u32
    path.write_bytes(gguf_bytes(model_kv(), model_tensors()))
"""

from __future__ import annotations

import struct

# gguf value types (ggml/docs/gguf.md)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
F32 = 0  # ggml type


def s(text: str | bytes) -> bytes:
    """A gguf string: u64 length + bytes."""
    b = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def u32(v: int) -> tuple[int, bytes]:
    return UINT32, struct.pack("<I", v)


def i32(v: int) -> tuple[int, bytes]:
    return INT32, struct.pack("<i", v)


def u64(v: int) -> tuple[int, bytes]:
    return UINT64, struct.pack("<Q", v)


def f32(v: float) -> tuple[int, bytes]:
    return FLOAT32, struct.pack("<f", v)


def string(v: str | bytes) -> tuple[int, bytes]:
    return STRING, s(v)


def array(sub: int, items: list[bytes], n: int | None = None) -> tuple[int, bytes]:
    """An array of `sub` items (each given as its payload bytes); `n` overrides the stored length."""
    return ARRAY, struct.pack("<IQ", sub, len(items) if n is None else n) + b"".join(items)


def nested(depth: int) -> tuple[int, bytes]:
    """Arrays of arrays `depth` deep, the innermost one holding one uint32."""
    v = array(UINT32, [struct.pack("<I", 7)])
    for _ in range(depth - 1):
        v = (ARRAY, struct.pack("<IQ", ARRAY, 1) + v[1])
    return v


def gguf_bytes(kv: dict[str, tuple[int, bytes]], tensors: list[tuple] = (), *, version: int = 3,
               n_kv: int | None = None, n_tensors: int | None = None, align: int = 32,
               data: bytes | None = None) -> bytes:
    """A GGUF file. `tensors`: (name, shape (ne0 first), ggml type, offset, nbytes); data is zeros
    of the right size unless given."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                len(kv) if n_kv is None else n_kv)
    for key, (vtype, payload) in kv.items():
        out += s(key) + struct.pack("<I", vtype) + payload
    end = 0
    for name, shape, ttype, offset, nbytes in tensors:
        out += s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", ttype, offset)
        end = max(end, offset + nbytes)
    out += b"\0" * ((-len(out)) % max(align, 1))
    return out + (data if data is not None else b"\0" * end)


def model_kv(**override) -> dict[str, tuple[int, bytes]]:
    """The metadata of a tiny Gemma 3 model (2 layers, 64 wide): what the budget reads."""
    kv = {
        "general.architecture": string("gemma3"),
        "general.name": string("tiny"),
        "general.alignment": u32(32),
        "gemma3.block_count": u32(2),
        "gemma3.context_length": u32(2048),
        "gemma3.embedding_length": u32(64),
        "gemma3.feed_forward_length": u32(128),
        "gemma3.attention.head_count": u32(2),
        "gemma3.attention.head_count_kv": u32(1),
        "gemma3.attention.key_length": u32(32),
        "gemma3.attention.value_length": u32(32),
        "gemma3.attention.sliding_window": u32(512),
        "tokenizer.ggml.tokens": array(STRING, [s("<pad>"), s("<eos>"), s("<bos>"), s("a")]),
    }
    kv.update(override)
    return {k: v for k, v in kv.items() if v is not None}


def model_tensors(n_vocab: int = 4, width: int = 64, matrices: tuple[str, ...] = ("attn_q",)) -> list[tuple]:
    """token_embd plus F32 `matrices` (width x width) and one norm per layer (2 layers), packed back
    to back."""
    specs = [("token_embd.weight", (width, n_vocab))]
    for il in range(2):
        specs += [(f"blk.{il}.{m}.weight", (width, width)) for m in matrices] + [(f"blk.{il}.attn_norm.weight", (width,))]
    out, off = [], 0
    for name, shape in specs:
        n = 4
        for d in shape:
            n *= d
        out.append((name, shape, F32, off, n))
        off += (n + 31) // 32 * 32
    return out


GEMMA_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def model_gguf(matrices: tuple[str, ...] = ("attn_q",), **override) -> bytes:
    return gguf_bytes(model_kv(**override), model_tensors(matrices=matrices))
