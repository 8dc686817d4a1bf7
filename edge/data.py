"""Chat data: read and validate chat JSONL, render it in the Gemma 3 chat format.

Each line is `{"messages": [{"role": "user"|"system"|"assistant"|"model", "content": "..."}]}`.
Rendering gives token ids with exactly one `<bos>` and a mask that marks the model's reply
tokens (its text and the closing `<end_of_turn>`), which is what the fine-tune trains on.

    from edge.data import load_chats, render
    chats = load_chats("train.jsonl")
    ids, mask = render(tokenizer, chats[0])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edge import gemma3
from edge.errors import EdgeError
from edge.template import render_text

TEXTDATA = Path(__file__).resolve().parent / "textdata"   # bundled data files (edge/textdata/)

ROLES = ("user", "system", "assistant", "model")


@dataclass(frozen=True)
class Chat:
    messages: tuple[dict, ...]
    line: int = 0

    @property
    def has_reply(self) -> bool:
        return any(m["role"] in ("assistant", "model") for m in self.messages)


def parse_chat(obj, where: str) -> Chat:
    """Validate one decoded JSON object; `where` names it in errors (file:line)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise EdgeError(f"{where}: expected an object with a \"messages\" list")
    if not obj["messages"]:
        raise EdgeError(f"{where}: \"messages\" is empty")
    msgs = []
    for i, m in enumerate(obj["messages"]):
        if not isinstance(m, dict):
            raise EdgeError(f"{where}: message {i} is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise EdgeError(f"{where}: message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise EdgeError(f"{where}: message {i} has no string \"content\"")
        if role == "system" and i != 0:
            raise EdgeError(f"{where}: a system message may only come first (message {i})")
        msgs.append({"role": "model" if role == "assistant" else role, "content": content})
    return Chat(tuple(msgs))


def read_chats(path: str | Path, require_reply: bool = True) -> tuple[list[Chat], str]:
    """Chats from any supported file and format (edge/chatformats.py), and a line saying what
    was detected; errors name the file, the line or record, and the field."""
    from edge.chatformats import read_chat_records

    records, detected = read_chat_records(path)
    chats = []
    for n, (where, obj) in enumerate(records, 1):
        chat = parse_chat(obj, where)
        line = where.rsplit(":", 1)[-1]
        chats.append(Chat(chat.messages, int(line) if line.isdigit() else n))
    if require_reply and not any(c.has_reply for c in chats):
        raise EdgeError(f"{path} has no assistant/model turns to train on")
    return chats, detected


def load_chats(path: str | Path, require_reply: bool = True) -> list[Chat]:
    """Read chat data (JSONL `messages`, or any format `read_chats` detects)."""
    return read_chats(path, require_reply)[0]


def write_chats(chats: list[Chat], path: str | Path) -> Path:
    """Chats as `messages` JSONL, written atomically (the run folder's normalized data)."""
    from edge.fsutil import write_text_atomic

    lines = (json.dumps({"messages": list(c.messages)}, ensure_ascii=False) for c in chats)
    return write_text_atomic(Path(path), "".join(line + "\n" for line in lines))


def render(tokenizer, chat: Chat | list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Token ids (one leading `<bos>`) and a 0/1 mask marking the model's reply tokens."""
    text, spans = render_text(chat, add_generation_prompt)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [gemma3.BOS_ID] + list(enc["input_ids"])
    mask = [0]
    for a, b in enc["offset_mapping"]:
        mask.append(int(any(s <= a and b <= e and b > a for s, e in spans)))
    return ids, mask


class ChatText(str):
    """Text rendered from chats, for scoring: its `<start_of_turn>` / `<end_of_turn>` are the
    special tokens (not literal text), and `reply_bytes` holds the UTF-8 byte spans of the
    model's replies (text and closing `<end_of_turn>`), the positions a fine-tune was trained
    on; bytes, as llama.cpp's token pieces are."""

    reply_bytes: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, chats) -> "ChatText":
        parts, spans, n = [], [], 0
        for c in chats:
            text, sp = render_text(c)
            parts.append(text)
            spans += [(n + len(text[:a].encode("utf-8")), n + len(text[:b].encode("utf-8"))) for a, b in sp]
            n += len(text.encode("utf-8"))
        out = cls("".join(parts))
        out.reply_bytes = tuple(spans)
        return out


def eval_text(path: str | Path) -> str:
    """Held-out text for scoring: a .txt file as is, or a chat JSONL rendered in Gemma 3's format
    (a `ChatText`: a fine-tune is scored on its replies, the tokens it was trained on)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return ChatText.of(load_chats(path))
    if path.is_dir():
        raise EdgeError(f"evaluation text {path} is a folder; give a .txt or chat .jsonl file")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeError(f"cannot read evaluation text {path}: {e}") from None
