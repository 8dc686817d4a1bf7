"""Score GGUF variants against their reference through llama.cpp (llama-cpp-python).

    from edge.evaluate import evaluate
    rows = evaluate("gguf/ref-F32.gguf", {"Q4_K_XL": "gguf/m-Q4_K_XL.gguf"}, text=held_out_text)

For each variant, on held-out text cut into independent chunks of `ctx` tokens (each chunk
starts with `<bos>`, as llama-perplexity does), with the same tokens fed to both models. The
scored positions are every token of plain text; of chats (`edge.data.ChatText`, from a chat
JSONL), the model's reply tokens only, as in fine-tuning: a fine-tune on replies can be
confidently wrong about user text it was never trained to predict, and those positions would
drown the ones its skill lives in.

- `kld_mean`, `kld_p99`: KL(P_ref || P_variant) of the next-token distributions over the
  scored positions (natural log, nats); mean and 99th percentile.
- `top1`: fraction of scored positions where the two argmax tokens agree.
- `ppl`: the variant's perplexity on the scored tokens (the reference's on its own row).
- `size_bytes`, `bpw`: file size, and bits per weight = 8 x tensor bytes / tensor elements.
- `tok_s`: greedy decode speed on this CPU (tokens after a short prompt, all cores).
- `task_accuracy`: exact match of greedy replies on a chat eval set (the demo task), stopping
  on `<end_of_turn>` or `<eos>`; None when no eval set is given.

The reference's log-probabilities are computed once and kept in memory (n_tokens x 262,144
floats: 1 MiB per token), so keep the text to a few hundred tokens.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge import gemma3
from edge.errors import EdgeError

DATA = Path(__file__).resolve().parent / "data"
GENERAL_EVAL = DATA / "general_eval.txt"


@dataclass
class VariantScore:
    """One row of report.json (the budget and TUI stages read these keys)."""

    name: str
    recipe: str
    path: str
    size_bytes: int
    bpw: float
    kld_mean: float | None
    kld_p99: float | None
    top1: float | None
    ppl: float | None
    tok_s: float | None
    task_accuracy: float | None = None
    imatrix: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def threads() -> int:
    """Threads for llama.cpp: the cores not already busy (at least 1).

    llama.cpp's worker threads spin while they wait for each other; on a CPU shared with other
    work that turns into a convoy (measured here at load 13 on 2 cores: 2 threads decoded
    0.36 tok/s, 1 thread 4.1 tok/s). `EDGE_THREADS` overrides.
    """
    if os.environ.get("EDGE_THREADS"):
        return max(1, int(os.environ["EDGE_THREADS"]))
    n = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:  # not available on this platform
        busy = 0
    return max(1, min(n, n - busy))


@contextmanager
def _llama(path: Path, n_ctx: int, logits_all: bool):
    try:
        from llama_cpp import Llama
    except ImportError as e:  # pragma: no cover
        raise EdgeError(f"llama-cpp-python is not importable ({e}); run the README's set-up") from None
    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"GGUF {path} not found")
    from llama_cpp import _logger

    _logger.set_verbose(False)  # llama.cpp's info/warning lines (e.g. the SWA cache notice) stay quiet
    try:
        llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=logits_all,
                    n_threads=threads(), n_threads_batch=threads(), verbose=False)
    except ValueError as e:
        raise EdgeError(f"llama.cpp cannot load {path}: {e}; is it a complete GGUF?") from None
    try:
        yield llm
    finally:
        llm.close()


def gguf_stats(path: str | Path) -> tuple[int, float]:
    """(file size in bytes, bits per weight over all tensors) from the GGUF header."""
    from edge.export import read_gguf  # a struct walk: gguf-py's reader takes minutes on a 262k vocab

    info = read_gguf(path)
    nbytes = sum(t.n_bytes for t in info.tensors)
    nelem = sum(t.n_elements for t in info.tensors)
    return info.size_bytes, 8.0 * nbytes / max(1, nelem)


def _decode(llm, tokens: list[int], n_past: int, rows: np.ndarray | None = None) -> np.ndarray:
    """One llama_decode of `tokens` at position `n_past`: the logits at the positions in `rows`
    (in order), or of the last token. Only those rows go through the output head, which on
    Gemma 3 (262,144 x 640 for the 270M) costs as much per position as the rest of the model."""
    batch = llm._batch
    batch.set_batch(batch=tokens, n_past=n_past, logits_all=False)
    if rows is not None:
        batch.batch.logits[len(tokens) - 1] = False
        for i in rows:
            batch.batch.logits[int(i)] = True
    llm._ctx.decode(batch)
    n = 1 if rows is None else len(rows)
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n, llm.n_vocab()))


def _clear(llm) -> None:
    llm.reset()
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)


@dataclass
class Chunk:
    """Tokens fed to both models in one llama_decode (the first is `<bos>`), and the logit rows
    scored: row i predicts tokens[i + 1]."""

    tokens: list[int]
    rows: np.ndarray

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(self.tokens)[self.rows + 1]


def _scored_tokens(llm, text: str) -> tuple[list[int], np.ndarray]:
    """Token ids of `text` and which of them are scored as targets: all of plain text; of a
    `ChatText`, the model's replies (its chat markers tokenized as the special tokens)."""
    from edge.data import ChatText

    raw = text.encode("utf-8")
    if not isinstance(text, ChatText):
        ids = llm.tokenize(raw, add_bos=False, special=False)
        return ids, np.ones(len(ids), bool)
    ids = llm.tokenize(raw, add_bos=False, special=True)
    pieces = [len(llm.detokenize([t], special=True)) for t in ids]
    if sum(pieces) != len(raw):
        raise EdgeError("cannot align the chat eval text with its tokens; score it as plain .txt instead")
    starts = np.cumsum([0] + pieces[:-1])
    keep = np.zeros(len(ids), bool)
    for a, b in text.reply_bytes:
        keep |= (starts >= a) & (starts < b)
    return ids, keep


def scored_label(text: str | None) -> str:
    """What the scores cover, for reports."""
    from edge.data import ChatText

    return "the reply tokens of the chat eval set" if isinstance(text, ChatText) else "held-out text (every token)"


def chunk_tokens(llm, text: str, n_tokens: int, ctx: int) -> list[Chunk]:
    """Cut `text` into chunks of at most `ctx` tokens (each starts with `<bos>`), until
    `n_tokens` positions are scored (of a `ChatText`: reply tokens only)."""
    ids, keep = _scored_tokens(llm, text)
    per = ctx - 1
    out, total = [], 0
    for i in range(0, len(ids), per):
        c_ids, rows = ids[i:i + per], np.flatnonzero(keep[i:i + per])
        if total >= n_tokens or len(c_ids) < 8:
            break
        rows = rows[: n_tokens - total]
        if len(rows):
            out.append(Chunk([gemma3.BOS_ID] + c_ids[: rows[-1] + 1], rows))
            total += len(rows)
    if not out:
        raise EdgeError(f"the evaluation text has too few tokens to score ({len(ids)} tokens, "
                        f"{int(keep.sum())} scored); give a longer text")
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=True)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


def logprobs(llm, chunks: list[Chunk]) -> list[np.ndarray]:
    """Log-softmax of the next-token logits at the scored positions of every chunk."""
    out = []
    for c in chunks:
        _clear(llm)
        out.append(_log_softmax(_decode(llm, c.tokens, 0, c.rows)))
    return out


def compare(ref: list[np.ndarray], var: list[np.ndarray], chunks: list[Chunk]) -> dict:
    """KLD(ref || var) mean and p99, top-1 agreement, variant perplexity."""
    klds, agree, nll = [], [], []
    for r, v, c in zip(ref, var, chunks):
        kl = (np.exp(r) * (r - v)).sum(axis=-1)
        klds.append(np.maximum(kl, 0.0))  # rounding can give -1e-9
        agree.append(r.argmax(-1) == v.argmax(-1))
        targets = c.targets
        nll.append(-v[np.arange(len(targets)), targets])
    kld = np.concatenate(klds)
    return {"kld_mean": float(kld.mean()), "kld_p99": float(np.percentile(kld, 99)),
            "top1": float(np.concatenate(agree).mean()), "ppl": float(np.exp(np.concatenate(nll).mean()))}


def decode_speed(llm, n_tokens: int = 64, prompt: str = "The history of the") -> float:
    """Greedy decode tokens per second after a short prompt."""
    _clear(llm)
    ids = llm.tokenize(prompt.encode(), add_bos=True)
    tok = int(_decode(llm, ids, 0)[0].argmax())
    n_past = len(ids)
    t0 = time.perf_counter()
    for _ in range(n_tokens):
        tok = int(_decode(llm, [tok], n_past)[0].argmax())
        n_past += 1
    return n_tokens / (time.perf_counter() - t0)


def task_accuracy(llm, chats, max_new_tokens: int = 16) -> tuple[float, list[tuple[str, str]]]:
    """Exact match of greedy llama.cpp replies on chat eval examples (the demo task's metric)."""
    from edge.data import load_chats, render_text
    from edge.task import split_prompt

    if not isinstance(chats, list):
        chats = load_chats(chats)
    stops = {gemma3.END_OF_TURN_ID, gemma3.EOS_ID}
    pairs = []
    for chat in chats:
        prompt, ref = split_prompt(chat)
        text, _ = render_text(prompt, add_generation_prompt=True)
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        _clear(llm)
        tok = int(_decode(llm, ids, 0)[0].argmax())
        n_past, out = len(ids), []
        while tok not in stops and len(out) < max_new_tokens:
            out.append(tok)
            tok = int(_decode(llm, [tok], n_past)[0].argmax())
            n_past += 1
        pairs.append((llm.detokenize(out).decode("utf-8", "replace").strip(), ref))
    return sum(g == r for g, r in pairs) / max(1, len(pairs)), pairs


def evaluate(ref_gguf: str | Path, variants: dict, *, text: str | None = None, n_tokens: int = 512,
             ctx: int = 256, task_eval=None, speed_tokens: int = 64, progress: bool = True) -> list[VariantScore]:
    """Score each variant against the reference; the first row is the reference itself.

    `variants` maps a name to a path, or to (path, recipe, uses_imatrix).
    """
    from tqdm import tqdm

    from edge.data import load_chats

    ref_gguf = Path(ref_gguf)
    if text is None:
        text = GENERAL_EVAL.read_text(encoding="utf-8")
    chats = load_chats(task_eval) if task_eval is not None and not isinstance(task_eval, list) else task_eval
    items = [("reference", (ref_gguf, _label(ref_gguf), False))] + [
        (n, v if isinstance(v, tuple) else (v, n, False)) for n, v in variants.items()]
    rows, ref_lp, chunks = [], None, None
    bar = tqdm(items, desc="evaluate", unit="file", disable=not progress, leave=False)
    for name, (path, recipe, imat) in bar:
        bar.set_postfix_str(name)
        size, bpw = gguf_stats(path)
        with _llama(path, ctx, False) as llm:
            if ref_lp is None:
                chunks = chunk_tokens(llm, text, n_tokens, ctx)
                ref_lp = logprobs(llm, chunks)
                metrics = compare(ref_lp, ref_lp, chunks)
            else:
                metrics = compare(ref_lp, logprobs(llm, chunks), chunks)
            tok_s = decode_speed(llm, speed_tokens) if speed_tokens else None
            acc = task_accuracy(llm, chats)[0] if chats else None
        rows.append(VariantScore(name=name, recipe=recipe, path=str(path), size_bytes=size, bpw=round(bpw, 3),
                                 tok_s=None if tok_s is None else round(tok_s, 1), task_accuracy=acc,
                                 imatrix=imat, **metrics))
    return rows


def _label(path: Path) -> str:
    from edge.export import read_gguf

    types = {t.type for t in read_gguf(path).tensors if len(t.shape) > 1}
    return "+".join(sorted(types)) if types else "F32"
