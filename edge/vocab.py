"""Gemma 3's vocabulary as llama.cpp's SentencePiece tokenizer ("llama") wants it in a GGUF.

Takes a checkpoint folder's `tokenizer.model` (piece scores and types read from the protobuf,
as llama.cpp's converter does) or `tokenizer.json` (scores rebuilt from the BPE merge ranks);
gives the tokens, scores and token types that `edge.export` writes. Nothing is written here.

    python -c "from edge.vocab import build_vocab; from pathlib import Path; print(build_vocab(Path('DIR'), 262144).source)"
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from edge import gemma3
from edge.errors import EdgeError
from edge.ggufinfo import gguf_py


@dataclass
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    source: str  # "tokenizer.model" or "tokenizer.json"


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
SPECIAL_SCORE = -1000.0  # what the real Gemma 3 GGUF stores for control / user-defined tokens


def build_vocab(model_dir: Path, n_vocab: int) -> Vocab:
    """Tokens, scores and token types for llama.cpp's SentencePiece tokenizer ("llama").

    From `tokenizer.model` when present (piece scores and types read from the protobuf,
    as llama.cpp's converter does), else rebuilt from `tokenizer.json`, which has BPE merges
    but no scores: a piece's score is minus the rank of the first merge that produces it, so
    llama.cpp merges in the same order as the Hugging Face tokenizer.
    """
    if (model_dir / "tokenizer.model").is_file():
        vocab = _vocab_from_sentencepiece(model_dir)
    elif (model_dir / "tokenizer.json").is_file():
        vocab = _vocab_from_tokenizer_json_cached(model_dir / "tokenizer.json")
    else:
        raise EdgeError(f"{model_dir} has no tokenizer (tokenizer.model or tokenizer.json); "
                        "copy the tokenizer files from the base model into it")
    T = gguf_py().TokenType
    if len(vocab.tokens) > n_vocab:
        raise EdgeError(f"the tokenizer has {len(vocab.tokens)} tokens but config.json says vocab_size "
                        f"{n_vocab}; the tokenizer belongs to another model")
    for i in range(len(vocab.tokens), n_vocab):  # llama.cpp's converter pads the same way
        vocab.tokens.append(f"[PAD{i}]")
        vocab.scores.append(SPECIAL_SCORE)
        vocab.types.append(int(T.UNUSED))
    expected = {gemma3.PAD_ID: "<pad>", gemma3.EOS_ID: gemma3.EOS, gemma3.BOS_ID: gemma3.BOS,
                gemma3.END_OF_TURN_ID: gemma3.END_OF_TURN}
    wrong = {i: vocab.tokens[i] for i, t in expected.items() if i >= len(vocab.tokens) or vocab.tokens[i] != t}
    if wrong:
        raise EdgeError(f"{model_dir}: the tokenizer is not Gemma 3's (token ids {wrong}); "
                        "copy the base model's tokenizer files")
    return vocab


_VOCAB_MEMO: dict[str, Vocab] = {}


def _vocab_from_tokenizer_json_cached(path: Path) -> Vocab:
    """Rebuilding Gemma's 262k-token vocabulary takes seconds; a process exporting several
    files from the same tokenizer (tests, demo) does it once per distinct file content."""
    from edge.fsutil import sha256_file

    key = sha256_file(path)
    if key not in _VOCAB_MEMO:
        _VOCAB_MEMO.clear()  # keep one: it is tens of MB
        _VOCAB_MEMO[key] = _vocab_from_tokenizer_json(path)
    v = _VOCAB_MEMO[key]
    return Vocab(list(v.tokens), list(v.scores), list(v.types), v.source)


def _vocab_from_tokenizer_json(path: Path) -> Vocab:
    T = gguf_py().TokenType
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
        model = tj["model"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise EdgeError(f"{path} is not a valid tokenizer.json; copy it again from the base model") from None
    if model.get("type") != "BPE":
        raise EdgeError(f"{path} is a {model.get('type')} tokenizer; Gemma 3's is BPE")
    piece_to_id: dict[str, int] = model["vocab"]
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    n = max([*piece_to_id.values(), *added]) + 1
    tokens: list[str | None] = [None] * n
    for piece, i in piece_to_id.items():
        tokens[i] = piece
    first_rank: dict[int, int] = {}
    for rank, m in enumerate(model.get("merges", [])):
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        tid = piece_to_id.get(a + b)
        if tid is not None and tid not in first_rank:
            first_rank[tid] = rank
    n_merges = len(model.get("merges", []))
    scores, types = [], []
    for i in range(n):
        piece = tokens[i]
        if i in added:
            tokens[i] = added[i]["content"]
            types.append(int(T.CONTROL if added[i].get("special") else T.USER_DEFINED))
            scores.append(SPECIAL_SCORE)
        elif piece is None:
            tokens[i] = f"[PAD{i}]"
            types.append(int(T.UNUSED))
            scores.append(SPECIAL_SCORE)
        elif piece.startswith("<0x") and _BYTE_TOKEN.fullmatch(piece):
            types.append(int(T.BYTE))
            scores.append(0.0)
        elif len(piece) > 1 and set(piece) == {"\u2581"}:
            # Gemma's whitespace runs are user-defined pieces matched on raw text ("  "):
            # tokenizer.json keeps them as plain vocab entries written with U+2581.
            tokens[i] = piece.replace("\u2581", " ")
            types.append(int(T.USER_DEFINED))
            scores.append(SPECIAL_SCORE)
        else:
            types.append(int(T.NORMAL))
            # pieces no merge makes (single characters) are never merged into: any lower score works
            scores.append(-float(first_rank.get(i, n_merges + i)))
    return Vocab(tokens, scores, types, "tokenizer.json")  # type: ignore[arg-type]


def _vocab_from_sentencepiece(model_dir: Path) -> Vocab:
    T = gguf_py().TokenType
    path = model_dir / "tokenizer.model"
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf raises DecodeError and others for a corrupt file
        raise EdgeError(f"{path} is not a valid SentencePiece model ({type(e).__name__}); copy it again") from None
    if not proto.pieces:
        raise EdgeError(f"{path} has no pieces; copy it again from the base model")
    tokens, scores, types = [], [], []
    for p in proto.pieces:  # the protobuf's type numbers are gguf.TokenType's (NORMAL=1 .. BYTE=6)
        t = int(p.type)
        tokens.append(p.piece.replace("\u2581", " ") if t == T.USER_DEFINED else p.piece)
        scores.append(float(p.score))
        types.append(t)
    # Added tokens listed in tokenizer_config.json override (llama.cpp's converter does the same).
    tc = model_dir / "tokenizer_config.json"
    if tc.is_file():
        try:
            decoder = json.loads(tc.read_text()).get("added_tokens_decoder", {}) or {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise EdgeError(f"{tc} is not valid JSON; copy it again from the base model") from None
        for sid, data in decoder.items():
            i = int(sid)
            if i >= len(tokens):
                continue
            if data.get("special"):
                tokens[i], types[i] = data["content"], int(T.CONTROL)
            else:
                tokens[i], types[i] = data["content"].replace("\u2581", " "), int(T.USER_DEFINED)
    return Vocab(tokens, scores, types, "tokenizer.model")

