"""Chat data in the formats people already have, turned into our one form: `messages`.

Files: JSONL, JSON (a list of records, or {"data"|"train"|"rows": [...]}), CSV, Parquet, a
Hugging Face `datasets` folder (`save_to_disk`), or a hub dataset id already in the local cache.
Records, detected from the first one (every record must then have the same form):

| format     | fields                                                    | origin                      |
|------------|-----------------------------------------------------------|-----------------------------|
| messages   | `messages: [{role, content}]` (user/system/assistant/model) | OpenAI, Gemma, TRL          |
| sharegpt   | `conversations: [{from, value}]` (human/gpt/system)        | ShareGPT, Axolotl, Unsloth  |
| alpaca     | `instruction`, optional `input`, `output` (opt. `system`)  | Stanford Alpaca             |
| text       | `text`: a rendered chat (`<start_of_turn>` markup) or plain text | Unsloth "text" datasets |

A system message stays first; rendering folds it into the first user turn, as Gemma 3's chat
template does (edge/data.py). Plain text without turn markup becomes one model turn, so the
whole text is trained on. Errors name the file, the record (line) and the field.

    from edge.chatformats import read_chat_records
    records, fmt = read_chat_records("alpaca.json")   # [(where, {"messages": [...]})], "alpaca"
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from edge.errors import EdgeError

FORMATS = {
    "messages": "`messages` with role/content (OpenAI / Gemma)",
    "sharegpt": "ShareGPT `conversations` with from/value",
    "alpaca": "Alpaca instruction/input/output",
    "text": "a `text` field",
}
FILE_KINDS = ("jsonl", "json", "csv", "parquet", "datasets folder", "cached hub dataset")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "model", "assistant": "model", "model": "model",
                  "chatgpt": "model", "bing": "model", "bard": "model", "system": "system"}
MAX_NESTING = 64
_TURN = re.compile(r"<start_of_turn>(user|model|system)\n(.*?)(?:<end_of_turn>|\Z)", re.S)


def detect(record) -> str | None:
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "text" in record:
        return "text"
    return None


def _maybe_json(value):
    """CSV and Parquet cells may hold a JSON list as a string."""
    if isinstance(value, str) and value.lstrip()[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _text(record: dict, key: str, where: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise EdgeError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def to_messages(record, fmt: str, where: str) -> dict:
    """One record of format `fmt` as {"messages": [...]} (validated later by edge.data.parse_chat)."""
    if not isinstance(record, dict):
        raise EdgeError(f"{where}: expected an object, got {type(record).__name__}")
    if fmt == "messages":
        return {"messages": _maybe_json(record["messages"])}
    if fmt == "sharegpt":
        turns = _maybe_json(record.get("conversations"))
        if not isinstance(turns, list) or not turns:
            raise EdgeError(f"{where}: field 'conversations' must be a non-empty list of {{from, value}}")
        msgs = []
        for i, t in enumerate(turns):
            if not isinstance(t, dict):
                raise EdgeError(f"{where}: conversations[{i}] is not an object")
            who = t.get("from", t.get("role"))
            role = SHAREGPT_ROLES.get(str(who).lower()) if isinstance(who, str) else None
            if role is None:
                raise EdgeError(f"{where}: conversations[{i}] has from={who!r}; use one of "
                                f"{', '.join(sorted(set(SHAREGPT_ROLES)))}")
            value = t.get("value", t.get("content"))
            if not isinstance(value, str):
                raise EdgeError(f"{where}: conversations[{i}] has no string 'value'")
            msgs.append({"role": role, "content": value})
        return {"messages": msgs}
    if fmt == "alpaca":
        instruction = _text(record, "instruction", where)
        extra = _text(record, "input", where, required=False)
        user = instruction + (f"\n\n{extra}" if extra.strip() else "")
        msgs = [{"role": "user", "content": user}, {"role": "model", "content": _text(record, "output", where)}]
        system = _text(record, "system", where, required=False)
        return {"messages": ([{"role": "system", "content": system}] if system.strip() else []) + msgs}
    if fmt == "text":
        text = _text(record, "text", where)
        turns = _TURN.findall(text)
        if turns:
            return {"messages": [{"role": r, "content": c.strip("\n")} for r, c in turns]}
        if not text.strip():
            raise EdgeError(f"{where}: field 'text' is empty")
        return {"messages": [{"role": "model", "content": text}]}
    raise EdgeError(f"{where}: unknown chat format {fmt!r}")


def _depth_ok(line: str) -> bool:
    depth = best = 0
    for ch in line:
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best <= MAX_NESTING


def _loads(text: str, where: str):
    if not _depth_ok(text):
        raise EdgeError(f"{where}: JSON nested deeper than {MAX_NESTING} levels; not chat data")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise EdgeError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EdgeError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    except OSError as e:
        raise EdgeError(f"cannot read {path}: {e.strerror or e}") from None


def _jsonl(path: Path):
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if line.strip():
            yield f"{path}:{n}", _loads(line, f"{path}:{n}")


def _json(path: Path):
    data = _loads(_read_text(path), str(path))
    if isinstance(data, dict):
        for key in ("data", "train", "rows", "examples"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            if detect(data):
                data = [data]
    if not isinstance(data, list):
        raise EdgeError(f"{path}: expected a JSON list of records (or {{\"data\": [...]}})")
    for i, obj in enumerate(data):
        yield f"{path}: record {i}", obj


def _csv(path: Path):
    text = _read_text(path)
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        raise EdgeError(f"{path}: the CSV has no header row")
    for n, row in enumerate(reader, 2):
        yield f"{path}:{n}", {k: _maybe_json(v) for k, v in row.items() if k is not None}


def _parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise EdgeError("reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError for damaged files
        raise EdgeError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:120]})") from None
    for i, row in enumerate(rows):
        yield f"{path}: row {i}", row


def _dataset_rows(ds, where: str):
    if hasattr(ds, "keys") and not hasattr(ds, "column_names"):   # a DatasetDict: its train split
        split = "train" if "train" in ds else next(iter(ds.keys()))
        ds, where = ds[split], f"{where}[{split}]"
    for i, row in enumerate(ds):
        yield f"{where}: row {i}", row


def _datasets_folder(path: Path):
    try:
        import datasets
    except ImportError:
        raise EdgeError("reading a Hugging Face datasets folder needs `datasets` (pip install datasets)") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError / its own errors for foreign folders
        raise EdgeError(f"{path}: not a Hugging Face datasets folder ({str(e).splitlines()[0][:120]})") from None
    yield from _dataset_rows(ds, str(path))


def _hub_dataset(spec: str):
    """A dataset from the local Hugging Face cache only: never the network (a mistyped id or no
    network was 23 s of retry warnings from huggingface_hub before the error)."""
    from unittest import mock

    try:
        import datasets
        from huggingface_hub import constants
    except ImportError:
        raise EdgeError("reading a hub dataset needs `datasets` (pip install datasets)") from None
    try:
        with mock.patch.object(constants, "HF_HUB_OFFLINE", True), \
                mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True):
            ds = datasets.load_dataset(spec, split="train")
    except Exception as e:  # offline miss, unknown id, gated: one line with what to do
        raise EdgeError(f"dataset {spec!r} is neither a file nor a dataset in the local Hugging Face cache "
                        f"({str(e).splitlines()[0][:100]}); download it first (`hf download {spec} "
                        "--repo-type dataset`) or give a file") from None
    yield from _dataset_rows(ds, spec)


def _records(source: str | Path) -> tuple[str, object]:
    path = Path(source)
    if path.is_dir():
        return "datasets folder", _datasets_folder(path)
    if path.is_file():
        suffix = path.suffix.lower()
        readers = {".jsonl": ("jsonl", _jsonl), ".json": ("json", _json), ".csv": ("csv", _csv),
                   ".parquet": ("parquet", _parquet), ".txt": ("jsonl", _jsonl)}
        if suffix not in readers:
            raise EdgeError(f"{path}: unknown data file type {suffix or '(none)'!r}; use .jsonl, .json, .csv or .parquet")
        kind, reader = readers[suffix]
        return kind, reader(path)
    s = str(source)
    looks_local = s.startswith((".", "/", "~")) or path.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet")
    if not looks_local and re.fullmatch(r"[\w.-]+/[\w.-]+", s):
        return "cached hub dataset", _hub_dataset(s)
    raise EdgeError(f"data {s} not found; give a .jsonl/.json/.csv/.parquet file, a datasets folder or a "
                    "cached hub dataset id")


def read_chat_records(source: str | Path) -> tuple[list[tuple[str, dict]], str]:
    """[(where, {"messages": [...]})] from any supported file and record format, and a line
    saying what was detected."""
    kind, rows = _records(source)
    out, fmt = [], None
    for where, obj in rows:
        found = detect(obj)
        if fmt is None:
            if found is None:
                keys = ", ".join(sorted(obj)[:6]) if isinstance(obj, dict) else type(obj).__name__
                raise EdgeError(f"{where}: unknown chat format (fields: {keys}); expected one of: "
                                + "; ".join(FORMATS.values()))
            fmt = found
        elif found != fmt:
            raise EdgeError(f"{where}: this record is {found or 'of no known format'}, but the data began as "
                            f"{fmt}; use one format per file")
        out.append((where, to_messages(obj, fmt, where)))
    if not out:
        raise EdgeError(f"{source} has no examples; give chat data (one conversation per record, e.g. "
                        '{"messages": [...]} per line)')
    return out, f"{kind}, {FORMATS[fmt]}: {len(out)} records"
