"""Which tensors llama.cpp repacks at load time on a CPU, into which kernel, and how many bytes
that copy holds: the one rule, used by the budget's RAM estimate (edge/budget.py), `edge inspect`
and the quantize report.

    from quantize.repack import repacked, repacked_bytes, features_of
    repacked([("blk.0.attn_q.weight", "Q4_0", (640, 1024)), ...], features={"dotprod"})
    # {"blk.0.attn_q.weight": "Q4_0 4x4 (dotprod)"}
    repacked_bytes([(name, type, shape, n_bytes), ...], features_of(cpuinfo_flags))

Source: llama.cpp `ggml/src/ggml-cpu/repack.cpp`, `ggml_repack_get_optimal_repack_type`, as
vendored by llama-cpp-python 0.3.36 (llama.cpp 0c1e570; read again at ggml-org/llama.cpp
00d3d1d, which differs only in taking IQ4_NL on any aarch64 NEON CPU and in a new Q1_0 type:
every phone profile with dotprod is the same either way). A 2-D matrix multiplied by F32
activations (every weight matrix) moves into the CPU_REPACK buffer when its type has an
interleaved kernel for the CPU's features and its row count (ne[1]) is a multiple of the
interleave; the buffer holds ggml_nbytes of the tensor (the interleaved blocks are the same size,
`get_alloc_size` is unset), and with mmap the file's copy stays resident too.

| type | x86 AVX2 | x86 AVX-512 | ARM i8mm | ARM dotprod only |
|---|---|---|---|---|
| Q4_0 | 8x8, rows % 8 | (AVX2's) | 4x8, rows % 4 | 4x4, rows % 4 |
| Q4_K | 8x8, rows % 8 | (AVX2's) | 8x8, rows % 8 | 8x4, rows % 8 |
| Q5_K, Q6_K | - | - | 8x8, rows % 8 | 8x4, rows % 8 |
| Q2_K | - | 8x8, rows % 8 | - | - |
| IQ4_NL | 8x8, rows % 8 | (AVX2's) | 4x4, rows % 4 (its dotprod kernel) | 4x4, rows % 4 |
| Q8_0 | - | - | 4x8, rows % 4 | 4x4, rows % 4 |
| MXFP4 | 8x8, rows % 8 | (AVX2's) | 4x4, rows % 4 (dotprod) | 4x4, rows % 4 |

No kernel anywhere: Q5_0, Q5_1, Q4_1, Q3_K, IQ4_XS, IQ3/IQ2/IQ1, F16, BF16, F32. The
`ggml_cpu_has_*` checks are compile-time: a llama.cpp built for the CPU it runs on (GGML_NATIVE,
as llama-cpp-python builds here, or the per-CPU backend variants of an app) has the features the
CPU reports. An ARM CPU with neither dotprod nor i8mm (Cortex-A53/A55 before ARMv8.2) repacks
nothing. (SVE-256 with i8mm takes Q4_0 8x8; no phone core has 256-bit SVE.)

The tied `token_embd.weight` is used twice: as the input embedding (`GGML_OP_GET_ROWS`, never
repacked) and as the output head, which the loader creates as a duplicate in the output's buffer
type (llama-model-loader.cpp, `TENSOR_DUPLICATED`). So a repackable tied head is held twice: the
file's (or the CPU buffer's) embedding and the repacked head. An untied `token_embd` is only the
embedding and is never repacked.

Checked against llama.cpp's own logs: this machine's `CPU_REPACK model buffer size`
(tests/test_quantize.py, x86 AVX-512) and PocketPal's phone logs for Gemma 3 1B in eight
quantizations (bench/phones.py, docs/BENCHMARKS.md "Phones").
"""

from __future__ import annotations

import re

# type -> [(feature, kernel, row multiple)], in the order llama.cpp tries them
KERNELS: dict[str, list[tuple[str, str, int]]] = {
    "Q4_0": [("avx2", "8x8", 8), ("i8mm", "4x8", 4), ("dotprod", "4x4", 4)],
    "Q4_K": [("avx2", "8x8", 8), ("i8mm", "8x8", 8), ("dotprod", "8x4", 8)],
    "Q5_K": [("i8mm", "8x8", 8), ("dotprod", "8x4", 8)],
    "Q6_K": [("i8mm", "8x8", 8), ("dotprod", "8x4", 8)],
    "Q2_K": [("avx512", "8x8", 8)],
    "IQ4_NL": [("avx2", "8x8", 8), ("dotprod", "4x4", 4)],
    "Q8_0": [("i8mm", "4x8", 4), ("dotprod", "4x4", 4)],
    "MXFP4": [("avx2", "8x8", 8), ("dotprod", "4x4", 4)],
}
PHONE_FEATURES = frozenset({"dotprod", "i8mm"})  # ARMv8.6+ cores (Cortex-A78/X1 have dotprod; A710/X2 and later i8mm too)
# /proc/cpuinfo flag -> the feature llama.cpp checks (ggml_cpu_has_*)
CPUINFO = {"avx2": "avx2", "avx512f": "avx512", "asimddp": "dotprod", "i8mm": "i8mm",
           "dotprod": "dotprod", "avx512": "avx512"}


def features_of(flags) -> frozenset[str]:
    """The repack features (avx2, avx512, dotprod, i8mm) of a CPU, from its /proc/cpuinfo flags
    (or these names themselves). i8mm implies dotprod and AVX-512 implies AVX2 on every CPU that
    has them."""
    have = {CPUINFO[f] for f in flags if f in CPUINFO}
    if "i8mm" in have:
        have.add("dotprod")
    if "avx512" in have:
        have.add("avx2")
    return frozenset(have)


def kernel(qtype: str, n_rows: int, features=PHONE_FEATURES) -> str | None:
    """The repacked kernel llama.cpp picks for a weight matrix of `n_rows` rows (ne[1]), or None
    (runs as stored)."""
    have = features_of(features)
    for feature, name, multiple in KERNELS.get(str(qtype), []):
        if feature in have and n_rows % multiple == 0:
            return f"{qtype} {name} ({feature})"
    return None


def matrices(tensors, head: bool = True):
    """(name, type, shape, n_bytes or None) of the weight matrices llama.cpp multiplies: every 2-D
    `.weight`, and `token_embd.weight` only when it is the output head too (no `output.weight`).
    `head` False: the body alone, without the output head (a prompt multiplies it at its last token
    only)."""
    tensors = [tuple(t) for t in tensors]
    tied = not any(t[0] == "output.weight" for t in tensors)
    for t in tensors:
        name, qtype, shape = t[0], str(t[1]), tuple(int(d) for d in t[2])
        if len(shape) != 2 or not name.endswith(".weight") or (name == "token_embd.weight" and not tied):
            continue
        if not head and name in ("output.weight", "token_embd.weight"):
            continue
        yield name, qtype, shape, (int(t[3]) if len(t) > 3 else None)


def repacked(tensors, features=PHONE_FEATURES) -> dict[str, str]:
    """{tensor name: kernel} for the matrices of [(name, type name, shape ne0-first[, n_bytes])]
    that llama.cpp repacks at load on a CPU with `features`; a tied head counts once, as the head."""
    out = {}
    for name, qtype, shape, _ in matrices(tensors):
        k = kernel(qtype, shape[1], features)
        if k:
            out[name] = k
    return out


def repacked_bytes(tensors, features=PHONE_FEATURES) -> int:
    """Bytes of the CPU_REPACK buffer: the n_bytes of every matrix of [(name, type, shape, n_bytes)]
    that llama.cpp repacks (llama.cpp logs it as `CPU_REPACK model buffer size`)."""
    total = 0
    for name, qtype, shape, n_bytes in matrices(tensors):
        if kernel(qtype, shape[1], features):
            if n_bytes is None:
                raise ValueError(f"{name}: repacked_bytes needs (name, type, shape, n_bytes)")
            total += n_bytes
    return total


def summary(tensors, features=PHONE_FEATURES) -> dict:
    """Share of the weight matrices' elements (and which kernels) that run repacked: for reports and inspect."""
    rep = repacked(tensors, features)
    total = rep_elems = 0
    kinds: dict[str, int] = {}
    for name, _, shape, _ in matrices(tensors):
        n = shape[0] * shape[1]
        total += n
        if name in rep:
            rep_elems += n
            kinds[rep[name]] = kinds.get(rep[name], 0) + 1
    head = rep.get("output.weight") or rep.get("token_embd.weight")
    return {"features": sorted(features_of(features)), "n_tensors": len(rep), "n_matrices": sum(1 for _ in matrices(tensors)),
            "weight_share": rep_elems / total if total else 0.0, "head": head, "kernels": kinds}


def label(tensors, features=PHONE_FEATURES, where: str = "ARM") -> str:
    """One line: 'head + 36 of 108 other matrices repacked on ARM dotprod/i8mm (71% of weights)'."""
    s = summary(tensors, features)
    feats = "/".join(s["features"]) or "without dotprod/i8mm"
    if not s["n_tensors"]:
        return f"nothing repacked on {where} {feats}: every matrix runs as stored"
    head = 1 if s["head"] else 0
    return (f"{'head + ' if head else ''}{s['n_tensors'] - head} of {s['n_matrices'] - head} other matrices "
            f"repacked on {where} {feats} ({100 * s['weight_share']:.0f}% of weights)")


def logged_buffers(log: str) -> dict[str, float]:
    """{buffer name: MiB} from llama.cpp's loading log ('CPU_REPACK model buffer size = 143.79 MiB';
    edge.llamacpp.Model keeps it as `load_log`)."""
    return {m[1]: float(m[2]) for m in re.finditer(r"(\S+) model buffer size =\s+([\d.]+) MiB", log)}
