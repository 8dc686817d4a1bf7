"""Parsers of phone readings, on fixtures in the real output formats (no phone needed)."""

from __future__ import annotations

import pytest

from edge.adbsim.phone import FIXTURES
from edge.errors import EdgeError
from edge.readings import (COMMANDS, DeviceState, host_state, parse_battery, parse_dumpsys_meminfo,
                           parse_getprop, parse_proc_meminfo, parse_state, parse_thermal_zones,
                           parse_thermalservice)


def outputs(phone: str) -> dict[str, str]:
    return {name: (FIXTURES / phone / f"{name}.txt").read_text() for name in COMMANDS
            if (FIXTURES / phone / f"{name}.txt").exists()}


def test_every_fixture_phone_has_every_command():
    phones = [p for p in FIXTURES.iterdir() if p.is_dir()]
    assert len(phones) >= 2
    for p in phones:
        assert sorted(f.stem for f in p.glob("*.txt")) == sorted(COMMANDS), p.name


def test_pixel_7_full_state():
    s = parse_state(outputs("pixel_7"), serial="28011FDH2000KP")
    assert (s.model, s.manufacturer, s.android_version, s.sdk) == ("Pixel 7", "Google", "14", 34)
    assert (s.soc, s.soc_source, s.soc_manufacturer) == ("GS201", "ro.soc.model", "Google")
    assert s.cpu_cores == 8 and s.dotprod and not s.i8mm
    assert s.cpu_parts.count("0x41:0xd05") == 4 and s.cpu_parts.count("0x41:0xd44") == 2
    assert s.mem_total_bytes == 7652828 * 1024 and s.mem_available_bytes == 3412556 * 1024
    assert s.ram_total_bytes == 7_652_828 * 1024 and s.ram_free_bytes == 3_560_884 * 1024
    assert s.memory_status == "normal"
    assert s.battery_temp_c == pytest.approx(32.6) and s.battery_level == 85
    assert s.battery_status == "charging" and s.plugged is True
    assert s.thermal_status == 0 and s.thermal_hal is True
    # live HAL values preferred over the cache; the 0.0 sensor is not a reading
    assert s.skin_temp_c == pytest.approx(33.561)
    assert s.cpu_temp_c == pytest.approx(41.358)
    assert "USB2" in s.unfitted_sensors and all(t.value_c != 0 for t in s.temperatures)
    assert [z.type for z in s.zones] == ["BIG", "MID", "LITTLE", "G3D", "TPU", "battery"]
    assert s.storage_free_bytes == 71606540 * 1024
    assert s.warnings() == [] and s.notes == []


def test_galaxy_a12_old_android_no_hal_hot_battery():
    s = parse_state(outputs("galaxy_a12"))
    assert s.android_version == "11" and s.sdk == 30
    assert (s.soc, s.soc_source) == ("mt6765", "ro.board.platform")   # no ro.soc.model before 12
    assert s.cpu_cores == 8 and not s.dotprod and not s.i8mm
    assert s.total_bytes == 2_891_076 * 1024 and s.memory_status == "moderate"
    assert s.thermal_hal is False and s.temperatures == [] and s.skin_temp_c is None
    assert s.zones == [] and any("thermal_zones" in n for n in s.notes)
    assert any("no thermal HAL" in n for n in s.notes)
    assert s.battery_temp_c == pytest.approx(41.2)
    w = s.warnings()
    assert len(w) == 1 and "battery at 41.2 C" in w[0]


def test_galaxy_s23_moderate_thermal_status_warns():
    s = parse_state(outputs("galaxy_s23"))
    assert (s.soc, s.soc_manufacturer) == ("SM8550", "QTI")
    assert s.dotprod and s.i8mm and not s.sve2
    assert s.thermal_status == 2 and s.thermal_status_name == "MODERATE"
    assert sorted(s.unfitted_sensors) == ["SUBBAT", "USB"]
    assert s.skin_temp_c == pytest.approx(41.7) and s.cpu_temp_c == pytest.approx(52.3)
    assert s.zones and all(z.value_c > 0 for z in s.zones)        # sdm-therm 0 dropped
    assert any("MODERATE" in w for w in s.warnings())
    d = s.to_dict()
    assert d["i8mm"] is True and d["thermal_status_name"] == "MODERATE" and d["warnings"]


def test_soc_falls_back_to_cpuinfo_hardware_and_missing_commands_are_noted():
    out = outputs("galaxy_a12")
    out["getprop"] = "[ro.product.model]: [SM-A125F]\n"
    del out["thermalservice"]
    s = parse_state(out)
    assert (s.soc, s.soc_source) == ("MT6765V/CB", "/proc/cpuinfo Hardware")
    assert s.thermal_status is None and s.thermal_hal is None
    assert "thermalservice: no output" in s.notes


def test_old_android_without_thermalservice():
    th = parse_thermalservice("Can't find service: thermalservice\n")
    assert th == {"temperatures": [], "unfitted": []}
    th = parse_thermalservice("/system/bin/sh: dumpsys: inaccessible or not found\n")
    assert "status" not in th


def test_small_parsers_on_edge_cases():
    assert parse_getprop("[a.b]: []\n[c]: [x y]\nnoise\n") == {"a.b": "", "c": "x y"}
    assert parse_proc_meminfo("MemTotal:  100 kB\nHugePages_Total:       0\n") == {
        "MemTotal": 102400, "HugePages_Total": 0}
    assert parse_dumpsys_meminfo("Total RAM: 1.234.567K\n") == {"total": 1234567 * 1024}
    assert parse_battery("  temperature: -52\n  level: 5\n  scale: 10\n") == {"temp_c": -5.2, "level": 50}
    zones = parse_thermal_zones("thermal_zone0\tx\t45\nthermal_zone1\ty\t-273000\nthermal_zone2\tz\tabc\n")
    assert [(z.type, z.value_c) for z in zones] == [("x", 45.0)]


def test_device_that_answers_nothing_is_an_error():
    with pytest.raises(EdgeError, match="no usable output"):
        parse_state({name: "" for name in COMMANDS}, serial="XYZ")
    with pytest.raises(EdgeError, match="unknown reading"):
        parse_state({"bogus": "x"})


def test_host_state_is_live():
    s = host_state()
    assert isinstance(s, DeviceState) and s.source == "host"
    assert s.total_bytes > 1 << 30 and 0 < s.available_bytes <= s.total_bytes
    assert s.cpu_cores >= 1 and s.soc
