"""Budget: profiles, the GGUF reader, the RAM/speed/heat estimate, verdicts, recommendation.

The RSS test loads the real embedded GGUF with llama-cpp-python in subprocesses and checks
our estimate within 10 % (the issue's bar) at n_ctx 512, 8192 and 32768.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edge import apps, budget, phonespeed, profiles as edge_profiles
from quantize import repack
from edge.budget import EdgeError, estimate, matrix, recommend, verdict
from edge.modelinfo import model_info
from edge.profiles import get_profile, load_profiles


@pytest.fixture(scope="module")
def gguf_path():
    from edge.models import embedded_gguf

    return embedded_gguf()


@pytest.fixture(scope="module")
def info(gguf_path):
    return model_info(gguf_path)


# ---- profiles ---------------------------------------------------------------------------
def test_profiles_cover_budget_to_flagship_with_sources():
    profiles = load_profiles()
    assert len(profiles) >= 12
    rams = [p.ram_gb for p in profiles.values()]
    assert min(rams) <= 4 and max(rams) >= 12 and all(3 <= r <= 16 for r in rams)
    assert {p.tier for p in profiles.values()} == {"budget", "mid", "flagship"}
    assert any(not p.dotprod for p in profiles.values()) and any(p.i8mm for p in profiles.values())
    for p in profiles.values():
        assert set(p.sources) == set(edge_profiles.PROFILE_FIELDS) and all(s.strip() for s in p.sources.values())
        assert p.bandwidth_gbs == pytest.approx(p.memory_mts * p.bus_bits / 8000, rel=0.02)


def _write_profile(folder: Path, name: str, text: str) -> Path:
    src = (edge_profiles.PROFILES_DIR / "pixel_7.toml").read_text()
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.toml").write_text(text(src) if callable(text) else text)
    return folder


@pytest.mark.parametrize("edit,match", [
    (lambda s: "\n".join(line for line in s.splitlines() if not line.startswith("bus_bits")), r"bad\.toml.*'bus_bits' is missing"),
    (lambda s: s.replace("ram_gb = { value = 8,", "ram_gb = { value = -8,"), r"bad\.toml.*'ram_gb' is -8.*positive"),
    (lambda s: s.replace('tier = "mid"', 'tier = "premium"'), r"bad\.toml.*'tier'"),
    (lambda s: s.replace("bandwidth_gbs = { value = 44.0", "bandwidth_gbs = { value = 99.0"), r"bad\.toml.*bandwidth_gbs"),
    (lambda s: s.replace('cpu_cores = { value = 8, source = "', 'cpu_cores = { value = 8, source = "" , x = "'), r"'cpu_cores' has no source"),
    (lambda s: s.replace("dotprod = { value = true", "dotprod = { value = 1"), r"'dotprod' is 1"),
    (lambda s: "not = [toml", r"bad\.toml.*not valid TOML"),
])
def test_bad_profile_names_file_and_field(tmp_path, edit, match):
    folder = _write_profile(tmp_path / "p", "bad", edit)
    with pytest.raises(EdgeError, match=match):
        load_profiles(folder)


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(EdgeError, match=r"unknown device profile 'nokia_3310'.*pixel_7"):
        get_profile("nokia_3310")
    assert get_profile("pixel_7").key == "pixel_7" and get_profile("s24").key == "galaxy_s24_ultra"


# ---- GGUF metadata ----------------------------------------------------------------------
def test_read_gguf_embedded(info, gguf_path):
    assert (info.arch, info.n_layers, info.n_vocab, info.sliding_window) == ("gemma3", 18, 262144, 512)
    assert (info.n_head, info.n_head_kv, info.key_length, info.value_length) == (4, 1, 256, 256)
    assert info.global_layers() == [5, 11, 17] and info.tied_output
    assert info.embd_type == "Q8_0" and info.embd_bytes == 262144 * 640 // 32 * 34
    # tensor data is the file minus its header (metadata + vocabulary, a few MB)
    assert 0 < info.file_bytes - info.tensor_bytes < 8_000_000
    assert 260e6 < info.params < 275e6


def test_not_a_language_model_is_an_error(tmp_path):
    import gguf
    import numpy as np

    p = tmp_path / "mmproj.gguf"
    w = gguf.GGUFWriter(str(p), "clip")
    w.add_type("mmproj")
    w.add_tensor("v.patch_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    from edge.errors import NotAModel

    with pytest.raises(NotAModel, match="not a language model") as e:   # typed: a folder listing skips it by type
        model_info(p)
    assert e.value.gguf_type == "mmproj"
    junk = tmp_path / "x.gguf"
    junk.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(EdgeError, match="not a GGUF"):
        model_info(junk)
    with pytest.raises(EdgeError, match="not found"):
        model_info(tmp_path / "missing.gguf")


def test_truncated_gguf_is_an_error(tmp_path, gguf_path):
    cut = tmp_path / "cut.gguf"
    with open(gguf_path, "rb") as f:
        cut.write_bytes(f.read(20_000_000))       # header complete, tensor data cut short
    with pytest.raises(EdgeError, match="truncated"):
        model_info(cut)
    cut.write_bytes(cut.read_bytes()[:1_000_000])  # cut inside the vocabulary
    with pytest.raises(EdgeError, match="not a readable GGUF"):
        model_info(cut)



@pytest.mark.parametrize("version", [2, 4])
def test_every_gguf_reader_takes_version_3_only(tmp_path, version):
    """The push's check, the budget and ggufinfo agree: version 3 is read by all three, any other
    version is refused by each in the same one line."""
    import struct

    from edge import ggufinfo, push

    path = _tiny_gguf(tmp_path / "v.gguf", layers=2)
    push.check_gguf(path)
    assert model_info(path).n_layers == 2 and ggufinfo.read_gguf(path).version == 3
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", version)
    path.write_bytes(bytes(data))
    for reader in (push.check_gguf, model_info, ggufinfo.read_gguf):
        with pytest.raises(EdgeError, match=f"GGUF version {version}; only version 3 "):
            reader(path)


# ---- the estimate -----------------------------------------------------------------------
def test_kv_cache_follows_the_5_to_1_pattern(info):
    per_cell = 1 * (256 + 256) * 2                       # n_head_kv x (k + v) x f16
    full = estimate(info, ctx=4096, swa_full=True)
    assert full.kv_bytes == 18 * 4096 * per_cell
    small = estimate(info, ctx=4096, swa_full=False, ubatch=512)
    assert small.kv_cells == [1024 if il % 6 != 5 else 4096 for il in range(18)]
    assert small.kv_bytes == (3 * 4096 + 15 * 1024) * per_cell
    assert estimate(info, ctx=4096, kv_type="q8_0").kv_bytes == pytest.approx(full.kv_bytes * 34 / 64)
    e = estimate(info, ctx=8192)
    assert e.total_bytes == e.weights_bytes + e.kv_bytes + e.compute_bytes + e.overhead_bytes
    assert e.bytes_per_token == info.tensor_bytes          # tied head: the whole embedding is read
    with pytest.raises(EdgeError, match="--kv-type"):
        estimate(info, kv_type="q3")
    with pytest.raises(EdgeError, match="--ctx"):
        estimate(info, ctx=0)


def test_verdicts_and_the_apps_rules(info):
    a12, s24 = get_profile("galaxy_a12"), get_profile("galaxy_s24_ultra")
    small = verdict(info, s24, ctx=4096)
    assert small.verdict == "fits" and small.max_ctx == 32768 and small.pocketpal["fits"]
    assert small.tok_s > verdict(info, a12, ctx=4096).tok_s       # 76.8 vs 12.8 GB/s
    huge = verdict(info, a12, ctx=32768)                          # 3 GB phone, 600 MB of KV
    assert huge.verdict in ("tight", "does not fit")
    assert 0 < huge.max_ctx < 32768
    assert verdict(info, a12, ctx=huge.max_ctx).verdict == "fits"
    assert verdict(info, a12, ctx=huge.max_ctx + 512).verdict != "fits"
    assert [v.verdict for v in matrix([info], [a12], ctx=32768, kv_type="f32")] == ["does not fit"]
    # PocketPal (PR #250): 0.92 x file + 0.43 GB against min(0.65 RAM, RAM - 1.2 GB)
    pp = small.pocketpal
    assert pp["need_bytes"] == int(0.43e9 + 0.92 * info.file_bytes) and "pull/250" in pp["source"]
    assert pp["limit_bytes"] == int(min(0.65 * s24.ram_bytes, s24.ram_bytes - 1.2e9)) and not pp["warns"]
    # AnythingLLM (memoryFit.ts): weights file vs RAM and RAM - 2.5 GB; context default by RAM
    assert small.anythingllm["badge"] == "ok" and small.anythingllm["default_ctx"] == 2048


def test_the_apps_rules_at_their_edges():
    gb = 1e9
    assert apps.pocketpal_rule(int(2.5 * gb), int(4 * gb))["warns"]         # 2.73 >= min(2.6, 2.8)
    assert not apps.pocketpal_rule(int(2 * gb), int(4 * gb))["warns"]       # 2.27 < 2.6
    edge = (min(0.65 * 4 * gb, 4 * gb - 1.2 * gb) - 0.43 * gb) / 0.92         # need == limit: warns
    assert apps.pocketpal_rule(int(edge) + 1, int(4 * gb))["warns"]
    assert not apps.pocketpal_rule(int(edge) - 1, int(4 * gb))["warns"]
    assert [apps.anythingllm_rule(int(f * gb), int(4 * gb))["badge"] for f in (1.4, 1.6, 4.1)] == \
        ["ok", "tight", "impossible"]
    assert [apps.anythingllm_rule(1, int(r * gb))["default_ctx"] for r in (3.9, 4.0, 5.9, 6.0, 12)] == \
        [512, 1024, 1024, 2048, 2048]


def test_storage_verdict_counts_the_apps_own_copy(info):
    from edge.readings import DeviceState

    v = verdict(info, "pixel_7")
    assert v.storage["free_bytes"] is None and v.storage["apps"]["chatterui"]["fits"] is None
    free = 2 * info.file_bytes                       # room for one copy and a half, not for two + spare
    state = DeviceState(source="adb", model="Pixel 7", mem_total_bytes=8 << 30, mem_available_bytes=5 << 30,
                        storage_free_bytes=free)
    st = verdict(info, state).storage["apps"]
    assert st["llamacpp"]["fits"] and st["llamacpp"]["copies"] == 1
    for app in ("chatterui", "pocketpal"):
        assert st[app]["copies"] == 2 and not st[app]["fits"] and "imported copy" in st[app]["detail"]
    assert st["anythingllm"]["copies"] == 2


# ---- phone speed: held against published measurements (bench/phones.py) -------------------
def test_phone_table_parses_and_every_row_has_a_source():
    from bench import phones

    rows = phones.load_table()
    assert len(rows) >= 10 and len({r.phone for r in rows}) >= 10
    assert all(r.source.startswith("https://") and r.decode_tok_s > 0 and r.threads and r.ctx for r in rows)
    assert {r.model.split("-q")[0] for r in rows} >= {"gemma3-1b", "gemma3-270m"}


def test_phone_table_rejects_a_row_without_a_source(tmp_path):
    from bench import phones

    text = phones.TABLE.read_text().replace('source = "https://github.com/ggml-org/llama.cpp/issues/16658"', "")
    (tmp_path / "t.toml").write_text(text)
    with pytest.raises(EdgeError, match="has no 'source'"):
        phones.load_table(tmp_path / "t.toml")


def test_shipped_phone_speed_is_the_fit_of_the_table():
    """edge.phonespeed.PHONE_SPEED must be what bench/phones.py fits on bench/phones.toml today."""
    from bench import phones

    m = phones.fit(phones.load_table())
    assert m.layer_bytes == pytest.approx(phonespeed.PHONE_SPEED.layer_bytes, rel=0.02)
    assert set(m.efficiency) == set(phonespeed.PHONE_SPEED.efficiency)
    for k, e in m.efficiency.items():
        assert e == pytest.approx(phonespeed.PHONE_SPEED.efficiency[k], rel=0.01), k
    assert set(m.type_cost) == set(phonespeed.PHONE_SPEED.type_cost)
    for k, c in m.type_cost.items():
        assert c == pytest.approx(phonespeed.PHONE_SPEED.type_cost[k], rel=0.01), k


def test_phone_rows_read_bytes_from_llama_cpp_logs_and_threads():
    """A row with llama.cpp's weight buffers reads those less the embedding; a row whose thread count
    is above the phone's big cores is slowed by the little-core factor (sourced, not fitted)."""
    from bench import phones

    rows = phones.load_table()
    s23 = next(r for r in rows if r.phone == "galaxy_s23" and r.model == "gemma3-1b-q8_0" and r.prompt_tok_s)
    assert s23.bytes_per_token == pytest.approx((306.51 + 1013.03) * 2**20 - 320_864_256)
    assert s23.little_cores and get_profile("galaxy_s23").big_cores == 5        # 6 threads, 1+2+2 big cores
    x9 = next(r for r in rows if r.phone == "poco_x9_pro" and r.model == "gemma3-1b-q8_0")
    assert not x9.little_cores and get_profile("poco_x9_pro").big_cores == 8    # all Oryon
    sm = phonespeed.PHONE_SPEED
    slow = sm.tok_s(1e9, 26, 68.0, "snapdragon", little_cores=True)
    assert slow == pytest.approx(phonespeed.LITTLE_CORE_FACTOR * sm.tok_s(1e9, 26, 68.0, "snapdragon"))
    # a type's compute cost counts per byte: 1 GB of Q4_K costs as Q8_0 x its type_cost
    assert sm.tok_s({"Q4_K": 1e9}, 26, 68.0, "mediatek") == \
        pytest.approx(sm.tok_s(1e9 * sm.type_cost["Q4_K"], 26, 68.0, "mediatek"))
    assert get_profile("galaxy_a12").big_cores == 8                            # 8x A53: none is waited on


def test_speed_follows_family_bandwidth_and_layers():
    sm = phonespeed.PHONE_SPEED
    assert phonespeed.soc_family("Qualcomm Snapdragon 8 Gen 2 for Galaxy (SM8550-AC)") == "snapdragon"
    assert phonespeed.soc_family("Google Tensor G3") == "tensor"
    assert phonespeed.soc_family("MediaTek Helio G99") == "mediatek" and phonespeed.soc_family("Kirin 9000") == "other"
    assert sm.tok_s(1e9, 26, 68.0, "other") == sm.tok_s(1e9, 26, 68.0, "exynos")        # no own figure: '*'
    assert sm.tok_s(1e9, 26, 68.0, "snapdragon") == pytest.approx(2 * sm.tok_s(1e9, 26, 34.0, "snapdragon"))
    assert sm.tok_s(1e9, 26, 68.0, "tensor") > sm.tok_s(1e9, 40, 68.0, "tensor")


def test_profiles_mark_estimated_bandwidth(capsys):
    profiles = load_profiles()
    assert profiles["galaxy_s23"].bandwidth_sourced and not profiles["pixel_8"].bandwidth_sourced
    assert edge_profiles.profiles_cmd() is None
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("pixel_8 "))
    assert "(estimate)" in line and "(estimate)" not in next(ln for ln in out.splitlines() if ln.startswith("galaxy_s23 "))
    data = edge_profiles.profiles_cmd(json=True)["profiles"]
    assert {p["key"]: p["bandwidth_sourced"] for p in data}["pixel_8"] is False


def test_thermal_holds_or_throttles(info):
    p = get_profile("galaxy_s23")
    v = verdict(info, p, target_tok_s=10)
    assert v.sustained_tok_s == pytest.approx(v.tok_s * p.sustained_power_w / p.load_power_w)
    assert "holds" in v.thermal
    assert "throttles" in verdict(info, p, target_tok_s=1000).thermal
    assert v.energy_mj_per_token == pytest.approx(p.load_power_w / v.tok_s * 1000)


def test_live_phone_state_feeds_the_verdict(info):
    from tests.test_readings import outputs
    from edge.readings import parse_state

    s23 = parse_state(outputs("galaxy_s23"))
    v = verdict(info, s23, ctx=2048)
    assert v.device_kind == "adb" and v.usable_bytes == s23.mem_available_bytes
    assert v.tok_s is not None                              # matched the galaxy_s23 profile by SoC
    assert "MODERATE" in v.thermal and any("thermal status 2" in w for w in v.warnings)
    a12 = verdict(info, parse_state(outputs("galaxy_a12")), ctx=2048)
    assert any("battery at 41.2 C" in w for w in a12.warnings)


def test_recommend_prefers_q4_0_on_dotprod_when_quality_is_close(info):
    q4k = replace(info, path="/x/m-Q4_K_M.gguf")
    q4_0 = replace(info, path="/x/m-Q4_0.gguf", file_type=2, types={"Q4_0": info.tensor_bytes},
                   matmul_types={"Q4_0": info.tensor_bytes})
    q8 = replace(info, path="/x/m-Q8_0.gguf", file_type=7, types={"Q8_0": info.tensor_bytes})
    report = {"variants": [{"file": "m-Q4_K_M.gguf", "kld_mean": 0.050}, {"file": "m-Q4_0.gguf", "kld_mean": 0.058},
                           {"file": "m-Q8_0.gguf", "kld_mean": 0.010}]}
    # Q8_0 is far better: no Q4_0 preference
    assert recommend([q4k, q4_0, q8], "pixel_7", report=report).choice == "m-Q8_0.gguf"
    report["variants"][2]["kld_mean"] = 0.049
    r = recommend([q4k, q4_0, q8], "pixel_7", report=report)
    assert r.choice == "m-Q4_0.gguf" and "repacks" in r.reason
    # no dotprod/i8mm: the best quality wins
    assert recommend([q4k, q4_0, q8], "galaxy_a12", report=report).choice == "m-Q8_0.gguf"
    r = recommend([q4k, replace(q8, tensor_bytes=int(q8.tensor_bytes * 1.2))], "pixel_7")
    assert r.choice == "m-Q8_0.gguf" and "no quality report" in r.reason     # most bits per weight
    nothing = recommend([q8], "galaxy_a12", ctx=32768, kv_type="f32")
    assert nothing.choice is None and "nothing fits" in nothing.reason


# ---- CLI ----------------------------------------------------------------------------------
def test_budget_cmd_json_and_errors(gguf_path, capsys):
    from edge.cli import main

    out = budget.budget_cmd(str(gguf_path), device="pixel_7", ctx=2048, json=True)
    assert out["total_bytes"] == sum(out[k] for k in ("weights_bytes", "kv_bytes", "compute_bytes", "overhead_bytes"))
    v = out["verdicts"][0]
    assert v["device"] == "pixel_7" and "pull/250" in v["pocketpal"]["source"]
    assert v["storage"]["apps"]["pocketpal"]["copies"] == 2 and v["storage"]["free_bytes"] is None
    assert main(["budget", str(gguf_path), "--device", "iphone"]) == 2
    assert "unknown device profile 'iphone'" in capsys.readouterr().err
    assert main(["budget", str(gguf_path), "--ctx", "-5"]) == 2
    assert main(["budget", str(gguf_path)]) == 0                       # every profile answers
    text = capsys.readouterr().out
    assert all(k in text for k in load_profiles())
    assert main(["profiles", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["profiles"]) >= 12


def test_budget_of_a_run_reads_its_variants_from_run_json(tmp_path, gguf_path, capsys):
    """`edge budget RUN_DIR`: the variants run.json records (by role), never other .gguf files there."""
    import shutil

    from edge.cli import main
    from edge.runfolder import Run

    run = Run.open(tmp_path / "run")
    variant = run.path("gguf", "model-Q4_K_M.gguf")
    variant.parent.mkdir()
    shutil.copy(gguf_path, variant)
    (run.path("gguf", "stray.gguf")).write_bytes(variant.read_bytes()[:4096])   # not recorded: never read
    run.record("quantize", outputs={"variant": [variant]})
    assert main(["budget", str(run.root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {v["variant"] for v in data["verdicts"]} == {"model-Q4_K_M.gguf"}
    assert [r["device"] for r in data["recommendations"]] == list(edge_profiles.DEFAULT_DEVICES)
    empty = Run.open(tmp_path / "empty")
    empty.save()
    assert main(["budget", str(empty.root)]) == 2
    assert "no quantized variants" in capsys.readouterr().err


# ---- against measurement ----------------------------------------------------------------
@pytest.mark.real
def test_estimate_within_10_percent_of_measured_rss(gguf_path):
    """Real llama-cpp-python in a subprocess: RSS after a short chat vs our total_bytes."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.rss import measure_rss

    grid = (512, 8192, 32768)
    with ThreadPoolExecutor(len(grid)) as pool:      # RSS does not care that they share the CPU
        measured = list(pool.map(lambda n: measure_rss(gguf_path, ctx=n, prompt=128, gen=4, threads=1), grid))
    errors = {n: estimate(gguf_path, ctx=n).total_bytes / m["rss_used"] - 1 for n, m in zip(grid, measured)}
    assert all(abs(err) <= 0.10 for err in errors.values()), errors
    # the KV cache really is what grows: 24,576 more tokens x 18 layers x 1 KiB (f16, swa_full)
    grown = measured[2]["rss_used"] - measured[1]["rss_used"]
    assert grown == pytest.approx(24576 * 18 * 1024, rel=0.05)


# ---- a live phone over the real adb (simulated phone: edge/adbsim/) ---------------------
@pytest.mark.skipif(__import__("shutil").which("adb") is None, reason="adb not installed (scripts/setup.sh)")
def test_budget_live_phone_through_real_adb(gguf_path, capsys):
    from edge.cli import main
    from edge.adbsim import AdbServer, AdbSim, Phone

    server = AdbServer()
    sim = AdbSim(Phone(fixture="galaxy_s23"))
    try:
        server.attach(sim)
        assert main(["budget", str(gguf_path), "--serial", sim.serial, "--ctx", "2048", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        v = out["verdicts"][0]
        assert v["device"] == "SM-S911B" and v["device_kind"] == "adb"
        assert v["usable_bytes"] == 2854108 * 1024                   # MemAvailable of the phone
        assert v["tok_s"] and "MODERATE" in v["thermal"]
        assert any("thermal status 2" in w for w in v["warnings"])
        assert out["total_bytes"] == v["estimate"]["total_bytes"]
        assert v["storage"]["free_bytes"] == sim.phone.free() // 1024 * 1024   # df -k of the phone's /data
        assert v["storage"]["apps"]["chatterui"]["fits"] is True
        assert main(["budget", str(gguf_path), "--serial", "127.0.0.1:1"]) == 2   # nobody answers
        assert "error" in capsys.readouterr().err
    finally:
        server.detach(sim)
        sim.close()
        server.close()


def _tiny_gguf(path: Path, *, layers: int, untied: bool = False) -> Path:
    """A header-true Gemma 3 GGUF with small tensors (shapes of a 1B-like stack, 64 wide)."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_block_count(layers)
    w.add_context_length(32768)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(1)
    w.add_key_length(256)
    w.add_value_length(256)
    w.add_sliding_window(512)
    w.add_token_list([f"t{i}".encode() for i in range(1000)])
    w.add_tensor("token_embd.weight", np.zeros((1000, 64), dtype=np.float16))
    if untied:
        w.add_tensor("output.weight", np.zeros((1000, 64), dtype=np.float16))
    for il in range(layers):
        w.add_tensor(f"blk.{il}.ffn_up.weight", np.zeros((128, 64), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def test_metadata_drives_the_formulas(tmp_path):
    info = model_info(_tiny_gguf(tmp_path / "b.gguf", layers=26))
    assert info.global_layers() == [5, 11, 17, 23]                   # 1B: 22 local + 4 global
    assert (info.n_vocab, info.tied_output, info.embd_type) == (1000, True, "F16")
    e = estimate(info, ctx=8192, swa_full=False, ubatch=512, cpu_features=[])
    assert e.kv_bytes == (4 * 8192 + 22 * 1024) * 1024
    assert e.bytes_per_token == info.tensor_bytes                      # tied: embedding read as the head
    untied = model_info(_tiny_gguf(tmp_path / "u.gguf", layers=26, untied=True))
    assert not untied.tied_output and untied.output_bytes == 1000 * 64 * 2
    u = estimate(untied, ctx=8192, cpu_features=[])
    assert u.bytes_per_token == untied.tensor_bytes - untied.embd_bytes + 64 * 2   # one embedding row


# ---- which weights llama.cpp repacks: quantize/repack.py against llama.cpp's own logs ------
@pytest.mark.slow
def test_repack_rule_predicts_pocketpal_logged_buffers():
    """PocketPal's phones logged llama.cpp's weight buffers for Gemma 3 1B in eight quantizations
    (bench/phones.toml). Our tensor types (this llama.cpp's quantizer on the 1B configuration,
    with an imatrix as bartowski's files) and the one repack rule for an i8mm phone give both
    buffers to the logged 0.01 MiB: CPU_REPACK (Q8_0, Q5_K, Q6_K and the tied head included) and
    CPU (everything else, the embedding included; PocketPal loads without mmap)."""
    from bench.phones import repack_check

    res = repack_check()
    assert len(res) == 8 and {t for o in res for t in o["repacked_types"]} >= {"Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q4_0"}
    for o in res:
        assert o["repack_mib"] == pytest.approx(o["logged_repack_mib"], abs=0.006), o
        assert o["cpu_mib"] == pytest.approx(o["logged_cpu_mib"], abs=0.006), o


@pytest.mark.slow
def test_shipped_prompt_speed_is_the_fit_of_the_table():
    """edge.phonespeed.PROMPT_SPEED must be what bench/phones.py fits on PocketPal's prompt speeds today,
    and the repack rule must carry the effect those phones show: on each of them, Gemma 3 1B's Q4_K_M
    (65% of its body in Q5_0, which llama.cpp never repacks) reads a prompt at about a third of the
    speed of Q4_0 (nearly all repacked), though both are 4-bit files of one size."""
    from bench import phones

    rows = phones.prompt_rows()
    assert len(rows) == 24
    m = phones.prompt_fit(rows)
    assert m.rate == pytest.approx(phonespeed.PROMPT_SPEED.rate, rel=0.01)
    assert set(m.cost) == set(phonespeed.PROMPT_SPEED.cost)
    for k, c in m.cost.items():
        assert c == pytest.approx(phonespeed.PROMPT_SPEED.cost[k], rel=0.01), k
    for phone in {r.phone for r in rows}:
        q4km, q40 = (next(r for r in rows if r.phone == phone and r.model == f"gemma3-1b-{q}") for q in ("q4_k_m", "q4_0"))
        published = q4km.prompt_tok_s / q40.prompt_tok_s
        ours = phones.predict_prompt(m, q4km) / phones.predict_prompt(m, q40)
        assert published < 0.5 and ours == pytest.approx(published, rel=0.3), phone


def test_prompt_speed_follows_the_repack_rule():
    """Matrices llama.cpp repacks on the phone's CPU cost 1 per weight, the others their type's cost:
    the same Gemma 3 1B layer in Q4_0 reads a prompt several times faster than in Q5_0 on an i8mm
    phone, and not on a CPU without dotprod/i8mm (nothing repacked) or when the rows do not divide
    into the kernel's interleave; the clocks scale it."""
    ps = phonespeed.PROMPT_SPEED
    layer = [("blk.0.attn_q.weight", (1152, 1024)), ("blk.0.attn_k.weight", (1152, 256)),
             ("blk.0.ffn_up.weight", (1152, 6912)), ("blk.0.ffn_down.weight", (6912, 1152))]
    as_type = lambda t, rows_extra=0: [(n, t, (a, b + rows_extra)) for n, (a, b) in layer]  # noqa: E731
    arm, plain = frozenset({"dotprod", "i8mm"}), frozenset()
    q40, q50 = (ps.tok_s(ps.weights_by_kernel(as_type(t), arm), 16.0) for t in ("Q4_0", "Q5_0"))
    assert q40 == pytest.approx(ps.cost["Q5_0"] * q50)
    assert ps.weights_by_kernel(as_type("Q4_0"), plain) == {"Q4_0": sum(a * b for _, (a, b) in layer)}
    assert ps.tok_s(ps.weights_by_kernel(as_type("Q4_0"), plain), 16.0) == pytest.approx(q40 / ps.cost["*"])
    assert "repacked" not in ps.weights_by_kernel(as_type("Q4_0", rows_extra=2), arm)   # rows % 4 != 0
    assert ps.tok_s(ps.weights_by_kernel(as_type("Q4_0"), arm), 8.0) == pytest.approx(q40 / 2)
    # the head is computed for the last prompt token only: not in the body
    body = repack.matrices([("token_embd.weight", "Q8_0", (1152, 262144), 0), *as_type("Q4_0")], head=False)
    assert [m[:3] for m in body] == as_type("Q4_0")
    assert get_profile("galaxy_s23").core_clocks(6) == [3.36, 2.8, 2.8, 2.8, 2.8, 2.0]
    assert get_profile("galaxy_s23").core_clocks() == [3.36, 2.8, 2.8, 2.8, 2.8]           # the big cores
    assert sum(get_profile("redmi_note_12").core_clocks()) > 0
    # a profile's features spelled as cpuinfo spells them, for the one repack rule
    assert repack.features_of(get_profile("galaxy_s23").cpu_features) == {"dotprod", "i8mm"}
    assert get_profile("galaxy_a12").cpu_features == ()


def test_the_verdict_predicts_prompt_speed_from_what_the_phone_repacks(info):
    """`edge budget` shows the prompt speed beside the decode speed: on a profile, from the repack
    rule with the profile's features; the embedded 270M Q4_K_M runs its Q4_K/Q6_K/Q8_0 matrices
    repacked on a dotprod phone and none on a Cortex-A53 phone without dotprod, where no calibration
    row says how slow its plain kernels are: no prompt speed there."""
    ps = phonespeed.PROMPT_SPEED
    body = list(repack.matrices(info.tensors, head=False))
    prof = get_profile("pixel_7")
    v = verdict(info, "pixel_7", ctx=1024)
    assert v.prompt_tok_s == pytest.approx(ps.tok_s(ps.weights_by_kernel(body, frozenset({"dotprod"})),
                                                    sum(prof.core_clocks())))
    assert not get_profile("galaxy_a12").dotprod and verdict(info, "galaxy_a12", ctx=1024).prompt_tok_s is None
    assert "repacked" in ps.weights_by_kernel(body, frozenset({"dotprod"}))
    assert "repacked" not in ps.weights_by_kernel(body, frozenset())
    table = budget.verdict_table([verdict(info, "pixel_7", ctx=1024)], with_variant=False)
    assert "prompt tok/s" in table.splitlines()[0]


def test_budget_counts_the_repacked_copy_per_tensor(info):
    """The estimate adds the bytes quantize/repack.py says llama.cpp repacks, per tensor. The embedded
    270M Q4_K_M: on an ARM phone with dotprod (with or without i8mm) its Q4_K, Q6_K and Q8_0 matrices,
    the tied Q8_0 head included, not its Q5_0 ones; on x86 AVX2/AVX-512 only its Q4_K (12.66 MiB,
    what llama.cpp logs here); nothing on a CPU without these features."""
    by_type: dict[str, int] = {}
    for _, qtype, shape, n_bytes in info.tensors:
        if len(shape) == 2:
            by_type[qtype] = by_type.get(qtype, 0) + n_bytes
    assert set(by_type) == {"Q8_0", "Q6_K", "Q5_0", "Q4_K"}
    i8mm = estimate(info, ctx=1024, cpu_features=["asimddp", "i8mm"])
    assert i8mm.repacked_bytes == by_type["Q8_0"] + by_type["Q6_K"] + by_type["Q4_K"]
    assert estimate(info, ctx=1024, cpu_features=["asimddp"]).repacked_bytes == i8mm.repacked_bytes
    bare = estimate(info, ctx=1024, cpu_features=["asimd"])
    assert bare.repacked_bytes == 0 and i8mm.total_bytes - bare.total_bytes == i8mm.repacked_bytes
    x86 = estimate(info, ctx=1024, cpu_features=["avx2", "avx512f"])
    assert x86.repacked_bytes == by_type["Q4_K"] and round(x86.repacked_bytes / 2**20, 2) == 12.66
