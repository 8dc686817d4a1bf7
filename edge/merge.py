"""Merge: fold a LoRA adapter into its base model, in float32, checked, and save it.

    edge merge --adapter runs/ft --out runs/merged [--dtype bf16|fp16|fp32]

Takes the `--out` folder of `edge finetune` (or one of its checkpoints). The base model is
the one recorded in the adapter (`edge_adapter.json`); its fingerprint must match, so an
adapter is never merged into a different model. Every weight is merged as
`W + B @ A * alpha / r` in float32, checked for NaN/inf, cast to the chosen dtype, checked
again (float16 overflows above 65,504), and saved as safetensors with the tokenizer, the
Gemma 3 chat template and a generation config carrying the recommended sampling settings
(`edge.gemma3.SAMPLING`) and both stop tokens (`<eos>`, `<end_of_turn>`).
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edge import gemma3
from edge.errors import EdgeError
from edge.fsutil import atomic_dir, check_not_input, check_writable
from edge.precision import DType

MERGE_META = "edge_merge.json"


@dataclass
class MergeResult:
    out: str
    dtype: str
    base: str
    adapter: str
    parameters: int
    max_abs_weight: float
    seconds: float


def _non_finite(model) -> list[str]:
    import torch

    return [n for n, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]


def next_step(merged: Path) -> str:
    """The command printed after a merge; it runs as printed (the exported GGUF goes beside
    the merged folder)."""
    merged = Path(merged)
    gguf = merged.with_name(merged.name + "-F32.gguf")
    return f"edge export --model {shlex.quote(str(merged))} --out {shlex.quote(str(gguf))}"


def merge(adapter: str | Path, out: str | Path, dtype: str = "fp32", model: str = "", force: bool = False,
          say=print) -> MergeResult:
    """Merge `adapter` into its base (or `model`, which must be the same weights); save to `out`."""
    from edge.finetune import base_identity, check_same_base, read_meta
    from edge.models import load
    from edge.precision import dtype_name, torch_dtype

    t0 = time.time()
    adapter, out = Path(adapter), Path(out)
    dtype = dtype_name(dtype, "--dtype")
    if not adapter.is_dir():
        raise EdgeError(f"adapter {adapter} is not a folder; give the --out folder of `edge finetune`")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise EdgeError(f"{adapter} holds no finished adapter (adapter_model.safetensors); give the --out "
                        "folder of a finished `edge finetune`, or one of its checkpoints/step-*")
    meta = read_meta(adapter)
    check_not_input(out, adapter)
    if out.exists() and not out.is_dir():
        raise EdgeError(f"--out {out} is a file; give a folder for the merged model")
    check_writable(out, force)
    recorded = meta["base"]
    spec = model or recorded["spec"]
    if not model and spec not in ("", "embedded") and not Path(recorded["path"]).exists():
        spec = recorded["path"]
    actual = base_identity(spec)
    check_same_base(recorded, actual, f"adapter {adapter}")
    check_not_input(out, Path(actual["path"]))

    from peft import PeftModel  # torch and peft after every check: seconds to import

    say(f"merging {adapter} into {actual['path']} in float32")
    base, tok = load(spec, dtype="fp32")
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    bad = _non_finite(merged)
    if bad:
        raise EdgeError(f"merged weights are not finite in {len(bad)} tensors (first: {bad[0]}); "
                        "the adapter is damaged (a diverged run?); merge an earlier checkpoint")
    max_abs = max(float(p.abs().max()) for p in merged.parameters())
    merged = merged.to(torch_dtype(dtype))
    bad = _non_finite(merged)
    if bad:
        raise EdgeError(f"casting to {dtype} overflows in {len(bad)} tensors (first: {bad[0]}, max |w| {max_abs:.4g}); "
                        "use --dtype bf16 or fp32")
    merged.config.architectures = list(gemma3.TEXT_ARCHITECTURES)
    from edge.models import generation_config, save_tokenizer

    merged.generation_config = generation_config(merged)
    n = sum(p.numel() for p in merged.parameters())
    with atomic_dir(out, force=True) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tok, tmp)
        (tmp / MERGE_META).write_text(json.dumps({
            "base": actual, "adapter": str(adapter.resolve()), "adapter_step": meta.get("step"),
            "lora": meta.get("lora"), "dtype": dtype, "merged_in": "float32"}, indent=2))
    result = MergeResult(out=str(out), dtype=dtype, base=actual["path"], adapter=str(adapter), parameters=n,
                         max_abs_weight=max_abs, seconds=time.time() - t0)
    say(f"merged {n / 1e6:.1f}M parameters into {out} ({dtype}, {result.seconds:.0f} s); "
        f"next: {next_step(out)}")
    return result


def merge_cmd(*, adapter: str, out: str, dtype: DType = "fp32", model: str = "", force: bool = False,
              json: bool = False) -> dict:
    """Merge a LoRA adapter into its base model in float32 (checked) and save safetensors.

    The output folder holds the merged weights, the tokenizer, the Gemma 3 chat template and
    a generation config with the recommended sampling (temperature 1.0, top_k 64,
    top_p 0.95, min_p 0.0, repetition penalty 1.0).

    Args:
        adapter: the --out folder of `edge finetune` (or one of its checkpoints/step-*).
        out: folder to write the merged model into.
        dtype: fp32, bf16 or fp16 for the saved weights (merging is always float32); fp32 keeps the
            merge exact for `edge export` (the README's pipeline), bf16 halves the folder.
        model: base model (default: the one recorded in the adapter; must be the same weights).
        force: overwrite an existing OUT.
        json: print the result as JSON.
    """
    result = merge(adapter, out, dtype=dtype, model=model, force=force, say=(lambda s: None) if json else print)
    return asdict(result)
