"""Fuzzing the readers of user files with Hypothesis: mutated GGUF headers (byte flips,
lying counts, truncations, splices) and mutated data files (chat JSONL, JSON records,
recipes, safetensors headers), each read under a time and a memory bound.

The promise: a reader returns, or raises `EdgeError` (one line at the CLI); never another
exception, never a hang, never a large allocation. Examples are derandomized, so a run is
reproducible; the bounds are generous (a reader takes milliseconds on these small files).
"""

from __future__ import annotations

import contextlib
import json
import signal
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.errors import EdgeError
from tests import ggufbytes as G
from tests.conftest import CHAT_LINE

SECONDS = 3.0              # per call: far above what a reader needs on these files
PEAK_BYTES = 64 << 20      # traced Python/numpy allocations per call

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Hang(Exception):
    pass


@contextlib.contextmanager
def bounded(what: str):
    """Fail (not hang) past SECONDS; fail if the traced peak passes PEAK_BYTES."""
    def alarm(signum, frame):
        raise Hang(f"{what} ran past {SECONDS} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, SECONDS)
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"{what} allocated {peak / 1e6:.0f} MB"
    assert time.monotonic() - t0 < SECONDS


def only_edge_errors(fn, *args, what: str):
    with bounded(what):
        try:
            return fn(*args)
        except EdgeError:
            return None


BASE = G.model_gguf()
HEADER_END = len(G.gguf_bytes(G.model_kv(), G.model_tensors(), data=b""))


@st.composite
def mutated_gguf(draw) -> bytes:
    data = bytearray(BASE)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "u64", "u32", "truncate", "splice", "delete"]))
        pos = draw(st.integers(0, HEADER_END + 8))
        if kind == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "u64" and pos + 8 <= len(data):
            v = draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**40, 2**62, 2**64 - 1]) | st.integers(0, 2**64 - 1))
            data[pos:pos + 8] = struct.pack("<Q", v)
        elif kind == "u32" and pos + 4 <= len(data):
            data[pos:pos + 4] = struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "splice":
            data[pos:pos] = draw(st.binary(max_size=64))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
    return bytes(data)


def typed_value():
    """Any gguf value a hostile writer could put under a key: wrong types, huge or negative
    counts, nested arrays, lying array lengths, control characters."""
    big = st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1]) | st.integers(0, 2**32 - 1)
    return st.one_of(
        big.map(G.u32),
        st.sampled_from([0, 2**40, 2**63, 2**64 - 1]).map(G.u64),
        st.integers(-2**31, 2**31 - 1).map(G.i32),
        st.floats(width=32, allow_nan=True).map(G.f32),
        st.text(max_size=30).map(lambda t: G.string(t.encode("utf-8", "surrogatepass"))),
        st.integers(1, 40).map(G.nested),
        st.builds(lambda n, k: G.array(G.UINT32, [struct.pack("<I", 7)] * k, n=n),
                  st.sampled_from([0, 1, 2, 2**20, 2**40, 2**62]), st.integers(0, 3)),
    )


@st.composite
def hostile_metadata(draw) -> bytes:
    """The tiny model's metadata with some values replaced by hostile ones (typed mutations:
    what byte flips rarely reach, e.g. block_count = 2**40)."""
    keys = list(G.model_kv())
    override = {k: draw(typed_value()) for k in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=4))}
    return G.gguf_bytes(G.model_kv(**override), G.model_tensors())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def test_the_unmutated_file_is_read(folder):
    """The seed file the mutations start from is a model every reader accepts, so the fuzz
    explores damage to a real header rather than files rejected at the magic."""
    from edge.modelinfo import model_info

    path = Path(folder) / "seed.gguf"
    path.write_bytes(BASE)
    info = model_info(path)
    assert info.n_layers == 2 and len(BASE) > HEADER_END > 100


@FUZZ
@given(data=mutated_gguf() | hostile_metadata())
def test_gguf_readers_on_mutated_headers(data, folder):
    from edge import budget
    from edge.ggufinfo import inspect_gguf
    from edge.modelinfo import model_info
    from edge.profiles import get_profile
    from edge.ggufinfo import read_gguf
    from edge.push import check_gguf

    path = Path(folder) / "m.gguf"
    path.write_bytes(data)
    only_edge_errors(read_gguf, path, what="ggufinfo.read_gguf")
    only_edge_errors(inspect_gguf, path, what="inspect_gguf")
    only_edge_errors(check_gguf, path, what="push.check_gguf")
    info = only_edge_errors(model_info, path, what="modelinfo.model_info")
    if info is not None:
        prof = get_profile("pixel_7")
        only_edge_errors(lambda: budget.verdict(info, prof, ctx=4096), what="budget.verdict")


@FUZZ
@given(data=mutated_gguf() | hostile_metadata())
def test_imatrix_reader_on_mutated_headers(data, folder):
    from quantize.imatrix import load_imatrix

    path = Path(folder) / "im.gguf"
    path.write_bytes(data)
    only_edge_errors(load_imatrix, path, what="load_imatrix")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@st.composite
def data_file(draw) -> bytes:
    kind = draw(st.sampled_from(["json", "bytes", "mutated", "nested"]))
    if kind == "json":
        return (json.dumps(draw(json_values)) + "\n").encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "nested":
        n = draw(st.integers(1, 200_000))
        return b"[" * n + b"]" * draw(st.integers(0, n)) + b"\n"
    line = bytearray(CHAT_LINE.encode())
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(line)))
        line[pos:pos + draw(st.integers(0, 3))] = draw(st.binary(min_size=1, max_size=4))
    return bytes(line) + b"\n"


@FUZZ
@given(data=data_file())
def test_data_readers_on_mutated_files(data, folder):
    from edge.data import eval_text, load_chats
    from edge.fsutil import read_json
    from edge.runfolder import Run
    from quantize.recipes import load_recipe_file

    f = Path(folder) / "data.jsonl"
    f.write_bytes(data)
    only_edge_errors(load_chats, f, what="load_chats")
    only_edge_errors(eval_text, f, what="eval_text")
    j = Path(folder) / "r.json"
    j.write_bytes(data)
    only_edge_errors(read_json, j, "record", what="read_json")
    only_edge_errors(load_recipe_file, j, what="load_recipe_file")
    run = Path(folder) / "run"
    run.mkdir(exist_ok=True)
    (run / "run.json").write_bytes(data)
    only_edge_errors(Run.open, run, what="Run.open")


@FUZZ
@given(header=data_file(), length=st.none() | st.integers(0, 2**64 - 1))
def test_safetensors_header_reader(header, length, folder):
    from edge.export import read_config, read_safetensors
    from edge.finetune import read_meta

    m = Path(folder) / "model"
    m.mkdir(exist_ok=True)
    n = len(header) if length is None else length
    (m / "model.safetensors").write_bytes(struct.pack("<Q", n) + header + b"\0" * 64)
    only_edge_errors(read_safetensors, m, what="read_safetensors")
    (m / "config.json").write_bytes(header)
    only_edge_errors(read_config, m, what="read_config")
    (m / "edge_adapter.json").write_bytes(header)
    only_edge_errors(read_meta, m, what="read_meta")


template_parts = st.sampled_from([
    "{{ messages[0].content }}", "{% for m in messages %}", "{% endfor %}", "{{ 'x' * 1000 }}",
    "{% for i in range(100000) %}", "{{ 9 ** 99 }}", "{{ bos_token }}", "{% if x %}", "{% endif %}",
    "{{ x.y.z }}", "{{ ''.__class__ }}", "{{ 'a'|center(50) }}", "{{ '%s' % 1 }}", "{{", "}}", "{%", "%}",
    "{{ 1/0 }}", "{{ range(10)|join }}", "text", "{% set n = 10 ** 5 %}", "{{ 'ab' ~ 'cd' }}",
])


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(parts=st.lists(template_parts, max_size=8))
def test_chat_template_renderer(parts):
    import edge.template
    from edge.template import RENDER_CHARS, render_chat

    saved, edge.template.RENDER_SECONDS = edge.template.RENDER_SECONDS, 0.2  # runaway loops stop sooner here
    try:
        with bounded("render_chat"):
            try:
                out = render_chat("".join(parts), [{"role": "user", "content": "hi"}])
            except EdgeError:
                return
    finally:
        edge.template.RENDER_SECONDS = saved
    assert len(out) <= RENDER_CHARS


toml_values = st.recursive(
    st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3),
    max_leaves=10)
RUN_KEYS = ["data", "out", "eval", "model", "full", "steps", "epochs", "batch_size", "lr", "precision", "recipes",
            "devices", "ctx", "push", "serial", "publish", "private", "eval_fraction", "seed", "accuracy",
            "eval_tokens", "eval_ctx", "keep_reference", "name", "gpus", "run", "device", "recipe", "x"]


def _toml(v) -> str:
    """A TOML literal for v (strings JSON-quoted, which TOML reads the same for these)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + "}"


@FUZZ
@given(settings_=st.dictionaries(st.sampled_from(RUN_KEYS), toml_values, max_size=6),
       junk=st.binary(max_size=40), mode=st.sampled_from(["values", "junk"]))
def test_run_config_reader(settings_, junk, mode, folder):
    """`edge run --config`: values of any TOML type (or bytes that are not TOML) give settings or
    one EdgeError, never another exception; whatever passes has the types RunSettings declares."""
    from edge.pipeline import build_settings

    f = Path(folder) / "run.toml"
    if mode == "values":
        f.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in settings_.items()), encoding="utf-8")
    else:
        f.write_bytes(junk)
    s = only_edge_errors(build_settings, str(f), {"data": "d.jsonl", "out": "o"}, what="build_settings")
    if s is not None:
        assert all(isinstance(x, str) for x in s.recipes + s.devices)
        assert isinstance(s.full, bool) and isinstance(s.steps, int) and isinstance(s.seed, int)
        assert isinstance(s.model, str) and isinstance(s.name, str)
