"""What a GGUF says about itself, as the numbers the budget needs: shapes, tensor bytes by type.

Takes a .gguf path; reads only its header, through edge.ggufinfo's bounded reader (the one GGUF
header reader), and checks every count the estimate will use. Writes nothing.

    from edge.modelinfo import model_info, read_models
    info = model_info("m-Q4_0.gguf"); info.n_layers, info.tensor_bytes, info.matmul_types
    infos, skipped = read_models(paths)      # a folder's imatrix or projector is skipped, and said
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge import gemma3, ggufinfo
from edge.errors import EdgeError, NotAModel, printable


@dataclass
class ModelInfo:
    """What a GGUF says about itself: shapes, tensor sizes, types. Read from the header."""

    path: str
    file_bytes: int
    arch: str
    name: str
    file_type: int | None
    n_layers: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    key_length: int
    value_length: int
    n_vocab: int
    context_length: int
    sliding_window: int        # 0 = none
    swa_pattern: int           # every swa_pattern-th layer is global (Gemma 3: 6)
    tensor_bytes: int          # all tensor data
    embd_bytes: int            # token_embd
    embd_type: str
    output_bytes: int          # a separate output.weight; 0 when tied to token_embd
    tied_output: bool
    types: dict[str, int] = field(default_factory=dict)   # type name -> bytes
    matmul_types: dict[str, int] = field(default_factory=dict)   # bytes of matmul weights by type
    params: int = 0
    tensors: list[tuple[str, str, tuple[int, ...], int]] = field(default_factory=list)  # (name, type, shape ne0-first, bytes)

    def global_layers(self) -> list[int]:
        if not self.sliding_window:
            return list(range(self.n_layers))
        return [il for il in range(self.n_layers) if gemma3.is_global_layer(il, self.swa_pattern)]

    @property
    def bits_per_weight(self) -> float:
        from edge.ggufinfo import bits_per_weight

        return bits_per_weight(self.tensor_bytes, self.params) or 0.0


def model_info(path: str | Path) -> ModelInfo:
    """Read a GGUF's metadata and tensor table (not its data) into the numbers the budget needs,
    through edge.ggufinfo's bounded reader. errors.NotAModel for a projector, an imatrix or a vocab file."""
    header = ggufinfo.read_gguf(path)     # refuses any version but ggufinfo.GGUF_VERSION
    kv = dict(header.metadata)
    if "tokenizer.ggml.tokens" in header.array_lengths:
        kv["tokenizer.ggml.tokens"] = header.array_lengths["tokenizer.ggml.tokens"]
    return _model_info(Path(path), kv, header.tensors)


# Bounds on the counts a model file declares: far above any model llama.cpp runs on a phone,
# low enough that a hostile file cannot make the estimate loop or allocate without end.
_LIMITS = {"block_count": (1, 4096), "embedding_length": (1, 1 << 20), "feed_forward_length": (0, 1 << 22),
           "attention.head_count": (1, 4096), "attention.head_count_kv": (0, 4096),
           "attention.key_length": (1, 1 << 16), "attention.value_length": (1, 1 << 16),
           "context_length": (0, 1 << 26), "attention.sliding_window": (0, 1 << 26),
           "attention.sliding_window_pattern": (0, 4096)}


def _check_counts(path: Path, arch: str, kv: dict, n_tensors: int) -> None:
    """Every count the estimate uses: an integer (or a list of them, per layer) within sane
    bounds, and no more layers than the file has tensors; else EdgeError."""
    for key, (lo, hi) in _LIMITS.items():
        v = kv.get(f"{arch}.{key}")
        if v is None:
            continue
        values = v if isinstance(v, list) and key in ("feed_forward_length", "attention.head_count",
                                                       "attention.head_count_kv") else [v]
        if not values or not all(isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi for x in values):
            raise EdgeError(f"{path}: {arch}.{key} = {printable(v, 60)} is not a count in [{lo}, {hi:,}]; "
                            "the file is damaged or not a llama.cpp model: re-export it")
    if kv[f"{arch}.block_count"] > n_tensors:
        raise EdgeError(f"{path}: {arch}.block_count {kv[f'{arch}.block_count']:,} is more than its "
                        f"{n_tensors} tensors; the file is damaged: re-export it")
    tokens = kv.get("tokenizer.ggml.tokens")
    if tokens is not None and not (isinstance(tokens, int) and 0 <= tokens <= 1 << 24):
        raise EdgeError(f"{path}: tokenizer.ggml.tokens is not a vocabulary; the file is damaged: re-export it")


def read_models(paths) -> tuple[list[ModelInfo], list[str]]:
    """The language models among `paths`, and one line per file skipped (an importance matrix,
    a projector, a damaged file): a folder's other GGUFs never stop the ones that are models."""
    infos, skipped = [], []
    for p in paths:
        try:
            infos.append(model_info(p))
        except NotAModel as e:
            what = "an importance matrix" if e.gguf_type == "imatrix" else "no model tensors"
            skipped.append(f"{Path(p).name}: not a language model ({what})")
        except EdgeError as e:
            skipped.append(str(e))
    return infos, skipped


def _model_info(path: Path, kv: dict, tensors: list) -> ModelInfo:
    arch = kv.get("general.architecture", "")
    arch = arch if isinstance(arch, str) else ""
    gtype = kv.get("general.type", "model")
    a = lambda k, d=None: kv.get(f"{arch}.{k}", d)   # noqa: E731
    names = {t.name for t in tensors}
    if gtype != "model" or arch in ("clip", "") or a("block_count") is None or "token_embd.weight" not in names:
        raise NotAModel(f"{path} is not a language model GGUF (architecture {printable(arch, 40) or '?'!r}, type "
                        f"{printable(gtype, 40)!r}); give the model file, not a projector/adapter/vocab file",
                        gtype if isinstance(gtype, str) else "")
    for key in ("embedding_length", "attention.head_count"):
        if not a(key):
            raise EdgeError(f"{path} has no {arch}.{key} in its metadata; it is not a complete llama.cpp "
                            "model file: re-export it")
    _check_counts(path, arch, kv, len(tensors))
    total = embd = out = 0
    embd_type = ""
    types: dict[str, int] = {}
    mm: dict[str, int] = {}
    params = 0
    n_vocab_t = 0
    for t in tensors:
        total += t.n_bytes
        params += t.n_elements
        types[t.type] = types.get(t.type, 0) + t.n_bytes
        if len(t.shape) >= 2 and t.name != "token_embd.weight":
            mm[t.type] = mm.get(t.type, 0) + t.n_bytes
        if t.name == "token_embd.weight":
            embd, embd_type = t.n_bytes, t.type
            n_vocab_t = t.shape[1] if len(t.shape) > 1 else 0
        elif t.name == "output.weight":
            out = t.n_bytes
    n_head = a("attention.head_count")
    n_head = max(n_head) if isinstance(n_head, list) else n_head
    n_head_kv = a("attention.head_count_kv", n_head)
    n_head_kv = max(n_head_kv) if isinstance(n_head_kv, list) else n_head_kv
    n_embd = a("embedding_length")
    tokens = kv.get("tokenizer.ggml.tokens")
    pattern = a("attention.sliding_window_pattern")
    if not isinstance(pattern, int) or pattern <= 0:
        pattern = gemma3.SLIDING_WINDOW_PATTERN if arch.startswith("gemma3") else 1
    info = ModelInfo(
        path=str(path), file_bytes=path.stat().st_size, arch=arch, name=printable(kv.get("general.name") or path.stem, 80),
        file_type=ft if isinstance(ft := kv.get("general.file_type"), int) else None, n_layers=a("block_count"), n_embd=n_embd,
        n_ff=a("feed_forward_length", 0) if not isinstance(a("feed_forward_length"), list) else max(a("feed_forward_length")),
        n_head=n_head, n_head_kv=n_head_kv,
        key_length=a("attention.key_length", n_embd // n_head),
        value_length=a("attention.value_length", n_embd // n_head),
        n_vocab=tokens if isinstance(tokens, int) else n_vocab_t,
        context_length=a("context_length", 0), sliding_window=a("attention.sliding_window", 0) or 0,
        swa_pattern=pattern, tensor_bytes=total, embd_bytes=embd, embd_type=embd_type,
        output_bytes=out, tied_output=out == 0, types=types,
        matmul_types={**mm, **({embd_type: mm.get(embd_type, 0) + embd} if out == 0 else {})}, params=params,
        tensors=[(t.name, t.type, tuple(int(d) for d in t.shape), t.n_bytes) for t in tensors])
    return info


