"""Chat with a GGUF locally through llama.cpp (llama-cpp-python), the way a phone app would.

The prompt is rendered with the GGUF's own chat template (`tokenizer.chat_template`, or the
toolkit's Gemma 3 template when the file has none) and tokenized by llama.cpp, which adds
the one `<bos>`. Sampling uses the file's `general.sampling.*` keys (the Gemma team's
recommended settings when absent); generation stops on `<end_of_turn>` and `<eos>`.

    edge chat model.gguf                      # interactive; empty line or Ctrl-D quits
    edge chat model.gguf --prompt "Hello"     # one reply, streamed
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from edge import gemma3
from edge.errors import EdgeError
from edge.llamacpp import open_llama


MAX_N_CTX = 1 << 20  # far above Gemma 3's 32k (270M) / 128k contexts


def check_lengths(max_tokens: int, n_ctx: int) -> None:
    """--max-tokens and --n-ctx: positive, and a context llama.cpp can allocate."""
    if max_tokens < 1:
        raise EdgeError(f"--max-tokens {max_tokens} must be at least 1")
    if not 16 <= n_ctx <= MAX_N_CTX:
        raise EdgeError(f"--n-ctx {n_ctx} must be between 16 and {MAX_N_CTX:,} tokens, e.g. 2048")


def sampling_settings(llm) -> dict:
    """The file's general.sampling.* keys, falling back to the Gemma team's recommendation."""
    meta = getattr(llm, "metadata", {}) or {}
    s = gemma3.SAMPLING

    def get(key, default, cast):
        v = meta.get(f"general.sampling.{key}")
        try:
            return cast(v) if v not in (None, "") else default
        except (TypeError, ValueError, OverflowError):  # a damaged or hostile value: the recommendation
            return default

    return {"temperature": get("temp", s["temperature"], float), "top_k": get("top_k", s["top_k"], int),
            "top_p": get("top_p", s["top_p"], float), "min_p": get("min_p", s["min_p"], float),
            "repeat_penalty": get("penalty_repeat", s["repetition_penalty"], float)}


def prompt_tokens(llm, messages: list[dict]) -> list[int]:
    """Render with the file's template and tokenize with exactly one `<bos>`."""
    from edge.template import GGUF_CHAT_TEMPLATE, render_chat

    template = (getattr(llm, "metadata", {}) or {}).get("tokenizer.chat_template") or GGUF_CHAT_TEMPLATE
    text = render_chat(template, messages, add_generation_prompt=True, source="the file's chat template")
    starts_with_bos = text.startswith(gemma3.BOS)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=not starts_with_bos, special=True)
    if ids[:2] == [gemma3.BOS_ID, gemma3.BOS_ID]:  # never two
        ids = ids[1:]
    return ids


def complete(path_or_llm, messages: list[dict], max_tokens: int = 256, greedy: bool = False,
             seed: int = -1, stream=None, n_ctx: int = 2048) -> dict:
    """One model reply to `messages`. `stream(text)` is called for each piece as it comes."""
    check_lengths(max_tokens, n_ctx)
    llm = path_or_llm if hasattr(path_or_llm, "tokenize") else open_llama(path_or_llm, n_ctx=n_ctx)
    settings = sampling_settings(llm)
    if greedy:
        settings.update(temperature=0.0, top_k=1)
    ids = prompt_tokens(llm, messages)
    if len(ids) + 1 >= llm.n_ctx():
        raise EdgeError(f"the conversation is {len(ids)} tokens, longer than the context ({llm.n_ctx()}); "
                        "start a new chat or pass a larger --n-ctx")
    max_tokens = min(max_tokens, llm.n_ctx() - len(ids) - 1)
    t0 = time.time()
    pieces, n = [], 0
    for chunk in llm.create_completion(ids, max_tokens=max_tokens, stream=True, stop=[gemma3.END_OF_TURN],
                                       seed=None if seed < 0 else seed, **settings):
        piece = chunk["choices"][0]["text"]
        n += chunk["choices"][0].get("finish_reason") is None  # one chunk per token, then a closing one
        pieces.append(piece)
        if stream and piece:
            stream(piece)
    dt = time.time() - t0
    return {"text": "".join(pieces).strip(), "tokens": n, "prompt_tokens": len(ids), "seconds": round(dt, 3),
            "tokens_per_s": n / dt if dt > 0 else 0.0, "settings": settings}


def chat_cmd(file: str, *, prompt: str = "", system: str = "", max_tokens: int = 256, n_ctx: int = 2048,
             greedy: bool = False, seed: int = -1, json: bool = False):
    """Chat with a GGUF through llama.cpp, streaming tokens, with the recommended settings.

    Args:
        file: the .gguf file to run.
        prompt: one message to answer (then exit); without it, chat interactively.
        system: a system message (Gemma folds it into the first user turn).
        max_tokens: the longest reply, in tokens.
        n_ctx: the context length to allocate.
        greedy: always pick the most likely token (temperature 0) instead of sampling.
        seed: sampling seed (-1: random).
        json: with --prompt, print the reply and timings as JSON instead of streaming.
    """
    check_lengths(max_tokens, n_ctx)
    llm = open_llama(file, n_ctx=n_ctx)
    messages: list[dict] = [{"role": "system", "content": system}] if system else []

    def out(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if prompt:
        messages.append({"role": "user", "content": prompt})
        r = complete(llm, messages, max_tokens=max_tokens, greedy=greedy, seed=seed, stream=None if json else out)
        if json:
            return r
        print(f"\n[{r['tokens']} tokens, {r['tokens_per_s']:.1f} tok/s]", file=sys.stderr)
        return None
    if json:
        raise EdgeError("--json needs --prompt (interactive chat streams text)")
    s = sampling_settings(llm)
    print(f"chatting with {Path(file).name} (temperature {0 if greedy else s['temperature']}, "
          f"top_k {s['top_k']}, top_p {s['top_p']}); empty line or Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            text = input("> ")
        except EOFError:
            print(file=sys.stderr)
            break
        if not text.strip():
            break
        messages.append({"role": "user", "content": text})
        r = complete(llm, messages, max_tokens=max_tokens, greedy=greedy, seed=seed, stream=out)
        print()
        messages.append({"role": "model", "content": r["text"]})
    return None
