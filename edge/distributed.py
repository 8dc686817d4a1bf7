"""More than one GPU: `edge finetune` on PyTorch's own distributed engine (torchrun, DDP).

    edge finetune --gpus 2 --data train.jsonl --out runs/ft        # starts torchrun itself
    torchrun --standalone --nproc-per-node 2 -m edge.cli finetune --data train.jsonl --out runs/ft
    accelerate launch --multi_gpu --num_processes 2 -m edge.cli finetune --data train.jsonl --out runs/ft

Takes the environment a launcher sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT:
torchrun sets them, and `accelerate launch` starts torchrun). With a world of one process
nothing here does anything, so a plain `edge finetune` runs exactly as before. With more,
`edge.finetune.train` asks this module, at a few marked places, for:

- the process group: NCCL on GPUs (one GPU per process, LOCAL_RANK), gloo on CPUs; every
  collective times out (`TIMEOUT_S`) instead of waiting forever for a process that is gone;
- this process's share of each step: `--batch-size` stays the global batch (chats per
  optimizer step, the same stream of batches as on one GPU); the chats of a step are split
  over the processes by tokens, and each process runs its share in micro-batches of
  `--micro-batch` chats (gradient accumulation). The loss is divided by the label tokens of
  the whole global batch and gradients are summed across processes, so 1, 2 or 8 GPUs
  compute the same gradient (up to float rounding) and train the same model;
- the engine around the loss: for LoRA, DDP (`torch.nn.parallel.DistributedDataParallel`):
  every process holds the whole model, and the adapter's gradients are all-reduced while the
  backward pass runs, once per step (no_sync on earlier micro-batches). For --full, FSDP2
  (`torch.distributed.fsdp.fully_shard`, each decoder layer and then the rest): every
  weight (float32: the master weights), gradient and optimizer moment is split over the
  processes (ZeRO-3); a layer's weights are gathered in the training precision just before
  it runs and dropped after, and gradients are reduce-scattered in float32 (no sync on
  earlier micro-batches either);
- agreement: the step's loss and tokens are summed over processes, and a Ctrl-C or SIGTERM
  on any process stops every process after the same step;
- checkpoints: process 0 alone writes logs, loss.png, checkpoints and the adapter (with
  FSDP2 every process first gathers the full weights and optimizer state, and process 0
  writes them as one process would: a checkpoint does not depend on the number of
  processes, and `--resume` cuts it into this run's shards again); each
  checkpoint holds every process's random state and the world size, so `--resume` restores
  each process exactly; a checkpoint from another number of processes resumes too (the data
  position is global), unless LoRA dropout makes the random states matter: then it is refused.

`edge finetune --gpus N` (`launch`) starts N processes through torchrun's own launcher
(`torch.distributed.launcher.api.elastic_launch`, what the `torchrun` command runs) and turns
a process that died into one line that names its rank.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError

# Longest wait in one collective (a step's gradient all-reduce, the checkpoint hand-off) before
# the job stops instead of hanging: longer than a first step's compile (about 35 s on an H200,
# docs/BENCHMARKS.md) and a 1B checkpoint's write; EDGE_DIST_TIMEOUT_S overrides it.
TIMEOUT_S = 600

# After Ctrl-C or SIGTERM, how long the launcher waits for the processes to finish their step and
# write the checkpoint before it kills them (torchrun's own default is 30 s).
SHUTDOWN_S = 300


class RankError(EdgeError):
    """Another process of the job died or stopped answering."""

    exit_code = 1


@dataclass
class Dist:
    """Where this process stands in the job; rank 0 of a world of 1 when not launched."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    # -- the data ------------------------------------------------------------------------------

    def step_batches(self, stream, settings):
        """(this process's micro-batches of one optimizer step, label tokens of the global batch).

        The global batch is `settings.grad_accum` batches of `settings.batch_size` chats from
        `stream`, the same on every process. One process keeps them as they are (micro-batches
        of `micro_batch` chats when it is set); several split the chats by tokens, longest first
        to the least loaded process, each process getting the same number of chats.
        """
        from edge.chunked_loss import IGNORE

        batches = [stream.next() for _ in range(settings.grad_accum)]
        chats = [e for b in batches for e in b]
        n_label = sum(x != IGNORE for e in chats for x in e.labels[1:])
        if self.world == 1 and not settings.micro_batch:
            return batches, n_label
        mine = split_chats(chats, self.world)[self.rank] if self.world > 1 else chats
        size = settings.micro_batch or len(mine) // settings.grad_accum or 1
        return [mine[i:i + size] for i in range(0, len(mine), size)], n_label

    def check_settings(self, settings) -> None:
        per_step = settings.batch_size * settings.grad_accum
        if per_step % self.world:
            raise EdgeError(f"--batch-size {per_step} does not split over {self.world} processes; "
                            f"use a multiple of {self.world}")
        if settings.micro_batch > per_step // self.world:
            raise EdgeError(f"--micro-batch {settings.micro_batch} is more than the {per_step // self.world} chats "
                            f"each of {self.world} processes gets per step (--batch-size {per_step}); "
                            "lower it or leave it out")

    # -- the model -----------------------------------------------------------------------------

    sharded: bool = False  # FSDP2: weights, gradients and optimizer state split over the processes

    def wrap(self, net, loss_fn, full: bool = False):
        """A callable `(*args) -> loss_fn(net, *args)`; several processes: through DDP (LoRA) or
        FSDP2 (`full`: every weight trained), whose gradients then hold the sum over processes
        of d(loss)/d(weight). Call it before taking `net`'s parameters: FSDP2 replaces them
        with their shards."""
        import functools

        if not self.active:
            return functools.partial(loss_fn, net)
        if full:
            return self._shard(net, loss_fn)
        import inspect

        import torch._dynamo
        from torch.nn.parallel import DistributedDataParallel as DDP

        # The layers are compiled one by one (edge.finetune.compile_layers): dynamo's DDP graph
        # splitting has nothing to add there; DDP still all-reduces each bucket as soon as the
        # backward pass has filled it, so communication overlaps the remaining layers' backward.
        torch._dynamo.config.optimize_ddp = False
        cuda = next(net.parameters()).device.type == "cuda"
        # buffers (RoPE frequencies) are the same everywhere: no broadcast before each forward
        no_sync_buffers = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                           else {"broadcast_buffers": False})  # torch < 2.13
        self._ddp = DDP(_LossModule(net, loss_fn, self.world), device_ids=[self.local_rank] if cuda else None,
                        **no_sync_buffers)
        return self._ddp

    def _shard(self, net, loss_fn):
        import torch
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from edge.models import causal_lm

        # A 16-bit model: the shards are float32 (they are the master weights one process keeps
        # in edge.finetune.MasterWeights, and the optimizer steps them), each layer computes with
        # its weights gathered in 16 bits, and gradients are summed over processes in float32.
        # Inputs are not cast: the fp16 fixes keep the residual stream in float32.
        dtype = next(net.parameters()).dtype
        half = dtype in (torch.float16, torch.bfloat16)
        if half:
            net.float()
        mp = MixedPrecisionPolicy(param_dtype=dtype if half else None, reduce_dtype=torch.float32 if half else None,
                                  cast_forward_inputs=False)
        for layer in causal_lm(net).model.layers:
            fully_shard(layer, mp_policy=mp)
        # the root: embeddings (tied to the output head), the final norm, and the loss itself, whose
        # chunked head reads the gathered embedding between the body's forward and backward
        module = _LossModule(net, loss_fn, self.world)
        fully_shard(module, mp_policy=mp)
        self._fsdp, self.sharded = module, True
        return module

    def accumulating(self, more: bool):
        """Context for one micro-batch; `more`: others follow in this step, so gradients
        are not synchronised yet (DDP's no_sync; FSDP2 keeps them unsharded until the last)."""
        fsdp = getattr(self, "_fsdp", None)
        if fsdp is not None:
            fsdp.set_requires_gradient_sync(not more)
            return contextlib.nullcontext()
        ddp = getattr(self, "_ddp", None)
        return ddp.no_sync() if ddp is not None and more else contextlib.nullcontext()

    def gather_full(self, weights: dict, optimizer) -> dict:
        """FSDP2: the full weights (`weights`: edge.finetune.full_state_dict, this process's
        shards) and optimizer state, gathered from every process's shards (every process must
        call this); process 0 gets them in CPU memory, the others None.
        Keyword arguments for `edge.finetune.save_checkpoint` / `save_full`; {} unless sharded."""
        if not self.sharded:
            return {}
        cache: dict[int, object] = {}

        def full(t):  # one gather per tensor: the tied embedding and head stay one tensor
            if id(t) not in cache:
                g = t.full_tensor() if _is_dtensor(t) else t
                cache[id(t)] = g.detach().cpu() if self.is_main else None
            return cache[id(t)]

        what = "gathering the full weights for a checkpoint"
        weights = self._collective(lambda: {k: full(v) for k, v in weights.items()}, what)
        osd = optimizer.state_dict()
        state = self._collective(lambda: {i: {k: full(v) for k, v in s.items()} for i, s in osd["state"].items()},
                                 "gathering the optimizer state for a checkpoint")
        if not self.is_main:
            return {"weights": None, "optim_state": None}
        return {"weights": weights, "optim_state": {**osd, "state": state}}

    def shard_optimizer(self, optimizer) -> None:
        """FSDP2, after `optimizer.load_state_dict` of a full (gathered) state: each moment cut
        into the shard of its weight."""
        if not self.sharded:
            return
        for q, st in optimizer.state.items():
            for k, v in st.items():
                if _is_dtensor(q) and not _is_dtensor(v) and tuple(v.shape) == tuple(q.shape):
                    st[k] = shard_like(v, q)

    # -- agreement -----------------------------------------------------------------------------

    def sum_step(self, loss: float, tokens: int) -> tuple[float, int]:
        """(loss, tokens) summed over processes."""
        if not self.active:
            return float(loss), int(tokens)
        loss, tokens = self._all_sum([float(loss), float(tokens)], "summing the step's loss")
        return loss, int(round(tokens))

    def any(self, flag: bool) -> bool:
        """Whether `flag` is set in any process (a Ctrl-C or SIGTERM that reached only some)."""
        if not self.active:
            return bool(flag)
        return self._all_sum([float(bool(flag))], "agreeing whether to stop")[0] > 0

    def _all_sum(self, values: list[float], what: str) -> list[float]:
        import torch

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        self._collective(lambda: torch.distributed.all_reduce(t), what)
        return t.tolist()

    def barrier(self) -> None:
        if self.active:
            import torch

            self._collective(lambda: torch.distributed.barrier(), "waiting for the other processes")

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self, save_fn, *args, **kwargs):
        """Every process calls this; process 0 writes the checkpoint (`save_fn`) with every
        process's random state in it. Returns its path on every process."""
        if not self.active:
            return save_fn(*args, **kwargs)
        import torch

        states = [None] * self.world
        self._collective(lambda: torch.distributed.all_gather_object(states, _rng_state()), "gathering random states")
        result = [None, None]
        if self.is_main:
            try:
                result[0] = str(save_fn(*args, **kwargs, extra={"dist": {"world": self.world, "rng": states}}))
            except EdgeError as e:
                result[1] = str(e)
        self._collective(lambda: torch.distributed.broadcast_object_list(result, src=0), "writing a checkpoint")
        if result[1] is not None:
            raise EdgeError(result[1])
        return Path(result[0])

    def check_resume(self, state: dict, ckpt, dropout: float) -> str | None:
        """A checkpoint written by another number of processes resumes exactly when nothing
        random remains: the data position is global and the optimizer state the same in every
        process; only LoRA dropout draws from each process's own random state, so with dropout
        it is refused. Returns a line to say, or None."""
        saved = (state.get("dist") or {}).get("world", 1)
        if saved == self.world:
            return None
        if dropout > 0:
            how = ("one process (no --gpus, no torchrun)" if saved == 1 else
                   f"{saved} processes (--gpus {saved}, or torchrun --nproc-per-node {saved})")
            raise EdgeError(f"--resume: {ckpt} was written by a run of {saved} process{'es' * (saved > 1)} and this "
                            f"run has {self.world}; with LoRA dropout {dropout} each process draws its own random "
                            f"numbers, so resume it with {how}, or start a new --out")
        return (f"resume: {ckpt} was written by {saved} process{'es' * (saved > 1)}, this run has {self.world}; "
                "the global batch, data position and optimizer carry over exactly")

    def restore_rng(self, state: dict) -> None:
        """Each process's own random state (one process: `train` restored it already)."""
        if self.active and (state.get("dist") or {}).get("world", 1) == self.world:
            _set_rng_state(state["dist"]["rng"][self.rank])

    # -- plumbing ------------------------------------------------------------------------------

    def _device(self):
        import torch

        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def _collective(self, fn, what: str):
        try:
            return fn()
        except (RuntimeError, ValueError) as e:  # DistBackendError, gloo's closed connections, timeouts
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RankError(f"process {self.rank}: another process of the job died or stopped answering while "
                            f"{what} ({first[:200]}); the job stops; --resume continues from the last checkpoint") from None


def _make_loss_module():
    import torch

    class ScaleGrad(torch.autograd.Function):
        """Identity forward; backward multiplies by `world`, so DDP's mean over processes is a sum."""

        @staticmethod
        def forward(ctx, x, world):
            ctx.world = world
            return x.clone()  # not a view: FSDP2 hooks the output (a scalar: nothing to copy)

        @staticmethod
        def backward(ctx, g):
            return g * ctx.world, None

    class LossModule(torch.nn.Module):
        """`net` with the loss as its forward, so that DDP sees the pass it synchronises."""

        def __init__(self, net, loss_fn, world: int):
            super().__init__()
            self.net, self.loss_fn, self.world = net, loss_fn, world

        def forward(self, *args, **kwargs):
            loss, n = self.loss_fn(self.net, *args, **kwargs)
            return ScaleGrad.apply(loss, self.world), n

    return LossModule


def _LossModule(net, loss_fn, world):
    return _make_loss_module()(net, loss_fn, world)


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def shard_like(t, like):
    """`t` (a full tensor, the same on every process) as this process's shard of the
    FSDP2-sharded `like`; `t` itself when `like` is not sharded. No communication."""
    if not _is_dtensor(like):
        return t
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(t.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def plain(t):
    """A reduction's result (gradient norm) as a plain tensor (FSDP2 returns a DTensor)."""
    return t.full_tensor() if _is_dtensor(t) else t


def split_chats(chats: list, world: int) -> list[list]:
    """`chats` in `world` equal-count shares with about equal tokens: longest first, each to the
    share with the fewest tokens that still has room (ties: the lowest rank). Deterministic."""
    per = len(chats) // world
    shares: list[list] = [[] for _ in range(world)]
    tokens = [0] * world
    for e in sorted(chats, key=lambda e: -len(e.ids)):
        r = min((r for r in range(world) if len(shares[r]) < per), key=lambda r: (tokens[r], r))
        shares[r].append(e)
        tokens[r] += len(e.ids)
    return shares


def _rng_state() -> dict:
    import torch

    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    import torch

    torch.set_rng_state(s["cpu"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


# ---------------------------------------------------------------------------------------------
# The process group


_CURRENT: Dist | None = None


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def current() -> Dist:
    """This process's place in the job; the first call of a launched process joins the group."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    if not launched():
        _CURRENT = Dist()
        return _CURRENT
    import atexit
    from datetime import timedelta

    import torch
    import torch.distributed as td

    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as e:
        raise EdgeError(f"WORLD_SIZE is {os.environ.get('WORLD_SIZE')} but RANK/LOCAL_RANK are missing or not numbers "
                        f"({e}); start the job with torchrun or accelerate launch") from None
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if local >= torch.cuda.device_count():
            raise EdgeError(f"process {rank} would use GPU {local}, but this machine shows "
                            f"{torch.cuda.device_count()}; start at most that many processes per machine")
        torch.cuda.set_device(local)
    timeout = timedelta(seconds=float(os.environ.get("EDGE_DIST_TIMEOUT_S", TIMEOUT_S)))
    if not td.is_initialized():
        kw = {"device_id": torch.device("cuda", local)} if backend == "nccl" else {}
        td.init_process_group(backend=backend, timeout=timeout, **kw)
        atexit.register(_destroy)
    _CURRENT = Dist(rank=rank, world=world, local_rank=local, backend=backend)
    return _CURRENT


def _destroy() -> None:
    import torch.distributed as td

    if td.is_initialized():
        td.destroy_process_group()


@contextlib.contextmanager
def quiet_errors(dist: Dist):
    """Processes other than 0 exit a bad-input error (which every process meets alike, and
    process 0 prints) or an interruption with its exit code and no second copy of the line."""
    try:
        yield
    except RankError:
        raise
    except EdgeError as e:
        if dist.is_main:
            raise
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        if dist.is_main:
            raise
        raise SystemExit(130) from None


# ---------------------------------------------------------------------------------------------
# `--gpus N`: start torchrun


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def visible_gpus() -> int:
    """The CUDA GPUs a process started from here would see, without importing torch (the TUI
    asks): `nvidia-smi -L`'s list, narrowed by CUDA_VISIBLE_DEVICES; 0 without NVIDIA's driver."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    n = sum(line.startswith("GPU ") for line in listed.splitlines())
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        return n
    # CUDA stops at the first entry that is not a device: "0,1" -> 2, "" -> 0, "0,-1,1" -> 1
    shown = 0
    for entry in mask.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        shown += 1
    return min(n, shown)


def needs_launch(gpus: int) -> bool:
    """True when `--gpus N` (N > 1) asks for processes that no launcher started yet. Under a
    launcher, `--gpus` must agree with the number of processes it started."""
    if gpus < 0:
        raise EdgeError(f"--gpus must be >= 0, got {gpus}")
    if launched():
        world = int(os.environ["WORLD_SIZE"])
        if gpus and gpus != world:
            raise EdgeError(f"--gpus {gpus}, but the launcher started {world} processes; "
                            f"drop --gpus or make them agree")
        return False
    if gpus:
        have = gpu_count()
        if have < gpus:
            raise EdgeError(f"--gpus {gpus}: this machine has {have} CUDA GPU{'s' * (have != 1)}; "
                            + (f"use --gpus {have} or fewer" if have else "leave --gpus out to train on the CPU"))
    return gpus > 1


def torchrun_command(gpus: int, argv: list[str], module: str = "edge.cli") -> list[str]:
    """The `torchrun` command line that `launch` runs (printed so that it can be reused)."""
    return ["torchrun", "--standalone", f"--nproc-per-node={gpus}", "-m", module, *argv]


def launch(gpus: int, argv: list[str], last_checkpoint=None, module: str = "edge.cli") -> None:
    """Run `python -m MODULE <argv>` (by default `edge <argv>`) in `gpus` processes, one per GPU,
    through torchrun's launcher, and wait. A process that dies stops the others and ends here in
    one line naming its rank and `last_checkpoint()`, the checkpoint to resume from (if any)."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    print(f"edge: starting {gpus} processes, one per GPU, with torchrun: {' '.join(torchrun_command(gpus, argv, module))}",
          file=sys.stderr, flush=True)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # we say what failed, below
    import dataclasses

    extra = {"shutdown_timeout": SHUTDOWN_S} if "shutdown_timeout" in {f.name for f in dataclasses.fields(LaunchConfig)} else {}
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=gpus, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5,
                          **extra)
    try:
        elastic_launch(config, sys.executable)("-m", module, *argv)
    except SignalException:  # Ctrl-C or SIGTERM here: the processes got it too and saved a checkpoint
        raise KeyboardInterrupt from None
    except ChildFailedError as e:
        codes = {rank: f.exitcode for rank, f in e.failures.items()}
        if set(codes.values()) <= {2}:
            raise SystemExit(2) from None  # bad input: process 0 printed the line
        if set(codes.values()) <= {130}:
            raise KeyboardInterrupt from None
        rank, f = e.get_first_failure()
        how = f"was killed by {f.signal_name()}" if f.exitcode < 0 else f"exited with code {f.exitcode}"
        last = last_checkpoint() if last_checkpoint else None
        raise RankError(f"process {rank} of {gpus} {how}; the other processes were stopped; "
                        f"last checkpoint: {last or 'none'}" + ("; continue with --resume" if last else "")) from None
