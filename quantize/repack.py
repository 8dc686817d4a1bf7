"""Which tensors llama.cpp repacks at load time on an ARM phone's CPU, and into which kernel.

    from quantize.repack import repacked
    repacked([("blk.0.attn_q.weight", "Q4_0", (640, 1024)), ...], features={"dotprod"})
    # {"blk.0.attn_q.weight": "Q4_0 4x4 (dotprod)"}

Source: llama.cpp `ggml/src/ggml-cpu/repack.cpp`, `ggml_repack_get_optimal_repack_type`, as
vendored by llama-cpp-python 0.3.36 (llama.cpp 0c1e570). A 2-D matrix multiplied by F32
activations (every weight matrix) moves into the CPU_REPACK buffer when its type has an
interleaved kernel for the CPU's features and its row count (ne[1]) is a multiple of the
interleave. On ARM (NEON):

| type | i8mm | dotprod only |
|---|---|---|
| Q4_0 | 4x8, rows % 4 | 4x4, rows % 4 |
| Q4_K, Q5_K, Q6_K | 8x8, rows % 8 | 8x4, rows % 8 |
| IQ4_NL | 4x4, rows % 4 (its dotprod kernel) | 4x4, rows % 4 |
| Q8_0 | 4x8, rows % 4 | 4x4, rows % 4 |
| MXFP4 | 4x4, rows % 4 (dotprod) | 4x4, rows % 4 |

No ARM kernel: Q5_0, Q5_1, Q4_1, Q2_K (AVX-512 and RISC-V only), Q3_K, IQ4_XS, IQ3/IQ2/IQ1,
F16, BF16, F32. A CPU with neither dotprod nor i8mm (Cortex-A53/A55 before ARMv8.2's
dotprod) repacks nothing. (SVE-256 with i8mm takes Q4_0 8x8; no phone core has 256-bit SVE.)

The tied `token_embd.weight` is used twice: as the input embedding (`GGML_OP_GET_ROWS`, never
repacked) and as the output head, which the loader creates as a duplicate in the output's
buffer type (llama-model-loader.cpp, `TENSOR_DUPLICATED`). So a repackable head runs repacked,
and its repacked copy is held in RAM beside the mmapped original (read from the source, not
measured on a phone).
"""

from __future__ import annotations

# type -> [(feature, kernel, row multiple)], in the order llama.cpp tries them
ARM_KERNELS: dict[str, list[tuple[str, str, int]]] = {
    "Q4_0": [("i8mm", "4x8", 4), ("dotprod", "4x4", 4)],
    "Q4_K": [("i8mm", "8x8", 8), ("dotprod", "8x4", 8)],
    "Q5_K": [("i8mm", "8x8", 8), ("dotprod", "8x4", 8)],
    "Q6_K": [("i8mm", "8x8", 8), ("dotprod", "8x4", 8)],
    "IQ4_NL": [("dotprod", "4x4", 4)],
    "Q8_0": [("i8mm", "4x8", 4), ("dotprod", "4x4", 4)],
    "MXFP4": [("dotprod", "4x4", 4)],
}
PHONE_FEATURES = {"dotprod", "i8mm"}  # ARMv8.6+ cores (Cortex-A78/X1 have dotprod; A710/X2 and later i8mm too)


def kernel(qtype: str, n_rows: int, features=PHONE_FEATURES) -> str | None:
    """The repacked kernel llama.cpp picks for a weight matrix, or None (runs as stored).
    i8mm implies dotprod on every ARM core that has it."""
    have = set(features)
    if "i8mm" in have:
        have.add("dotprod")
    for feature, name, multiple in ARM_KERNELS.get(qtype, []):
        if feature in have and n_rows % multiple == 0:
            return f"{qtype} {name} ({feature})"
    return None


def repacked(tensors, features=PHONE_FEATURES) -> dict[str, str]:
    """{tensor name: kernel} for the matrices of [(name, type name, shape ne0-first)] that
    llama.cpp repacks at load on an ARM CPU with `features`; the tied head counts once, as the
    output head."""
    out = {}
    for name, qtype, shape in tensors:
        if len(shape) != 2 or not name.endswith(".weight"):
            continue
        k = kernel(str(qtype), int(shape[1]), features)
        if k:
            out[name] = k
    return out


def summary(tensors, features=PHONE_FEATURES) -> dict:
    """Share of the weight bytes (and which types) that run repacked: for reports and inspect."""
    rep = repacked(tensors, features)
    total = rep_elems = 0
    kinds: dict[str, int] = {}
    for name, qtype, shape in tensors:
        if len(shape) != 2 or not name.endswith(".weight"):
            continue
        n = int(shape[0]) * int(shape[1])
        total += n
        if name in rep:
            rep_elems += n
            kinds[rep[name]] = kinds.get(rep[name], 0) + 1
    return {"features": sorted(features), "n_tensors": len(rep), "weight_share": rep_elems / total if total else 0.0,
            "head": rep.get("token_embd.weight") or rep.get("output.weight"), "kernels": kinds}


def label(tensors, features=PHONE_FEATURES) -> str:
    """One line: 'head + 36 of 108 matrices (71% of weights) repacked on ARM dotprod/i8mm'."""
    s = summary(tensors, features)
    n_mat = sum(1 for name, _, shape in tensors if len(shape) == 2 and name.endswith(".weight"))
    if not s["n_tensors"]:
        return f"nothing repacked on ARM {'/'.join(s['features'])}: every matrix runs as stored"
    head = "head + " if s["head"] else ""
    n_body = s["n_tensors"] - (1 if s["head"] else 0)
    return (f"{head}{n_body} of {n_mat - (1 if s['head'] else 0)} other matrices repacked on ARM "
            f"{'/'.join(s['features'])} ({100 * s['weight_share']:.0f}% of weights)")
