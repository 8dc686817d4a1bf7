"""Live device readings: pure parsers of what a phone (or this laptop) says about itself.

Nothing here talks to adb. `edge.device.read_state(serial)` runs each shell command of
`COMMANDS` on the phone and hands the outputs to `parse_state`, which turns them into one
`DeviceState`. Every parser takes the text a real device prints (formats in
../shared/REFERENCE.md, "Memory on the phone") and tolerates what real phones do: sensors
that read 0.0 (not fitted), no thermal HAL, Android versions without `ro.soc.model`,
thermal zones the shell may not read, commands that are missing ("inaccessible or not found").

    from edge.readings import COMMANDS, parse_state, host_state
    state = parse_state({name: run_on_phone(cmd) for name, cmd in COMMANDS.items()})
    host_state()   # this laptop, through psutil

Fixtures in the real formats: edge/adbsim/fixtures/<phone>/<command>.txt.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass, field

from edge.errors import EdgeError

# name -> shell command run on the phone (adb shell). Names are the fixture file names.
COMMANDS: dict[str, str] = {
    "getprop": "getprop",
    "meminfo": "cat /proc/meminfo",
    "dumpsys_meminfo": "dumpsys meminfo",
    "battery": "dumpsys battery",
    "thermalservice": "dumpsys thermalservice",
    "thermal_zones": ("for z in /sys/class/thermal/thermal_zone*; do "
                      "printf '%s\\t%s\\t%s\\n' \"${z##*/}\" \"$(cat $z/type 2>/dev/null)\" "
                      "\"$(cat $z/temp 2>/dev/null)\"; done"),
    "cpuinfo": "cat /proc/cpuinfo",
    "df": "df -k /data",
}

# android.os.Temperature TYPE_* constants (frameworks/base/core/java/android/os/Temperature.java).
TEMPERATURE_TYPES: dict[int, str] = {
    -1: "UNKNOWN", 0: "CPU", 1: "GPU", 2: "BATTERY", 3: "SKIN", 4: "USB_PORT",
    5: "POWER_AMPLIFIER", 6: "BCL_VOLTAGE", 7: "BCL_CURRENT", 8: "BCL_PERCENTAGE", 9: "NPU",
    10: "TPU", 11: "DISPLAY", 12: "MODEM", 13: "SOC", 14: "WIFI", 15: "CAMERA", 16: "FLASHLIGHT",
    17: "SPEAKER", 18: "AMBIENT", 19: "POGO",
}
# PowerManager.THERMAL_STATUS_* (also Temperature.mStatus).
THERMAL_STATUS: dict[int, str] = {
    0: "NONE", 1: "LIGHT", 2: "MODERATE", 3: "SEVERE", 4: "CRITICAL", 5: "EMERGENCY", 6: "SHUTDOWN",
}
THERMAL_WARN_STATUS = 2        # MODERATE or above: warn
BATTERY_WARN_C = 40.0          # battery at or above 40 C: warn
# BatteryManager.BATTERY_STATUS_*
BATTERY_STATUS = {1: "unknown", 2: "charging", 3: "discharging", 4: "not charging", 5: "full"}

_NOT_FOUND = re.compile(r"inaccessible or not found|not found|Can't find service|Permission denied"
                        r"|No such file", re.I)


@dataclass
class Temperature:
    """One sensor from `dumpsys thermalservice` (or a thermal zone): degrees Celsius."""

    name: str
    type: str              # CPU, GPU, BATTERY, SKIN, ... (TEMPERATURE_TYPES) or the zone's type
    value_c: float
    status: int = 0        # THERMAL_STATUS of this sensor


@dataclass
class DeviceState:
    """What one device says about itself right now. None = the device did not tell us."""

    source: str = "adb"                    # "adb" (a phone) or "host" (this machine)
    serial: str = ""
    model: str = ""                        # ro.product.model
    manufacturer: str = ""                 # ro.product.manufacturer
    android_version: str = ""              # ro.build.version.release
    sdk: int | None = None                 # ro.build.version.sdk
    abi: str = ""                          # ro.product.cpu.abi
    soc: str = ""                          # ro.soc.model, else ro.board.platform / ro.hardware / cpuinfo
    soc_manufacturer: str = ""             # ro.soc.manufacturer (Android 12+)
    soc_source: str = ""                   # which property `soc` came from
    cpu_cores: int | None = None
    cpu_features: list[str] = field(default_factory=list)
    cpu_parts: list[str] = field(default_factory=list)   # "0x51:0xd05" implementer:part per core
    mem_total_bytes: int | None = None     # /proc/meminfo MemTotal (what the kernel manages)
    mem_available_bytes: int | None = None  # /proc/meminfo MemAvailable
    swap_total_bytes: int | None = None
    swap_free_bytes: int | None = None
    ram_total_bytes: int | None = None     # dumpsys meminfo "Total RAM"
    ram_free_bytes: int | None = None      # dumpsys meminfo "Free RAM" (incl. cached)
    memory_status: str = ""                # dumpsys meminfo "(status normal|moderate|low|critical)"
    battery_level: int | None = None       # percent
    battery_temp_c: float | None = None
    battery_status: str = ""               # charging, discharging, ...
    plugged: bool | None = None
    thermal_status: int | None = None      # 0 NONE .. 6 SHUTDOWN
    thermal_hal: bool | None = None        # "HAL Ready: true|false"; None = no thermalservice
    temperatures: list[Temperature] = field(default_factory=list)   # fitted sensors only
    unfitted_sensors: list[str] = field(default_factory=list)       # sensors reading 0.0
    zones: list[Temperature] = field(default_factory=list)          # /sys/class/thermal
    storage_free_bytes: int | None = None  # df /data "Available"
    notes: list[str] = field(default_factory=list)                  # what could not be read

    # ---- derived views -------------------------------------------------------------------
    @property
    def dotprod(self) -> bool:
        return "asimddp" in self.cpu_features or "dotprod" in self.cpu_features

    @property
    def i8mm(self) -> bool:
        return "i8mm" in self.cpu_features

    @property
    def sve2(self) -> bool:
        return "sve2" in self.cpu_features

    @property
    def total_bytes(self) -> int | None:
        """Physical RAM as best known: dumpsys's Total RAM, else MemTotal."""
        return self.ram_total_bytes or self.mem_total_bytes

    @property
    def available_bytes(self) -> int | None:
        """Memory an app can take now without pushing others out: MemAvailable."""
        if self.mem_available_bytes is not None:
            return self.mem_available_bytes
        return self.ram_free_bytes

    def _max_temp(self, kind: str) -> float | None:
        values = [t.value_c for t in self.temperatures if t.type == kind]
        return max(values) if values else None

    @property
    def skin_temp_c(self) -> float | None:
        return self._max_temp("SKIN")

    @property
    def cpu_temp_c(self) -> float | None:
        cpu = self._max_temp("CPU") or self._max_temp("SOC")
        if cpu is None and self.zones:   # no HAL: the hottest cpu-ish zone
            z = [t.value_c for t in self.zones if re.search(r"cpu|soc|tsens", t.type, re.I)]
            cpu = max(z) if z else None
        return cpu

    @property
    def thermal_status_name(self) -> str:
        return THERMAL_STATUS.get(self.thermal_status, "unknown") if self.thermal_status is not None else "unknown"

    def warnings(self) -> list[str]:
        """Heat and memory warnings a person should see before running a model."""
        out = []
        if self.thermal_status is not None and self.thermal_status >= THERMAL_WARN_STATUS:
            out.append(f"thermal status {self.thermal_status} ({self.thermal_status_name}): the phone is "
                       "already throttling; let it cool before measuring or running long generations")
        if self.battery_temp_c is not None and self.battery_temp_c >= BATTERY_WARN_C:
            out.append(f"battery at {self.battery_temp_c:.1f} C (>= {BATTERY_WARN_C:.0f} C): Android "
                       "throttles charging and CPU; expect lower sustained speed")
        if self.memory_status in ("low", "critical"):
            out.append(f"memory status {self.memory_status}: the low-memory killer is active")
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("dotprod", "i8mm", "sve2", "total_bytes", "available_bytes", "skin_temp_c",
                     "cpu_temp_c", "thermal_status_name"):
            d[name] = getattr(self, name)
        d["warnings"] = self.warnings()
        return d


# ---- parsers ----------------------------------------------------------------------------
def _missing(text: str | None) -> bool:
    """True when a command produced nothing usable (empty, or the shell's 'not found')."""
    if not text or not text.strip():
        return True
    first = text.strip().splitlines()[0]
    return bool(_NOT_FOUND.search(first)) and len(text.strip().splitlines()) <= 2


def parse_getprop(text: str) -> dict[str, str]:
    """`getprop` prints `[key]: [value]` per line (values may be empty)."""
    props = {}
    for m in re.finditer(r"^\[([^\]]+)\]:\s*\[(.*)\]\s*$", text or "", re.M):
        props[m.group(1)] = m.group(2)
    return props


def parse_proc_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo: `MemTotal:        7652820 kB` -> {"MemTotal": bytes}."""
    out = {}
    for m in re.finditer(r"^(\w[\w()]*):\s+(\d+)(?:\s*kB)?\s*$", text or "", re.M):
        out[m.group(1)] = int(m.group(2)) * 1024
    return out


def _kb(s: str) -> int:
    """'2,891,076K' -> bytes (dumpsys meminfo prints kilobytes with thousands separators)."""
    return int(re.sub(r"[,.\s]", "", s.rstrip("Kk"))) * 1024


def parse_dumpsys_meminfo(text: str) -> dict:
    """The summary at the end of `dumpsys meminfo`: Total RAM (+status), Free RAM, Used RAM."""
    out: dict = {}
    m = re.search(r"^\s*Total RAM:\s*([\d,.]+)K(?:\s*\(status (\w+)\))?", text or "", re.M)
    if m:
        out["total"] = _kb(m.group(1))
        if m.group(2):
            out["status"] = m.group(2)
    for key, label in (("free", "Free RAM"), ("used", "Used RAM"), ("lost", "Lost RAM")):
        m = re.search(rf"^\s*{label}:\s*(-?[\d,.]+)K", text or "", re.M)
        if m:
            out[key] = _kb(m.group(1).lstrip("-"))
    return out


def parse_battery(text: str) -> dict:
    """`dumpsys battery`: `  temperature: 326` (tenths of a degree C), `  level: 85`, ..."""
    fields = {}
    for m in re.finditer(r"^\s+([A-Za-z][\w ]*?):\s*(.*?)\s*$", text or "", re.M):
        fields[m.group(1).strip()] = m.group(2)
    out: dict = {}
    if re.fullmatch(r"-?\d+", fields.get("temperature", "")):
        out["temp_c"] = int(fields["temperature"]) / 10.0
    if re.fullmatch(r"\d+", fields.get("level", "")):
        scale = int(fields["scale"]) if re.fullmatch(r"\d+", fields.get("scale", "")) else 100
        out["level"] = round(int(fields["level"]) * 100 / (scale or 100))
    if re.fullmatch(r"\d+", fields.get("status", "")):
        out["status"] = BATTERY_STATUS.get(int(fields["status"]), "unknown")
    powered = [fields.get(k) for k in ("AC powered", "USB powered", "Wireless powered", "Dock powered")]
    if any(p is not None for p in powered):
        out["plugged"] = any(p == "true" for p in powered)
    return out


_TEMP_RE = re.compile(r"Temperature\{mValue=(-?[\d.]+|NaN),\s*mType=(-?\d+),\s*mName=([^,]*),\s*mStatus=(\d+)\}")


def parse_thermalservice(text: str) -> dict:
    """`dumpsys thermalservice`: "Thermal Status: N", "HAL Ready: b", and the temperature blocks.

    Prefers "Current temperatures from HAL:" (live) over "Cached temperatures:". A sensor whose
    value is 0.0 (or NaN) is reported as not fitted, never as a reading.
    """
    out: dict = {"temperatures": [], "unfitted": []}
    if _missing(text):
        return out
    m = re.search(r"^Thermal Status:\s*(\d+)", text, re.M)
    if m:
        out["status"] = int(m.group(1))
    m = re.search(r"^HAL Ready:\s*(true|false)", text, re.M)
    if m:
        out["hal"] = m.group(1) == "true"
    blocks: dict[str, list] = {}
    current = None
    for line in text.splitlines():
        if re.match(r"^\S.*:\s*$", line):
            current = line.strip().rstrip(":")
            blocks.setdefault(current, [])
        elif current and (t := _TEMP_RE.search(line)):
            blocks[current].append(t)
    chosen = blocks.get("Current temperatures from HAL") or blocks.get("Cached temperatures") or []
    for t in chosen:
        value, typ, name, status = t.group(1), int(t.group(2)), t.group(3).strip(), int(t.group(4))
        v = float(value) if value != "NaN" else 0.0
        if v == 0.0:
            out["unfitted"].append(name)
            continue
        out["temperatures"].append(Temperature(name, TEMPERATURE_TYPES.get(typ, f"TYPE_{typ}"), v, status))
    return out


def parse_thermal_zones(text: str) -> list[Temperature]:
    """Lines `thermal_zoneN<TAB>type<TAB>temp` from COMMANDS["thermal_zones"].

    Temperatures are millidegrees C on most kernels; a few drivers print whole degrees (small
    values). Zones that cannot be read (empty temp: SELinux, disabled sensor) or read 0 or
    below -40 C (not fitted) are skipped.
    """
    zones = []
    for line in (text or "").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0].startswith("thermal_zone"):
            continue
        name, typ, raw = parts[0].strip(), parts[1].strip(), parts[2].strip()
        if not re.fullmatch(r"-?\d+", raw):
            continue
        v = int(raw)
        c = v / 1000.0 if abs(v) >= 1000 else float(v)
        if c == 0.0 or c < -40 or c > 200:
            continue
        zones.append(Temperature(name, typ or name, c, 0))
    return zones


def parse_cpuinfo(text: str) -> dict:
    """/proc/cpuinfo: cores ("processor" lines), the Features/flags set, CPU parts, Hardware."""
    text = text or ""
    cores = len(re.findall(r"^processor\s*:", text, re.M))
    feats: set[str] = set()
    for m in re.finditer(r"^(?:Features|flags)\s*:\s*(.*)$", text, re.M):
        feats.update(m.group(1).split())
    parts = []
    for block in re.split(r"\n\s*\n", text):
        imp = re.search(r"^CPU implementer\s*:\s*(\S+)", block, re.M)
        part = re.search(r"^CPU part\s*:\s*(\S+)", block, re.M)
        if imp and part:
            parts.append(f"{imp.group(1)}:{part.group(1)}")
    hw = re.search(r"^Hardware\s*:\s*(.+)$", text, re.M)
    return {"cores": cores or None, "features": sorted(feats), "parts": parts,
            "hardware": hw.group(1).strip() if hw else ""}


def parse_df(text: str) -> int | None:
    """`df -k /data` (toybox): the Available column of the last data line, in bytes."""
    for line in reversed((text or "").strip().splitlines()):
        cols = line.split()
        if len(cols) >= 6 and cols[3].isdigit():
            return int(cols[3]) * 1024
    return None


def _soc(props: dict[str, str], cpu_hw: str) -> tuple[str, str]:
    for key in ("ro.soc.model", "ro.board.platform", "ro.hardware.chipname", "ro.hardware"):
        if props.get(key):
            return props[key], key
    if cpu_hw:
        return cpu_hw, "/proc/cpuinfo Hardware"
    return "", ""


def parse_state(outputs: dict[str, str], serial: str = "") -> DeviceState:
    """Turn the outputs of COMMANDS (name -> text) into one DeviceState.

    Commands may be missing or empty: their fields stay None and a note says so. If nothing
    at all is usable, the device did not answer: EdgeError.
    """
    unknown = set(outputs) - set(COMMANDS)
    if unknown:
        raise EdgeError(f"unknown reading(s) {sorted(unknown)}; known: {', '.join(COMMANDS)}")
    usable = {k: v for k, v in outputs.items() if not _missing(v)}
    if not usable:
        raise EdgeError(f"device {serial or '(unnamed)'} gave no usable output for any of "
                        f"{', '.join(COMMANDS)}; check `adb devices` and that the phone is unlocked")
    s = DeviceState(source="adb", serial=serial)
    s.notes = [f"{k}: no output" for k in COMMANDS if k not in usable]

    props = parse_getprop(usable.get("getprop", ""))
    s.model = props.get("ro.product.model", "")
    s.manufacturer = props.get("ro.product.manufacturer", "")
    s.android_version = props.get("ro.build.version.release", "")
    sdk = props.get("ro.build.version.sdk", "")
    s.sdk = int(sdk) if sdk.isdigit() else None
    s.abi = props.get("ro.product.cpu.abi", "")
    s.soc_manufacturer = props.get("ro.soc.manufacturer", "")

    cpu = parse_cpuinfo(usable.get("cpuinfo", ""))
    s.cpu_cores, s.cpu_features, s.cpu_parts = cpu["cores"], cpu["features"], cpu["parts"]
    s.soc, s.soc_source = _soc(props, cpu["hardware"])

    mem = parse_proc_meminfo(usable.get("meminfo", ""))
    s.mem_total_bytes = mem.get("MemTotal")
    s.mem_available_bytes = mem.get("MemAvailable")
    s.swap_total_bytes = mem.get("SwapTotal")
    s.swap_free_bytes = mem.get("SwapFree")

    dm = parse_dumpsys_meminfo(usable.get("dumpsys_meminfo", ""))
    s.ram_total_bytes, s.ram_free_bytes = dm.get("total"), dm.get("free")
    s.memory_status = dm.get("status", "")

    bat = parse_battery(usable.get("battery", ""))
    s.battery_level, s.battery_temp_c = bat.get("level"), bat.get("temp_c")
    s.battery_status, s.plugged = bat.get("status", ""), bat.get("plugged")

    th = parse_thermalservice(usable.get("thermalservice", ""))
    s.thermal_status, s.thermal_hal = th.get("status"), th.get("hal")
    s.temperatures, s.unfitted_sensors = th["temperatures"], th["unfitted"]
    if s.thermal_hal is False:
        s.notes.append("thermalservice: no thermal HAL; temperatures from thermal zones only")
    s.zones = parse_thermal_zones(usable.get("thermal_zones", ""))
    if "thermal_zones" in usable and not s.zones:
        s.notes.append("thermal_zones: none readable from the shell")
    s.storage_free_bytes = parse_df(usable.get("df", ""))
    if s.battery_temp_c is None:   # fall back on a battery sensor of the thermal service
        b = [t.value_c for t in s.temperatures if t.type == "BATTERY"]
        s.battery_temp_c = max(b) if b else None
    return s


# ---- this machine -----------------------------------------------------------------------
def host_state() -> DeviceState:
    """This laptop as a DeviceState, from psutil (and /proc/cpuinfo on Linux)."""
    import psutil

    vm = psutil.virtual_memory()
    sw = psutil.swap_memory()
    s = DeviceState(source="host", model=platform.node() or "this machine",
                    manufacturer=platform.system(), abi=platform.machine(),
                    cpu_cores=psutil.cpu_count(logical=True) or os.cpu_count(),
                    mem_total_bytes=vm.total, mem_available_bytes=vm.available,
                    ram_total_bytes=vm.total, ram_free_bytes=vm.available,
                    swap_total_bytes=sw.total, swap_free_bytes=sw.free)
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        cpu = parse_cpuinfo(text)
        s.cpu_features, s.soc = cpu["features"], cpu["hardware"]
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if m:
            s.soc, s.soc_source = m.group(1).strip(), "/proc/cpuinfo model name"
    except OSError:
        s.soc = platform.processor()
        s.notes.append("cpuinfo: /proc/cpuinfo not readable")
    temps = getattr(psutil, "sensors_temperatures", lambda: {})() or {}
    for chip, entries in temps.items():
        for e in entries:
            if e.current:
                s.zones.append(Temperature(e.label or chip, chip, float(e.current), 0))
    bat = getattr(psutil, "sensors_battery", lambda: None)()
    if bat is not None:
        s.battery_level, s.plugged = round(bat.percent), bat.power_plugged
    try:
        s.storage_free_bytes = psutil.disk_usage(os.path.expanduser("~")).free
    except OSError:
        pass
    return s
