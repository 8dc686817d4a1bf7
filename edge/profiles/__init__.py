"""Phone profiles: one TOML file per phone in this folder, every number with its source.

Takes the package data beside this file (edge/profiles/*.toml, described in README.md here) or a
folder of such files; validates each (every field present with a source, numbers positive,
bandwidth = transfer rate x bus width) and returns `Profile`s. Writes nothing.

    edge profiles                               # the table (profiles_cmd); --json: every source
    from edge.profiles import load_profiles, get_profile
    get_profile("pixel_7").bandwidth_gbs; usable_bytes_for(get_profile("pixel_7").ram_bytes)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge.errors import EdgeError

PROFILES_DIR = Path(__file__).resolve().parent    # package data: there in a wheel too
GIB = 1 << 30
# Arm's in-order little cores; every other core in a phone SoC (Cortex-A7x/X, Oryon) is out of order.
LITTLE_CORES = re.compile(r"\bA5[35]\b|\bA5[12]0\b")
DEFAULT_DEVICES = ("galaxy_a12", "pixel_7", "galaxy_s24_ultra")   # a budget, a mid and a flagship phone

# What Android leaves to one foreground app: total RAM minus the system's share (kernel,
# carve-outs, zram, system_server, SystemUI, launcher, GMS). Estimate, not measured: 1.2 GB
# (the figure PocketPal and AnythingLLM also subtract) + 18 % of RAM, which leaves ~1.4 GB
# on a 3 GB phone and ~5.8 GB on an 8 GB one. A live phone (--serial) uses MemAvailable.
SYSTEM_RESERVE_FIXED = 1.2e9
SYSTEM_RESERVE_FRACTION = 0.18


def usable_bytes_for(ram_bytes: int) -> int:
    """Memory one foreground app can take on an Android phone with `ram_bytes` (estimate)."""
    return int(ram_bytes - SYSTEM_RESERVE_FIXED - SYSTEM_RESERVE_FRACTION * ram_bytes)


TIERS = ("budget", "mid", "flagship")
# field -> (python type(s), must be positive)
PROFILE_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "ram_gb": ((int, float), True),
    "soc": ((str,), False),
    "cpu": ((str,), False),
    "cpu_cores": ((int,), True),
    "dotprod": ((bool,), False),
    "i8mm": ((bool,), False),
    "memory_type": ((str,), False),
    "memory_mts": ((int, float), True),
    "bus_bits": ((int,), True),
    "bandwidth_gbs": ((int, float), True),
    "android": ((str,), False),
    "sustained_power_w": ((int, float), True),
    "load_power_w": ((int, float), True),
}


@dataclass
class Profile:
    """One phone, from edge/profiles/<key>.toml. Every value has its source in `sources`."""

    key: str
    name: str
    tier: str
    ram_gb: float
    soc: str
    cpu: str
    cpu_cores: int
    dotprod: bool
    i8mm: bool
    memory_type: str
    memory_mts: float
    bus_bits: int
    bandwidth_gbs: float
    android: str
    sustained_power_w: float
    load_power_w: float
    sources: dict[str, str] = field(default_factory=dict)
    path: str = ""

    @property
    def bandwidth_sourced(self) -> bool:
        """Whether the DRAM bandwidth rests on read sources (a link for both the transfer rate and
        the bus width), rather than on an estimate."""
        srcs = [self.sources.get(k, "") for k in ("memory_mts", "bus_bits")]
        return all("https://" in s and not s.strip().lower().startswith("estimate") for s in srcs)

    @property
    def big_cores(self) -> int:
        """Cores that are not Arm's little in-order ones (Cortex-A53/A55/A510/A520), read from `cpu`
        ("1x Cortex-X3 3.36 GHz + 2x Cortex-A715 ... + 3x Cortex-A510 2.0 GHz" -> 5); all cores when
        none is big."""
        counts = [(int(n), name) for n, name in re.findall(r"(\d+)\s*x\s*([^+]+)", self.cpu)]
        big = sum(n for n, name in counts if not LITTLE_CORES.search(name))
        return big or self.cpu_cores        # all cores alike (8x Cortex-A53): none is waited on

    def core_clocks(self, threads: int | None = None) -> list[float]:
        """Clocks (GHz) of the cores llama.cpp's `threads` threads run on, read from `cpu`: the big
        cores fastest first, then the little ones ("1x Cortex-X3 3.36 GHz + 2x Cortex-A715 2.8 GHz +
        ..."); `threads` None: the big cores (as the speed predictions assume)."""
        cores = []
        for n, name, ghz in re.findall(r"(\d+)\s*x\s*([^+]*?)\s*([\d.]+)\s*GHz", self.cpu):
            cores += [(bool(LITTLE_CORES.search(name)), -float(ghz))] * int(n)
        cores.sort()
        return [-g for _, g in cores[: self.big_cores if threads is None else threads]]

    @property
    def cpu_features(self) -> tuple[str, ...]:
        """The /proc/cpuinfo flags of its CPU that llama.cpp's repacking looks at (quantize/repack.py),
        as a phone read over adb reports them (`DeviceState.cpu_features`)."""
        return ("asimddp",) * self.dotprod + ("i8mm",) * self.i8mm

    @property
    def ram_bytes(self) -> int:
        """Physical RAM: phone RAM is sold in binary gigabytes (an '8 GB' phone has 8 GiB)."""
        return int(self.ram_gb * GIB)


def _load_profile(path: Path) -> Profile:
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EdgeError(f"profile {path}: not valid TOML ({e}); fix the file") from None
    for key in ("name", "tier"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise EdgeError(f"profile {path}: field '{key}' is missing; add {key} = \"...\"")
    if data["tier"] not in TIERS:
        raise EdgeError(f"profile {path}: field 'tier' is {data['tier']!r}; use one of {', '.join(TIERS)}")
    values, sources = {}, {}
    for name, (types, positive) in PROFILE_FIELDS.items():
        entry = data.get(name)
        if entry is None:
            raise EdgeError(f"profile {path}: field '{name}' is missing; add {name} = {{ value = ..., source = \"...\" }}")
        if not isinstance(entry, dict) or "value" not in entry:
            raise EdgeError(f"profile {path}: field '{name}' must be {{ value = ..., source = \"...\" }}")
        v, src = entry["value"], entry.get("source")
        if not isinstance(src, str) or not src.strip():
            raise EdgeError(f"profile {path}: field '{name}' has no source; every number says where it came from")
        ok = isinstance(v, types) and not (bool not in types and isinstance(v, bool))
        if not ok:
            raise EdgeError(f"profile {path}: field '{name}' is {v!r}; expected {' or '.join(t.__name__ for t in types)}")
        if positive and v <= 0:
            raise EdgeError(f"profile {path}: field '{name}' is {v!r}; it must be positive")
        values[name], sources[name] = v, src
    computed = values["memory_mts"] * values["bus_bits"] / 8 / 1000
    if abs(computed - values["bandwidth_gbs"]) > 0.02 * computed:
        raise EdgeError(f"profile {path}: field 'bandwidth_gbs' is {values['bandwidth_gbs']} but memory_mts x "
                        f"bus_bits / 8 gives {computed:.1f} GB/s; fix one of them")
    return Profile(key=path.stem, name=data["name"], tier=data["tier"], sources=sources, path=str(path), **values)


def load_profiles(folder: str | Path | None = None) -> dict[str, Profile]:
    """Read and validate every edge/profiles/*.toml; key = file stem. Bad files raise EdgeError."""
    folder = Path(folder) if folder else PROFILES_DIR
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise EdgeError(f"no device profiles in {folder}; reinstall the toolkit or pass a folder of *.toml")
    return {f.stem: _load_profile(f) for f in files}


def by_tier(profiles: dict[str, Profile]) -> list[Profile]:
    """Budget phones first, then mid and flagship; within a tier by RAM, then name."""
    return sorted(profiles.values(), key=lambda p: (TIERS.index(p.tier), p.ram_gb, p.key))


def get_profile(name: str, profiles: dict[str, Profile] | None = None) -> Profile:
    profiles = profiles or load_profiles()
    if name in profiles:
        return profiles[name]
    low = name.lower().replace(" ", "_").replace("-", "_")
    hits = [p for k, p in profiles.items() if low == k or low in k]
    if len(hits) == 1:
        return hits[0]
    raise EdgeError(f"unknown device profile {name!r}; known: {', '.join(profiles)} (see `edge profiles`)")


def match_profile(state, profiles: dict[str, Profile] | None = None) -> Profile | None:
    """The profile of a live phone, by model name or SoC code (for its bandwidth and power)."""
    profiles = profiles or load_profiles()
    model, soc = (state.model or "").lower(), (state.soc or "").lower()
    for p in profiles.values():
        if model and (model in p.name.lower() or p.name.lower().split(" (")[0].endswith(model)):
            return p
    for p in profiles.values():
        if soc and len(soc) >= 4 and soc in p.soc.lower():
            return p
    return None


def profiles_cmd(*, json: bool = False):
    """List the bundled phone profiles (edge/profiles/*.toml): RAM, SoC, bandwidth, CPU features, power.

    Every value in a profile carries its source; `--json` prints them all.

    Args:
        json: print the profiles, with every value's source, as JSON.
    """
    from edge.phonespeed import soc_family
    from edge.texttable import text_table

    profiles = load_profiles()
    if json:
        return {"profiles": [asdict(p) | {"usable_bytes": usable_bytes_for(p.ram_bytes),
                                          "bandwidth_sourced": p.bandwidth_sourced, "soc_family": soc_family(p.soc),
                                          "big_cores": p.big_cores}
                             for p in profiles.values()]}
    rows = [("profile", "tier", "RAM", "SoC", "memory", "GB/s", "dotprod", "i8mm", "Android", "sust. W")]
    for p in by_tier(profiles):
        rows.append((p.key, p.tier, f"{p.ram_gb:g} GB", p.soc.split(" (")[0], p.memory_type,
                     f"{p.bandwidth_gbs:g}" + ("" if p.bandwidth_sourced else " (estimate)"),
                     "yes" if p.dotprod else "no", "yes" if p.i8mm else "no", p.android, f"{p.sustained_power_w:g}"))
    print(text_table(rows))
    n_est = sum(not p.bandwidth_sourced for p in profiles.values())
    print(f"\n{len(profiles)} profiles in {PROFILES_DIR}; sources: `edge profiles --json`")
    if n_est:
        print(f"(estimate): {n_est} profiles' DRAM bandwidth has no linked source for its transfer rate and bus "
              "width, so their speed figures are estimates; the power figures of every profile are estimates")
    return None
