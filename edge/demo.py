"""`edge demo`: `edge run` on the bundled task (English dates -> ISO 8601), on the embedded Gemma 3 270M.

    edge demo --out runs/demo

The same stages as `edge run` (edge/pipeline.py), with the bundled training and eval chats
(edge/textdata/demo_*.jsonl), a short fine-tune, exact-match task accuracy before and after, and
scoring settings sized for a quick run. Rerunning it skips what is already done.
"""

from __future__ import annotations

from dataclasses import asdict

from edge.pipeline import RunSettings, run_pipeline
from edge.task import EVAL, TRAIN

DEMO_EVAL_TOKENS = 256
DEMO_EVAL_CTX = 128


def demo_settings(out: str, steps: int = 30, precision: str = "auto", model: str = "embedded",
                  keep_reference: bool = False) -> RunSettings:
    """What `edge demo` runs: the bundled task at a learning rate that learns it in 30 steps."""
    return RunSettings(data=str(TRAIN), eval=str(EVAL), out=out, model=model, steps=steps, lr=1e-3,
                       precision=precision, accuracy=True, eval_tokens=DEMO_EVAL_TOKENS, eval_ctx=DEMO_EVAL_CTX,
                       keep_reference=keep_reference, name="demo")


def demo(*, out: str = "runs/demo", steps: int = 30, precision: str = "auto", model: str = "embedded",
         keep_reference: bool = False, from_stage: str = "") -> dict:
    """Run the whole pipeline on the embedded Gemma 3 270M and the bundled date task.

    Args:
        out: the run folder to write into (created; an earlier demo there is resumed).
        steps: fine-tuning steps for the demo task (30 took the task from 0% to 96% here; 60 to 100%).
        precision: auto, bf16, fp16 or fp32 (auto picks what is fastest and accurate here).
        model: the model spec to start from ('embedded' by default).
        keep_reference: keep the F32 reference GGUF after scoring (dropped by default: about 1 GB).
        from_stage: redo this stage and every later one (e.g. quantize).
    """
    result = run_pipeline(demo_settings(out, steps, precision, model, keep_reference), from_stage=from_stage,
                          title="edge demo")
    return asdict(result)
