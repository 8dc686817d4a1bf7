"""Generate the demo task: rewrite an English date as ISO 8601 (YYYY-MM-DD).

    python scripts/make_demo_task.py        # writes edge/textdata/demo_{train,eval}.jsonl

Why this task: the pretrained 270M has never seen Gemma's chat turns and answers a request
with free text, so exact match before fine-tuning is near 0%; the skill itself (month names
to numbers, zero padding, reordering) is systematic, so a short LoRA fine-tune on a CPU
learns it and exact match jumps. The difference is unmistakable and cheap to check.
Deterministic (seeded): re-running gives the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
PROMPTS = [
    "Convert this date to ISO format: {d}",
    "Write {d} as YYYY-MM-DD.",
    "ISO date for {d}?",
]
STYLES = [
    lambda y, m, d: f"{MONTHS[m - 1]} {d}, {y}",
    lambda y, m, d: f"{d} {MONTHS[m - 1]} {y}",
    lambda y, m, d: f"{MONTHS[m - 1][:3]} {d} {y}",
]


def example(rng: random.Random) -> dict:
    y, m = rng.randint(1950, 2049), rng.randint(1, 12)
    d = rng.randint(1, DAYS[m - 1])
    text = rng.choice(STYLES)(y, m, d)
    return {"messages": [
        {"role": "user", "content": rng.choice(PROMPTS).format(d=text)},
        {"role": "assistant", "content": f"{y:04d}-{m:02d}-{d:02d}"},
    ]}


def main(out: Path = Path(__file__).resolve().parent.parent / "edge" / "textdata",
         n_train: int = 400, n_eval: int = 50, seed: int = 0) -> None:
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < n_train + n_eval:
        ex = example(rng)
        key = ex["messages"][0]["content"]
        if key not in seen:
            seen.add(key)
            rows.append(ex)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("demo_train.jsonl", rows[:n_train]), ("demo_eval.jsonl", rows[n_train:])):
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
    print(f"wrote {n_train} train and {n_eval} eval examples to {out}")


if __name__ == "__main__":
    main()
