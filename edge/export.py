"""Export a Hugging Face Gemma 3 text model (a directory) to one GGUF file that llama.cpp runs.

Takes a merged checkpoint (config.json + *.safetensors + tokenizer.json or tokenizer.model),
writes `OUT.gguf` in F32, F16, BF16 or Q8_0 plus an Ollama Modelfile beside it
(`OUT.Modelfile`). Names and keys come from gguf-py's own tables (`gguf.MODEL_ARCH.GEMMA3`,
`gguf.get_tensor_name_map`, `gguf.Keys` through `GGUFWriter`); the Gemma 3 facts (norm +1,
tied embeddings, sliding window, rope bases, chat template, sampling defaults) come from
`edge.gemma3`, the vocabulary from `edge.vocab`, the chat template from `edge.template`, and the conversion follows llama.cpp's `convert_hf_to_gguf.py` (Gemma3Model).

Tensors are streamed: each is read from the safetensors file in row chunks, converted and
written, so peak RAM stays near one chunk plus the tokenizer, not a model copy. The file is
written under a temporary name and renamed when complete; a failure (NaN in a weight, a
truncated safetensors file) leaves nothing behind.

    edge export --model DIR --out model-F32.gguf [--outtype fp16|bf16|q8_0] [--force]
    python -c "from edge.export import export_gguf; print(export_gguf('DIR', 'm.gguf'))"
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from edge import __version__, gemma3
from edge.errors import EdgeError, printable
from edge.fsutil import atomic_path, check_writable, child, read_json, write_text_atomic
from edge.ggufinfo import bits_per_weight, gguf_py
from edge.modelfile import modelfile_path, modelfile_text
from edge.precision import DTYPES, dtype_name
from edge.template import chat_template
from edge.vocab import Vocab, build_vocab

CHUNK_BYTES = 64 << 20  # rows are read, converted and written this many source bytes at a time


OutType = Literal[(*DTYPES, "q8_0")]  # --outtype: edge.precision's names (f32, float16... as aliases), or Q8_0
OUTTYPES = get_args(OutType)


def outtypes() -> dict[str, tuple]:
    """--outtype name -> (general.file_type, tensor type for 2-D weights)."""
    g = gguf_py()
    Q, F = g.GGMLQuantizationType, g.LlamaFileType
    return {
        "bf16": (F.MOSTLY_BF16, Q.BF16),
        "fp16": (F.MOSTLY_F16, Q.F16),
        "fp32": (F.ALL_F32, Q.F32),
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
# Reading the checkpoint: config, safetensors headers (no weights loaded)
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
    g = gguf_py()
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
    g = gguf_py()
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
    g = gguf_py()
    Q = g.GGMLQuantizationType
    if qtype == Q.F32:
        return x
    if qtype == Q.F16:
        if np.abs(x).max(initial=0.0) > gemma3.FP16_MAX:
            raise EdgeError(f"{what} has values beyond float16's range ({gemma3.FP16_MAX:g}); "
                            "export with --outtype bf16 or fp32")
        return x.astype(np.float16)
    return g.quants.quantize(x, qtype)


def _writer_class():
    """GGUFWriter, with the vocabulary arrays packed in bulk: gguf-py packs array items one
    by one through struct (about 20 s for Gemma's 3 x 262,144 items on a busy 2-core box)."""
    import struct

    g = gguf_py()
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
    g = gguf_py()
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


def export_gguf(model_dir, out_path, outtype: str = "fp32", provenance: dict | None = None,
                force: bool = False, progress: bool = False) -> ExportResult:
    """Export a Gemma 3 text checkpoint to GGUF (+ an Ollama Modelfile beside it).

    `provenance` keys: name, base_model, dataset -> general.*; anything else (adapter,
    dataset_sha256, ...) -> general.edge.<key>. The toolkit version is always recorded.
    """
    t0 = time.time()
    model_dir, out_path = Path(model_dir), Path(out_path)
    key = dtype_name(outtype, "--outtype", OUTTYPES)
    file_type, qtype = outtypes()[key]
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

    g = gguf_py()
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
        n_params=n_params, bits_per_weight=round(bits_per_weight(total, n_params), 3), seconds=round(time.time() - t0, 2),
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


def next_step(gguf: str | Path) -> str:
    """The command printed after an export; it runs as printed."""
    return f"edge chat {shlex.quote(str(gguf))} --prompt 'Hello'"


def export_cmd(*, model: str, out: str, outtype: OutType = "fp32", force: bool = False, json: bool = False):
    """Export a Hugging Face Gemma 3 text model to GGUF (F32, F16, BF16 or Q8_0), with an Ollama Modelfile.

    Args:
        model: the model directory (config.json + safetensors + tokenizer), or 'embedded'.
        out: the .gguf file to write (a Modelfile is written beside it).
        outtype: fp32, fp16, bf16 or q8_0 (norms stay fp32; f32 and f16 are accepted too).
        force: overwrite an existing output file.
        json: print the result as JSON.
    """
    from edge.models import resolve

    model_dir = resolve(model)
    result = export_gguf(model_dir, out, outtype=outtype, force=force, progress=not json)
    if json:
        return asdict(result)
    print(f"wrote {result.path} ({result.outtype}, {result.size_bytes / 1e6:.1f} MB, "
          f"{result.n_params / 1e6:.1f}M parameters, {result.bits_per_weight} bits/weight) in {result.seconds} s")
    print(f"tokenizer from {result.tokenizer_source}; chat template from {result.chat_template_source}")
    if result.f16_fallback:
        print(f"{len(result.f16_fallback)} tensor(s) kept in F16 (rows not a multiple of 32)")
    print(f"wrote {result.modelfile}; try: {next_step(result.path)}")
    return None
