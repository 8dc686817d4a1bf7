"""The model card (README.md) of a run: what the files are, how good, where they fit, how to run them.

Written by `edge run` into the run folder (and pushed or published beside the GGUFs). The
front matter is Hugging Face's `ModelCardData` (base_model, tags, licence), so the same card
is valid on the Hub. No local path appears in it: files are named by their base names.

    from edge.card import CardFacts, render_card
    text = render_card(CardFacts(title="gemma-3-270m-mychats", base_model="google/gemma-3-270m", ...))
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge import gemma3

GEMMA_NOTICE = ("Gemma is provided under and subject to the Gemma Terms of Use found at "
                "https://ai.google.dev/gemma/terms")
TAGS = ["gguf", "gemma3", "llama.cpp", "on-device", "edge"]


@dataclass
class CardFacts:
    """Everything the card says; the pipeline fills it from run.json, nothing else is read."""

    title: str
    base_model: str                       # a hub id, e.g. google/gemma-3-270m
    method: str = "LoRA"                  # LoRA or full fine-tuning
    data: dict = field(default_factory=dict)        # name, sha256, chats, format
    settings: dict = field(default_factory=dict)    # steps, epochs, lr, batch_size, precision
    variants: list[dict] = field(default_factory=list)   # report.json rows (name, size_bytes, bpw, kld_...)
    scored: str = ""                      # what the KLD covers
    budgets: list[dict] = field(default_factory=list)    # budget.json verdicts
    recommendations: list[dict] = field(default_factory=list)
    ctx: int = 4096
    repo: str = ""                        # the Hub repo, when published


def _num(x, spec: str = ".4g") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else "–"


def quality_table(variants: list[dict]) -> str:
    rows = ["| file | size | bits/weight | KLD mean | KLD p99 | same top token | task accuracy |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        if v.get("name") == "reference" or not isinstance(v.get("size_bytes"), (int, float)):
            continue
        name = str(v.get("path") or v.get("name", "?")).rsplit("/", 1)[-1]
        rows.append(f"| {name} | {v['size_bytes'] / 1e6:,.0f} MB | {_num(v.get('bpw'), '.2f')} | "
                    f"{_num(v.get('kld_mean'))} | {_num(v.get('kld_p99'))} | {_num(v.get('top1'), '.3f')} | "
                    f"{_num(v.get('task_accuracy'), '.0%')} |")
    return "\n".join(rows)


def budget_table(budgets: list[dict]) -> str:
    rows = ["| file | phone | verdict | needs | largest n_ctx | tok/s |", "|---|---|---|---:|---:|---:|"]
    for b in budgets:
        rows.append(f"| {b.get('variant')} | {b.get('device')} | {b.get('verdict')} | "
                    f"{_num((b.get('peak_bytes') or 0) / 1e6, ',.0f')} MB | {_num(b.get('max_ctx'), ',')} | "
                    f"{_num(b.get('tok_s'), '.0f')} |")
    return "\n".join(rows)


def render_card(f: CardFacts) -> str:
    """The card as Markdown with Hugging Face front matter."""
    from huggingface_hub import ModelCardData

    meta = ModelCardData(base_model=f.base_model or None, license="gemma", library_name="gguf",
                         tags=TAGS + (["lora"] if f.method == "LoRA" else ["full-fine-tune"]),
                         pipeline_tag="text-generation")
    recs = [r for r in f.recommendations if r.get("choice")]
    best = recs[0]["choice"] if recs else (f.variants[1]["name"] if len(f.variants) > 1 else "")
    s = gemma3.SAMPLING
    data = f.data
    base_link = f"[{f.base_model}](https://huggingface.co/{f.base_model})" if "/" in f.base_model else f.base_model
    settings = ", ".join(f"{k} {v}" for k, v in f.settings.items() if v not in (None, ""))
    rec_lines = "\n".join(f"- **{r['device']}**: {r.get('choice') or 'none fits'} ({r.get('reason', '')})"
                          for r in f.recommendations) or "- (no phone budget was run)"
    return f"""---
{meta.to_yaml()}
---

# {f.title}

A fine-tune of {base_link} ({f.method}) for phones, in GGUF
files that llama.cpp and the apps built on it run. Made with the `edge` toolkit (`edge run`).

## Training

- Data: {data.get('name', '?')} — {data.get('chats', '?')} chats ({data.get('format', '?')}),
  sha256 `{data.get('sha256', '?')}`; held out for scoring: {data.get('eval_chats', '?')} chats.
- Settings: {settings or '–'}.

## Quality and size

Each file against the unquantized fine-tune, scored on {f.scored or 'held-out text'}
(KL divergence: lower is closer; "same top token": how often both pick the same next token).

{quality_table(f.variants)}

## Phones (n_ctx {f.ctx:,})

{budget_table(f.budgets)}

Recommended:

{rec_lines}

## How to run it

Recommended sampling (Gemma team): temperature {s['temperature']}, top_k {s['top_k']}, top_p {s['top_p']},
min_p {s['min_p']}, repeat penalty {s['repetition_penalty']}. The files carry these as defaults
(`general.sampling.*`) and stop on `<end_of_turn>`.

- **llama.cpp**: `llama-cli -m {best} -cnv --temp {s['temperature']} --top-k {s['top_k']} --top-p {s['top_p']} --min-p {s['min_p']}`
- **Ollama**: `ollama create {f.title.lower()} -f {best.removesuffix('.gguf')}.Modelfile` (the Modelfile
  `edge modelfile {best}` writes), then `ollama run {f.title.lower()}`.
- **ChatterUI** (Android): copy the file to the phone (`edge push {best} --app chatterui`), then
  Models → "Import Model" → pick it. The app copies it into its own storage: delete the download
  afterwards to get the space back.
- **AnythingLLM** (mobile): it imports models from Hugging Face only: "Add a model from Hugging
  Face", then paste {('`' + f.repo + '`') if f.repo else 'the repo id this card is published in'}.

## Licence

{GEMMA_NOTICE}. By using this model you agree to those terms, including the Gemma Prohibited Use
Policy (https://ai.google.dev/gemma/prohibited_use_policy).
"""
