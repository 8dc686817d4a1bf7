"""Importance matrix: per weight matrix, the mean squared input activation of each input column.

    edge imatrix --model runs/demo/merged --calib my_chats.jsonl --out imatrix.gguf
    from quantize.imatrix import compute_imatrix, load_imatrix

Computed in torch with forward pre-hooks on the (merged) Hugging Face model, over calibration
tokens: by default the user's fine-tune data (chat JSONL, rendered with the Gemma 3 chat
template) plus a general text sample bundled as `edge/textdata/general.txt`, packed into chunks of
`chunk` tokens, each starting with `<bos>` (llama-imatrix's habit). This is llama-imatrix's
definition (REFERENCE.md): for each linear layer, sum of x^2 per input column over all tokens,
divided by the token count.

Names are GGUF tensor names (gguf-py's `get_tensor_name_map(MODEL_ARCH.GEMMA3, n)`), so the
file plugs into `llama_model_quantize` and into llama.cpp's `llama-quantize --imatrix` alike.
The tied output head is `token_embd.weight`: its input is the final normed hidden state.

File format: llama.cpp's GGUF imatrix (`general.type = imatrix`; per matrix `NAME.in_sum2`
(F32, ne = [n_in, 1]) and `NAME.counts` (F32, [1, 1]); keys `imatrix.datasets`,
`imatrix.chunk_count`, `imatrix.chunk_size`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge import gemma3
from edge.data import TEXTDATA
from edge.errors import EdgeError
from edge.fsutil import atomic_path, check_not_input, check_writable

GENERAL = TEXTDATA / "general.txt"
DEMO_TRAIN = TEXTDATA / "demo_train.jsonl"


@dataclass
class Imatrix:
    """Sums of squared inputs per GGUF weight name, the token count, and where they came from."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def values(self) -> dict[str, np.ndarray]:
        """Mean squared activation per input column (what llama.cpp's quantizer takes)."""
        return {n: (s / max(self.counts[n], 1.0)).astype(np.float32) for n, s in self.sums.items()}


# --- calibration data ------------------------------------------------------------------------------
def calibration_token_stream(tokenizer, calib: list[str | Path], general: bool = True) -> tuple[list[int], list[str]]:
    """Concatenate calibration sources into one token stream; chats are rendered with the template."""
    from edge.data import load_chats, render

    sources = [Path(c) for c in calib if c]
    if general:
        sources.append(GENERAL)
    ids: list[int] = []
    names = []
    for src in sources:
        if not src.is_file():
            raise EdgeError(f"calibration file {src} not found; give chat JSONL or a .txt file")
        names.append(src.name)
        if src.suffix == ".jsonl":
            for chat in load_chats(src, require_reply=False):
                ids += render(tokenizer, chat)[0][1:]  # <bos> is added per chunk
        else:
            text = src.read_text(encoding="utf-8", errors="replace")
            ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 16:
        raise EdgeError(f"calibration data has only {len(ids)} tokens; give more text")
    return ids, names


def check_calibration(calib: list[str | Path]) -> None:
    """Each calibration file exists, is a file, and (chat JSONL) parses; else EdgeError."""
    from edge.data import load_chats
    from edge.fsutil import need_file

    for c in calib:
        if not c:
            continue
        src = need_file(c, "calibration file", "give chat JSONL or a .txt file")
        if src.suffix == ".jsonl":
            load_chats(src, require_reply=False)


def chunks_of(ids: list[int], chunk: int, max_tokens: int) -> list[list[int]]:
    """`<bos>` + chunk-1 tokens per chunk, up to max_tokens tokens; sources are interleaved
    by taking evenly spaced chunks when the stream is longer than max_tokens."""
    per = chunk - 1
    all_chunks = [[gemma3.BOS_ID] + ids[i:i + per] for i in range(0, len(ids), per)]
    keep = max(1, max_tokens // chunk)
    if len(all_chunks) > keep:
        step = len(all_chunks) / keep
        all_chunks = [all_chunks[int(i * step)] for i in range(keep)]
    return all_chunks


# --- computing it ----------------------------------------------------------------------------------
def gguf_names(model) -> dict[str, str]:
    """HF module name -> GGUF weight name, for every nn.Linear we collect (gguf-py's table)."""
    import gguf
    import torch

    n_layers = model.config.num_hidden_layers
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, n_layers)
    names = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name != "lm_head":
            g = tmap.get_name(name)
            if g is None:
                raise EdgeError(f"cannot map {name} to a GGUF tensor name; is this a Gemma 3 text model?")
            names[name] = g + ".weight"
    return names


def compute_imatrix(model, token_chunks: list[list[int]], datasets: list[str] | None = None,
                    progress: bool = True) -> Imatrix:
    """Run the chunks through `model` with hooks; return the sums of squared inputs."""
    import torch
    from tqdm import tqdm

    names = gguf_names(model)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, float] = {}

    def hook_for(gname):
        def hook(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[gname] = sums.get(gname, 0) + (x * x).sum(0)
            counts[gname] = counts.get(gname, 0.0) + x.shape[0]
        return hook

    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_pre_hook(hook_for(g)) for n, g in names.items()]
    tied = bool(getattr(model.config, "tie_word_embeddings", True))
    head = "token_embd.weight" if tied else "output.weight"
    try:
        model.eval()
        with torch.inference_mode():
            for c in tqdm(token_chunks, desc="imatrix", unit="chunk", disable=not progress, leave=False):
                ids = torch.tensor([c], device=model.device)
                hidden = model.model(input_ids=ids).last_hidden_state  # the head's input; skip the 262k matmul
                h = hidden.reshape(-1, hidden.shape[-1]).double()
                sums[head] = sums.get(head, 0) + (h * h).sum(0)
                counts[head] = counts.get(head, 0.0) + h.shape[0]
    finally:
        for h in handles:
            h.remove()
    return Imatrix(sums={k: v.float().cpu().numpy() for k, v in sums.items()}, counts=counts,
                   datasets=list(datasets or []), chunk_count=len(token_chunks),
                   chunk_size=max((len(c) for c in token_chunks), default=0))


# --- the file ----------------------------------------------------------------------------------------
def save_imatrix(im: Imatrix, path: str | Path, force: bool = True) -> Path:
    import gguf

    path = Path(path)
    with atomic_path(path, force=force) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch="imatrix")
        w.add_type(gguf.GGUFType.IMATRIX)
        w.add_array(gguf.Keys.IMatrix.DATASETS, im.datasets or ["unknown"])
        w.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, im.chunk_count)
        w.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, im.chunk_size)
        for name in sorted(im.sums):
            w.add_tensor(name + ".in_sum2", im.sums[name].astype(np.float32).reshape(1, -1))
            w.add_tensor(name + ".counts", np.array([[im.counts[name]]], dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def load_imatrix(path: str | Path) -> Imatrix:
    """Read and validate an imatrix GGUF; anything malformed is an EdgeError naming the file."""
    import gguf

    from edge.fsutil import need_file
    from edge.ggufinfo import read_gguf

    path = need_file(path, "imatrix file", "make one with `edge imatrix`")
    bad = f"imatrix file {path} is not a valid llama.cpp GGUF imatrix"
    try:
        read_gguf(path)  # the bounded header walk first: gguf-py trusts the counts a file declares
    except EdgeError as e:
        raise EdgeError(f"{bad}: {e}; recompute it with `edge imatrix`") from None
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # gguf-py raises ValueError/struct.error/IndexError on garbage
        raise EdgeError(f"{bad} ({type(e).__name__}: {e}); recompute it with `edge imatrix`") from None

    def field_value(key):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    if field_value("general.type") != "imatrix":
        raise EdgeError(f"{bad} (general.type is {field_value('general.type')!r}, not 'imatrix')")
    try:
        tensors = {t.name: np.array(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
        im = Imatrix(datasets=[str(d) for d in (field_value(gguf.Keys.IMatrix.DATASETS) or [])],
                     chunk_count=int(field_value(gguf.Keys.IMatrix.CHUNK_COUNT) or 0),
                     chunk_size=int(field_value(gguf.Keys.IMatrix.CHUNK_SIZE) or 0))
    except (TypeError, ValueError, OverflowError) as e:
        raise EdgeError(f"{bad} ({type(e).__name__}: {e}); recompute it with `edge imatrix`") from None
    for name, data in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        cnt = tensors.get(base + ".counts")
        if cnt is None or cnt.size != 1 or not np.isfinite(cnt).all() or cnt[0] <= 0:
            raise EdgeError(f"{bad}: {base} has no positive count; recompute it with `edge imatrix`")
        if not np.isfinite(data).all() or (data < 0).any():
            raise EdgeError(f"{bad}: {base} has negative or non-finite sums; recompute it with `edge imatrix`")
        im.sums[base] = data
        im.counts[base] = float(cnt[0])
    if not im.sums:
        raise EdgeError(f"{bad}: it holds no entries")
    return im


def check_against(im: Imatrix, tensors) -> None:
    """Every entry must name a tensor of the model with the same row length."""
    rows = {t.name: t.row for t in tensors}
    for name, s in im.sums.items():
        if name not in rows:
            raise EdgeError(f"imatrix entry {name!r} is not a tensor of this model; it was computed for "
                            "another model: recompute it with `edge imatrix --model ...`")
        if s.size != rows[name]:
            raise EdgeError(f"imatrix entry {name!r} has {s.size} values but the tensor's rows are "
                            f"{rows[name]} wide; it was computed for another model")


# --- the command ---------------------------------------------------------------------------------------
def build_imatrix(model_spec: str, calib: list[str], out: str | Path, *, general: bool = True,
                  chunk: int = 256, max_tokens: int = 4096, force: bool = False, progress: bool = True) -> dict:
    """Load the model, compute the imatrix over the calibration data, save it; return a summary."""
    from edge.models import load

    out = Path(out)
    check_not_input(out, *[c for c in calib if c])
    check_writable(out, force)
    check_calibration(calib)  # a bad file is reported before the model loads (seconds of torch)
    t0 = time.time()
    model, tok = load(model_spec or "embedded", dtype="fp32")
    ids, names = calibration_token_stream(tok, calib, general)
    token_chunks = chunks_of(ids, chunk, max_tokens)
    im = compute_imatrix(model, token_chunks, datasets=names, progress=progress)
    save_imatrix(im, out, force=True)
    return {"out": str(out), "entries": len(im.sums), "chunks": im.chunk_count,
            "tokens": int(sum(len(c) for c in token_chunks)), "datasets": names,
            "seconds": round(time.time() - t0, 1)}


def imatrix_cmd(*, out: str, model: str = "embedded", calib: list[str] | None = None, general: bool = True,
                chunk: int = 256, max_tokens: int = 4096, force: bool = False, json: bool = False) -> dict:
    """Compute an importance matrix (llama.cpp GGUF format) from calibration data.

    Args:
        out: the imatrix file to write (e.g. imatrix.gguf).
        model: the model to run: 'embedded', or a merged model directory from `edge merge`.
        calib: calibration data: chat JSONL (your fine-tune data) or a .txt file.
        general: also use the bundled general text sample (edge/textdata/general.txt).
        chunk: tokens per forward pass (each chunk starts with <bos>).
        max_tokens: at most this many calibration tokens in all.
        force: overwrite an existing output file.
        json: print the summary as JSON.
    """
    if chunk < 16 or max_tokens < chunk:
        raise EdgeError(f"--chunk {chunk} / --max-tokens {max_tokens}: need chunk >= 16 and max-tokens >= chunk")
    calib = list(calib or [])
    if not calib and not general:
        raise EdgeError("no calibration data: give --calib FILE or keep --general")
    summary = build_imatrix(model, calib, out, general=general, chunk=chunk, max_tokens=max_tokens,
                            force=force, progress=not json)
    if not json:
        print(f"wrote {summary['out']}: {summary['entries']} matrices from {summary['tokens']} tokens "
              f"({', '.join(summary['datasets'])}) in {summary['seconds']} s")
    return summary
