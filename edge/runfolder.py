"""A run is a folder with a manifest (`run.json`): what was made, from what, how.

This module is the one door to run.json. Stages record their outputs with
`Run.record(stage, outputs={role: path(s)}, inputs=..., settings=..., key=...)`; readers ask
for what they need by role (`run.variants()`, `run.reference()`, `run.report()`, ...) and never
guess a path from a file name. `run.json` is rewritten atomically after each change, so a
killed run never lists a half-written file.

Each stage entry holds its `key` (a digest of its settings and of the keys/checksums of what it
read) and its `state` ("running" while it works, "done" when its outputs are complete). A stage
is finished for a given key when its state is done, its key matches and every output still has
its recorded size: `edge run` skips it then (edge/pipeline.py).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge import __version__
from edge.errors import EdgeError
from edge.fsutil import sha256_file, write_text_atomic

MANIFEST = "run.json"
FORMAT = 2   # 2: outputs carry a role, stages a key and a state


def digest(obj) -> str:
    """A short stable digest of a JSON-able object (stage keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_entry(path: Path, role: str, hash_limit: int = 2 << 30) -> dict:
    path = Path(path)
    st = path.stat() if path.exists() else None
    entry = {"path": str(path), "role": role, "size": st.st_size if st and path.is_file() else None}
    if path.is_file() and st.st_size <= hash_limit:
        entry["sha256"] = sha256_file(path)
    return entry


def _as_roles(outputs) -> list[tuple[str, Path]]:
    """{role: path or [paths]} (or a plain list: role "file") -> [(role, path)]."""
    if isinstance(outputs, dict):
        pairs = []
        for role, value in outputs.items():
            for p in value if isinstance(value, (list, tuple)) else [value]:
                if p is not None:
                    pairs.append((role, Path(p)))
        return pairs
    return [("file", Path(p)) for p in outputs]


@dataclass
class Run:
    root: Path
    data: dict = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | Path, create: bool = True) -> "Run":
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise EdgeError(f"run folder {root} is a file; give a folder (new or from an earlier run)")
        if not root.is_dir():
            if not create:
                raise EdgeError(f"run folder {root} does not exist; give a folder made by `edge run --out`")
            root.mkdir(parents=True, exist_ok=True)
        manifest = root / MANIFEST
        data = {}
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, OSError, RecursionError) as e:
                raise EdgeError(f"{manifest} is damaged ({e}); move it away to start the run afresh") from None
            if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
                raise EdgeError(f"{manifest} is not a run manifest; move it away to start the run afresh")
        data.setdefault("toolkit_version", __version__)
        data.setdefault("format", FORMAT)
        data.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        data.setdefault("machine", {"python": platform.python_version(), "platform": platform.platform()})
        data.setdefault("stages", {})
        return cls(root, data)

    @property
    def name(self) -> str:
        return self.root.resolve().name

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # ---- writing ------------------------------------------------------------------------
    def _rel(self, entry: dict) -> dict:
        p = Path(entry["path"]).resolve()
        root = self.root.resolve()
        return {**entry, "path": str(p.relative_to(root)) if p.is_relative_to(root) else entry["path"]}

    def begin(self, stage: str, key: str = "", settings: dict | None = None) -> None:
        """Mark `stage` as running with `key` (a kill leaves it so; the next run knows)."""
        old = self.data["stages"].get(stage, {})
        self.data["stages"][stage] = {**old, "state": "running", "key": key, "settings": settings or {},
                                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.save()

    def record(self, stage: str, outputs=(), inputs=(), settings: dict | None = None,
               seconds: float | None = None, summary: dict | None = None, key: str = "") -> None:
        """Add or replace one stage's finished entry and rewrite run.json atomically.

        `outputs` is {role: path or [paths]} (a plain list records role "file")."""
        self.data["stages"][stage] = {
            "state": "done",
            "key": key,
            "inputs": [self._rel(_file_entry(p, "input")) for p in inputs],
            "outputs": [self._rel(_file_entry(p, role)) for role, p in _as_roles(outputs)],
            "settings": settings or {},
            "seconds": seconds,
            "summary": summary or {},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.save()

    def save(self) -> None:
        write_text_atomic(self.root / MANIFEST, json.dumps(self.data, indent=2, default=str))

    # ---- reading ------------------------------------------------------------------------
    def entry(self, stage: str) -> dict:
        e = self.data["stages"].get(stage)
        return e if isinstance(e, dict) else {}

    def _resolve(self, p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else self.root / p

    def _records(self, stage: str) -> list[dict]:
        """The stage's output records that have a path (a hand-edited run.json may hold anything)."""
        found = self.entry(stage).get("outputs", [])
        return [o for o in found if isinstance(o, dict) and isinstance(o.get("path"), str)] \
            if isinstance(found, list) else []

    def outputs(self, stage: str, role: str | None = None) -> list[Path]:
        """The stage's recorded outputs (of one role, if given), as paths."""
        return [self._resolve(o["path"]) for o in self._records(stage) if role is None or o.get("role") == role]

    def output(self, stage: str, role: str) -> Path | None:
        found = self.outputs(stage, role)
        return found[0] if found else None

    def finished(self, stage: str, key: str | None = None) -> bool:
        """Done, with the same key (when given), and every output still there at its size."""
        e = self.entry(stage)
        if e.get("state") != "done" or (key is not None and e.get("key") != key):
            return False
        if not isinstance(e.get("outputs", []), list):
            return False
        for o in e.get("outputs", []):
            if not (isinstance(o, dict) and isinstance(o.get("path"), str)):
                return False
            p = self._resolve(o["path"])
            if o.get("dropped"):
                continue
            if not p.exists() or (o.get("size") is not None and p.stat().st_size != o["size"]):
                return False
        return True

    def missing_outputs(self, stage: str) -> list[Path]:
        """Outputs recorded as deliberately dropped (e.g. the F32 reference after scoring)."""
        return [self._resolve(o["path"]) for o in self._records(stage) if o.get("dropped")]

    def drop(self, stage: str, role: str) -> list[Path]:
        """Delete a stage's outputs of `role` and record that they were dropped on purpose."""
        gone = []
        root = self.root.resolve()
        for o in self._records(stage):
            if o.get("role") == role and not o.get("dropped"):
                p = self._resolve(o["path"])
                if not p.resolve().is_relative_to(root):   # only ever a file of this run
                    continue
                if p.is_file():
                    p.unlink()
                o["dropped"] = True
                gone.append(p)
        if gone:
            self.save()
        return gone

    # ---- what the stages made, by role ---------------------------------------------------
    def adapter(self) -> Path | None:
        return self.output("fine-tune", "adapter")

    def model_dir(self) -> Path | None:
        """The Hugging Face model to export: the merge, or a full fine-tune's own output."""
        return self.output("merge", "model") or self.output("fine-tune", "model")

    def reference(self) -> Path | None:
        return self.output("export", "reference")

    def imatrix(self) -> Path | None:
        return self.output("imatrix", "imatrix")

    def variants(self) -> list[Path]:
        """The quantized files people run (not the reference, not the importance matrix)."""
        return [p for p in self.outputs("quantize", "variant") if p.is_file()]

    def report(self) -> Path | None:
        p = self.output("evaluate", "report")
        return p if p is not None and p.is_file() else None

    def budget(self) -> Path | None:
        return self.output("budget", "budget")

    def card(self) -> Path | None:
        return self.output("card", "card")


def run_of(path: str | Path) -> Run | None:
    """The run a file or folder belongs to (its folder, or an ancestor, holds run.json), if any."""
    p = Path(path).resolve()
    for folder in ([p] if p.is_dir() else []) + list(p.parents)[:3]:
        if (folder / MANIFEST).is_file():
            try:
                return Run.open(folder, create=False)
            except EdgeError:
                return None
    return None
