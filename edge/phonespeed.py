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


@dataclass(frozen=True)
class PhoneSpeedModel:
    """Decode speed of llama.cpp on a phone's CPU: every weight is read once per token (a tied
    output head included) at `efficiency[family]` x the theoretical DRAM bandwidth, and each layer
    costs a fixed extra time (thread synchronisation, the small ops between the matrix products)
    that scales with the phone's speed class; it is expressed as `layer_bytes`, the bytes that
    would take as long to read. Families without their own figure use efficiency['*'].

        tokens/s = efficiency[family] x bandwidth / (bytes per token + n_layers x layer_bytes)
    """

    efficiency: dict
    layer_bytes: float

    def tok_s(self, bytes_per_token: float, n_layers: int, bandwidth_gbs: float, family: str) -> float:
        e = self.efficiency.get(family, self.efficiency["*"])
        return e * bandwidth_gbs * 1e9 / (bytes_per_token + n_layers * self.layer_bytes)


# Fitted by bench/phones.py on the published rows of bench/phones.toml (17 rows: Gemma 3 1B/270M and
# SmolLM2 135M/360M, Q8_0, on 15 named phones); tests/test_budget.py checks that a re-fit gives
# these numbers. Held-out (leave-one-out) median error 25%; the table: docs/BENCHMARKS.md "Phones".
# Exynos and other families have no published row: they use '*'. The sustained speed under heat
# (phone_speed's power-envelope ratio) is NOT calibrated: no source read gives a throttled figure.
PHONE_SPEED = PhoneSpeedModel(
    efficiency={"*": 0.4266, "snapdragon": 0.4805, "tensor": 0.3318, "mediatek": 0.3043},
    layer_bytes=7.3e6,
)


@dataclass
class PhoneSpeed:
    """What one phone does with one model: decode speeds, heat and the caveats behind them."""

    tok_s: float                  # decode, empty context
    tok_s_full: float             # ... with the context full
    sustained_tok_s: float        # under the phone's sustained power envelope
    energy_mj_per_token: float
    thermal: str
    warnings: list[str] = field(default_factory=list)


def phone_speed(prof, *, bytes_per_token: float, bytes_per_token_full: float, n_layers: int,
                target_tok_s: float = 10.0, model: PhoneSpeedModel = PHONE_SPEED) -> PhoneSpeed:
    """Speed and heat of a model (bytes read per token, layers) on the phone of profile `prof`.

    Sustained speed: the decode speed scaled by sustained_power_w / load_power_w, both estimates in
    the profiles; NOT calibrated (no source read gives a throttled llama.cpp figure)."""
    family = soc_family(prof.soc)
    tok = model.tok_s(bytes_per_token, n_layers, prof.bandwidth_gbs, family)
    tok_full = model.tok_s(bytes_per_token_full, n_layers, prof.bandwidth_gbs, family)
    warnings = [] if prof.bandwidth_sourced else [ESTIMATED_BANDWIDTH]
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
