"""Decode speed and heat of llama.cpp on a phone's CPU, from a phone profile and a GGUF's bytes.

Takes what the budget knows of a model (bytes read per generated token, layer count) and a
`edge.profiles.Profile` (DRAM bandwidth, SoC, power envelope); returns tokens/s with an empty and
a full context, the sustained speed under the phone's power envelope, the energy per token and
a line about heat. Writes nothing. Calibrated by bench/phones.py on published phone
measurements (bench/phones.toml, every row with its source; table: docs/BENCHMARKS.md "Phones").

    from edge.phonespeed import phone_speed
    s = phone_speed(profile, bytes_per_token=300e6, bytes_per_token_full=320e6, n_layers=18)
    s.tok_s, s.sustained_tok_s, s.thermal
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quantize import repack

# The SoC family decides how much of the DRAM's theoretical bandwidth llama.cpp's decode reaches
# (memory controller, cores, prefetchers): read from the profile's `soc` name.
SOC_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("snapdragon", ("snapdragon", "qualcomm")),
    ("tensor", ("google tensor",)),
    ("exynos", ("exynos",)),
    ("mediatek", ("mediatek", "dimensity", "helio")),
)


ESTIMATED_BANDWIDTH = ("tok/s marked *: the profile's DRAM bandwidth is an estimate (no source read for its "
                       "transfer rate or bus width), so is the speed")


def soc_family(soc: str) -> str:
    """'snapdragon', 'tensor', 'exynos', 'mediatek' or 'other', from a SoC name."""
    low = (soc or "").lower()
    for family, names in SOC_FAMILIES:
        if any(n in low for n in names):
            return family
    return "other"


# More llama.cpp threads than big cores: every step waits on a little in-order core too. OmniInfer measured
# "6+ threads pulls in A510 efficiency cores causing 30-40% decode regression" with llama.cpp on the
# Snapdragon 8 Gen 2 (https://github.com/omnimind-ai/OmniInfer/pull/66); on a 4 big + 4 little RK3588,
# 8 threads decoded at half the speed of 4 (https://github.com/ggml-org/llama.cpp/issues/7176). We take
# 35% slower; not fitted (bench/phones.py uses it for the rows that name their thread count).
LITTLE_CORE_FACTOR = 0.65
LITTLE_CORE_NOTE = ("tok/s assumes llama.cpp's threads stay on the big cores (`edge profiles --json`: big_cores); "
                    "more threads also wait on the little in-order cores: about 35% slower (OmniInfer PR #66)")


@dataclass(frozen=True)
class PhoneSpeedModel:
    """Decode speed of llama.cpp on a phone's CPU. Every matmul weight is read once per token (a tied
    output head included) at `efficiency[family]` x the theoretical DRAM bandwidth; a weight type whose
    kernels do more work per byte than Q8_0's (K-quants' scales, i-quants' grids) costs
    `type_cost[type]` x its bytes (Q8_0 and types without a figure: 1); and each layer costs a fixed
    extra time (thread synchronisation, the small ops between the matrix products) that scales with
    the phone's speed class, expressed as `layer_bytes`, the bytes that would take as long to read.
    Families without their own efficiency use efficiency['*'].

        tokens/s = efficiency[family] x bandwidth / (sum over types of bytes x type_cost + n_layers x layer_bytes)
    """

    efficiency: dict
    layer_bytes: float
    type_cost: dict = field(default_factory=dict)

    def cost_bytes(self, bytes_by_type: dict) -> float:
        """Bytes read per token, each type weighted by its compute cost."""
        return sum(b * self.type_cost.get(t, 1.0) for t, b in bytes_by_type.items())

    def tok_s(self, bytes_per_token, n_layers: int, bandwidth_gbs: float, family: str,
              little_cores: bool = False) -> float:
        """`bytes_per_token`: a number (costed as Q8_0) or {ggml type name: bytes read per token};
        `little_cores`: llama.cpp runs more threads than the phone has big cores (LITTLE_CORE_FACTOR)."""
        b = self.cost_bytes(bytes_per_token) if isinstance(bytes_per_token, dict) else bytes_per_token
        e = self.efficiency.get(family, self.efficiency["*"]) * (LITTLE_CORE_FACTOR if little_cores else 1.0)
        return e * bandwidth_gbs * 1e9 / (b + n_layers * self.layer_bytes)


# Fitted by bench/phones.py on the 41 published rows of bench/phones.toml (Gemma 3 1B in 8 quantizations
# and 270M, SmolLM2 135M/360M, on 17 named phones; 24 rows from PocketPal's controlled benchmark matrix);
# tests/test_budget.py checks that a re-fit gives these numbers. Error on rows the fit did not see:
# median 16% (leave-one-out), 23% (leave-one-phone-out); the table: docs/BENCHMARKS.md "Phones".
# Exynos and other families have no published row: they use '*'. type_cost: Q8_0 and unlisted types 1.
# The sustained speed under heat (phone_speed's power-envelope ratio) is NOT calibrated: no source read
# gives a throttled llama.cpp figure.
PHONE_SPEED = PhoneSpeedModel(
    efficiency={"*": 0.4799, "mediatek": 0.4193, "snapdragon": 0.5196, "tensor": 0.3588},
    layer_bytes=9.3e6,
    type_cost={"IQ2_S": 1.58, "Q2_K": 1.092, "Q3_K": 0.795, "Q4_0": 0.755, "Q4_K": 0.941, "Q5_K": 0.973,
               "Q6_K": 0.797},
)


@dataclass(frozen=True)
class PromptSpeedModel:
    """Prompt processing (prefill) of llama.cpp on a phone's CPU. Unlike decode it is compute-bound:
    each prompt token is multiplied by every weight matrix of the body (the output head only at the
    last token: left out), at a pace set by the clocks of the cores in use. A matrix llama.cpp
    repacked at load (quantize/repack.py, the rule the RAM estimate uses) runs an interleaved GEMM
    kernel (dotprod/i8mm); any other runs the plain dot-product path, `cost[type]` times dearer per
    weight (types without a figure: cost['*']). So two files of one size can differ several-fold:
    on Gemma 3 1B, Q4_K_M's 1,152-wide rows fall back from Q4_K to Q5_0, which has no repacked kernel.

        prompt tokens/s = rate x sum of core GHz / sum over body matrices of (weights x cost[kernel])
    """

    rate: float            # weights per second per GHz, on repacked kernels
    cost: dict             # weight type (not repacked) -> cost per weight relative to a repacked one

    @staticmethod
    def weights_by_kernel(matrices, features) -> dict:
        """{'repacked' or the type run as stored: weights} of [(name, type, shape, ...)] body matrices
        on a CPU with `features`."""
        out: dict = {}
        for name, qtype, shape, *_ in matrices:
            key = "repacked" if repack.kernel(qtype, shape[1], features) else str(qtype)
            out[key] = out.get(key, 0) + shape[0] * shape[1]
        return out

    def cost_weights(self, by_kernel: dict) -> float:
        return sum(n * (1.0 if k == "repacked" else self.cost.get(k, self.cost["*"])) for k, n in by_kernel.items())

    def tok_s(self, by_kernel: dict, ghz: float) -> float:
        """`by_kernel`: `weights_by_kernel(...)`; `ghz`: the summed clocks of the cores in use."""
        return self.rate * ghz / self.cost_weights(by_kernel)


# Fitted by bench/phones.py --prompt on PocketPal's 24 prompt speeds (Gemma 3 1B in 8 quantizations on
# 3 phones, 6 threads, a 256-token prompt, llama.cpp's logged repacked buffers matched to 0.01 MiB);
# tests/test_budget.py checks that a re-fit gives these numbers. Error on rows the fit did not see: median
# 24% (leave-one-out), 25% on a phone it never saw, 26% on a quantization it never saw (docs/BENCHMARKS.md
# "Phones"). Types run as stored cost 3-10x a repacked weight: Q4_K_M and Q5_K_M of Gemma 3 1B read a
# prompt at a third of Q4_0's speed (their 1,152-wide rows fall back to Q5_0/Q5_1, never repacked).
PROMPT_SPEED = PromptSpeedModel(rate=9.98e9, cost={"*": 4.86, "IQ2_S": 10.251, "IQ3_S": 3.054, "Q3_K": 4.692,
                                                   "Q5_0": 4.025, "Q5_1": 4.588})


@dataclass
class PhoneSpeed:
    """What one phone does with one model: decode speeds, heat and the caveats behind them."""

    tok_s: float                  # decode, empty context
    tok_s_full: float             # ... with the context full
    sustained_tok_s: float        # under the phone's sustained power envelope
    energy_mj_per_token: float
    thermal: str
    warnings: list[str] = field(default_factory=list)


def phone_speed(prof, *, bytes_per_token, bytes_per_token_full, n_layers: int,
                target_tok_s: float = 10.0, model: PhoneSpeedModel = PHONE_SPEED) -> PhoneSpeed:
    """Speed and heat of a model on the phone of profile `prof`: bytes read per token (a number, or
    {ggml type: bytes} so that each type's compute cost counts) with an empty and a full context.
    The speed assumes llama.cpp runs on the big cores only (threads <= prof.big_cores).

    Sustained speed: the decode speed scaled by sustained_power_w / load_power_w, both estimates in
    the profiles; NOT calibrated (no source read gives a throttled llama.cpp figure)."""
    family = soc_family(prof.soc)
    tok = model.tok_s(bytes_per_token, n_layers, prof.bandwidth_gbs, family)
    tok_full = model.tok_s(bytes_per_token_full, n_layers, prof.bandwidth_gbs, family)
    warnings = [] if prof.bandwidth_sourced else [ESTIMATED_BANDWIDTH]
    if prof.big_cores < prof.cpu_cores:
        warnings.append(LITTLE_CORE_NOTE)
    energy = prof.load_power_w / tok * 1000
    sust = tok * min(1.0, prof.sustained_power_w / prof.load_power_w)
    if sust >= target_tok_s:
        thermal = (f"holds {sust:.0f} tok/s sustained ({prof.sustained_power_w:g} W envelope, "
                   f"{energy:.0f} mJ/token at {prof.load_power_w:g} W)")
    else:
        thermal = (f"throttles to about {sust:.1f} tok/s, below the {target_tok_s:g} tok/s target "
                   f"({prof.sustained_power_w:g} W envelope vs {prof.load_power_w:g} W under load)")
    if not (prof.dotprod or prof.i8mm):
        warnings.append("CPU without dotprod/i8mm: quantized matmuls run on plain NEON, speed is "
                        "likely compute-bound and below this bandwidth estimate")
    return PhoneSpeed(tok, tok_full, sust, energy, thermal, warnings)
