"""Benchmark data: chat JSONL with the long-tailed lengths of real chat data.

    python bench/chats.py --out /tmp/chats.jsonl --n 1200 --seed 0

Lengths (in Gemma 3 tokens, the whole rendered chat) follow a log-normal with median 200 and
sigma 0.8, cut to [24, 2048]: about 80% of the chats are under 512 tokens, about 3% over
1,024, and a few near 2,048 (printed by `--stats`). This is the shape of public chat
fine-tuning sets, which are mostly short with a long tail. The words are drawn from a fixed
list of common English words (about one token each), so the token count is close to the
length asked for; a chat has 1-3 user/model exchanges and the replies carry about 60% of
the tokens. The content is random: the benchmark measures speed and memory, not learning.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

WORDS = ("time person year way day thing man world life hand part child eye woman place work week case "
         "point government company number group problem fact be have do say get make go know take see "
         "come think look want give use find tell ask work seem feel try leave call good new first last "
         "long great little own other old right big high different small large next early young important "
         "few public bad same able to of in for on with at by from up about into over after the and a that "
         "I it not he as you this but his they her she or an will my one all would there their what so "
         "out if who which me when can like no just him know take people into year your good some could "
         "them see other than then now look only come its over think also back after use two how our work "
         "first well way even new want because any these give day most us water small city story market "
         "system program question during play government run small number off always move night live "
         "point believe hold today bring happen next without before large million must home under water "
         "room write mother area national money story young fact month different lot right study book eye "
         "job word business issue side kind head house service friend father power hour game line end").split()
MEDIAN, SIGMA, MIN_LEN, MAX_LEN = 200, 0.8, 24, 2036  # MAX_LEN: the rendered chat stays within 2,048 tokens
TURN_OVERHEAD = 8  # <start_of_turn>user\n ... <end_of_turn>\n: about 4 tokens a turn, plus <bos>


def target_lengths(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [min(MAX_LEN, max(MIN_LEN, round(math.exp(rng.gauss(math.log(MEDIAN), SIGMA))))) for _ in range(n)]


def make_chats(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed + 1)
    chats = []
    for length in target_lengths(n, seed):
        exchanges = 1 if length < 120 else rng.choice((1, 1, 2, 3))
        body = max(4, length - TURN_OVERHEAD * exchanges)
        messages = []
        for _ in range(exchanges):
            share = body // exchanges
            user = max(2, round(share * rng.uniform(0.3, 0.5)))
            messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=user))})
            messages.append({"role": "assistant", "content": " ".join(rng.choices(WORDS, k=max(1, share - user)))})
        chats.append({"messages": messages})
    return chats


def write(out: str | Path, n: int, seed: int = 0) -> Path:
    out = Path(out)
    out.write_text("".join(json.dumps(c) + "\n" for c in make_chats(n, seed)))
    return out


def stats(lengths: list[int]) -> str:
    s = sorted(lengths)
    q = lambda f: s[min(len(s) - 1, int(f * len(s)))]
    return (f"{len(s)} chats, {sum(s):,} tokens; median {q(0.5)}, p90 {q(0.9)}, p99 {q(0.99)}, max {s[-1]}; "
            f"<512: {sum(x < 512 for x in s) / len(s):.0%}, >1024: {sum(x > 1024 for x in s) / len(s):.1%}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stats", default="", help="a tokenizer directory: print the real token lengths")
    args = ap.parse_args(argv)
    path = write(args.out, args.n, args.seed)
    print(f"wrote {path}")
    if args.stats:
        from transformers import AutoTokenizer

        import sys
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from edge.data import load_chats, render

        tok = AutoTokenizer.from_pretrained(args.stats)
        print(stats([len(render(tok, c)[0]) for c in load_chats(path)]))


if __name__ == "__main__":
    main()
