"""Fine-tune: LoRA (or with --full every weight) on a Gemma 3 model, trained on the model's replies only.

    edge finetune --data train.jsonl --out runs/ft --steps 200            # embedded 270M, LoRA
    edge finetune --model DIR --data train.jsonl --out runs/ft --resume   # continue exactly
    edge finetune --data train.jsonl --out runs/full --full --epochs 2    # every weight; then edge export
    edge finetune --gpus 2 --data train.jsonl --out runs/ft               # 2 GPUs (torchrun; DDP, FSDP2 with --full)

Takes a model spec (`edge.models.load`), a chat JSONL file (`edge.data`) and a precision
(`edge.precision`). Writes into OUT/:

    adapter_config.json, adapter_model.safetensors   the final LoRA adapter (peft format), or with
    config.json, model.safetensors, tokenizer ...    --full the whole model (float32), for `edge export`
    edge_adapter.json       the base model's identity (path + fingerprint), settings, result
    checkpoints/step-NNNNNN/ weights + optimizer, scheduler, RNG and data position (atomic)
    log.jsonl               one line per step (loss, lr, grad norm, tokens, tok/s overall and
                            for the step alone) and per eval
    loss.png                the loss curve

How it is fast and small: the chats of a step are packed several to a row (positions restart
at each chat; no token attends across chats; `pack`); the loss is computed on reply tokens
only, and the 262,144-word output head runs in chunks whose float32 logits are freed right
away; the gradient of each chunk is computed in the same pass (for the hidden states, and
with --full for the tied head too), so the backward pass neither keeps nor recomputes logits.
Batches are length-bucketed. On a GPU the decoder layers are compiled when that pays
(`decide_compile`: the model compiled on this machine before, or a long job), and the memory
mode (`memory_mode`: fast, or lean = every compiled layer checkpointed) follows the free
memory; the log names both. fp16 trains with dynamic loss scaling; --full in bf16/fp16 keeps
float32 master weights (`MasterWeights`). Ctrl-C or SIGTERM saves a checkpoint at the next step
boundary; a non-finite loss or gradient stops before the bad update, keeping the last good
checkpoint (an fp16 step whose gradients overflow at the current loss scale is skipped, as loss
scaling does, and is no failure). A step in which some trained weight got no gradient, or every
one got an all-zero one, stops training: it would train nothing.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Literal, get_args

from edge import gemma3
from edge.chunked_loss import IGNORE, chunked_cross_entropy
from edge.errors import EdgeError, environment_error
from edge.fsutil import atomic_dir, atomic_path, check_writable, read_json, sha256_file, temp_dir
from edge.models import causal_lm
from edge.precision import PrecisionName

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECKPOINTS = "checkpoints"
META = "edge_adapter.json"
STATE = "trainer_state.pt"
LOG = "log.jsonl"
PLOT = "loss.png"
# fp16 trains with dynamic loss scaling (torch.amp.GradScaler) from this scale: on the real
# 270M, torch's default 2**16 overflowed the first 3 steps' gradients and settled at 2**13;
# from 2**13 none overflowed (docs/BENCHMARKS.md, Precision; edge/precision.py)
FP16_INIT_LOSS_SCALE = 2.0**13


MemoryMode = Literal["auto", "fast", "lean"]
MEMORY_MODES = get_args(MemoryMode)
LEAN_CHUNK_ROWS = 128  # lean mode: rows of the output head per loss chunk (4 x 128 x 262,144 float32 = 0.5 GB)


class NonFiniteError(EdgeError):
    """The loss or the gradient became NaN/inf; training stopped before the bad update."""


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass
class LoraSettings:
    """LoRA adapter shape (peft `LoraConfig`); each field is an `edge finetune` flag (edge.cli).

    Attributes:
        r: LoRA rank of each adapter.
        alpha: LoRA alpha: updates are scaled by alpha / rank.
        dropout: LoRA dropout on the adapter input.
        targets: modules to adapt (default: all attention and MLP projections).
    """

    r: int = field(default=16, metadata={"flag": "rank"})
    alpha: int = 32
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self):
        self.targets = tuple(self.targets)
        if self.r < 1:
            raise EdgeError(f"--rank must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise EdgeError(f"--alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise EdgeError(f"--dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in DEFAULT_TARGETS]
        if bad or not self.targets:
            raise EdgeError(f"--targets {', '.join(bad) or '(none)'} not known; use some of {', '.join(DEFAULT_TARGETS)}")


def _setting(name: str) -> str:
    """How an error names a setting: its `edge finetune` flag."""
    return f"--{name.replace('_', '-')}"  # every TrainSettings field is an `edge finetune` flag (edge.cli)


@dataclass
class TrainSettings:
    """Optimisation settings; 0 or -1 means "pick from the other settings". Each field is an
    `edge finetune` flag (edge.cli derives it, with the default and the help below).

    Attributes:
        steps: optimizer steps to train.
        batch_size: chats per micro-batch, the global one: with several GPUs they split it; an
            optimizer step takes grad_accum of them.
        grad_accum: micro-batches per optimizer step.
        lr: peak learning rate (AdamW, linear warm-up then cosine decay).
        weight_decay: AdamW weight decay.
        warmup: linear warm-up steps; -1: 5% of the steps.
        min_lr_ratio: the cosine decay ends at lr times this.
        clip: gradient-norm clipping; 0 turns it off.
        max_len: longest allowed chat in tokens; 0: the model's context.
        eval_fraction: share of the data held out for eval loss.
        eval_every: evaluate every N steps; 0: four evals per run (and one at the end).
        save_every: checkpoint every N steps; 0: four checkpoints per run (and one at the end).
        keep: checkpoints kept on disk (the newest).
        grad_checkpointing: recompute activations in backward to save memory.
        chunk_rows: rows of the output head per chunk of the loss.
        seed: random seed (data order, LoRA init, dropout).
        compile: torch.compile the layers and the loss chunk; None: decided by the run (`--compile`).
        memory_budget: GPU: share (0-1) of each compiled layer's activations kept for backward;
            the rest is recomputed, elementwise ops first: less memory, slower (docs/BENCHMARKS.md).
            Default: 0.5 for 1B and larger models, 1.0 for the 270M.
        loss_scale: fp16: the initial dynamic loss scale (torch.amp.GradScaler).
        pack: pack several chats into each row (no padding between them; positions restart
            and no token attends across a chat boundary); --no-pack pads one chat per row.
        full: full fine-tuning: train every weight (no adapter, nothing to merge: OUT is a model
            folder for `edge export`); bf16/fp16 keep float32 master weights, fp16 scales the loss.
        memory: GPU memory mode: fast, lean (each compiled layer checkpointed, the loss in small
            chunks: far less memory, slower) or auto (fast when its estimated peak fits in 80% of
            the free GPU memory); the log says which ran.
        epochs: > 0: train this many passes over the training chats instead of `steps`.
        micro_batch: chats per forward/backward pass on each GPU (0: its whole share of
            batch_size); smaller needs less memory and gives the same result (gradient accumulation).
    """

    steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = -1
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    max_len: int = 0
    eval_fraction: float = 0.1
    eval_every: int = 0
    save_every: int = 0
    keep: int = 2
    grad_checkpointing: bool = False
    chunk_rows: int = 1024
    seed: int = 0
    compile: bool | None = None
    memory_budget: float | None = None
    loss_scale: float = FP16_INIT_LOSS_SCALE
    pack: bool = True
    full: bool = False
    memory: MemoryMode = "auto"
    epochs: float = 0.0
    micro_batch: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "chunk_rows", "keep"):
            if getattr(self, name) < 1:
                raise EdgeError(f"{_setting(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "eval_every"):  # 0: four per run
            if getattr(self, name) < 0:
                raise EdgeError(f"{_setting(name)} must be >= 0 (0: four per run), got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise EdgeError(f"--lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.eval_fraction < 0.5:
            raise EdgeError(f"--eval-fraction must be in [0, 0.5), got {self.eval_fraction}")
        if self.micro_batch < 0:
            raise EdgeError(f"--micro-batch must be >= 0, got {self.micro_batch}")
        if self.max_len < 0:
            raise EdgeError(f"--max-len must be >= 0, got {self.max_len}")
        if self.memory_budget is not None and not 0.0 <= self.memory_budget <= 1.0:
            raise EdgeError(f"--memory-budget must be in [0, 1], got {self.memory_budget}")
        if not (self.loss_scale >= 1 and math.isfinite(self.loss_scale)):
            raise EdgeError(f"{_setting('loss_scale')} must be a number >= 1, got {self.loss_scale}")
        if self.memory not in MEMORY_MODES:
            raise EdgeError(f"--memory must be one of {', '.join(MEMORY_MODES)}, got {self.memory!r}")
        if not (self.epochs >= 0 and math.isfinite(self.epochs)):
            raise EdgeError(f"--epochs must be a number > 0, got {self.epochs}")

    def steps_for_epochs(self, n_train: int) -> int:
        """Optimizer steps that make `epochs` passes over `n_train` chats."""
        return max(1, math.ceil(self.epochs * n_train / (self.batch_size * self.grad_accum)))

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup >= 0 else max(1, round(0.05 * self.steps))

    @property
    def eval_interval(self) -> int:
        return self.eval_every or max(1, self.steps // 4)

    @property
    def save_interval(self) -> int:
        return self.save_every or max(1, self.steps // 4)


# ---------------------------------------------------------------------------------------------
# Precision: the policy lives in edge.precision


def resolve_precision(precision: str):
    from edge.precision import resolve

    return resolve(precision)


def apply_precision_fixes(model, p) -> None:
    if getattr(p, "fp16_fixes", False):
        from edge.precision import apply_fp16_fixes

        apply_fp16_fixes(model)




def reply_loss(model, input_ids, attention_mask, labels, chunk_rows: int = 1024, compile: bool = False,
               position_ids=None):
    """(summed CE over the label tokens, number of label tokens). Labels are IGNORE elsewhere.

    Hidden states come from the decoder body; only the rows that predict a label go through
    the output head, in chunks. Packed rows (`pack`) pass `position_ids` and no attention
    mask: positions that restart mark where a chat begins (see `pack`).
    """
    lm = causal_lm(model)
    out = lm.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    h = out.last_hidden_state[:, :-1]
    y = labels[:, 1:]
    sel = y != IGNORE
    h, y = h[sel], y[sel]
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    return chunked_cross_entropy(h, lm.lm_head.weight, y, chunk_rows, softcap, compile), int(y.numel())


def plain_loss(model, input_ids, attention_mask, labels):
    """The reference: full float32 logits, then cross-entropy (what transformers does)."""
    import torch.nn.functional as F

    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    y = labels[:, 1:]
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), y.reshape(-1),
                           ignore_index=IGNORE, reduction="sum"), int((y != IGNORE).sum())


# ---------------------------------------------------------------------------------------------
# Data: render, split, bucket, collate


@dataclass
class Example:
    ids: list[int]
    labels: list[int]
    line: int


def prepare_examples(tokenizer, chats, max_len: int, source: str = "data") -> list[Example]:
    from edge.data import render

    examples = []
    for chat in chats:
        if not chat.has_reply:
            continue
        ids, mask = render(tokenizer, chat)
        if len(ids) > max_len:
            raise EdgeError(f"{source}:{chat.line}: chat is {len(ids)} tokens, longer than the "
                            f"{max_len}-token limit; shorten it or raise --max-len (up to the model's context)")
        examples.append(Example(ids, [i if m else IGNORE for i, m in zip(ids, mask)], chat.line))
    if not examples or not any(x != IGNORE for e in examples for x in e.labels):
        raise EdgeError(f"{source} has no assistant/model turns to train on")
    return examples


def split_examples(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    import random

    n_eval = int(len(examples) * fraction)
    if fraction > 0 and n_eval == 0 and len(examples) >= 10:
        n_eval = 1
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-bucketed batches for one epoch: a deterministic function of (seed, epoch).

    Shuffle, sort within windows of 16 batches by length (little padding), shuffle batches.
    """
    import random

    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 16
    batches = []
    for i in range(0, len(order), window):
        group = sorted(order[i:i + window], key=lambda j: lengths[j])
        batches += [group[k:k + batch_size] for k in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], device="cpu", multiple: int = 1):
    """Right-padded (ids, attention mask, labels); width rounded up to `multiple` (fewer
    distinct shapes for compiled code)."""
    import torch

    width = max(len(e.ids) for e in examples)
    width = -(-width // multiple) * multiple
    ids = torch.full((len(examples), width), gemma3.PAD_ID, dtype=torch.long)
    att = torch.zeros((len(examples), width), dtype=torch.long)
    lab = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e.ids)
        ids[r, :n] = torch.tensor(e.ids)
        att[r, :n] = 1
        lab[r, :n] = torch.tensor(e.labels)
    return ids.to(device), att.to(device), lab.to(device)


def pack(examples: list[Example], device="cpu", multiple: int = 1):
    """Several chats per row: (ids, position_ids, labels, real tokens). No padding between chats.

    Rows are as wide as the longest chat (rounded up to `multiple`); chats go into them first
    fit, longest first. Positions restart at 0 at each chat, and the tail padding of a row is a
    segment of its own. Given `position_ids` and no attention mask, transformers' mask builder
    (`masking_utils.find_packed_sequence_indices`) turns every restart into a boundary: a token
    attends only to earlier tokens of its own chat, and Gemma 3's sliding window counts within
    the chat (tests/test_finetune.py checks both against one chat per row). A chat's first
    token is `<bos>`, whose label is IGNORE, so no loss crosses a boundary either.
    """
    import torch

    width = max(len(e.ids) for e in examples)
    width = -(-width // multiple) * multiple
    rows: list[list] = []  # [used, [examples]]
    for e in sorted(examples, key=lambda e: -len(e.ids)):
        row = next((r for r in rows if r[0] + len(e.ids) <= width), None)
        if row is None:
            rows.append([len(e.ids), [e]])
        else:
            row[0] += len(e.ids)
            row[1].append(e)
    ids = torch.full((len(rows), width), gemma3.PAD_ID, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    lab = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for r, (used, chats) in enumerate(rows):
        c = 0
        for e in chats:
            n = len(e.ids)
            ids[r, c:c + n] = torch.tensor(e.ids)
            lab[r, c:c + n] = torch.tensor(e.labels)
            pos[r, c:c + n] = torch.arange(n)
            c += n
        pos[r, c:] = torch.arange(width - c)
    return ids.to(device), pos.to(device), lab.to(device), sum(len(e.ids) for e in examples)


def make_batch(examples: list[Example], device="cpu", multiple: int = 1, packed: bool = True):
    """(ids, attention mask or None, labels, position ids or None, real tokens) for `reply_loss`."""
    if packed:
        ids, pos, lab, n = pack(examples, device, multiple)
        return ids, None, lab, pos, n
    ids, att, lab = collate(examples, device, multiple)
    return ids, att, lab, None, sum(len(e.ids) for e in examples)


class BatchStream:
    """Micro-batches forever, epoch after epoch; (epoch, index) is the whole position."""

    def __init__(self, examples: list[Example], batch_size: int, seed: int, epoch: int = 0, index: int = 0):
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.lengths = [len(e.ids) for e in examples]
        self.epoch, self.index = epoch, index
        self._batches = epoch_batches(self.lengths, batch_size, seed, epoch)

    def next(self) -> list[Example]:
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = epoch_batches(self.lengths, self.batch_size, self.seed, self.epoch)
        batch = self._batches[self.index]
        self.index += 1
        return [self.examples[i] for i in batch]


# ---------------------------------------------------------------------------------------------
# Model identity, LoRA wrapping


def model_fingerprint(path: Path) -> str:
    """A cheap identity of a HF model directory: config.json, and each weights file's size,
    header and first/last MiB. Two different models never share it in practice."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:32]


def base_identity(spec: str) -> dict:
    from edge.models import resolve

    path = resolve(spec)
    return {"spec": spec, "path": str(Path(path).resolve()), "fingerprint": model_fingerprint(path)}


def add_lora(model, lora: LoraSettings, grad_checkpointing: bool = False):
    from peft import LoraConfig, get_peft_model

    if grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(lora.targets), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def prepare_full(model, grad_checkpointing: bool = False):
    """Full fine-tuning: every weight trainable, no adapter."""
    if grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    for q in model.parameters():
        q.requires_grad_(True)
    return model


class MasterWeights:
    """float32 master copies of 16-bit weights (full fine-tuning in bf16 or fp16).

    The optimizer steps the float32 copies; the model computes with them rounded to 16 bits
    after every step. A 16-bit weight alone would lose small updates: at lr 5e-5 an Adam step is
    about 5e-5 of a weight near 1, below bfloat16's 2**-8 = 0.4% resolution, so it rounds away.
    (Micikevicius et al., "Mixed Precision Training", ICLR 2018: fp32 master weights and loss
    scaling.) With fp16, the loss is scaled (GradScaler) and the 16-bit gradients are unscaled
    in float32 here, so an overflow skips the step instead of corrupting a weight.
    """

    def __init__(self, params):
        import torch

        self.params = list(params)
        self.master = [torch.nn.Parameter(q.detach().float().clone()) for q in self.params]

    def grads_to_master(self) -> None:
        for q, m in zip(self.params, self.master):
            m.grad = None if q.grad is None else q.grad.float()
            q.grad = None  # free the 16-bit gradient at once

    def master_to_model(self) -> None:
        import torch

        with torch.no_grad():
            for q, m in zip(self.params, self.master):
                q.copy_(m)

    def load(self, tensors: dict, named) -> None:
        """Set masters (and the model) from saved float32 weights, by parameter name (cut into
        this process's shards under FSDP2)."""
        import torch

        from edge.distributed import shard_like

        with torch.no_grad():
            for (name, q), m in zip(named, self.master):
                m.copy_(shard_like(tensors[name], m))
        self.master_to_model()


def full_state_dict(model, masters: MasterWeights | None = None) -> dict:
    """The model's state dict, trained weights taken from the float32 masters when there are any
    (tied tensors, the embedding and the head, stay one shared tensor). Under FSDP2 its values
    are this process's shards (`edge.distributed.Dist.gather_full` gathers them)."""
    swap = {id(q): m for q, m in zip(masters.params, masters.master)} if masters else {}
    return {k: swap.get(id(v), v).detach() for k, v in model.state_dict(keep_vars=True).items()}


def save_full(model, dest: Path, meta: dict, masters: MasterWeights | None = None, tokenizer=None,
              weights: dict | None = None) -> None:
    """A Hugging Face model folder that `edge export` (and `edge.models.load`) takes as it is:
    config.json (float32 when there are masters), model.safetensors, and with `tokenizer` the
    tokenizer, the Gemma 3 chat template and the generation config `edge merge` writes too.
    `weights`: the full state dict, gathered already (FSDP2); default: the model's own."""
    import torch

    sd = full_state_dict(model, masters) if weights is None else weights
    old = getattr(model.config, "dtype", None)
    if all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point()):  # masters, or FSDP2's shards
        model.config.dtype = torch.float32
    try:
        model.config.architectures = list(gemma3.TEXT_ARCHITECTURES)
        model.save_pretrained(dest, state_dict=sd, safe_serialization=True)
    finally:
        model.config.dtype = old
    if tokenizer is not None:
        from edge.models import generation_config, save_tokenizer

        generation_config(model).save_pretrained(dest)
        save_tokenizer(tokenizer, dest)
    (dest / META).write_text(json.dumps(meta, indent=2, default=str))


FULL_FILES = ("model.safetensors", "config.json", "generation_config.json")


def memory_mode(settings: TrainSettings, model, longest: int, device, world: int = 1) -> tuple[str, str]:
    """("fast" | "lean", why). `auto` takes fast when its estimated peak fits in 80% of the free
    GPU memory, else lean (every compiled layer checkpointed: only its input is kept for
    backward, the rest recomputed; the loss in 128-row chunks). On a CPU: fast.

    Estimated fast peak = weights (x4 with --full: master, two Adam moments, gradient) + the loss
    chunks (4 float32 [chunk_rows x vocab] buffers) + activations, 60 bytes per token per
    layer per hidden unit. The 60 is measured: 270M at 8 x 1,024 tokens peaked at 7.94 GiB, 1B
    (memory budget 0.5) at 12.1 GiB on an H200 (docs/BENCHMARKS.md, Fine-tune), which gives 57
    and 35 bytes; tokens per pass are at most the chats of one pass on this process (a batch,
    its share of `world` processes, or --micro-batch) x the longest chat.
    """
    if settings.memory != "auto":
        return settings.memory, f"--memory {settings.memory}"
    if getattr(device, "type", device) != "cuda":
        return "fast", "auto: not a GPU"
    import torch

    cfg = getattr(model.config, "text_config", model.config)
    n_params = sum(q.numel() for q in model.parameters())
    weights = n_params * next(model.parameters()).element_size() + (n_params * 16 if settings.full else 0)
    loss = 4 * settings.chunk_rows * cfg.vocab_size * 4
    tokens = (settings.micro_batch or -(-settings.batch_size // world)) * longest
    acts = tokens * cfg.num_hidden_layers * cfg.hidden_size * 60
    free, _ = torch.cuda.mem_get_info(device)
    est = weights + loss + acts
    mode = "fast" if est <= 0.8 * free else "lean"
    return mode, (f"auto: fast mode's estimated peak {est / 2**30:.1f} GiB "
                  f"{'fits in' if mode == 'fast' else 'exceeds'} 80% of {free / 2**30:.1f} GiB free")


def auto_memory_budget(model) -> float:
    """`--memory-budget`'s default. 1B and up: 0.5, which takes peak memory from 42% to 23-24% of
    plain transformers + peft for about 5% of speed. The 270M: 1.0, as its steps are CPU-bound and
    it is at 24% already (docs/BENCHMARKS.md, Fine-tune)."""
    return 0.5 if sum(p.numel() for p in model.parameters()) > 500_000_000 else 1.0


def compile_layers(model, memory_budget: float = 1.0, backend: str = "inductor") -> None:
    """torch.compile each decoder layer (regional compilation: one graph reused by every layer
    of a kind); fewer kernel launches and fused norms/activations on a GPU.

    `memory_budget` < 1 keeps at most that share of what each compiled layer would save for
    backward (1.0: the compiler's usual choice, 0.0: as little as full recompute would) and
    recomputes the rest, cheapest by FLOPs first: elementwise ops (norms, GELU, RoPE, casts)
    before any matmul. It is `torch._functorch.config.activation_memory_budget`, applied to
    the layers' compilations only. `backend`: torch.compile's (tests use "aot_eager" on a CPU).
    """
    import torch

    for layer in causal_lm(model).model.layers:
        layer._edge_eager_forward = layer.forward
        layer.forward = _with_memory_budget(torch.compile(layer.forward, backend=backend, dynamic=COMPILE_DYNAMIC),
                                            memory_budget)


# Short jobs: compiling the layers costs about 65 s the first time on an H200 (the 270M; 112 s
# end to end against 58 s eager for a 680k-token job) and saves about 22 us per token (65k vs
# 27k tokens/s steady), so it pays from about 3M tokens. torch's own caches (inductor's FX graph
# cache, AOTAutograd's cache) make the next compile of the same graphs far cheaper (47 s end to
# end for the same job); edge keeps them under its cache folder and remembers which models
# compiled there (docs/BENCHMARKS.md, "Fine-tune: a realistic job").
COMPILE_MIN_TOKENS = 3_000_000
COMPILED_RECORD = "compiled.json"


def _compile_key(model, precision: str, mode: str, full: bool, dev) -> str:
    import torch

    cfg = getattr(model.config, "text_config", model.config)
    gpu = torch.cuda.get_device_name(dev) if getattr(dev, "type", dev) == "cuda" else "cpu"
    return (f"torch {torch.__version__}|{gpu}|{cfg.num_hidden_layers}x{cfg.hidden_size}x{cfg.intermediate_size}|"
            f"{precision}|{mode}|{'full' if full else 'lora'}")


def _compiled_record() -> Path:
    from edge.fsutil import cache_dir

    return cache_dir() / COMPILED_RECORD


def decide_compile(asked: bool | None, dev, job_tokens: float, key: str) -> tuple[bool, str]:
    """(compile the layers?, why). `asked` (--compile on/off) wins; on a CPU: no; on a GPU: yes
    when this model's graphs compiled here before (torch's caches are warm) or the job is long
    enough to pay for a first compile (COMPILE_MIN_TOKENS); else eager, which is faster end to end."""
    if asked is not None:
        return asked, f"--compile {'on' if asked else 'off'}"
    if getattr(dev, "type", dev) != "cuda":
        return False, "auto: not a GPU"
    try:
        seen = key in json.loads(_compiled_record().read_text())
    except (OSError, ValueError, TypeError):
        seen = False
    if seen:
        return True, "auto: compiled here before, torch's compile caches are warm"
    if job_tokens >= COMPILE_MIN_TOKENS:
        return True, f"auto: a job of {job_tokens / 1e6:.1f}M tokens pays for a first compile"
    return False, (f"auto: a job of {job_tokens / 1e6:.2f}M tokens is too short to pay for a first compile "
                   f"(from {COMPILE_MIN_TOKENS / 1e6:.0f}M); eager is faster end to end; --compile on forces it")


def use_compile_cache() -> None:
    """Keep torch's compile caches under edge's cache folder (they survive /tmp being cleared),
    unless the user chose a folder."""
    from edge.fsutil import cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))


def remember_compiled(key: str) -> None:
    path = _compiled_record()
    try:
        seen = json.loads(path.read_text()) if path.is_file() else []
        if key not in seen:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Path(tmp).write_text(json.dumps(seen + [key], indent=1))
    except (OSError, ValueError):
        pass  # only costs a first compile's choice next time


# torch.compile's `dynamic` for the layers: None lets it compile the first shape statically and
# recompile for dynamic shapes when a second one comes (benchmarks flip it to measure).
COMPILE_DYNAMIC = None


class eager_layers:
    """Within this block, compiled layers run their original (eager) forward: evaluation runs
    under no_grad, which compiled code would compile again for, a cost no short job recovers."""

    def __init__(self, model):
        self.layers = [m for m in causal_lm(model).model.layers if hasattr(m, "_edge_eager_forward")]

    def __enter__(self):
        self.saved = [m.forward for m in self.layers]
        for m in self.layers:
            m.forward = m._edge_eager_forward

    def __exit__(self, *exc):
        for m, f in zip(self.layers, self.saved):
            m.forward = f


def _with_memory_budget(compiled, budget: float):
    import functools

    import torch._functorch.config as functorch_config

    @functools.wraps(compiled)
    def forward(*args, **kwargs):
        with functorch_config.patch(activation_memory_budget=budget):  # read when (re)compiling
            return compiled(*args, **kwargs)

    return forward


def lr_lambda(settings: TrainSettings) -> Callable[[int], float]:
    warm, total, floor = settings.warmup_steps, settings.steps, settings.min_lr_ratio

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _checkpoints(out: Path) -> list[Path]:
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE).is_file())


def latest_checkpoint(out: Path) -> Path | None:
    found = _checkpoints(out)
    return found[-1] if found else None


def save_adapter(model, dest: Path, meta: dict) -> None:
    model.save_pretrained(dest, safe_serialization=True)
    (dest / META).write_text(json.dumps(meta, indent=2, default=str))
    public_base_name(dest / "adapter_config.json", meta.get("base", {}))


def public_base_name(config: Path, base: dict) -> None:
    """peft records the base's local path in adapter_config.json; a shared adapter names it by
    its public id instead (edge_adapter.json keeps the path and fingerprint for `edge merge`)."""
    from edge.models import public_identity

    if not config.is_file():
        return
    cfg = json.loads(config.read_text())
    path = base.get("path")
    cfg["base_model_name_or_path"] = public_identity(base.get("spec", ""), Path(path) if path else None)["base_model"]
    config.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def save_checkpoint(out: Path, model, optimizer, scheduler, scaler, stream: BatchStream, step: int, meta: dict,
                    keep: int, extra: dict | None = None, full: bool = False,
                    masters: MasterWeights | None = None, weights: dict | None = None,
                    optim_state: dict | None = None) -> Path:
    """Write checkpoints/step-NNNNNN atomically; a failure leaves earlier checkpoints intact.
    `weights` / `optim_state`: gathered from the processes' shards already (FSDP2)."""
    import torch

    dest = Path(out) / CHECKPOINTS / f"step-{step:06d}"
    state = {
        "step": step, "epoch": stream.epoch, "index": stream.index,
        "optimizer": optimizer.state_dict() if optim_state is None else optim_state,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),  # {} unless fp16
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        **(extra or {}),  # several processes: each one's random state (edge.distributed)
    }
    try:
        with atomic_dir(dest, force=True) as tmp:
            if full:
                save_full(model, tmp, {**meta, "step": step}, masters, weights=weights)
            else:
                save_adapter(model, tmp, {**meta, "step": step})
            torch.save(state, tmp / STATE)
    except Exception as e:  # OSError, or safetensors' SafetensorError / torch's RuntimeError around one
        if not isinstance(e, OSError) and environment_error(e) is None:
            raise
        why = e.strerror if isinstance(e, OSError) and e.strerror else environment_error(e) or e
        last = latest_checkpoint(out)
        raise EdgeError(f"cannot write checkpoint {dest} ({why}); "
                        f"earlier checkpoints are intact (latest: {last or 'none'}); free disk space and --resume") from None
    for old in _checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def read_meta(directory: Path) -> dict:
    f = Path(directory) / META
    if not f.is_file():
        raise EdgeError(f"{directory} is not an edge adapter or checkpoint (no {META}); "
                        "give the --out folder of `edge finetune`")
    meta = read_json(f, "adapter record", hint="the adapter folder is damaged: re-run `edge finetune`")
    base = meta.get("base")
    if not (isinstance(base, dict) and all(isinstance(base.get(k), str) for k in ("spec", "path", "fingerprint"))
            and isinstance(meta.get("lora") or {}, dict) and isinstance(meta.get("train") or {}, dict)):
        raise EdgeError(f"{f} lacks its base model record (base.spec/path/fingerprint); the adapter folder is "
                        "damaged: re-run `edge finetune`")
    return meta


def check_same_base(recorded: dict, actual: dict, what: str) -> None:
    if recorded.get("fingerprint") != actual["fingerprint"]:
        raise EdgeError(f"{what} was trained on {recorded.get('spec')!r} ({recorded.get('path')}), "
                        f"not on {actual['spec']!r} ({actual['path']}): the weights differ; use the same base model")


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    out: str
    steps: int
    start_step: int
    train_loss: float | None
    eval_loss: float | None
    tokens_per_s: float              # overall: real tokens / seconds, warm-up (compiling) included
    seconds: float
    precision: str
    stopped: str = "done"            # done | interrupted
    checkpoint: str | None = None
    losses: list = field(default_factory=list)
    model: object = field(default=None, repr=False)
    steady_tokens_per_s: float | None = None  # the second half of the steps only (None under 4 steps)
    memory_mode: str = "fast"
    peak_gib: float | None = None    # GPU: this process's peak (torch.cuda.max_memory_allocated)

    def record(self, leave_out: tuple[str, ...] = ()) -> dict:
        """The fields as plain values, without the model (never copied: `asdict` would deep-copy
        it, which FSDP2 refuses) and without `leave_out`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model", *leave_out)}


def steady_rate(marks: list[tuple[float, int]]) -> float | None:
    """Real tokens per second over the second half of the steps, from (elapsed, tokens) per step:
    compiling and the first steps' warm-up are in the first half."""
    if len(marks) < 4:
        return None
    h = len(marks) // 2
    dt = marks[-1][0] - marks[h - 1][0]
    return sum(n for _, n in marks[h:]) / dt if dt > 0 else None


def _device_of(model):
    return next(model.parameters()).device


def evaluate_loss(model, examples: list[Example], batch_size: int, chunk_rows: int, compile: bool = False,
                  pad_multiple: int = 1, packed: bool = True, loss_fn: Callable | None = None) -> float:
    """Mean reply loss over `examples`; `loss_fn(ids, att, labels, chunk_rows, compile, position_ids=)`:
    the training's (several processes: through DDP or FSDP2), default `reply_loss` on `model`."""
    import functools

    import torch

    loss_fn = loss_fn or functools.partial(reply_loss, model)
    if not examples:
        return float("nan")
    model.eval()
    total, count = 0.0, 0
    dev = _device_of(model)
    with torch.no_grad(), eager_layers(model):
        for i in range(0, len(examples), batch_size):
            ids, att, lab, pos, _ = make_batch(examples[i:i + batch_size], dev, pad_multiple, packed)
            loss, n = loss_fn(ids, att, lab, chunk_rows, False, position_ids=pos)
            total, count = total + float(loss), count + n
    model.train()
    return total / max(1, count)


def plot_losses(log_file: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(log_file).read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r and math.isfinite(r["eval_loss"])]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss (replies)", lw=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss (held out)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


class _StopFlag:
    """Ctrl-C or SIGTERM sets a flag checked at step boundaries; a second one interrupts at once
    (`hard`; off under a launcher, which passes the terminal's Ctrl-C on as a second signal)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, hard: bool = True):
        self.set, self.hard = False, hard
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.getsignal(s)
                signal.signal(s, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.set and self.hard:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


def _open_checkpoint(out: Path, base: dict, lora: LoraSettings, settings: TrainSettings, precision: str, dist,
                     say) -> tuple:
    """--resume: (checkpoint folder, its state, and the lora, settings, precision it was trained
    with; --steps may stretch the schedule). Refuses a missing folder or checkpoint, another base
    model, and a run already at its last step."""
    import torch

    if not out.is_dir():
        raise EdgeError(f"--resume: {out} does not exist; give the --out folder of an earlier `edge finetune`")
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        raise EdgeError(f"--resume: {out} holds no checkpoint ({CHECKPOINTS}/step-*/); "
                        "start without --resume or give the right folder")
    meta = read_meta(ckpt)
    check_same_base(meta["base"], base, f"checkpoint {ckpt}")
    lora = LoraSettings(**meta["lora"]) if meta.get("lora") else lora
    saved = TrainSettings(**meta["train"])
    if settings.steps != saved.steps:
        say(f"resume: training to step {settings.steps} (was {saved.steps}); the schedule is stretched")
        saved.steps = settings.steps
    state = torch.load(ckpt / STATE, weights_only=True)
    note = dist.check_resume(state, ckpt, lora.dropout)  # another number of processes: edge.distributed
    if note:
        say(note)
    if state["step"] >= saved.steps:
        raise EdgeError(f"--resume: {ckpt} is already at step {state['step']} of {saved.steps}; "
                        "pass a larger --steps to train further")
    return ckpt, state, lora, saved, meta.get("precision_asked", precision)


def _clear_out(out: Path, data, force: bool, dist) -> None:
    """A new run: OUT must be writable (or --force); with --force, process 0 removes what an
    earlier run wrote there, once the data file has been checked."""
    from edge.data import load_chats

    check_writable(out, force)
    load_chats(data)  # a bad data file must not cost the old adapter (--force deletes it next)
    if out.exists() and force and dist.is_main:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
        for name in (LOG, PLOT, META, "adapter_model.safetensors", "adapter_config.json") + FULL_FILES:
            (out / name).unlink(missing_ok=True)


@dataclass
class _Job:
    """What one training run holds once `_prepare` has built it."""

    settings: TrainSettings
    lora: LoraSettings
    p: object                    # the resolved precision (edge.precision)
    tok: object
    net: object                  # the model being trained (peft-wrapped for LoRA)
    loss_fn: Callable            # (ids, att, labels, chunk_rows, compile, position_ids=) -> (loss sum, n)
    named_params: list           # [(name, trained parameter)]
    masters: MasterWeights | None
    opt_params: list             # what the optimizer steps and clipping sees
    opt: object
    sched: object
    scaler: object
    stream: BatchStream
    train_set: list
    eval_set: list
    mode: str                    # memory mode: fast | lean
    chunk_rows: int
    use_compile: bool
    pad_multiple: int
    compile_key: str
    dev: object
    dist: object


def _prepare(model: str, data, lora: LoraSettings, settings: TrainSettings, precision: str, loaded, fresh: bool,
             dist, say) -> _Job:
    """Load the model and the chats, choose the memory mode and compiling, and build the trained
    network (LoRA or every weight, wrapped for several processes), optimizer, schedule and loss
    scaler. `fresh`: not a resume (--epochs turns into steps)."""
    import torch

    from edge.data import load_chats
    from edge.models import load

    chats = load_chats(data)
    if loaded is not None:
        base_model, tok, p = loaded
    else:
        p = resolve_precision(precision)
        say(f"loading the base model ({model}) ...")
        base_model, tok = load(model, dtype=p.dtype, device="cuda" if torch.cuda.is_available() else "cpu")
        apply_precision_fixes(base_model, p)
    say(f"precision: {p.name} ({p.reason})")
    context = base_model.config.max_position_embeddings
    max_len = min(settings.max_len or context, context)
    examples = prepare_examples(tok, chats, max_len, source=str(data))
    train_set, eval_set = split_examples(examples, settings.eval_fraction, settings.seed)
    if not train_set:
        raise EdgeError(f"{data}: no training examples left after the held-out split; add data or lower --eval-fraction")
    dist.check_settings(settings)
    if settings.epochs > 0 and fresh:
        settings.steps = settings.steps_for_epochs(len(train_set))
    per_step = settings.batch_size * settings.grad_accum
    say(f"data: {len(train_set)} training chats, {len(eval_set)} held out; {settings.steps} steps of {per_step} chats "
        f"= {settings.steps * per_step / len(train_set):.2f} epochs")

    mode, why = memory_mode(settings, base_model, max(len(e.ids) for e in examples), _device_of(base_model), dist.world)
    say(f"memory mode: {mode} ({why})")
    checkpointing = settings.grad_checkpointing or mode == "lean"
    chunk_rows = min(settings.chunk_rows, LEAN_CHUNK_ROWS) if mode == "lean" else settings.chunk_rows

    torch.manual_seed(settings.seed)
    net = prepare_full(base_model, checkpointing) if settings.full else add_lora(base_model, lora, checkpointing)
    dev = _device_of(net)
    job_tokens = settings.steps * per_step * sum(len(e.ids) for e in train_set) / len(train_set)
    compile_key = _compile_key(base_model, p.name, mode, settings.full, dev)
    use_compile, why = decide_compile(settings.compile, dev, job_tokens, compile_key)
    say(f"compile: {'on' if use_compile else 'off'} ({why})")
    if use_compile:
        use_compile_cache()
        say("compiling the layers with torch.compile (the first step waits for it) ...")
        budget = settings.memory_budget
        compile_layers(net, auto_memory_budget(base_model) if budget is None else budget)
    # several processes: DDP (LoRA) or FSDP2 (--full), gradients summed over them
    loss_fn = dist.wrap(net, reply_loss, full=settings.full)
    if dist.sharded:
        say(f"engine: FSDP2 (fully_shard): weights, gradients and optimizer state split over {dist.world} processes")
    elif dist.active:
        say(f"engine: DDP over {dist.world} processes")
    named_params = [(name, q) for name, q in net.named_parameters() if q.requires_grad]
    params = [q for _, q in named_params]
    # a 16-bit model trains float32 master weights (FSDP2: its float32 shards are those already)
    masters = MasterWeights(params) if settings.full and params[0].dtype != torch.float32 else None
    opt_params = masters.master if masters else params
    n_trained = sum(q.numel() for q in params)
    if settings.full:
        say(f"training: full fine-tuning, every weight ({n_trained / 1e6:.1f}M)"
            + (f", float32 master weights for the {p.name} model" if masters else ""))
    else:
        say(f"training: LoRA r{lora.r} (alpha {lora.alpha}) on {', '.join(lora.targets)} ({n_trained / 1e6:.2f}M weights)")
    opt = torch.optim.AdamW(opt_params, lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.999),
                            fused=dev.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(settings))
    # fp16 gradients underflow (or overflow) without loss scaling; the LoRA weights are float32,
    # so GradScaler can unscale them. A no-op in bf16 and fp32.
    scaler = torch.amp.GradScaler(dev.type, init_scale=settings.loss_scale, enabled=p.name == "fp16")
    stream = BatchStream(train_set, settings.batch_size, settings.seed)
    return _Job(settings=settings, lora=lora, p=p, tok=tok, net=net, loss_fn=loss_fn, named_params=named_params,
                masters=masters, opt_params=opt_params, opt=opt, sched=sched, scaler=scaler, stream=stream,
                train_set=train_set, eval_set=eval_set, mode=mode, chunk_rows=chunk_rows, use_compile=use_compile,
                pad_multiple=64 if use_compile else 1, compile_key=compile_key, dev=dev, dist=dist)


def _restore(job: _Job, ckpt: Path, state: dict) -> int:
    """Weights, optimizer, schedule, loss scale, random states and data position from a
    checkpoint (FSDP2: cut into this process's shards); returns its step."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from edge.distributed import shard_like

    if job.settings.full:
        weights = load_file(ckpt / "model.safetensors", device=str(job.dev))
        if job.masters:
            job.masters.load(weights, job.named_params)
        else:
            with torch.no_grad():
                for name, q in job.named_params:
                    q.copy_(shard_like(weights[name], q))
    else:
        set_peft_model_state_dict(job.net, load_file(ckpt / "adapter_model.safetensors", device=str(job.dev)))
    job.opt.load_state_dict(state["optimizer"])
    job.dist.shard_optimizer(job.opt)  # FSDP2: the saved full moments cut into this process's shards
    job.sched.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        job.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    job.stream = BatchStream(job.train_set, job.settings.batch_size, job.settings.seed, state["epoch"], state["index"])
    job.dist.restore_rng(state)
    return state["step"]


def _open_log(out: Path, dist, start: int) -> Path:
    """log.jsonl (process 0; the others write nowhere): emptied for a new run, cut back to the
    checkpoint's step on a resume (lines written after it, before the interruption)."""
    log_file = out / LOG if dist.is_main else Path(os.devnull)
    if start == 0:
        log_file.write_text("")
    else:
        lines = log_file.read_text().splitlines() if log_file.is_file() else []  # a copied checkpoint alone: none
        keep = [line for line in lines if line.strip() and json.loads(line)["step"] <= start]
        log_file.write_text("".join(line + "\n" for line in keep))
    return log_file


def _train_step(job: _Job, step: int, last_ckpt) -> dict:
    """One optimizer step over the global batch: this process's micro-batches forward and
    backward, gradients summed over processes, clipped, and the update (skipped on an fp16
    overflow). Returns {loss, tokens, grad_norm, skipped}; raises when the step would train
    nothing or went non-finite."""
    import torch

    from edge import distributed

    s, dist, scaler = job.settings, job.dist, job.scaler
    job.opt.zero_grad(set_to_none=True)
    # this process's micro-batches of the global batch; n_label: label tokens of the global batch
    micro, n_label = dist.step_batches(job.stream, s)
    step_loss, step_tokens = 0.0, 0
    for i, batch in enumerate(micro):
        ids, att, lab, pos, n_real = make_batch(batch, job.dev, job.pad_multiple, s.pack)
        with dist.accumulating(more=i < len(micro) - 1):  # gradients sync after the last
            loss_sum, _ = job.loss_fn(ids, att, lab, job.chunk_rows, job.use_compile, position_ids=pos)
            scaler.scale(loss_sum / n_label).backward()
        step_loss += float(loss_sum.detach())
        step_tokens += n_real  # real tokens only, never padding
    step_loss, step_tokens = dist.sum_step(step_loss / n_label, step_tokens)  # over all processes
    missing = [name for name, q in job.named_params if q.grad is None]
    if missing:  # a broken autograd graph: the step would silently train nothing
        raise EdgeError(f"no gradient reached {len(missing)} of {len(job.named_params)} adapter weights at step "
                        f"{step + 1} (e.g. {missing[0]}); training stopped; this is a bug in how the model "
                        "was built or compiled: please report it")
    if job.masters:
        job.masters.grads_to_master()
    scaler.unscale_(job.opt)
    norm = torch.nn.utils.clip_grad_norm_(job.opt_params, s.clip if s.clip > 0 else float("inf"))
    norm = distributed.plain(norm)  # FSDP2: the global norm, from a DTensor
    # fp16: gradients that overflow at the current loss scale are normal; GradScaler skips
    # that update and halves the scale. Overflowing even at scale 1 is a real failure.
    overflow = not torch.isfinite(norm)
    skipped = overflow and scaler.is_enabled() and scaler.get_scale() > 1.0
    if float(norm) == 0.0:  # what torch 2.11 compiled from the old fp16 fixes (edge.precision)
        raise EdgeError(f"every adapter weight got an all-zero gradient at step {step + 1} (loss {step_loss:.4g}); "
                        "training stopped: it would train nothing; this is a bug in how the model was built "
                        "or compiled: please report it")
    if not math.isfinite(step_loss) or (overflow and not skipped):
        what = "loss" if not math.isfinite(step_loss) else "gradient norm"
        raise NonFiniteError(
            f"the {what} became non-finite at step {step + 1} ({step_loss if what == 'loss' else float(norm)}); "
            f"training stopped before the update; last good checkpoint: {last_ckpt or 'none'}; "
            "try --precision bf16 or fp32, or a lower --lr")
    scaler.step(job.opt)  # skips the update when the unscaled gradients hold inf/NaN
    scaler.update()
    if job.masters:
        job.masters.master_to_model()
    if not skipped:
        job.sched.step()
    return {"loss": step_loss, "tokens": step_tokens, "grad_norm": float(norm), "skipped": skipped}


def _save_final(job: _Job, out: Path, final: dict) -> None:
    """The adapter (or with --full the whole model) into OUT: written beside, then renamed file
    by file. Every process calls it (FSDP2 gathers the shards); process 0 writes."""
    gathered = job.dist.gather_full(full_state_dict(job.net, job.masters), job.opt)
    if not job.dist.is_main:
        return
    tmp = temp_dir(out, "final")
    try:
        if job.settings.full:
            save_full(job.net, tmp, final, job.masters, job.tok, weights=gathered.get("weights"))
        else:
            save_adapter(job.net, tmp, final)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train(*, model: str = "embedded", data: str | Path, out: str | Path, lora: LoraSettings | None = None,
          settings: TrainSettings | None = None, precision: str = "auto", resume: bool = False,
          force: bool = False, loaded=None, progress: bool = True, callback: Callable | None = None,
          say: Callable[[str], None] = print) -> TrainResult:
    """Train a LoRA adapter; see the module docstring. `loaded` = (model, tokenizer, precision)
    reuses an already-loaded base (the demo measures it first). `callback(step, model, record)`
    runs after each step (tests use it)."""
    import torch
    from tqdm import tqdm

    from edge import distributed

    lora, settings = lora or LoraSettings(), settings or TrainSettings()
    out = Path(out)
    dist = distributed.current()  # one process, or one of several (torchrun): edge.distributed
    if not dist.is_main:
        say, progress = (lambda s: None), False
    base = base_identity(model)
    ckpt, state = None, None
    if resume:
        ckpt, state, lora, settings, precision = _open_checkpoint(out, base, lora, settings, precision, dist, say)
    else:
        _clear_out(out, data, force, dist)

    job = _prepare(model, data, lora, settings, precision, loaded, state is None, dist, say)
    settings, net = job.settings, job.net
    start = 0
    if state is not None:
        start = _restore(job, ckpt, state)
        say(f"resuming from {ckpt} (step {start})")
    meta = {"base": base, "lora": None if settings.full else asdict(lora), "full": settings.full,
            "train": asdict(settings), "precision": job.p.name,
            "precision_asked": precision, "data": {"path": str(Path(data).resolve()), "sha256": sha256_file(Path(data)),
                                                   "train": len(job.train_set), "eval": len(job.eval_set)}}
    dist.barrier()  # every process has checked OUT before process 0, which alone writes there, starts
    out.mkdir(parents=True, exist_ok=True)
    log_file = _open_log(out, dist, start)

    net.train()
    losses, last_ckpt = [], ckpt
    tokens_seen, t0, marks = 0, time.time(), []
    stopped, train_loss, eval_loss = "done", None, None
    bar = tqdm(total=settings.steps, initial=start, desc="fine-tune", unit="step", disable=not progress, dynamic_ncols=True)
    bar.set_postfix_str("first step: the slowest (warm-up" + (", compiling)" if job.use_compile else ")"))
    with _StopFlag(hard=not dist.active) as flag, open(log_file, "a", encoding="utf-8") as log:
        step = start
        try:
            while step < settings.steps:
                r = _train_step(job, step, last_ckpt)
                step += 1
                tokens_seen += r["tokens"]
                dt = time.time() - t0
                marks.append((dt, r["tokens"]))
                record = {"step": step, "loss": r["loss"], "lr": job.sched.get_last_lr()[0], "grad_norm": r["grad_norm"],
                          "tokens": r["tokens"], "tok_s": tokens_seen / dt if dt > 0 else 0.0, "elapsed": dt,
                          # tok_s: overall since the start, compiling included; step_tok_s: this step alone
                          "step_tok_s": r["tokens"] / (dt - marks[-2][0]) if len(marks) > 1 and dt > marks[-2][0] else None}
                if job.scaler.is_enabled():
                    record.update(loss_scale=job.scaler.get_scale(), skipped=r["skipped"])
                losses.append(r["loss"])
                train_loss = r["loss"]
                if (step % settings.eval_interval == 0 or step == settings.steps) and job.eval_set:
                    eval_loss = evaluate_loss(net, job.eval_set, settings.batch_size, job.chunk_rows, job.use_compile,
                                              job.pad_multiple, settings.pack, job.loss_fn)
                    record["eval_loss"] = eval_loss
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{r['loss']:.4f}", tok_s=f"{record['tok_s']:.0f}",
                                **({"eval": f"{eval_loss:.4f}"} if eval_loss is not None else {}))
                bar.update(1)
                if callback is not None:
                    callback(step, net, record)
                interrupted = dist.any(flag.set)  # a stop asked of any process stops all of them after this step
                if step % settings.save_interval == 0 or step == settings.steps or interrupted:
                    gathered = dist.gather_full(full_state_dict(net, job.masters), job.opt)  # FSDP2: every process gives its shards
                    last_ckpt = dist.save(save_checkpoint, out, net, job.opt, job.sched, job.scaler, job.stream, step,
                                          meta, settings.keep, full=settings.full, masters=job.masters, **gathered)
                if interrupted:
                    stopped = "interrupted"
                    break
        finally:
            bar.close()
    seconds = time.time() - t0
    if stopped == "done":
        _save_final(job, out, {**meta, "step": step, "train_loss": train_loss, "eval_loss": eval_loss})
    if job.use_compile and step - start >= 2 and dist.is_main:
        remember_compiled(job.compile_key)
    if dist.is_main:
        plot_losses(log_file, out / PLOT)
    dist.barrier()
    net.eval()
    dev = job.dev
    return TrainResult(out=str(out), steps=step, start_step=start, train_loss=train_loss, eval_loss=eval_loss,
                       tokens_per_s=tokens_seen / seconds if seconds > 0 else 0.0, seconds=seconds, precision=job.p.name,
                       steady_tokens_per_s=steady_rate(marks), memory_mode=job.mode,
                       peak_gib=torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
                       stopped=stopped, checkpoint=str(last_ckpt) if last_ckpt else None, losses=losses, model=net)


# ---------------------------------------------------------------------------------------------
# CLI and demo


FULL_LR = 5e-5  # --full's default: Google's Gemma full fine-tuning guide (ai.google.dev, "Full model fine-tune using Hugging Face Transformers") trains with 5e-5


def next_step(out: Path, full: bool = False) -> str:
    """The command printed after a fine-tune; it runs as printed (a LoRA adapter is merged
    beside its folder; a full fine-tune is exported beside it)."""
    out = Path(out)
    if full:
        return f"edge export --model {shlex.quote(str(out))} --out {shlex.quote(str(out) + '-F32.gguf')}"
    merged = out.with_name(out.name + "-merged")
    return f"edge merge --adapter {shlex.quote(str(out))} --out {shlex.quote(str(merged))}"


def finetune_cmd(*, data: str, out: str, model: str = "embedded", precision: PrecisionName = "auto",
                 resume: bool = False, force: bool = False, steps: int | None = None, epochs: float | None = None,
                 lr: float | None = None, compile: Literal["auto", "on", "off"] = "auto", gpus: int = 0,
                 json: bool = False, lora: LoraSettings | None = None,
                 training: TrainSettings | None = None) -> dict | None:
    """Fine-tune a Gemma 3 model on chat JSONL (LoRA, or every weight with --full); the loss is
    on the model's replies only.

    Writes the adapter (or with --full the whole model, ready for `edge export`), checkpoints,
    log.jsonl and loss.png into OUT. Ctrl-C saves a checkpoint; `--resume` continues exactly
    where it stopped. The LoRA flags (--rank, --alpha, --dropout, --targets) are LoraSettings'
    fields and the training flags TrainSettings' (edge/finetune.py), with their defaults.

    Args:
        data: chat JSONL file ({"messages": [{"role": ..., "content": ...}]} per line).
        out: folder for the adapter, checkpoints and logs.
        model: base model: 'embedded', a local Hugging Face directory or a cached hub id.
        precision: auto, bf16, fp16 or fp32 (`edge precision` shows what auto picks).
        resume: continue from the newest checkpoint in OUT (same model and data settings).
        force: overwrite an existing OUT that is not being resumed.
        steps: optimizer steps to train (on --resume: the new total).
        epochs: train this many passes over the training chats instead of --steps.
        lr: peak learning rate (AdamW, linear warm-up then cosine decay); with --full the default
            is 5e-5 instead (Google's Gemma full fine-tuning guide).
        compile: torch.compile the layers on a GPU: on, off, or auto (on when this model compiled
            here before, so torch's caches are warm, or when the job is long enough to pay for a
            first compile; eager otherwise); the log says which and why.
        gpus: train on N GPUs, one process each, started through torchrun (default: one; under
            torchrun or accelerate launch: as many as they started). The result is the same.
        json: print the result as JSON (and no progress bar).
        lora: the adapter's shape (flags --rank, --alpha, --dropout, --targets).
        training: the optimisation settings (one flag per TrainSettings field).
    """
    lora_given = lora is not None and lora != LoraSettings()
    lora = lora or LoraSettings()
    training = training or TrainSettings()
    full = training.full
    args = {**dict(locals()), "lora": lora, "training": training}
    from edge import distributed
    from edge.data import load_chats

    # the inputs are checked before torch is imported (seconds) or processes start: a bad file answers at once
    load_chats(data)
    if Path(out).exists() and not Path(out).is_dir():
        raise EdgeError(f"--out {out} is a file; give a folder for the adapter")
    if not resume:
        check_writable(Path(out), force)

    if compile not in ("auto", "on", "off"):
        raise EdgeError(f"--compile must be auto, on or off, got {compile!r}")
    if full and lora_given:
        defaults = LoraSettings()
        given = [f"--{f.metadata.get('flag', f.name)}" for f in fields(LoraSettings)
                 if getattr(lora, f.name) != getattr(defaults, f.name)]
        raise EdgeError(f"{', '.join(given)} {'is a LoRA setting' if len(given) == 1 else 'are LoRA settings'}; "
                        "--full trains every weight and has no adapter: drop it or drop --full")
    if epochs is not None and steps is not None:
        raise EdgeError(f"give --steps ({steps}) or --epochs ({epochs}), not both")
    if epochs is not None and not epochs > 0:
        raise EdgeError(f"--epochs must be a number > 0, got {epochs}")
    if distributed.needs_launch(gpus):  # --gpus N > 1 and no launcher yet: start torchrun, same flags
        from edge.cli import argv_for

        return distributed.launch(gpus, argv_for("finetune", finetune_cmd, args), lambda: latest_checkpoint(Path(out)))
    chosen = {"steps": steps, "epochs": epochs, "lr": FULL_LR if full and lr is None else lr,
              "compile": {"auto": None, "on": True, "off": False}[compile]}
    settings = replace(training, **{k: v for k, v in chosen.items() if v is not None or k == "compile"})
    dist = distributed.current()
    say = (lambda s: None) if json or not dist.is_main else print
    with distributed.quiet_errors(dist):  # processes other than 0 leave the messages to it
        result = train(model=model, data=data, out=out, lora=lora, settings=settings, precision=precision,
                       resume=resume, force=force, progress=not json, say=say)
        if result.stopped == "interrupted":
            if dist.is_main:
                print(f"interrupted at step {result.steps}; checkpoint {result.checkpoint}; continue with --resume",
                      file=sys.stderr)
            raise KeyboardInterrupt
    if not dist.is_main:
        return None
    # not asdict(result): it would deep-copy the model (which FSDP2 refuses)
    summary = result.record(leave_out=("losses",))
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
    nxt = f"{'model' if full else 'adapter'}: {out}  (log.jsonl, loss.png)\nnext: {next_step(Path(out), full)}"
    say(f"trained steps {result.start_step}->{result.steps} in {result.seconds:.0f} s "
        f"({result.tokens_per_s:.0f} tok/s overall with warm-up"
        + (f", {result.steady_tokens_per_s:.0f} steady (second half)" if result.steady_tokens_per_s else "")
        + f", {result.precision}, memory mode {result.memory_mode}); train loss {fmt(result.train_loss)}, "
        f"eval loss {fmt(result.eval_loss)}\n{nxt}")
    return summary
