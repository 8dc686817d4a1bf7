"""Score GGUF variants against their reference through llama.cpp (llama-cpp-python's C bindings).

    from edge.evaluate import evaluate
    rows = evaluate("gguf/ref-F32.gguf", {"Q4_K_XL": "gguf/m-Q4_K_XL.gguf"}, text=held_out_text)

For each variant, on held-out text cut into independent chunks of `ctx` tokens (each chunk
starts with `<bos>`, as llama-perplexity does), with the same tokens fed to both models. The
scored positions are every token of plain text; of chats (`edge.data.ChatText`, from a chat
JSONL), the model's reply tokens only, as in fine-tuning: a fine-tune on replies can be
confidently wrong about user text it was never trained to predict, and those positions would
drown the ones its skill lives in. Only the scored positions go through the 262,144-row
output head (edge/llamacpp.py: llama.cpp's C API, no private attribute of llama-cpp-python's
`Llama`).

The statistics are those of `llama-perplexity --kl-divergence` (tools/perplexity/perplexity.cpp):
- `kld_mean` ± `kld_err` (standard error: sqrt(var / (n - 1))), `kld_median`, `kld_p90`,
  `kld_p95`, `kld_p99`, `kld_p999`, `kld_max`: KL(P_ref || P_variant) of the next-token
  distributions over the scored positions, natural log (nats).
- `top1` ± `top1_err`: "same top token", the fraction of positions where both argmax agree.
- `n_scored`: how many positions these come from; below `FEW_TOKENS` the report warns.
- `ppl`: the variant's perplexity on the scored tokens (the reference's on its own row).
- `size_bytes`, `bpw`: file size, and bits per weight = 8 x tensor bytes / tensor elements.
- `tok_s`: greedy decode speed on this CPU (tokens after a short prompt); none for the reference.
- `task_accuracy`: exact match of greedy replies on a chat eval set (the demo task), stopping
  on `<end_of_turn>` or `<eos>`: settled for most chats by one teacher-forced pass (greedy
  reproduces the expected reply iff its argmax is the reply's next token at every position),
  the others decoded greedily; None when no eval set is given.
- `score_seconds`: the time spent scoring this file (KLD only: not the speed or task runs).

The reference's log-probabilities and probabilities are kept in memory (n_scored x 262,144
floats each: 2 MiB per token), so keep the text to a few thousand tokens.

Speed (issue 20): the work is llama.cpp's (the body over every token of the chunks, the head
at the scored rows; the task's teacher-forced pass as much again); `threads()` gives it the cores
idle now, not what the load average says a minute after this process's own fine-tune.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge import gemma3
from edge.data import TEXTDATA
from edge.errors import EdgeError
from edge.llamacpp import Model

GENERAL_EVAL = TEXTDATA / "general_eval.txt"
FEW_TOKENS = 200          # below this, a mean KLD's standard error is a large part of it: say so
N_SEQ = 1                 # chunks per decode: 4 gave no speed here and moved the KLD by up to 7% (attention
                          # over a 4x larger unified cache); 1 keeps today's numbers to the last digit
MAX_ROWS = 256            # logit rows per decode (1 MiB each on Gemma's 262,144 vocab)


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
    n_scored: int = 0
    kld_err: float | None = None
    kld_median: float | None = None
    kld_p90: float | None = None
    kld_p95: float | None = None
    kld_p999: float | None = None
    kld_max: float | None = None
    top1_err: float | None = None
    score_seconds: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def gguf_stats(path: str | Path) -> tuple[int, float]:
    """(file size in bytes, bits per weight over all tensors) from the GGUF header."""
    from edge.ggufinfo import read_gguf  # a struct walk: gguf-py's reader takes minutes on a 262k vocab

    info = read_gguf(path)
    return info.size_bytes, info.bits_per_weight or 0.0


@dataclass
class Chunk:
    """Tokens fed to both models as one sequence (the first is `<bos>`), and the logit rows
    scored: row i predicts tokens[i + 1]."""

    tokens: list[int]
    rows: np.ndarray

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(self.tokens)[self.rows + 1]


def _scored_tokens(llm, text: str) -> tuple[list[int], np.ndarray]:
    """Token ids of `text` and which of them are scored as targets: all of plain text; of a
    `ChatText`, the model's replies (its chat markers tokenized as the special tokens).
    `llm`: anything with tokenize(bytes, add_bos, special) and detokenize(ids, special)."""
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


def few_tokens_warning(n_scored: int) -> str:
    """The report's warning when the scores rest on few positions ('' when enough)."""
    if n_scored >= FEW_TOKENS:
        return ""
    return (f"the KLD figures come from only {n_scored} scored tokens (fewer than {FEW_TOKENS}): their error "
            "bars are wide and small differences between variants mean nothing; give a longer --text")


def log_softmax(x: np.ndarray, out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
    """Row-wise log-softmax in float32. `out`, `scratch`: float32 buffers of x's shape to reuse
    (no fresh 1 MiB-a-row arrays per chunk; the same arithmetic, the same numbers)."""
    if out is None:
        x = x.astype(np.float32, copy=True)
    else:
        np.copyto(out, x)
        x = out
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x, out=scratch).sum(axis=-1, keepdims=True))
    return x


def _groups(chunks: list[Chunk], ctx: int) -> list[list[int]]:
    """Chunk indices packed into decodes of at most N_SEQ sequences, N_SEQ x ctx tokens and
    MAX_ROWS logit rows."""
    out, cur, toks, rows = [], [], 0, 0
    for i, c in enumerate(chunks):
        if cur and (len(cur) == N_SEQ or toks + len(c.tokens) > N_SEQ * ctx or rows + len(c.rows) > MAX_ROWS):
            out.append(cur)
            cur, toks, rows = [], 0, 0
        cur.append(i)
        toks += len(c.tokens)
        rows += len(c.rows)
    return out + [cur] if cur else out


def scoring_context(model: Model, chunks: list[Chunk], ctx: int):
    """A llama.cpp context sized for `logprobs` of these chunks."""
    return model.context(n_ctx=N_SEQ * ctx, n_seq=N_SEQ, n_batch=N_SEQ * ctx,
                         n_outputs=max(1, max(sum(len(chunks[i].rows) for i in g) for g in _groups(chunks, ctx))))


def chunk_logits(context, chunks: list[Chunk], ctx: int):
    """(chunk index, its scored rows' logits) for every chunk: several chunks per llama_decode,
    each its own sequence starting at position 0. A row block is valid until the next one."""
    for group in _groups(chunks, ctx):
        context.clear()
        logits = context.decode([(s, chunks[i].tokens, chunks[i].rows) for s, i in enumerate(group)])
        at = 0
        for i in group:
            k = len(chunks[i].rows)
            yield i, logits[at:at + k]
            at += k


def logprobs(context, chunks: list[Chunk], ctx: int) -> list[np.ndarray]:
    """Log-softmax of the next-token logits at the scored positions of every chunk."""
    out: list[np.ndarray | None] = [None] * len(chunks)
    for i, rows in chunk_logits(context, chunks, ctx):
        out[i] = log_softmax(rows)
    return out


def chunk_stats(r: np.ndarray, v: np.ndarray, chunk: Chunk, p: np.ndarray | None = None,
                scratch: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per scored position of one chunk: KL(ref || var), whether the top tokens agree, and the
    variant's negative log-likelihood of the target. `p`: exp(r) if kept; `scratch`: a float32
    buffer of r's shape to reuse."""
    d = np.subtract(r, v, out=scratch)
    d *= np.exp(r) if p is None else p
    kl = np.maximum(d.sum(axis=-1), 0.0)   # rounding can give -1e-9
    targets = chunk.targets
    return kl, r.argmax(-1) == v.argmax(-1), -v[np.arange(len(targets)), targets]


def summarize(stats: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """llama-perplexity's KL-divergence statistics, same top token and perplexity from `chunk_stats`."""
    kld = np.concatenate([s[0] for s in stats]).astype(np.float64)
    same = np.concatenate([s[1] for s in stats]).astype(np.float64)
    n = len(kld)
    mean, top = float(kld.mean()), float(same.mean())
    err = float(np.sqrt(max(0.0, (kld * kld).mean() - mean * mean) / (n - 1))) if n > 1 else None
    top_err = float(np.sqrt(top * (1 - top) / (n - 1))) if n > 1 else None
    pct = np.percentile(kld, [50, 90, 95, 99, 99.9])
    return {"kld_mean": mean, "kld_err": err, "kld_median": float(pct[0]), "kld_p90": float(pct[1]),
            "kld_p95": float(pct[2]), "kld_p99": float(pct[3]), "kld_p999": float(pct[4]),
            "kld_max": float(kld.max()), "top1": top, "top1_err": top_err, "n_scored": n,
            "ppl": float(np.exp(np.concatenate([s[2] for s in stats]).mean()))}


def compare(ref: list[np.ndarray], var: list[np.ndarray], chunks: list[Chunk],
            ref_p: list[np.ndarray] | None = None) -> dict:
    """llama-perplexity's KL-divergence statistics of var against ref, and var's perplexity.
    `ref_p`: exp(ref), when the caller keeps it for several variants."""
    return summarize([chunk_stats(r, v, c, None if ref_p is None else ref_p[k])
                      for k, (r, v, c) in enumerate(zip(ref, var, chunks))])


def score_against(context, chunks: list[Chunk], ctx: int, ref: list[np.ndarray], ref_p: list[np.ndarray]) -> dict:
    """`compare(ref, logprobs(context, chunks, ctx), chunks, ref_p)`, chunk by chunk through two
    reused buffers instead of every chunk's log-probabilities at once: the same numbers."""
    most = max(len(c.rows) for c in chunks)
    buf = np.empty((most, context.model.n_vocab), np.float32)
    tmp = np.empty_like(buf)
    stats: list = [None] * len(chunks)
    for i, rows in chunk_logits(context, chunks, ctx):
        k = len(rows)
        v = log_softmax(rows, out=buf[:k], scratch=tmp[:k])
        stats[i] = chunk_stats(ref[i], v, chunks[i], ref_p[i], scratch=tmp[:k])
    return summarize(stats)


def decode_speed(model: Model, n_tokens: int = 64, prompt: str = "The history of the") -> float:
    """Greedy decode tokens per second after a short prompt (one sequence, as a phone app runs)."""
    ids = model.tokenize(prompt.encode(), add_bos=True)
    with model.context(n_ctx=len(ids) + n_tokens + 8, n_seq=1, n_outputs=1) as c:
        tok = int(c.decode([(0, ids, [len(ids) - 1])])[0].argmax())
        n_past = len(ids)
        t0 = time.perf_counter()
        for _ in range(n_tokens):
            tok = int(c.decode([(0, [tok], [0], n_past)])[0].argmax())
            n_past += 1
        return n_tokens / (time.perf_counter() - t0)


def teacher_forced(model: Model, prompts: list[list[int]], replies: list[list[int]], n_seq: int) -> list[bool]:
    """Whether greedy decoding would reproduce each reply exactly: one pass over prompt + reply,
    the argmax at every reply position equal to the reply's next token (its `<end_of_turn>` last)."""
    ok = []
    for start in range(0, len(prompts), n_seq):
        group = list(range(start, min(len(prompts), start + n_seq)))
        toks = [prompts[i] + replies[i] for i in group]
        rows = [np.arange(len(prompts[i]) - 1, len(toks[k]) - 1) for k, i in enumerate(group)]
        n_tok = sum(map(len, toks))
        with model.context(n_ctx=n_tok, n_seq=len(group), n_batch=n_tok, n_outputs=sum(map(len, rows))) as c:
            best = c.decode([(k, t, r) for k, (t, r) in enumerate(zip(toks, rows))]).argmax(-1)
        at = 0
        for k, i in enumerate(group):
            n = len(rows[k])
            ok.append(bool(np.array_equal(best[at:at + n], replies[i])))
            at += n
    return ok


def greedy(model: Model, prompts: list[list[int]], max_new_tokens: int, n_seq: int) -> list[list[int]]:
    """Greedy replies, up to `n_seq` prompts decoding together (one llama_decode per step for all)."""
    stops = {gemma3.END_OF_TURN_ID, gemma3.EOS_ID}
    replies: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(prompts), n_seq):
        group = list(range(start, min(len(prompts), start + n_seq)))
        width = max(len(prompts[i]) for i in group) + max_new_tokens
        n_batch = max(width, sum(len(prompts[i]) for i in group))
        with model.context(n_ctx=len(group) * width, n_seq=len(group), n_batch=n_batch, n_outputs=len(group)) as c:
            logits = c.decode([(s, prompts[i], [len(prompts[i]) - 1]) for s, i in enumerate(group)])
            nxt = {s: int(logits[s].argmax()) for s in range(len(group))}
            pos = {s: len(prompts[i]) for s, i in enumerate(group)}
            while True:
                live = [s for s, tok in nxt.items() if tok not in stops and len(replies[group[s]]) < max_new_tokens]
                for s in live:
                    replies[group[s]].append(nxt[s])
                live = [s for s in live if len(replies[group[s]]) < max_new_tokens]
                if not live:
                    break
                logits = c.decode([(s, [nxt[s]], [0], pos[s]) for s in live])
                nxt = {s: int(logits[k].argmax()) for k, s in enumerate(live)}
                for s in live:
                    pos[s] += 1
    return replies


def task_accuracy(model: Model, chats, max_new_tokens: int = 16, n_seq: int = 16) -> tuple[float, list[tuple[str, str]]]:
    """Exact match of greedy llama.cpp replies on chat eval examples (the demo task's metric).

    Greedy decoding reproduces the expected reply exactly when, fed that reply, the model's
    argmax at each of its positions is its next token: one batched pass over all chats
    (teacher forcing) settles those, and only the others are decoded greedily to show what
    the model says instead. Same result as decoding every chat, in a fraction of the steps."""
    from edge.data import load_chats
    from edge.template import render_text
    from edge.task import split_prompt

    if not isinstance(chats, list):
        chats = load_chats(chats)
    prompts, refs, replies = [], [], []
    for chat in chats:
        prompt, ref = split_prompt(chat)
        text, _ = render_text(prompt, add_generation_prompt=True)
        ids = model.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        full = model.tokenize((text + ref + gemma3.END_OF_TURN).encode("utf-8"), add_bos=True, special=True)
        reply = full[len(ids):]
        fits = (full[:len(ids)] == ids and reply and reply[-1] == gemma3.END_OF_TURN_ID
                and len(reply) - 1 <= max_new_tokens and model.detokenize(reply[:-1]).decode("utf-8", "replace").strip() == ref)
        prompts.append(ids)
        refs.append(ref)
        replies.append(reply if fits else None)
    forced = [i for i, r in enumerate(replies) if r is not None]
    same = dict(zip(forced, teacher_forced(model, [prompts[i] for i in forced], [replies[i] for i in forced], n_seq)))
    rest = [i for i in range(len(chats)) if not same.get(i)]
    got = dict(zip(rest, greedy(model, [prompts[i] for i in rest], max_new_tokens, n_seq)))
    pairs = [(refs[i] if same.get(i) else model.detokenize(got[i]).decode("utf-8", "replace").strip(), refs[i])
             for i in range(len(chats))]
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
    rows, ref_lp, ref_p, chunks = [], None, None, None
    bar = tqdm(items, desc="evaluate", unit="file", disable=not progress, leave=False)
    for name, (path, recipe, imat) in bar:
        bar.set_postfix_str(name)
        size, bpw = gguf_stats(path)
        with Model(path) as model:
            t0 = time.perf_counter()
            if ref_lp is None:
                chunks = chunk_tokens(model, text, n_tokens, ctx)
                with scoring_context(model, chunks, ctx) as c:
                    ref_lp = logprobs(c, chunks, ctx)
                ref_p = [np.exp(r) for r in ref_lp]
                metrics = compare(ref_lp, ref_lp, chunks, ref_p)
            else:
                with scoring_context(model, chunks, ctx) as c:
                    metrics = score_against(c, chunks, ctx, ref_lp, ref_p)
            seconds = time.perf_counter() - t0
            # no speed run for the reference: nobody ships the F32 file, and it is the dearest to decode
            tok_s = decode_speed(model, speed_tokens) if speed_tokens and name != "reference" else None
            acc = task_accuracy(model, chats)[0] if chats else None
        rows.append(VariantScore(name=name, recipe=recipe, path=str(path), size_bytes=size, bpw=round(bpw, 3),
                                 tok_s=None if tok_s is None else round(tok_s, 1), task_accuracy=acc,
                                 imatrix=imat, score_seconds=round(seconds, 2), **metrics))
    return rows


def _label(path: Path) -> str:
    from edge.ggufinfo import read_gguf

    types = {t.type for t in read_gguf(path).tensors if len(t.shape) > 1}
    return "+".join(sorted(types)) if types else "F32"
