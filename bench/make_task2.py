"""A second fine-tuning task for judging quantization recipes: weather data -> one English sentence.

    python bench/make_task2.py /tmp/task2      # writes train.jsonl (400) and eval.jsonl (100)

The demo task (edge/textdata/demo_*.jsonl) answers with a 10-character date; this one answers with
a templated sentence of 20-30 tokens, so a fine-tune learns a different skill (data-to-text,
word choice, units) and its eval replies give several times more scored tokens per chat.
Deterministic (seeded). Used by docs/BENCHMARKS.md "Quantize" so the recipes are not tuned to
the demo task alone.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

CITIES = ["Oslo", "Lisbon", "Nairobi", "Osaka", "Lima", "Perth", "Quebec", "Tbilisi", "Hanoi", "Cork", "Denver",
          "Accra", "Seville", "Tromso", "Cusco", "Dakar", "Bergen", "Kyoto", "Adelaide", "Porto"]
SKIES = {"clear": "under a clear sky", "cloudy": "under a cloudy sky", "rain": "with steady rain",
         "snow": "with falling snow", "fog": "in thick fog", "storm": "with thunderstorms"}
PROMPTS = ["Describe the weather: {d}", "Weather report in one sentence. {d}", "Turn this into a sentence: {d}"]


def feel(t: int) -> str:
    return "freezing" if t < 0 else "cold" if t < 10 else "mild" if t < 20 else "warm" if t < 28 else "hot"


def example(rng: random.Random) -> dict:
    city, sky = rng.choice(CITIES), rng.choice(list(SKIES))
    t, wind, hum = rng.randint(-15, 38), rng.randint(0, 60), rng.randint(10, 100)
    data = f"city={city}; temp_c={t}; sky={sky}; wind_kmh={wind}; humidity={hum}%"
    breeze = "no wind to speak of" if wind < 5 else f"a {'light' if wind < 20 else 'strong'} wind of {wind} km/h"
    reply = f"It is {feel(t)} in {city} at {t} °C {SKIES[sky]}, {breeze} and {hum}% humidity."
    return {"messages": [{"role": "user", "content": rng.choice(PROMPTS).format(d=data)},
                         {"role": "assistant", "content": reply}]}


def main(out: str = "/tmp/task2", n_train: int = 400, n_eval: int = 100, seed: int = 7) -> None:
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < n_train + n_eval:
        ex = example(rng)
        if ex["messages"][0]["content"] not in seen:
            seen.add(ex["messages"][0]["content"])
            rows.append(ex)
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", rows[:n_train]), ("eval.jsonl", rows[n_train:])):
        (d / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
    print(f"wrote {n_train} train and {n_eval} eval chats to {d}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
