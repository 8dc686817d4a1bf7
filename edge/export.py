"""Export a Hugging Face Gemma 3 text model (a directory) to one GGUF file that llama.cpp runs.

Takes a merged checkpoint (config.json + *.safetensors + tokenizer.json or tokenizer.model),
writes `OUT.gguf` in F32, F16, BF16 or Q8_0 plus an Ollama Modelfile beside it
(`OUT.Modelfile`). Names and keys come from gguf-py's own tables (`gguf.MODEL_ARCH.GEMMA3`,
`gguf.get_tensor_name_map`, `gguf.Keys` through `GGUFWriter`); the Gemma 3 facts (norm +1,
tied embeddings, sliding window, rope bases, chat template, sampling defaults) come from
`edge.gemma3`, and the conversion follows llama.cpp's `convert_hf_to_gguf.py` (Gemma3Model).

Tensors are streamed: each is read from the safetensors file in row chunks, converted and
written, so peak RAM stays near one chunk plus the tokenizer, not a model copy. The file is
written under a temporary name and renamed when complete; a failure (NaN in a weight, a
truncated safetensors file) leaves nothing behind.

    edge export --model DIR --out model-F32.gguf [--outtype f16|bf16|q8_0] [--force]
    edge inspect model-F32.gguf [--json]
    edge modelfile model-F32.gguf
    python -c "from edge.export import export_gguf; print(export_gguf('DIR', 'm.gguf'))"
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge import __version__, gemma3
from edge.errors import EdgeError, printable
from edge.fsutil import atomic_path, check_not_input, check_writable, child, read_json, write_text_atomic
from edge.ggufinfo import GGUF_MAGIC, GGUFInfo, GGUFTensor, read_gguf  # noqa: F401 (re-exported)
CHUNK_BYTES = 64 << 20  # rows are read, converted and written this many source bytes at a time


def _gguf():
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - a broken install
        raise EdgeError("the gguf package is missing; run the README's set-up (pip install gguf)") from e
    return gguf


def outtypes() -> dict[str, tuple]:
    """--outtype name -> (general.file_type, tensor type for 2-D weights)."""
    g = _gguf()
    Q, F = g.GGMLQuantizationType, g.LlamaFileType
    return {
        "f32": (F.ALL_F32, Q.F32),
        "f16": (F.MOSTLY_F16, Q.F16),
        "bf16": (F.MOSTLY_BF16, Q.BF16),
        "q8_0": (F.MOSTLY_Q8_0, Q.Q8_0),
    }


@dataclass
class ExportResult:
    """What `export_gguf` wrote."""

    path: str
    modelfile: str
    outtype: str
    size_bytes: int
    n_tensors: int
    n_params: int
    bits_per_weight: float
    seconds: float
    tokenizer_source: str
    chat_template_source: str
    f16_fallback: list[str] = field(default_factory=list)  # Q8_0 rows not a multiple of 32


# --------------------------------------------------------------------------------------
# Reading the checkpoint: config, safetensors headers (no weights loaded), tokenizer
# --------------------------------------------------------------------------------------

def read_config(model_dir: Path) -> dict:
    """config.json of a Gemma 3 *text* model, checked for what llama.cpp can represent."""
    cfg_file = model_dir / "config.json"
    if not model_dir.is_dir():
        raise EdgeError(f"model directory {model_dir} does not exist; give a Hugging Face model directory")
    if not cfg_file.is_file():
        raise EdgeError(f"{model_dir} has no config.json; give a Hugging Face model directory")
    cfg = read_json(cfg_file, "model config", hint="re-save the model with transformers")
    archs = cfg.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    if arch in gemma3.MULTIMODAL_ARCHITECTURES:
        raise EdgeError(f"{model_dir} holds {arch} (vision + text); export its text model "
                        f"({gemma3.TEXT_ARCHITECTURES[0]}) instead")
    if arch not in gemma3.TEXT_ARCHITECTURES and cfg.get("model_type") != "gemma3_text":
        raise EdgeError(f"{model_dir} holds a {arch or cfg.get('model_type')!r} model; only Gemma 3 "
                        f"({', '.join(gemma3.TEXT_ARCHITECTURES)}) can be exported")
    need = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"]
    missing = [k for k in need if k not in cfg]
    if missing:
        raise EdgeError(f"{cfg_file} lacks {', '.join(missing)}; re-save the model with transformers")
    for k in need + ["num_key_value_heads", "head_dim", "sliding_window", "max_position_embeddings"]:
        v = cfg.get(k)
        if k in need or v is not None:
            if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= 1 << 26:
                raise EdgeError(f"{cfg_file}: {k} = {printable(v, 40)} is not a positive whole number; "
                                "re-save the model with transformers")
    cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
    cfg.setdefault("head_dim", 256)
    cfg.setdefault("rms_norm_eps", 1e-6)
    cfg.setdefault("max_position_embeddings", 131072)
    cfg.setdefault("tie_word_embeddings", True)
    try:
        _check_llama_cpp_can_run(cfg, cfg_file)
    except (TypeError, ValueError, AttributeError, KeyError) as e:  # a value of the wrong type in config.json
        raise EdgeError(f"{cfg_file} holds a value of the wrong type ({type(e).__name__}: {printable(e, 120)}); "
                        "re-save the model with transformers") from None
    return cfg


def rope_bases(cfg: dict) -> tuple[float, float]:
    """(global base, local base) from transformers 5 `rope_parameters` or 4.x `rope_theta`."""
    rp = cfg.get("rope_parameters") or {}
    if "full_attention" in rp:
        glob = rp["full_attention"].get("rope_theta", gemma3.GLOBAL_ROPE_BASE)
        loc = rp.get("sliding_attention", {}).get("rope_theta", gemma3.LOCAL_ROPE_BASE)
        return float(glob), float(loc)
    glob = rp.get("rope_theta", cfg.get("rope_theta", gemma3.GLOBAL_ROPE_BASE))
    return float(glob), float(cfg.get("rope_local_base_freq", gemma3.LOCAL_ROPE_BASE))


def _check_llama_cpp_can_run(cfg: dict, cfg_file: Path) -> None:
    """llama.cpp's gemma3 graph hard-codes some choices; refuse configs it would run wrongly."""
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types")
    if types is not None and list(types) != gemma3.layer_types(n) and cfg.get("sliding_window"):
        raise EdgeError(f"{cfg_file}: layer_types is not Gemma 3's pattern (every "
                        f"{gemma3.SLIDING_WINDOW_PATTERN}th layer global), which llama.cpp assumes")
    _, local = rope_bases(cfg)
    if cfg.get("sliding_window") and local != gemma3.LOCAL_ROPE_BASE:
        raise EdgeError(f"{cfg_file}: local rope base {local} differs from {gemma3.LOCAL_ROPE_BASE}, "
                        "which llama.cpp uses for sliding layers")
    scalar = cfg.get("query_pre_attn_scalar", cfg["head_dim"])
    if scalar != cfg["head_dim"]:
        raise EdgeError(f"{cfg_file}: query_pre_attn_scalar {scalar} != head_dim {cfg['head_dim']}; "
                        "llama.cpp scales queries by 1/sqrt(head_dim) for this size")
    if cfg.get("attn_logit_softcapping"):
        raise EdgeError(f"{cfg_file}: attn_logit_softcapping is set; Gemma 3 has none and llama.cpp ignores it")
    rp = cfg.get("rope_parameters") or {}
    scaling = {p.get("rope_type", "default") for p in (rp.values() if "full_attention" in rp else [rp])
               if isinstance(p, dict)}
    if cfg.get("rope_scaling") or scaling - {"default", None}:
        raise EdgeError(f"{cfg_file}: rope scaling is not supported by this exporter")


@dataclass
class _SrcTensor:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in file

    @property
    def n(self) -> int:
        return math.prod(self.shape)


_ST_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8")}


def read_safetensors(model_dir: Path) -> dict[str, _SrcTensor]:
    """Every tensor's file, dtype, shape and offset, from the headers only (format: 8-byte
    little-endian header length, JSON header, raw data; huggingface/safetensors README)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        wmap = read_json(index, "safetensors index", hint="re-save the model").get("weight_map")
        if not isinstance(wmap, dict) or not all(isinstance(n, str) for n in wmap.values()):
            raise EdgeError(f"{index} is corrupt (no weight_map of file names); re-save the model")
        files = [child(model_dir, n) for n in sorted(set(wmap.values()))]
        for f in files:
            if not f.is_file():
                raise EdgeError(f"{f} is listed in {index.name} but missing; copy the complete model")
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise EdgeError(f"{model_dir} has no *.safetensors weights; save the model with "
                        "safe_serialization=True")
    tensors: dict[str, _SrcTensor] = {}
    for f in files:
        size = f.stat().st_size
        bad = f"{f} is not a complete safetensors file"
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise EdgeError(f"{bad} (only {size} bytes); re-save or re-copy it")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > min(size - 8, 256 << 20):
                raise EdgeError(f"{bad} (header length {n} for a {size}-byte file); re-save or re-copy it")
            try:
                header = json.loads(fh.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                raise EdgeError(f"{bad} (its JSON header is corrupt); re-save or re-copy it") from None
        if not isinstance(header, dict):
            raise EdgeError(f"{bad} (its JSON header is not an object); re-save or re-copy it")
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape, (a, b) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
                if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (*shape, a, b)) \
                        or a > b or len(shape) > 8 or not isinstance(dtype, str):
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                raise EdgeError(f"{bad} (entry {printable(name, 80)!r} is malformed)") from None
            if dtype not in _ST_DTYPES:
                raise EdgeError(f"{f}: tensor {name} has dtype {dtype}; export needs F32, F16 or BF16 weights")
            if b - a != math.prod(shape) * _ST_DTYPES[dtype].itemsize or base + b > size:
                raise EdgeError(f"{bad} (tensor {name} runs past the end: truncated?); re-save or re-copy it")
            tensors[name] = _SrcTensor(name, f, dtype, shape, base + a)
    return tensors


def _read_rows(t: _SrcTensor, fh, r0: int, r1: int) -> np.ndarray:
    """Rows [r0, r1) of a tensor as float32 (2-D view; 1-D tensors are one row)."""
    dt = _ST_DTYPES[t.dtype]
    row = math.prod(t.shape[1:]) if len(t.shape) > 1 else t.n
    fh.seek(t.start + r0 * row * dt.itemsize)
    raw = np.fromfile(fh, dtype=dt, count=(r1 - r0) * row)
    if raw.size != (r1 - r0) * row:
        raise EdgeError(f"{t.file}: tensor {t.name} is truncated; re-save or re-copy the model")
    if t.dtype == "BF16":
        out = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        out = raw.astype(np.float32, copy=False)
    return out.reshape(r1 - r0, row)


# --- tokenizer -------------------------------------------------------------------------

@dataclass
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    source: str  # "tokenizer.model" or "tokenizer.json"


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
SPECIAL_SCORE = -1000.0  # what the real Gemma 3 GGUF stores for control / user-defined tokens


def build_vocab(model_dir: Path, n_vocab: int) -> Vocab:
    """Tokens, scores and token types for llama.cpp's SentencePiece tokenizer ("llama").

    From `tokenizer.model` when present (piece scores and types read from the protobuf,
    as llama.cpp's converter does), else rebuilt from `tokenizer.json`, which has BPE merges
    but no scores: a piece's score is minus the rank of the first merge that produces it, so
    llama.cpp merges in the same order as the Hugging Face tokenizer.
    """
    if (model_dir / "tokenizer.model").is_file():
        vocab = _vocab_from_sentencepiece(model_dir)
    elif (model_dir / "tokenizer.json").is_file():
        vocab = _vocab_from_tokenizer_json_cached(model_dir / "tokenizer.json")
    else:
        raise EdgeError(f"{model_dir} has no tokenizer (tokenizer.model or tokenizer.json); "
                        "copy the tokenizer files from the base model into it")
    T = _gguf().TokenType
    if len(vocab.tokens) > n_vocab:
        raise EdgeError(f"the tokenizer has {len(vocab.tokens)} tokens but config.json says vocab_size "
                        f"{n_vocab}; the tokenizer belongs to another model")
    for i in range(len(vocab.tokens), n_vocab):  # llama.cpp's converter pads the same way
        vocab.tokens.append(f"[PAD{i}]")
        vocab.scores.append(SPECIAL_SCORE)
        vocab.types.append(int(T.UNUSED))
    expected = {gemma3.PAD_ID: "<pad>", gemma3.EOS_ID: gemma3.EOS, gemma3.BOS_ID: gemma3.BOS,
                gemma3.END_OF_TURN_ID: gemma3.END_OF_TURN}
    wrong = {i: vocab.tokens[i] for i, t in expected.items() if i >= len(vocab.tokens) or vocab.tokens[i] != t}
    if wrong:
        raise EdgeError(f"{model_dir}: the tokenizer is not Gemma 3's (token ids {wrong}); "
                        "copy the base model's tokenizer files")
    return vocab


_VOCAB_MEMO: dict[str, Vocab] = {}


def _vocab_from_tokenizer_json_cached(path: Path) -> Vocab:
    """Rebuilding Gemma's 262k-token vocabulary takes seconds; a process exporting several
    files from the same tokenizer (tests, demo) does it once per distinct file content."""
    from edge.fsutil import sha256_file

    key = sha256_file(path)
    if key not in _VOCAB_MEMO:
        _VOCAB_MEMO.clear()  # keep one: it is tens of MB
        _VOCAB_MEMO[key] = _vocab_from_tokenizer_json(path)
    v = _VOCAB_MEMO[key]
    return Vocab(list(v.tokens), list(v.scores), list(v.types), v.source)


def _vocab_from_tokenizer_json(path: Path) -> Vocab:
    T = _gguf().TokenType
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
        model = tj["model"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise EdgeError(f"{path} is not a valid tokenizer.json; copy it again from the base model") from None
    if model.get("type") != "BPE":
        raise EdgeError(f"{path} is a {model.get('type')} tokenizer; Gemma 3's is BPE")
    piece_to_id: dict[str, int] = model["vocab"]
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    n = max([*piece_to_id.values(), *added]) + 1
    tokens: list[str | None] = [None] * n
    for piece, i in piece_to_id.items():
        tokens[i] = piece
    first_rank: dict[int, int] = {}
    for rank, m in enumerate(model.get("merges", [])):
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        tid = piece_to_id.get(a + b)
        if tid is not None and tid not in first_rank:
            first_rank[tid] = rank
    n_merges = len(model.get("merges", []))
    scores, types = [], []
    for i in range(n):
        piece = tokens[i]
        if i in added:
            tokens[i] = added[i]["content"]
            types.append(int(T.CONTROL if added[i].get("special") else T.USER_DEFINED))
            scores.append(SPECIAL_SCORE)
        elif piece is None:
            tokens[i] = f"[PAD{i}]"
            types.append(int(T.UNUSED))
            scores.append(SPECIAL_SCORE)
        elif piece.startswith("<0x") and _BYTE_TOKEN.fullmatch(piece):
            types.append(int(T.BYTE))
            scores.append(0.0)
        elif len(piece) > 1 and set(piece) == {"\u2581"}:
            # Gemma's whitespace runs are user-defined pieces matched on raw text ("  "):
            # tokenizer.json keeps them as plain vocab entries written with U+2581.
            tokens[i] = piece.replace("\u2581", " ")
            types.append(int(T.USER_DEFINED))
            scores.append(SPECIAL_SCORE)
        else:
            types.append(int(T.NORMAL))
            # pieces no merge makes (single characters) are never merged into: any lower score works
            scores.append(-float(first_rank.get(i, n_merges + i)))
    return Vocab(tokens, scores, types, "tokenizer.json")  # type: ignore[arg-type]


def _vocab_from_sentencepiece(model_dir: Path) -> Vocab:
    T = _gguf().TokenType
    path = model_dir / "tokenizer.model"
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf raises DecodeError and others for a corrupt file
        raise EdgeError(f"{path} is not a valid SentencePiece model ({type(e).__name__}); copy it again") from None
    if not proto.pieces:
        raise EdgeError(f"{path} has no pieces; copy it again from the base model")
    tokens, scores, types = [], [], []
    for p in proto.pieces:  # the protobuf's type numbers are gguf.TokenType's (NORMAL=1 .. BYTE=6)
        t = int(p.type)
        tokens.append(p.piece.replace("\u2581", " ") if t == T.USER_DEFINED else p.piece)
        scores.append(float(p.score))
        types.append(t)
    # Added tokens listed in tokenizer_config.json override (llama.cpp's converter does the same).
    tc = model_dir / "tokenizer_config.json"
    if tc.is_file():
        try:
            decoder = json.loads(tc.read_text()).get("added_tokens_decoder", {}) or {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise EdgeError(f"{tc} is not valid JSON; copy it again from the base model") from None
        for sid, data in decoder.items():
            i = int(sid)
            if i >= len(tokens):
                continue
            if data.get("special"):
                tokens[i], types[i] = data["content"], int(T.CONTROL)
            else:
                tokens[i], types[i] = data["content"].replace("\u2581", " "), int(T.USER_DEFINED)
    return Vocab(tokens, scores, types, "tokenizer.model")


def chat_template(model_dir: Path) -> tuple[str, str]:
    """(template, source) for `tokenizer.chat_template`: it must render exactly one `<bos>`,
    at the start (see gemma3.GGUF_CHAT_TEMPLATE for why engines then send exactly one).

    The model's own template is kept when it is Gemma's format; one that renders no `<bos>`
    gets `{{ bos_token }}` in front; anything else is replaced by the toolkit's template.
    """
    text = None
    if (model_dir / "chat_template.jinja").is_file():
        try:
            text = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = None
    elif (model_dir / "tokenizer_config.json").is_file():
        try:
            text = json.loads((model_dir / "tokenizer_config.json").read_text()).get("chat_template")
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError, AttributeError):
            text = None
    if not isinstance(text, str) or not text.strip():
        return gemma3.GGUF_CHAT_TEMPLATE, "edge.gemma3 (the model has none)"
    if text == gemma3.CHAT_TEMPLATE:
        return gemma3.GGUF_CHAT_TEMPLATE, "edge.gemma3 (the model's, with {{ bos_token }} for engines)"
    try:
        rendered = render_chat(text, [{"role": "user", "content": "hi"}, {"role": "model", "content": "yo"},
                                      {"role": "user", "content": "ok"}])
    except EdgeError:  # a template we cannot render (or that runs away) is replaced
        return gemma3.GGUF_CHAT_TEMPLATE, "edge.gemma3 (the model's template does not render)"
    if gemma3.START_OF_TURN not in rendered:
        return gemma3.GGUF_CHAT_TEMPLATE, "edge.gemma3 (the model's template is not Gemma's format)"
    n_bos = rendered.count(gemma3.BOS)
    if n_bos == 0:
        return "{{ bos_token }}" + text, "model (with {{ bos_token }} for engines)"
    if n_bos == 1 and rendered.startswith(gemma3.BOS):
        return text, "model"
    return gemma3.GGUF_CHAT_TEMPLATE, f"edge.gemma3 (the model's template renders {n_bos} <bos>)"


RENDER_SECONDS = 2.0        # a chat template renders in about a millisecond; a runaway one stops here
RENDER_CHARS = 1 << 20      # longest rendered prompt, and longest string a template may build


class _RenderLimit(Exception):
    pass


def _bounded_env():
    """jinja2's immutable sandbox (no attribute tricks, no mutation), plus bounds on what a
    hostile template can make it do: strings and lists built by `*`, `+`, `%`, filters and
    method calls stay under RENDER_CHARS, `**` under 1024-bit exponents, and integer
    arguments (`center(10**10)`) under RENDER_CHARS."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def check_args(args, kwargs):
        for a in (*args, *kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool) and abs(a) > RENDER_CHARS:
                raise _RenderLimit(f"the number {a} is too large for a chat template")

    def check_format(fmt):  # "{:>1000000000}".format(1), "%0999999999d" % 1: widths a template may not ask
        if isinstance(fmt, str) and ("%" in fmt or "{" in fmt) and re.search(r"\d{7,}", fmt):
            raise _RenderLimit("a format width is too large for a chat template")

    def check_result(v):
        if isinstance(v, (str, list, tuple, bytes)) and len(v) > RENDER_CHARS:
            raise _RenderLimit(f"the template built a value of {len(v):,} items")
        return v

    def bounded(fn):
        def wrapper(*args, **kwargs):
            check_args(args[1:], kwargs)
            for a in args[:2]:
                check_format(a)
            return check_result(fn(*args, **kwargs))
        for attr in ("jinja_pass_arg", "__name__"):
            if hasattr(fn, attr):
                setattr(wrapper, attr, getattr(fn, attr))
        return wrapper

    class Env(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context, operator, left, right):
            sized = (str, list, tuple, bytes)
            if operator == "*":
                n, seq = (right, left) if isinstance(left, sized) else (left, right)
                if isinstance(seq, sized) and isinstance(n, int) and len(seq) * n > RENDER_CHARS:
                    raise _RenderLimit(f"a {len(seq)}-item value repeated {n} times")
            elif operator == "**":
                if isinstance(right, (int, float)) and isinstance(left, int) and abs(left) > 1 \
                        and abs(left).bit_length() * abs(right) > 1 << 16:
                    raise _RenderLimit("a power too large for a chat template")
            elif operator == "+":
                if isinstance(left, sized) and isinstance(right, sized) and len(left) + len(right) > RENDER_CHARS:
                    raise _RenderLimit("a concatenation is too long")
            elif operator == "%" and isinstance(left, str):
                check_format(left)
                check_args(right if isinstance(right, tuple) else (right,), {})
            return check_result(super().call_binop(context, operator, left, right))

        def wrap_str_format(self, value):
            check_format(getattr(value, "__self__", None))
            return super().wrap_str_format(value)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
            check_args(args, kwargs)
            return check_result(super().call(__context, __obj, *args, **kwargs))

    env = Env(trim_blocks=True, lstrip_blocks=True)
    env.filters = {k: bounded(f) for k, f in env.filters.items()}
    return env


@contextlib.contextmanager
def _deadline(seconds: float):
    """Stop a template's own code (loops included) after `seconds`: a line trace on the
    compiled template's frames only, restored afterwards."""
    end = time.monotonic() + seconds
    old = sys.gettrace()

    def local(frame, event, arg):
        if time.monotonic() > end:
            raise _RenderLimit(f"rendering took longer than {seconds:g} s")
        return local

    def trace(frame, event, arg):
        return local if frame.f_code.co_filename == "<template>" else None

    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(old)


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True,
                source: str = "the chat template") -> str:
    """Render a chat template the way engines do (jinja2, bos/eos variables defined).

    A template comes from a user's file: it runs in jinja2's sandbox with bounded time
    (RENDER_SECONDS), output and value sizes (RENDER_CHARS); a syntax error, an undefined
    name, a blocked operation or a bound reached is one EdgeError naming `source`."""
    from jinja2 import TemplateError

    try:
        env = _bounded_env()
        with _deadline(RENDER_SECONDS):
            parts, n = [], 0
            for piece in env.from_string(template).generate(
                    messages=messages, add_generation_prompt=add_generation_prompt,
                    bos_token=gemma3.BOS, eos_token=gemma3.EOS):
                n += len(piece)
                if n > RENDER_CHARS:
                    raise _RenderLimit(f"the output passed {RENDER_CHARS:,} characters")
                parts.append(piece)
        return "".join(parts)
    except _RenderLimit as e:
        raise EdgeError(f"{source} was stopped: {e}; use a plain chat template (e.g. re-export the "
                        "model, which writes Gemma 3's)") from None
    except TemplateError as e:
        raise EdgeError(f"{source} cannot be rendered ({type(e).__name__}: {printable(e, 160)}); "
                        "re-export the model to get Gemma 3's template") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError, RecursionError,
            MemoryError) as e:
        raise EdgeError(f"{source} fails ({type(e).__name__}: {printable(e, 160)}); "
                        "re-export the model to get Gemma 3's template") from None


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------

@dataclass
class _Planned:
    src: _SrcTensor
    name: str
    qtype: object  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    nbytes: int
    shift: float  # added to every value (Gemma norms: +1)


def plan_tensors(cfg: dict, src: dict[str, _SrcTensor], qtype) -> tuple[list[_Planned], list[str]]:
    """Map HF names to GGUF names with gguf-py's table; choose each tensor's type."""
    g = _gguf()
    Q = g.GGMLQuantizationType
    n_layers = cfg["num_hidden_layers"]
    arch = g.MODEL_ARCH.GEMMA3
    name_map = g.get_tensor_name_map(arch, n_layers)
    tied = cfg.get("tie_word_embeddings", True)
    planned, fallback = [], []
    for hf_name in sorted(src, key=_tensor_order):
        if tied and hf_name in ("lm_head.weight", "model.lm_head.weight"):
            continue  # tied to token_embd: llama.cpp reuses it, so no output.weight is written
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise EdgeError(f"unexpected tensor {hf_name!r} in the checkpoint; is it a Gemma 3 text model?")
        t = src[hf_name]
        shape = t.shape
        is_norm = name.endswith("_norm.weight")
        if len(shape) <= 1 or is_norm:
            q = Q.F32
        else:
            q = qtype
            if q == Q.Q8_0 and shape[-1] % g.GGML_QUANT_SIZES[Q.Q8_0][0]:
                q = Q.F16
                fallback.append(name)
        if q in (Q.F32,):
            nbytes = t.n * 4
        elif q in (Q.F16, Q.BF16):
            nbytes = t.n * 2
        else:
            nbytes = math.prod(g.quants.quant_shape_to_byte_shape(shape, q))
        planned.append(_Planned(t, name, q, shape, nbytes, gemma3.NORM_SHIFT if is_norm else 0.0))
    expected = _expected_names(cfg)
    got = {p.name for p in planned}
    if expected - got:
        missing = sorted(expected - got)
        raise EdgeError(f"the checkpoint lacks {len(missing)} tensor(s), e.g. {missing[0]}; "
                        "the safetensors files are incomplete")
    return planned, fallback


def _tensor_order(hf_name: str):
    m = re.search(r"\.layers\.(\d+)\.", hf_name)
    return (0 if "embed" in hf_name else 2 if m is None else 1, int(m.group(1)) if m else 0, hf_name)


def _expected_names(cfg: dict) -> set[str]:
    g = _gguf()
    arch = g.MODEL_ARCH.GEMMA3
    names = set()
    for t in g.MODEL_TENSORS[arch]:
        if t == g.MODEL_TENSOR.OUTPUT and cfg.get("tie_word_embeddings", True):
            continue
        fmt = g.TENSOR_NAMES[t]
        if "{bid}" in fmt:
            names |= {fmt.format(bid=i) + ".weight" for i in range(cfg["num_hidden_layers"])}
        else:
            names.add(fmt + ".weight")
    return names


def _convert_chunk(x: np.ndarray, qtype, what: str) -> np.ndarray:
    g = _gguf()
    Q = g.GGMLQuantizationType
    if qtype == Q.F32:
        return x
    if qtype == Q.F16:
        if np.abs(x).max(initial=0.0) > gemma3.FP16_MAX:
            raise EdgeError(f"{what} has values beyond float16's range ({gemma3.FP16_MAX:g}); "
                            "export with --outtype bf16 or f32")
        return x.astype(np.float16)
    return g.quants.quantize(x, qtype)


def _writer_class():
    """GGUFWriter, with the vocabulary arrays packed in bulk: gguf-py packs array items one
    by one through struct (about 20 s for Gemma's 3 x 262,144 items on a busy 2-core box)."""
    import struct

    g = _gguf()
    V = g.GGUFValueType
    bulk = {V.FLOAT32: "<f4", V.INT32: "<i4", V.UINT32: "<u4"}

    class Writer(g.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if (vtype == V.ARRAY and sub_type in (V.STRING, *bulk) and len(val) > 1024
                    and self.endianess == g.GGUFEndian.LITTLE):
                head = (struct.pack("<I", vtype) if add_vtype else b"") + struct.pack("<IQ", sub_type, len(val))
                if sub_type == V.STRING:
                    enc = [v.encode("utf-8") for v in val]
                    return head + b"".join(struct.pack("<Q", len(e)) + e for e in enc)
                return head + np.asarray(val, dtype=bulk[sub_type]).tobytes()
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer


def _add_metadata(w, cfg: dict, vocab: Vocab, template: str, file_type, provenance: dict) -> None:
    g = _gguf()
    K = g.Keys
    name = str(provenance.get("name") or "gemma-3")
    w.add_type(g.GGUFType.MODEL)
    w.add_name(name)
    w.add_file_type(int(file_type))
    w.add_quantization_version(g.GGML_QUANT_VERSION)
    if provenance.get("basename"):
        w.add_basename(str(provenance["basename"]))
    if provenance.get("size_label"):
        w.add_size_label(str(provenance["size_label"]))
    if provenance.get("base_model"):
        w.add_base_model_count(1)
        w.add_base_model_name(0, str(provenance["base_model"]))
        if "/" in str(provenance["base_model"]):
            w.add_base_model_repo_url(0, f"https://huggingface.co/{provenance['base_model']}")
    if provenance.get("dataset"):
        w.add_dataset_count(1)
        w.add_dataset_name(0, str(provenance["dataset"]))
    # toolkit-specific provenance: general.edge.* (GGUF allows any key; readers skip unknown ones)
    w.add_string("general.edge.toolkit_version", __version__)
    for key, value in provenance.items():
        if key not in ("name", "basename", "size_label", "base_model", "dataset") and value not in (None, ""):
            w.add_string(f"general.edge.{key}", str(value))

    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(rope_bases(cfg)[0])  # global layers; llama.cpp uses 10,000 for local ones
    if cfg.get("sliding_window"):
        w.add_sliding_window(cfg["sliding_window"])
    if cfg.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])

    w.add_tokenizer_model("llama")  # SentencePiece-style tokenizer in llama.cpp
    w.add_tokenizer_pre("default")
    V = g.GGUFValueType
    w.add_key_value(K.Tokenizer.LIST, vocab.tokens, V.ARRAY, sub_type=V.STRING)
    w.add_key_value(K.Tokenizer.SCORES, vocab.scores, V.ARRAY, sub_type=V.FLOAT32)
    w.add_key_value(K.Tokenizer.TOKEN_TYPE, vocab.types, V.ARRAY, sub_type=V.INT32)
    w.add_bos_token_id(gemma3.BOS_ID)
    w.add_eos_token_id(gemma3.EOS_ID)
    w.add_unk_token_id(gemma3.UNK_ID)
    w.add_pad_token_id(gemma3.PAD_ID)
    w.add_eot_token_id(gemma3.END_OF_TURN_ID)  # chat replies end here: engines stop on it
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(template)

    s = gemma3.SAMPLING
    w.add_sampling_temp(s["temperature"])
    w.add_sampling_top_k(s["top_k"])
    w.add_sampling_top_p(s["top_p"])
    w.add_sampling_min_p(s["min_p"])
    w.add_sampling_penalty_repeat(s["repetition_penalty"])


def default_provenance(model_dir: Path, cfg: dict) -> dict:
    """What we can say about where a checkpoint came from, from its own files; public names
    only (a hub id, a folder or file name), never a local path."""
    from edge.models import public_identity

    prov: dict = {"name": model_dir.name}

    def read(path: Path) -> dict:
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
            return data if isinstance(data, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return {}

    src = read(model_dir / "edge_source.json")  # the embedded model's conversion record
    if src:
        prov["base_model"] = public_identity("embedded")["base_model"]
        prov["base_model_source"] = f"{src.get('source')} ({src.get('gguf')}, dequantized to {src.get('dequantized_to')})"
    merge = read(model_dir / "edge_merge.json")  # written by `edge merge`
    if merge:
        base = merge.get("base")
        spec = base.get("spec") if isinstance(base, dict) else None
        path = base.get("path") if isinstance(base, dict) else base
        if spec or path:
            prov["base_model"] = public_identity(spec or path, Path(path) if path else None)["base_model"]
        if merge.get("adapter"):
            adapter = Path(merge["adapter"])
            prov["adapter"] = adapter.name
            data = read(adapter / "edge_adapter.json").get("data") or {}
            if isinstance(data, dict) and data.get("path"):
                prov["dataset"] = Path(data["path"]).name
                prov["dataset_sha256"] = data.get("sha256", "")
    if "base_model" not in prov:
        name = cfg.get("_name_or_path") or cfg.get("_model_name_or_path") or ""
        prov["base_model"] = public_identity(name, model_dir)["base_model"] if name else ""
    return prov


def export_gguf(model_dir, out_path, outtype: str = "f32", provenance: dict | None = None,
                force: bool = False, progress: bool = False) -> ExportResult:
    """Export a Gemma 3 text checkpoint to GGUF (+ an Ollama Modelfile beside it).

    `provenance` keys: name, base_model, dataset -> general.*; anything else (adapter,
    dataset_sha256, ...) -> general.edge.<key>. The toolkit version is always recorded.
    """
    t0 = time.time()
    model_dir, out_path = Path(model_dir), Path(out_path)
    types = outtypes()
    key = str(outtype).lower()
    if key not in types:
        raise EdgeError(f"unknown --outtype {outtype!r}; use one of {', '.join(types)}")
    file_type, qtype = types[key]
    if out_path.suffix.lower() != ".gguf":
        raise EdgeError(f"output {out_path} should end in .gguf")
    mf_path = modelfile_path(out_path)
    if out_path.is_dir():
        raise EdgeError(f"output {out_path} is a directory; give a file name ending in .gguf")
    modelfile_text(out_path.name)  # a name the Modelfile can hold, checked before any work
    check_writable(out_path, force)
    check_writable(mf_path, force)

    cfg = read_config(model_dir)
    src = read_safetensors(model_dir)
    planned, fallback = plan_tensors(cfg, src, qtype)
    vocab = build_vocab(model_dir, cfg["vocab_size"])
    emb = next(p for p in planned if p.name == "token_embd.weight")
    if emb.shape != (cfg["vocab_size"], cfg["hidden_size"]):
        raise EdgeError(f"token embedding is {emb.shape} but config.json says "
                        f"({cfg['vocab_size']}, {cfg['hidden_size']}); the checkpoint is inconsistent")
    template, template_src = chat_template(model_dir)
    prov = {**default_provenance(model_dir, cfg), **(provenance or {})}

    g = _gguf()
    total = sum(p.nbytes for p in planned)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"export {out_path.name}", leave=False)
    with atomic_path(out_path, force=force) as tmp:
        w = _writer_class()(path=None, arch=g.MODEL_ARCH_NAMES[g.MODEL_ARCH.GEMMA3])
        try:
            _add_metadata(w, cfg, vocab, template, file_type, prov)
            for p in planned:
                w.add_tensor_info(p.name, p.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.qtype)
            w.write_header_to_file(path=tmp)
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            fout = w.fout[0]
            handles: dict[Path, object] = {}
            try:
                for p in planned:
                    fh = handles.get(p.src.file) or handles.setdefault(p.src.file, open(p.src.file, "rb"))
                    w.write_padding(fout, fout.tell())
                    _stream_tensor(p, fh, fout, bar)
            finally:
                for fh in handles.values():
                    fh.close()
            fout.flush()
        finally:
            w.close()
            if bar is not None:
                bar.close()
        _public(tmp)
    write_text_atomic(mf_path, modelfile_text(out_path.name), force=True)
    _public(mf_path)
    n_params = sum(p.src.n for p in planned)
    size = out_path.stat().st_size
    return ExportResult(
        path=str(out_path), modelfile=str(mf_path), outtype=key, size_bytes=size, n_tensors=len(planned),
        n_params=n_params, bits_per_weight=round(total * 8 / n_params, 3), seconds=round(time.time() - t0, 2),
        tokenizer_source=vocab.source, chat_template_source=template_src, f16_fallback=fallback)


def _public(path: Path) -> None:
    """Temporary files are created 0600; a finished export is readable like any new file."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _stream_tensor(p: _Planned, fh, fout, bar) -> None:
    rows = p.src.shape[0] if len(p.src.shape) > 1 else 1
    row_bytes = max(1, p.src.n * _ST_DTYPES[p.src.dtype].itemsize // rows)
    step = max(1, CHUNK_BYTES // row_bytes)
    written = 0
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        x = _read_rows(p.src, fh, r0, r1)
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).sum())
            raise EdgeError(f"weight {p.src.name} has {bad} NaN/Inf value(s) (rows {r0}-{r1}); "
                            "the checkpoint is broken: re-run the merge in float32")
        if p.shift:
            x = x + np.float32(p.shift)
        if len(p.shape) <= 1:
            x = x.reshape(-1)
        y = _convert_chunk(x, p.qtype, p.src.name)
        y.tofile(fout)
        written += y.nbytes
        if bar is not None:
            bar.update(y.nbytes)
    if written != p.nbytes:  # our bug, not the user's: keep the traceback
        raise RuntimeError(f"{p.name}: wrote {written} bytes, planned {p.nbytes}")


# --------------------------------------------------------------------------------------
# Modelfile, inspect
# --------------------------------------------------------------------------------------

def modelfile_path(gguf_path: Path) -> Path:
    return Path(gguf_path).with_suffix(".Modelfile")


def modelfile_text(gguf_name: str) -> str:
    """An Ollama Modelfile: the GGUF beside it, Gemma 3's template, stop token, sampling.

    The file name goes into a `FROM` line: a name with a newline or another control
    character would add lines (ADAPTER, SYSTEM) to the Modelfile, so it is refused."""
    if printable(gguf_name) != gguf_name or '"""' in gguf_name:
        raise EdgeError(f"the file name {printable(gguf_name)!r} holds control characters; rename the "
                        "GGUF to a plain name before writing a Modelfile for it")
    s = gemma3.SAMPLING
    return "\n".join([
        f"# Ollama Modelfile written by edge {__version__}: `ollama create NAME -f {Path(gguf_name).stem}.Modelfile`",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{gemma3.OLLAMA_TEMPLATE}"""',
        f'PARAMETER stop "{gemma3.END_OF_TURN}"',
        f"PARAMETER temperature {s['temperature']}",
        f"PARAMETER top_k {s['top_k']}",
        f"PARAMETER top_p {s['top_p']}",
        f"PARAMETER min_p {s['min_p']}",
        f"PARAMETER repeat_penalty {s['repetition_penalty']}",
        "",
    ])


def inspect_gguf(path) -> dict:
    info = read_gguf(path)
    g = _gguf()
    types: dict[str, dict] = {}
    for t in info.tensors:
        e = types.setdefault(t.type, {"tensors": 0, "params": 0, "bytes": 0})
        e["tensors"] += 1
        e["params"] += t.n_elements
        e["bytes"] += t.n_bytes
    n_params = sum(t.n_elements for t in info.tensors)
    tensor_bytes = sum(t.n_bytes for t in info.tensors)
    meta = info.metadata
    ft = meta.get("general.file_type")
    try:
        ft_name = g.LlamaFileType(int(ft)).name if ft is not None else None
    except (ValueError, TypeError):
        ft_name = str(ft)
    return {
        "path": info.path,
        "size_bytes": info.size_bytes,
        "architecture": meta.get("general.architecture"),
        "name": meta.get("general.name"),
        "file_type": ft_name,
        "n_tensors": len(info.tensors),
        "n_params": n_params,
        "tensor_bytes": tensor_bytes,
        "bits_per_weight": round(tensor_bytes * 8 / n_params, 3) if n_params else None,
        "tensor_types": types,
        "arm_repack": _arm_repack(info),
        "metadata": meta,
    }


def _arm_repack(info) -> str:
    """Which matrices llama.cpp repacks at load on an ARM CPU with dotprod/i8mm (quantize/repack.py)."""
    from quantize.repack import label

    return label([(t.name, t.type, tuple(int(d) for d in t.shape)) for t in info.tensors])


def inspect_cmd(file: str, *, json: bool = False) -> dict:
    """Show a GGUF file's metadata, tensor types, size and bits per weight.

    Args:
        file: the .gguf file to read.
        json: print the result as JSON instead of a table.
    """
    info = inspect_gguf(file)
    if json:
        return info
    print(f"{printable(info['path'])}: {printable(info['architecture'], 40)} '{printable(info['name'], 80)}', "
          f"{printable(info['file_type'], 40)}, "
          f"{info['size_bytes'] / 1e6:.1f} MB, {info['n_params'] / 1e6:.1f}M parameters, "
          f"{info['bits_per_weight']} bits/weight, {info['n_tensors']} tensors")
    print("\ntensor type   tensors      params       MB")
    for name, e in sorted(info["tensor_types"].items(), key=lambda kv: -kv[1]["bytes"]):
        print(f"{name:<12} {e['tensors']:>8} {e['params']:>11,} {e['bytes'] / 1e6:>8.1f}")
    print(f"\nARM phones: {info['arm_repack']}")
    print("\nmetadata")
    keys = {k: printable(k, 60) for k in info["metadata"]}
    width = max(map(len, keys.values()), default=0)
    for k, v in info["metadata"].items():  # escapes and newlines from the file are shown, not obeyed
        print(f"  {keys[k]:<{width}}  {printable(v, 100)}")
    return info


def modelfile_cmd(file: str, *, out: str = "", force: bool = False) -> str:
    """Write an Ollama Modelfile for a GGUF (Gemma 3 template, stop token, recommended sampling).

    Args:
        file: the .gguf file the Modelfile points at (FROM ./FILE, so keep them side by side).
        out: where to write the Modelfile (default: FILE with the suffix .Modelfile).
        force: overwrite an existing Modelfile.
    """
    arch = read_gguf(file).metadata.get("general.architecture")
    if arch != "gemma3":
        raise EdgeError(f"{file} is a {printable(arch, 40)!r} model; this Modelfile is for Gemma 3 (gemma3)")
    path = Path(out) if out else modelfile_path(Path(file))
    check_not_input(path, Path(file))
    if path.is_dir():
        raise EdgeError(f"--out {path} is a folder; give the Modelfile's file name")
    check_writable(path, force)
    text = modelfile_text(Path(file).name)
    write_text_atomic(path, text, force=True)
    print(f"wrote {path}; run: ollama create NAME -f {path}")
    return str(path)


def next_step(gguf: str | Path) -> str:
    """The command printed after an export; it runs as printed."""
    return f"edge chat {shlex.quote(str(gguf))} --prompt 'Hello'"


def export_cmd(*, model: str, out: str, outtype: str = "f32", force: bool = False, json: bool = False):
    """Export a Hugging Face Gemma 3 text model to GGUF (F32, F16, BF16 or Q8_0), with an Ollama Modelfile.

    Args:
        model: the model directory (config.json + safetensors + tokenizer), or 'embedded'.
        out: the .gguf file to write (a Modelfile is written beside it).
        outtype: f32, f16, bf16 or q8_0 (norms stay f32).
        force: overwrite an existing output file.
        json: print the result as JSON.
    """
    from edge.models import resolve

    model_dir = resolve(model)
    result = export_gguf(model_dir, out, outtype=outtype, force=force, progress=not json)
    if json:
        return asdict(result)
    print(f"wrote {result.path} ({result.outtype.upper()}, {result.size_bytes / 1e6:.1f} MB, "
          f"{result.n_params / 1e6:.1f}M parameters, {result.bits_per_weight} bits/weight) in {result.seconds} s")
    print(f"tokenizer from {result.tokenizer_source}; chat template from {result.chat_template_source}")
    if result.f16_fallback:
        print(f"{len(result.f16_fallback)} tensor(s) kept in F16 (rows not a multiple of 32)")
    print(f"wrote {result.modelfile}; try: {next_step(result.path)}")
    return None
