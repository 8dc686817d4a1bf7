"""Bad and hostile input across the commands: each case must end with exit code 2 and one
line on stderr (no traceback), and leave every file as it was (nothing lost, nothing
half-written, no temporary file behind).

The commands run in-process (`edge.cli.main`) in a fresh folder; the inputs are written by
each case: damaged GGUF headers (tests/ggufbytes.py), broken JSON, invalid UTF-8, paths
that lead out of their folder, negative numbers. Cases that need torch import it once.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.cli import main
from edge.errors import EdgeError
from tests import ggufbytes as G
from tests.conftest import CHAT_LINE, snapshot

BAD_UTF8 = b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
CHAT = CHAT_LINE + "\n"


def check_bad(capsys, root: Path, argv: list[str], match: str = "", seconds: float = 30.0):
    """Run `edge ARGV`: exit 2, one stderr line (matching `match`), nothing changed under root."""
    before = snapshot(root)
    t0 = time.monotonic()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    dt = time.monotonic() - t0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, f"exit {rc}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in out + err
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "\x1b" not in out + err, "a terminal escape reached the terminal"
    if match:
        assert re.search(match, lines[0], re.I), lines[0]
    after = snapshot(root)
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, f"files changed or lost: {changed}"
    new = sorted(set(after) - set(before))
    assert not new, f"files left behind: {new}"
    assert dt < seconds, f"took {dt:.1f} s"
    return lines[0]


@pytest.fixture
def d(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGE_CACHE", str(tmp_path / ".cache-not-used"))
    return tmp_path


def write(path: Path, data: bytes | str) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


# ---- GGUF headers: inspect reads every byte of the header ------------------------------------
def _header(version=3, n_tensors=0, n_kv=0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


GGUF_CASES = {
    "not-gguf": (b"hello world, not a model\n", "not a GGUF"),
    "empty": (b"", "not a GGUF"),
    "magic-only": (b"GGUF", "damaged or truncated"),
    "short-header": (b"GGUF\x03\x00", "damaged or truncated"),
    "version-7": (_header(version=7), "version 7"),
    "n_kv-2^60": (_header(n_kv=1 << 60), "cannot fit"),
    "n_tensors-2^60": (_header(n_tensors=1 << 60), "cannot fit"),
    "string-length-2^62": (_header(n_kv=1) + struct.pack("<Q", 1 << 62) + b"key", "cannot fit"),
    "array-length-2^62": (G.gguf_bytes({"a": G.array(G.UINT8, [], n=1 << 62)}), "cannot fit"),
    "string-array-2^40": (G.gguf_bytes({"a": G.array(G.STRING, [], n=1 << 40)}), "cannot fit"),
    "nested-arrays": (G.gguf_bytes({"a": G.nested(50)}), "nested"),
    "value-type-99": (G.gguf_bytes({"a": (99, b"")}), "unknown value type"),
    "tensor-type-999": (G.gguf_bytes({}, [("t", (4,), 999, 0, 16)]), "unknown type"),
    "tensor-dims-2^31": (_header(n_tensors=1) + G.s("t") + struct.pack("<I", 1 << 31) + b"\0" * 64, "dimensions"),
    "tensor-past-end": (G.gguf_bytes({}, [("t", (1 << 20,), G.F32, 0, 16)], data=b"\0" * 16), "truncated"),
    "alignment-0": (G.model_gguf(**{"general.alignment": G.u32(0)}), "alignment"),
    "alignment-3": (G.model_gguf(**{"general.alignment": G.u32(3)}), "alignment"),
    "alignment-string": (G.model_gguf(**{"general.alignment": G.string("abc")}), "alignment"),
    "rows-not-blocks": (G.gguf_bytes({}, [("t", (33,), 8, 0, 34)]), "blocks"),  # Q8_0, 33 wide
}


@pytest.mark.parametrize("case", list(GGUF_CASES))
def test_inspect_damaged_gguf(case, d, capsys):
    data, match = GGUF_CASES[case]
    f = write(d / "m.gguf", data)
    check_bad(capsys, d, ["inspect", f], match, seconds=5)


BUDGET_CASES = {
    "block_count-2^40": ({"gemma3.block_count": G.u64(1 << 40)}, "block_count"),
    "block_count-string": ({"gemma3.block_count": G.string("two")}, "block_count"),
    "block_count-more-than-tensors": ({"gemma3.block_count": G.u32(4000)}, "block_count"),
    "embedding-negative": ({"gemma3.embedding_length": G.i32(-64)}, "embedding_length"),
    "head_count-float": ({"gemma3.attention.head_count": G.f32(2.5)}, "head_count"),
    "context-2^40": ({"gemma3.context_length": G.u64(1 << 40)}, "context_length"),
    "architecture-number": ({"general.architecture": G.u32(7)}, "not a language model"),
    "no-embedding-length": ({"gemma3.embedding_length": None}, "embedding_length"),
}


@pytest.mark.parametrize("case", list(BUDGET_CASES))
def test_budget_hostile_counts(case, d, capsys):
    override, match = BUDGET_CASES[case]
    f = write(d / "m.gguf", G.model_gguf(**override))
    check_bad(capsys, d, ["budget", f, "--device", "pixel_7"], match, seconds=5)


@pytest.mark.parametrize("argv, match", [
    (["--ctx", "-1"], "--ctx"),
    (["--ctx", "abc"], "invalid int"),
    (["--ubatch", "0"], "--ubatch"),
    (["--kv-type", "q2"], "kv-type"),
    (["--device", "no_such_phone"], "no_such_phone"),
    (["--device", "pixel_7", "--host"], "at most one"),
])
def test_budget_bad_settings(argv, match, d, capsys):
    f = write(d / "m.gguf", G.model_gguf())
    check_bad(capsys, d, ["budget", f, *argv], match)


def test_budget_folder_of_only_an_imatrix(d, capsys):
    write(d / "q" / "imatrix.gguf", G.gguf_bytes({"general.type": G.string("imatrix")}))
    check_bad(capsys, d, ["budget", "q", "--device", "pixel_7"], "no language model.*imatrix.gguf")


def test_terminal_escapes_in_name_are_not_printed(d, capsys):
    f = write(d / "m.gguf", G.model_gguf(**{"general.name": G.string("\x1b]0;pwned\x07\x1b[2J\nSYSTEM x")}))
    assert main(["inspect", f]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b" in out
    assert main(["budget", f, "--device", "pixel_7"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\nSYSTEM" not in out


# ---- modelfile / export outputs -----------------------------------------------------------------
def test_modelfile_output_equal_to_input_with_force(d, capsys):
    f = write(d / "m.gguf", G.model_gguf())
    check_bad(capsys, d, ["modelfile", f, "--out", f, "--force"], "overwrite the input")


def test_modelfile_name_with_newline(d, capsys):
    f = write(d / "m\nADAPTER evil.gguf", G.model_gguf())
    check_bad(capsys, d, ["modelfile", f], "control characters")


def test_modelfile_existing_output_kept(d, capsys):
    f = write(d / "m.gguf", G.model_gguf())
    write(d / "m.Modelfile", "mine\n")
    check_bad(capsys, d, ["modelfile", f], "already exists")


def test_modelfile_not_gemma(d, capsys):
    f = write(d / "m.gguf", G.model_gguf(**{"general.architecture": G.string("llama")}))
    check_bad(capsys, d, ["modelfile", f], "llama")


def test_modelfile_out_is_folder(d, capsys):
    f = write(d / "m.gguf", G.model_gguf())
    (d / "sub").mkdir()
    check_bad(capsys, d, ["modelfile", f, "--out", "sub", "--force"], "folder")


def test_inspect_folder_named_as_such(d, capsys):
    (d / "models").mkdir()
    check_bad(capsys, d, ["inspect", "models"], "is a folder")


# ---- chat: numbers checked before the file is blamed ---------------------------------------------
@pytest.mark.parametrize("argv, match", [
    (["--max-tokens", "-5"], "--max-tokens"),
    (["--max-tokens", "0"], "--max-tokens"),
    (["--n-ctx", "-1"], "--n-ctx"),
    (["--n-ctx", "0"], "--n-ctx"),
    (["--n-ctx", str(1 << 40)], "--n-ctx"),
])
def test_chat_bad_numbers(argv, match, d, capsys):
    f = write(d / "m.gguf", G.model_gguf())
    check_bad(capsys, d, ["chat", f, "--prompt", "hi", *argv], match)


def test_chat_missing_file(d, capsys):
    check_bad(capsys, d, ["chat", "nope.gguf", "--prompt", "hi"], "not found")


# ---- export: broken checkpoints -----------------------------------------------------------------
CONFIG = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 64,
          "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 262144}


def _model_dir(d: Path, config=None, header: bytes | None = None) -> str:
    m = d / "model"
    write(m / "config.json", config if isinstance(config, bytes) else json.dumps(config or CONFIG))
    if header is not None:
        write(m / "model.safetensors", struct.pack("<Q", len(header)) + header)
    else:
        write(m / "model.safetensors", struct.pack("<Q", 2) + b"{}")
    return str(m)


EXPORT_CASES = {
    "config-invalid-json": (b"{not json", None, "not valid JSON"),
    "config-list": (b"[1, 2]", None, "not an object"),
    "config-invalid-utf8": (b'{"a": "\xff"}', None, "not UTF-8"),
    "config-deeply-nested": (DEEP_JSON, None, "nested"),
    "config-hidden-size-string": (json.dumps({**CONFIG, "hidden_size": "abc"}).encode(), None, "hidden_size"),
    "config-architectures-string": (json.dumps({**CONFIG, "architectures": "x", "model_type": "x"}).encode(), None,
                                    "only Gemma 3"),
    "config-rope-wrong-type": (json.dumps({**CONFIG, "rope_parameters": [1]}).encode(), None, "wrong type"),
    "safetensors-header-list": (None, b"[1, 2]", "not an object"),
    "safetensors-header-garbage": (None, b"\xff\xfe{{{", "corrupt"),
    "safetensors-shape-strings": (None, json.dumps({"w": {"dtype": "F32", "shape": ["a"], "data_offsets": [0, 4]}}).encode(),
                                  "malformed"),
    "safetensors-negative-offsets": (None, json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}).encode(),
                                     "malformed"),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_export_broken_checkpoint(case, d, capsys):
    config, header, match = EXPORT_CASES[case]
    m = _model_dir(d, config, header)
    check_bad(capsys, d, ["export", "--model", m, "--out", "out.gguf"], match)


@pytest.mark.parametrize("out, match", [
    ("out.bin", "end in .gguf"),
    ("bad\nname.gguf", "control characters"),
])
def test_export_bad_out(out, match, d, capsys):
    m = _model_dir(d)
    check_bad(capsys, d, ["export", "--model", m, "--out", out], match)


def test_export_existing_out_kept(d, capsys):
    m = _model_dir(d)
    write(d / "out.gguf", "precious")
    check_bad(capsys, d, ["export", "--model", m, "--out", "out.gguf"], "already exists")


def test_export_bad_outtype(d, capsys):
    m = _model_dir(d)
    check_bad(capsys, d, ["export", "--model", m, "--out", "o.gguf", "--outtype", "q2"], "outtype")


def test_mistyped_local_path_is_not_a_hub_id(d, capsys):
    (d / "models").mkdir()
    check_bad(capsys, d, ["export", "--model", "models/x", "--out", "o.gguf"], "no such local directory")


def test_model_given_as_file(d, capsys):
    write(d / "weights.bin", "x")
    check_bad(capsys, d, ["export", "--model", "weights.bin", "--out", "o.gguf"], "is a file")


def test_hub_model_offline_says_how_to_download(d, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(d / ".hf"))
    line = check_bad(capsys, d, ["export", "--model", "google/not-a-model-xyz", "--out", "o.gguf"], "hf download")
    assert "licence" in line


def test_export_full_disk_is_one_line(d, capsys, monkeypatch):
    """A full disk while writing (the OSError inside gguf-py or safetensors) -> one line, nothing left."""
    import edge.export

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    m = _model_dir(d)
    monkeypatch.setattr(edge.export, "read_safetensors", full)
    check_bad(capsys, d, ["export", "--model", m, "--out", "o.gguf"], "no space left")


def test_safetensor_error_for_full_disk_is_one_line(d, capsys, monkeypatch):
    from safetensors import SafetensorError

    import edge.export

    def full(*a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    m = _model_dir(d)
    monkeypatch.setattr(edge.export, "read_safetensors", full)
    check_bad(capsys, d, ["export", "--model", m, "--out", "o.gguf"], "no space left")


def test_read_only_folder_is_one_line(d, capsys, monkeypatch):
    import edge.fsutil

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(d / "x"))

    f = write(d / "m.gguf", G.model_gguf())
    monkeypatch.setattr(edge.fsutil.tempfile, "mkstemp", read_only)
    check_bad(capsys, d, ["modelfile", f], "read-only")


# ---- finetune: data checked before torch, and before --force deletes anything ---------------------
DATA_CASES = {
    "missing": (None, "not found"),
    "invalid-utf8": (BAD_UTF8, "not UTF-8"),
    "deeply-nested": (DEEP_JSON + b"\n", "nested"),
    "invalid-json": (b"{oops\n", "not valid JSON"),
    "no-chat-fields": (b'{"foo": 1}\n', "unknown chat format"),
    "bad-role": (b'{"messages": [{"role": "robot", "content": "x"}]}\n', "role"),
    "content-not-string": (b'{"messages": [{"role": "user", "content": 5}]}\n', "content"),
    "empty": (b"\n\n", "no examples"),
    "no-replies": (b'{"messages": [{"role": "user", "content": "x"}]}\n', "no assistant"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_finetune_bad_data(case, d, capsys):
    data, match = DATA_CASES[case]
    if data is not None:
        write(d / "data.jsonl", data)
    # --model names no model: should the data pass by mistake, the run stops there (never converts one)
    check_bad(capsys, d, ["finetune", "--data", "data.jsonl", "--out", "ft", "--model", "nomodel"], match, seconds=5)


def test_finetune_data_folder(d, capsys):
    (d / "data.jsonl").mkdir()
    check_bad(capsys, d, ["finetune", "--data", "data.jsonl", "--out", "ft", "--model", "nomodel"], "folder")


def test_finetune_force_with_bad_data_keeps_the_old_adapter(d, capsys):
    for name in ("adapter_model.safetensors", "adapter_config.json", "edge_adapter.json", "log.jsonl",
                 "checkpoints/step-000010/adapter_model.safetensors"):
        write(d / "ft" / name, "old run")
    write(d / "data.jsonl", BAD_UTF8)
    check_bad(capsys, d, ["finetune", "--data", "data.jsonl", "--out", "ft", "--force", "--model", "nomodel"],
              "UTF-8")


@pytest.mark.parametrize("argv, match", [
    (["--save-every", "-1"], "save-every"),
    (["--steps", "0"], "steps"),
    (["--lr", "-1"], "lr"),
    (["--rank", "0"], "rank"),
    (["--eval-fraction", "0.9"], "eval-fraction"),
    (["--targets", "nope"], "targets"),
])
def test_finetune_bad_settings(argv, match, d, capsys):
    write(d / "data.jsonl", CHAT)
    check_bad(capsys, d, ["finetune", "--data", "data.jsonl", "--out", "ft", "--model", "nomodel", *argv], match,
              seconds=5)


def test_finetune_out_is_a_file(d, capsys):
    write(d / "data.jsonl", CHAT)
    write(d / "ft", "a file")
    check_bad(capsys, d, ["finetune", "--data", "data.jsonl", "--out", "ft", "--model", "nomodel"], "is a file")


def test_finetune_existing_out_without_force(d, capsys):
    write(d / "data.jsonl", CHAT)
    write(d / "ft" / "adapter_model.safetensors", "old")
    check_bad(capsys, d, ["finetune", "--data", "data.jsonl", "--out", "ft", "--model", "nomodel"], "already exists")


# ---- merge: damaged adapter records --------------------------------------------------------------
@pytest.mark.parametrize("meta, match", [
    (b"{broken", "not valid JSON"),
    (b'{"base": "embedded"}', "base model record"),
    (b"[]", "not an object"),
    (b'{"base": {"spec": "x", "path": "y", "fingerprint": "z"}, "lora": 5}', "base model record"),
])
def test_merge_damaged_adapter_record(meta, match, d, capsys):
    write(d / "ft" / "adapter_model.safetensors", "x")
    write(d / "ft" / "edge_adapter.json", meta)
    check_bad(capsys, d, ["merge", "--adapter", "ft", "--out", "merged"], match)


def test_merge_out_equal_to_adapter(d, capsys):
    write(d / "ft" / "adapter_model.safetensors", "x")
    write(d / "ft" / "edge_adapter.json", json.dumps({"base": {"spec": "embedded", "path": "p", "fingerprint": "f"}}))
    check_bad(capsys, d, ["merge", "--adapter", "ft", "--out", "ft", "--force"], "overwrite the input")


def test_merge_bad_dtype(d, capsys):
    write(d / "ft" / "adapter_model.safetensors", "x")
    check_bad(capsys, d, ["merge", "--adapter", "ft", "--out", "m", "--dtype", "int4"], "dtype")


def test_merge_missing_adapter(d, capsys):
    check_bad(capsys, d, ["merge", "--adapter", "nope", "--out", "m"], "not a folder")


# ---- quantize: recipes, outputs -----------------------------------------------------------------
RECIPE_CASES = {
    "name-escapes-out": (json.dumps({"name": "../../../x", "rows": [["blk", "Q8_0"]]}).encode(), "file name"),
    "name-absolute": (json.dumps({"name": "/tmp/x", "rows": [["blk", "Q8_0"]]}).encode(), "file name"),
    "pattern-not-string": (json.dumps({"name": "r", "rows": [[5, "Q8_0"]]}).encode(), "strings"),
    "invalid-utf8": (b'{"name": "r\xff", "rows": []}', "not UTF-8"),
    "deeply-nested": (DEEP_JSON, "nested"),
    "bad-regex": (json.dumps({"name": "r", "rows": [["(", "Q8_0"]]}).encode(), "regex"),
    "bad-type": (json.dumps({"name": "r", "rows": [["blk", "Q1_X"]]}).encode(), "unknown type"),
    "no-rows": (b'{"name": "r"}', "rows"),
    "pattern-too-long": (json.dumps({"name": "r", "rows": [["blk" + "|blk" * 100, "Q8_0"]]}).encode(), "at most 256"),
}
# hangs Python's `re` on a 22-character tensor name (nested repeats, then a letter no name has)
PATHOLOGICAL = r"^((\w+)*\.?)*W"


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_quantize_hostile_recipe(case, d, capsys):
    data, match = RECIPE_CASES[case]
    write(d / "r.json", data)
    ref = write(d / "ref-F32.gguf", G.model_gguf())
    (d / "q" / "a" / "b").mkdir(parents=True)
    check_bad(capsys, d, ["quantize", "--gguf", ref, "--recipe", "r.json", "--out", "q/a/b", "--no-eval"], match)


def test_a_backtracking_recipe_pattern_is_one_line_not_a_hang(d, capsys):
    code = f"import re; re.search({PATHOLOGICAL!r}, 'blk.10.ffn_down.weight')"
    with pytest.raises(subprocess.TimeoutExpired):         # the control: Python's re does hang on it
        subprocess.run([sys.executable, "-c", code], timeout=3)
    write(d / "r.json", json.dumps({"name": "r", "rows": [[PATHOLOGICAL, "Q8_0"]]}))
    ref = write(d / "ref-F32.gguf", G.model_gguf())
    check_bad(capsys, d, ["quantize", "--gguf", ref, "--recipe", "r.json", "--out", "q", "--no-eval"],
              "matches no tensor", seconds=10)


def test_recipe_pattern_matching_has_a_time_bound(tmp_path, monkeypatch):
    """Each search of a pattern in a tensor name gives up after MATCH_TIMEOUT_S, at load (on probe
    names) and when resolving a model's tensors (here with the bound made tiny)."""
    from quantize import recipes
    from quantize.recipes import PROBE_NAMES, compile_pattern, load_recipe_file, search

    path = tmp_path / "r.json"
    path.write_text(json.dumps({"name": "r", "rows": [[PATHOLOGICAL, "Q8_0"]]}))
    load_recipe_file(path)                                   # fine with the real bound
    assert all(search(compile_pattern(r"^blk\.", "r"), n, "r") == n.startswith("blk.") for n in PROBE_NAMES)
    monkeypatch.setattr(recipes, "MATCH_TIMEOUT_S", 1e-6)
    with pytest.raises(EdgeError, match=r"row 0: pattern .* takes over 1e-06 s .*catastrophic backtracking") as e:
        load_recipe_file(path)
    assert "\n" not in str(e.value)
    rx = compile_pattern(PATHOLOGICAL, "recipe r")
    with pytest.raises(EdgeError, match="catastrophic backtracking"):
        search(rx, "blk.0." + "x" * 50 + ".weight", "recipe r")


@pytest.mark.parametrize("existing", ["report.md", "report.json", "pareto.png"])
def test_quantize_keeps_existing_reports(existing, d, capsys):
    ref = write(d / "ref-F32.gguf", G.model_gguf())
    write(d / "q" / existing, "mine")
    check_bad(capsys, d, ["quantize", "--gguf", ref, "--recipe", "Q8_0", "--out", "q"], "already exists")


def test_quantize_keeps_existing_imatrix(d, capsys):
    ref = write(d / "ref-F32.gguf", G.model_gguf())
    write(d / "q" / "imatrix.gguf", "mine")
    write(d / "c.jsonl", CHAT)
    check_bad(capsys, d, ["quantize", "--gguf", ref, "--recipe", "Q8_0", "--out", "q", "--no-eval",
                          "--calib", "c.jsonl", "--model", "nomodel"], "already exists")


def test_quantize_variant_equal_to_source(d, capsys):
    ref = write(d / "m-Q8_0.gguf", G.model_gguf())
    check_bad(capsys, d, ["quantize", "--gguf", ref, "--recipe", "Q8_0", "--out", ".", "--no-eval", "--force"],
              "overwrite the input")


def test_quantize_bad_calibration_before_model(d, capsys):
    ref = write(d / "ref-F32.gguf", G.model_gguf())
    write(d / "c.jsonl", BAD_UTF8)
    check_bad(capsys, d, ["quantize", "--gguf", ref, "--recipe", "Q8_0", "--out", "q", "--no-eval",
                          "--calib", "c.jsonl", "--model", "nomodel"], "not UTF-8", seconds=5)


def test_quantize_garbage_imatrix(d, capsys):
    ref = write(d / "ref-F32.gguf", G.model_gguf())
    write(d / "im.gguf", G.gguf_bytes({"a": G.nested(50)}))
    check_bad(capsys, d, ["quantize", "--gguf", ref, "--recipe", "Q8_0", "--out", "q", "--no-eval",
                          "--imatrix", "im.gguf"], "nested")


def test_quantize_out_is_a_file(d, capsys):
    ref = write(d / "ref-F32.gguf", G.model_gguf())
    write(d / "q", "file")
    check_bad(capsys, d, ["quantize", "--gguf", ref, "--recipe", "Q8_0", "--out", "q"], "is a file")


def test_quantize_unknown_recipe(d, capsys):
    ref = write(d / "ref-F32.gguf", G.model_gguf())
    check_bad(capsys, d, ["quantize", "--gguf", ref, "--recipe", "Q9_Z", "--out", "q"], "Q9_Z")


@pytest.mark.parametrize("recipe, why", [("IQ2_M", "llama.cpp refuses its 2-bit types without one"),
                                         ("xl6.2-q8_0", "without one it is no closer to the reference than .*; use Q5_K_M")])
def test_quantize_without_the_imatrix_a_recipe_needs(recipe, why, d, capsys):
    ref = write(d / "ref-F32.gguf", G.model_gguf(matrices=G.GEMMA_MATRICES))
    check_bad(capsys, d, ["quantize", "--gguf", ref, "--recipe", "Q8_0", "--recipe", recipe, "--out", "q"],
              rf"needs an importance matrix \({why}.*\): give --calib")


# ---- imatrix, precision, demo, push ---------------------------------------------------------------
def test_imatrix_bad_calibration_before_model(d, capsys):
    write(d / "c.jsonl", DEEP_JSON + b"\n")
    check_bad(capsys, d, ["imatrix", "--out", "im.gguf", "--calib", "c.jsonl"], "nested", seconds=5)


def test_imatrix_calibration_folder(d, capsys):
    (d / "c").mkdir()
    check_bad(capsys, d, ["imatrix", "--out", "im.gguf", "--calib", "c"], "is a folder", seconds=5)


def test_precision_unknown_device(d, capsys):
    check_bad(capsys, d, ["precision", "--device", "tpu"], "tpu")


def test_precision_unknown_name(d, capsys):
    check_bad(capsys, d, ["precision", "--precision", "fp8"], "fp8")


def test_demo_out_is_a_file(d, capsys):
    write(d / "run", "a file")
    check_bad(capsys, d, ["demo", "--out", "run"], "is a file")


def test_demo_corrupt_run_json(d, capsys):
    write(d / "run" / "run.json", b'{"stages": [')
    check_bad(capsys, d, ["demo", "--out", "run"], "run.json")


# ---- edge run: run.toml, the run folder, the model -----------------------------------------------
RUN_CONFIG_CASES = {
    "run-not-a-table": ("run = 5\n", "must be a table"),
    "data-a-number": ("data = 5\n", "data must be a string, not 5"),
    "model-a-number": ("model = 5\n", "model must be a string"),
    "devices-numbers": ("devices = [1]\n", "devices must be a list of names"),
    "recipes-a-number": ("recipes = 5\n", "recipes must be a list of names"),
    "full-a-string": ('full = "no"\n', "full must be true or false, not 'no'"),   # "no" is truthy
    "private-a-string": ('private = "yes"\n', "private must be true or false"),
    "steps-a-fraction": ("steps = 1.5\n", "steps must be a whole number"),
    "batch-size-a-fraction": ("batch_size = 2.5\n", "batch_size must be a whole number"),
    "gpus-a-fraction": ("gpus = 1.5\n", "gpus must be a whole number"),
    "ctx-huge-float": ("ctx = 1e300\n", "ctx must be a whole number"),
    "seed-a-string": ('seed = "x"\n', "seed must be a whole number"),       # crashed in torch.manual_seed
    "eval-fraction-a-string": ('eval_fraction = "x"\n', "eval_fraction must be a number"),
    "deeply-nested": ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    "not-toml": ("steps = = 3\n", "not valid TOML"),
    "not-utf8": (b"name = \"\xff\"\n", "not valid TOML"),
    "unknown-setting": ("stepz = 3\n", "unknown setting 'stepz'"),
    "epochs-infinite": ("epochs = inf\n", "--epochs inf"),
    "push-unknown-app": ('push = "nosuchapp"\n', "nosuchapp"),
}


@pytest.mark.parametrize("case", list(RUN_CONFIG_CASES))
def test_run_hostile_config(case, d, capsys):
    text, match = RUN_CONFIG_CASES[case]
    write(d / "run.toml", text)
    write(d / "c.jsonl", CHAT)
    check_bad(capsys, d, ["run", "--config", "run.toml", "--data", "c.jsonl", "--out", "r", "--model", "./nomodel"],
              match)
    assert not (d / "r").exists()


def test_run_config_is_a_folder(d, capsys):
    (d / "conf").mkdir()
    write(d / "c.jsonl", CHAT)
    check_bad(capsys, d, ["run", "--config", "conf", "--data", "c.jsonl", "--out", "r"], "a folder")


def test_run_out_in_a_folder_of_the_users_files(d, capsys):
    """`edge run --data data/train.jsonl --out .` in a project would have replaced README.md with
    the model card and data/train.jsonl (the user's chats) with the training split."""
    write(d / "README.md", "# my project")
    write(d / "data" / "train.jsonl", CHAT * 10)
    check_bad(capsys, d, ["run", "--data", "data/train.jsonl", "--out", "."], "not a run folder")
    (d / "empty").mkdir()                                  # an empty folder is fine: it goes on to the model
    check_bad(capsys, d, ["run", "--data", "data/train.jsonl", "--out", "empty", "--model", "./nomodel"], "nomodel")


def test_run_data_is_the_runs_own_copy(d, capsys):
    write(d / "r" / "run.json", '{"stages": {}}')
    write(d / "r" / "data" / "train.jsonl", CHAT * 10)
    check_bad(capsys, d, ["run", "--data", "r/data/train.jsonl", "--out", "r"], "run's own copy")
    write(d / "c.jsonl", CHAT * 10)
    check_bad(capsys, d, ["run", "--data", "c.jsonl", "--eval", "r/data/eval.jsonl", "--out", "r"], "own copy")


@pytest.mark.parametrize("outputs", [5, "x", [5], [{"role": "reference"}], [{"path": 5, "role": "reference"}],
                                     [{"path": "gguf/r.gguf", "role": "other", "size": "big"}]])
def test_run_json_with_damaged_stage_records(outputs, tmp_path):
    """A hand-edited run.json: a stage whose outputs are not records is not finished (it is
    redone), with no exception, and reading or dropping its outputs touches nothing."""
    from edge.runfolder import Run

    write(tmp_path / "r" / "run.json", json.dumps({"stages": {"export": {"state": "done", "key": "k",
                                                                         "outputs": outputs}}}))
    write(tmp_path / "r" / "gguf" / "r.gguf", "keep")
    run = Run.open(tmp_path / "r")
    assert run.finished("export", "k") is False
    run.outputs("export"), run.missing_outputs("export"), run.reference()
    run.drop("export", "reference")
    assert (tmp_path / "r" / "gguf" / "r.gguf").read_text() == "keep"


def test_run_json_never_drops_a_file_outside_the_run(tmp_path):
    """The F32 reference is deleted after scoring by the path run.json records: a run.json that
    names a file outside its folder (absolute, or ../) must not delete it."""
    from edge.runfolder import Run

    victims = [write(tmp_path / "mine.gguf", "precious"), write(tmp_path / "other" / "x.gguf", "precious")]
    write(tmp_path / "r" / "run.json", json.dumps({"stages": {"export": {"state": "done", "outputs": [
        {"path": victims[0], "role": "reference"}, {"path": "../other/x.gguf", "role": "reference"}]}}}))
    Run.open(tmp_path / "r").drop("export", "reference")
    assert all(Path(v).read_text() == "precious" for v in victims)


def test_run_unknown_hub_dataset_is_one_line_at_once(d):
    """A mistyped dataset id, online (as users run it; the tests run with HF_HUB_OFFLINE=1) with
    the Hub out of reach: it was 11 lines of huggingface_hub retry warnings over 23 s, then the
    error. The help says "a cached hub dataset id": the cache is all that is looked at."""
    from tests.conftest import EDGE, ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                             "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"            # nothing listens: a network that fails
    env["PYTHONPATH"] = str(ROOT)
    t0 = time.monotonic()
    r = subprocess.run(EDGE + ["run", "--data", "someone/chats", "--out", "r", "--model", "./nomodel"], cwd=d,
                       env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "hf download someone/chats --repo-type dataset" in lines[0]
    assert time.monotonic() - t0 < 15 and not (d / "r").exists()


def test_run_missing_model_makes_no_run_folder(d, capsys):
    write(d / "c.jsonl", CHAT)
    check_bad(capsys, d, ["run", "--data", "c.jsonl", "--out", "r", "--model", "./nomodel"], "not found")
    assert not (d / "r").exists()


@pytest.mark.parametrize("name, data, match", [
    ("trunc.gguf", G.model_gguf()[:-64], "truncated"),
    ("text.gguf", b"not a model", "not a GGUF"),
    ("nomodel.gguf", G.gguf_bytes({"general.type": G.string("imatrix")}), "no tensors"),
])
def test_push_refuses_invalid_gguf_before_any_output(name, data, match, d, capsys):
    f = write(d / name, data)
    check_bad(capsys, d, ["push", f, "--app", "chatterui"], match)


def test_push_unknown_app_before_any_output(d, capsys):
    f = write(d / "m.gguf", G.model_gguf())
    check_bad(capsys, d, ["push", f, "--app", "nosuchapp"], "nosuchapp")


def test_push_non_utf8_file_name(d, capsys):
    name = os.fsdecode(b"m\xff.gguf")
    write(d / name, G.model_gguf())
    check_bad(capsys, d, ["push", name, "--app", "chatterui"], "UTF-8")


def test_push_folder(d, capsys):
    (d / "m.gguf").mkdir()
    check_bad(capsys, d, ["push", "m.gguf", "--app", "chatterui"], "folder")


def test_usage_error_is_one_line(d, capsys):
    check_bad(capsys, d, ["inspect"], "required")


# ---- chat templates from a file: bounded, one line ------------------------------------------------
@pytest.mark.parametrize("template, match", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "longer than"),
    ("{{ 'x' * 10**10 }}", "repeated"),
    ("{{ 'x'|center(10**10) }}", "too large"),
    ("{{ '{:>1000000000}'.format(1) }}", "format width"),
    ("{{ ((2**1000)**1000)**1000 }}", "power"),
    ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "passed"),
    ("{% for m in messages %}", "TemplateSyntaxError"),
    ("{{ foo() }}", "UndefinedError"),
    ("{{ ''.__class__.__mro__ }}", "SecurityError"),
    ("{{ 1/0 }}", "ZeroDivisionError"),
    ("{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
])
def test_hostile_chat_template_is_bounded(template, match, monkeypatch):
    import edge.template
    from edge.errors import EdgeError

    monkeypatch.setattr(edge.template, "RENDER_SECONDS", 0.5)
    t0 = time.monotonic()
    with pytest.raises(EdgeError, match=match) as e:
        edge.template.render_chat(template, [{"role": "user", "content": "hi"}], source="the file's chat template")
    assert time.monotonic() - t0 < 5 and "\n" not in str(e.value)


def test_gemma_template_still_renders():
    from edge.template import GGUF_CHAT_TEMPLATE, render_chat

    text = render_chat(GGUF_CHAT_TEMPLATE, [{"role": "user", "content": "hi"}])
    assert text == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"


# ---- outputs: printed hints run as printed, folders get the umask, stale temporaries go --------------
@pytest.mark.parametrize("hint", ["finetune", "merge", "export"])
def test_printed_next_step_parses_with_all_required_flags(hint, tmp_path):
    import shlex

    from edge import export, finetune, merge
    from edge.cli import build_parser

    where = tmp_path / "my runs" / "x"
    line = {"finetune": finetune.next_step, "merge": merge.next_step, "export": export.next_step}[hint](where)
    argv = shlex.split(line)
    assert argv[0] == "edge"
    args = build_parser(argv[1]).parse_args(argv[1:])  # SystemExit(2) if a required flag is missing
    assert args.command == argv[1] and str(where) in argv


def test_atomic_dir_uses_the_umask(tmp_path):
    from edge.fsutil import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "merged") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "merged").stat().st_mode & 0o777 == 0o755


def test_stale_part_files_of_dead_writers_are_removed(tmp_path):
    from edge.fsutil import atomic_path, write_text_atomic

    dead = tmp_path / ".x.gguf.999999999.abc.part"     # a pid that cannot be running
    live = tmp_path / f".x.gguf.{os.getppid()}.def.part"  # a running process: left alone
    other = tmp_path / ".y.gguf.999999999.abc.part"   # another file's temporary: left alone
    for p in (dead, live, other):
        p.write_bytes(b"half")
    write_text_atomic(tmp_path / "x.gguf", "done")
    assert not dead.exists() and live.exists() and other.exists()
    with atomic_path(tmp_path / "z.gguf") as tmp:
        assert f".z.gguf.{os.getpid()}." in tmp.name


def _aged(p: Path, seconds: float = 3600) -> Path:
    """Set p's (and its contents') modification time `seconds` in the past."""
    when = time.time() - seconds
    for q in [p, *p.rglob("*")] if p.is_dir() else [p]:
        os.utime(q, (when, when))
    return p


def _holder(path: Path):
    """A live process that holds `path` open for writing (a writer of an earlier version)."""
    code = f"import sys, time; f = open({str(path)!r}, 'ab'); print('open', flush=True); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_untagged_part_files_of_earlier_versions_go_when_idle_and_unopened(tmp_path):
    """Before temporaries carried the writer's pid they were `.NAME.XXXXXXXX.part` (export,
    quantize, imatrix: files; merge: a folder). The next write of NAME removes them once they are
    idle and open in no process; a fresh one, or one a live process holds open, stays."""
    from edge.fsutil import LEGACY_IDLE_S, atomic_dir, write_text_atomic

    def file(name: str, data: bytes = b"half") -> Path:
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    old_file = _aged(file(".x.gguf.k3j_9a0q.part"))
    fresh = file(".x.gguf.abcdefgh.part")                      # touched just now: maybe a live writer
    held = file(".x.gguf.zzzzzzzz.part")
    other = _aged(file(".xy.gguf.abcdefgh.part"))              # another file's temporary
    mine = _aged(file("x.gguf.abcdefgh.part"))                 # not hidden: a user's own file
    holder = _holder(held)
    try:
        _aged(held)
        write_text_atomic(tmp_path / "x.gguf", "done")
        assert not old_file.exists(), "an idle, unopened old temporary stayed"
        assert fresh.exists() and held.exists() and other.exists() and mine.exists()
    finally:
        holder.kill()
        holder.wait()
    write_text_atomic(tmp_path / "x.gguf", "again")
    assert not held.exists(), "its writer is gone: it goes"
    assert fresh.exists() and LEGACY_IDLE_S >= 60
    # merge's folder: the same rule, counting every file inside (one written now keeps it)
    old_dir = tmp_path / ".merged.a1b2c3d4.part"
    (old_dir / "model.safetensors").parent.mkdir()
    (old_dir / "model.safetensors").write_bytes(b"half")
    busy_dir = tmp_path / ".merged.e5f6g7h8.part"
    busy_dir.mkdir()
    (busy_dir / "config.json").write_text("{}")
    _aged(old_dir), _aged(busy_dir)
    (busy_dir / "model.safetensors").write_bytes(b"growing")  # a live writer's newest file
    with atomic_dir(tmp_path / "merged") as tmp:
        (tmp / "config.json").write_text("{}")
    assert not old_dir.exists() and busy_dir.exists() and (tmp_path / "merged" / "config.json").exists()


def test_the_next_export_removes_a_killed_exports_part_file(tiny_dir, tmp_path, capsys):
    """Through the command: a killed `edge export` left `.m.gguf.XXXXXXXX.part` (earlier naming,
    idle) and `.m.gguf.PID.XXXX.part` (a pid no longer running); the next export of m.gguf
    removes both and leaves another export's live temporary alone."""
    old = tmp_path / ".m.gguf.p0o9i8u7.part"
    old.write_bytes(b"x" * 1000)
    _aged(old)
    dead = tmp_path / ".m.gguf.999999999.abcdefgh.part"
    dead.write_bytes(b"x" * 1000)
    live = tmp_path / f".m.gguf.{os.getppid()}.abcdefgh.part"
    live.write_bytes(b"x" * 1000)
    assert main(["export", "--model", str(tiny_dir), "--out", str(tmp_path / "m.gguf")]) == 0, capsys.readouterr().err
    assert (tmp_path / "m.gguf").stat().st_size > 1000
    assert not old.exists() and not dead.exists() and live.exists()


def test_finetune_final_folder_of_a_killed_run_goes(tmp_path):
    """The fine-tune writes its final adapter into `OUT/.final.*` and renames the files out. A run
    killed there left `.final.XXXXXXXX` (earlier versions) or `.final.PID.XXXX.part`; the next
    save removes those whose writer is gone, never a running writer's."""
    from edge.fsutil import temp_dir

    old = tmp_path / ".final.q1w2e3r4"
    old.mkdir()
    (old / "adapter_model.safetensors").write_bytes(b"half")
    _aged(old)
    dead = tmp_path / ".final.999999999.abcdefgh.part"
    dead.mkdir()
    live = tmp_path / f".final.{os.getppid()}.abcdefgh.part"
    live.mkdir()
    tmp = temp_dir(tmp_path, "final")
    assert tmp.name.startswith(f".final.{os.getpid()}.") and tmp.name.endswith(".part") and tmp.is_dir()
    assert not old.exists() and not dead.exists() and live.exists()


def test_child_and_safe_name_keep_names_inside(tmp_path):
    from edge.errors import EdgeError
    from edge.fsutil import child, safe_name

    assert child(tmp_path, "a-Q4_K_M.gguf") == tmp_path / "a-Q4_K_M.gguf"
    for bad in ("../x", "/etc/x", "a/../../x"):
        with pytest.raises(EdgeError):
            child(tmp_path, bad)
    for bad in ("../../x", ".hidden", "a/b", "a\nb", "", "x" * 200, "..", 5):
        with pytest.raises(EdgeError):
            safe_name(bad, "name")


# ---- pipes, noise, locks, the TUI's readers -----------------------------------------------------
def test_inspect_into_a_closed_pipe_is_quiet(tmp_path):
    import subprocess
    import sys

    kv = {f"key.{i:05d}": G.string("v" * 60) for i in range(3000)}  # ~250 KB of output
    f = write(tmp_path / "m.gguf", G.gguf_bytes(kv))
    p = subprocess.Popen([sys.executable, "-m", "edge.cli", "inspect", f], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    p.stdout.readline()
    p.stdout.close()  # what `| head -1` does
    err = p.stderr.read().decode()
    rc = p.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert rc == 141 and err == ""


def test_cli_silences_library_progress_bars():
    import subprocess
    import sys

    code = ("import os; os.environ.pop('HF_HUB_DISABLE_PROGRESS_BARS', None); from edge.cli import quiet_libraries; "
            "quiet_libraries(); from transformers.utils import logging; print(logging.is_progress_bar_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False", out.stderr


def test_second_push_to_the_same_path_is_refused(tmp_path, monkeypatch):
    from edge.errors import EdgeError
    from edge.push import _push_lock

    monkeypatch.setenv("EDGE_CACHE", str(tmp_path))
    with _push_lock("emulator-5554", "/sdcard/Download/m.gguf"):
        with pytest.raises(EdgeError, match="another `edge push`"):
            with _push_lock("emulator-5554", "/sdcard/Download/m.gguf"):
                pass
        with _push_lock("emulator-5554", "/sdcard/Download/other.gguf"):  # another path: fine
            pass
    with _push_lock("emulator-5554", "/sdcard/Download/m.gguf"):  # released
        pass


def test_tui_report_with_wrong_types_is_read(tmp_path):
    from tui_screens import library

    write(tmp_path / "m-Q8_0.gguf", G.model_gguf())
    write(tmp_path / "report.json", json.dumps({"variants": [
        {"name": "m-Q8_0", "path": "m-Q8_0.gguf", "bpw": "abc", "kld_mean": [1], "recipe": 5, "top1": 0.9}]}))
    _, variants, _ = library.variants(None, tmp_path)
    (v,) = variants
    assert v.bpw is None and v.kld_mean is None and not v.recipe and v.top1 == 0.9


def test_tui_budget_grid_survives_a_corrupt_gguf(tmp_path):
    from edge.profiles import get_profile
    from tui_screens import library

    good = Path(write(tmp_path / "good.gguf", G.model_gguf()))
    bad = Path(write(tmp_path / "bad.gguf", G.model_gguf(**{"gemma3.block_count": G.u64(1 << 40)})))
    cols = [library.Column("pixel_7", "Pixel 7", get_profile("pixel_7"))]
    res = library.budget([good, bad], cols, ctx=2048, report=None)
    assert res.variants == ["good.gguf"] and any("bad.gguf" in n for n in res.notes)


def test_quantize_negative_eval_tokens(d, capsys):
    ref = write(d / "ref-F32.gguf", G.model_gguf())
    check_bad(capsys, d, ["quantize", "--gguf", ref, "--recipe", "Q8_0", "--out", "q", "--eval-tokens", "-5"],
              "eval-tokens")


def test_imatrix_out_equal_to_calibration(d, capsys):
    write(d / "c.jsonl", CHAT)
    check_bad(capsys, d, ["imatrix", "--out", "c.jsonl", "--calib", "c.jsonl", "--force"], "overwrite the input")
