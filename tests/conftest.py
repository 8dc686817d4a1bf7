"""Shared fixtures. Tests marked `real` load the real Gemma 3 270M (embedded); they run in
`.ci/run` too, and can be skipped locally with `-m "not real"`."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent            # the checkout
EDGE = [sys.executable, "-m", "edge.cli"]                # `edge` as a subprocess, from this checkout
CHAT_LINE = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-1 of every file under root: compare before and after to see what changed."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def real_model():
    """The real 270M in float32 and its tokenizer, loaded once per session."""
    from edge.models import load

    return load("embedded")


@pytest.fixture(scope="session")
def tokenizer():
    from edge.models import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A saved tiny Gemma 3 (2 layers, 64 wide) with the real tokenizer."""
    from tests.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """The demo task's first 40 training chats, for short fine-tunes."""
    from edge.task import TRAIN

    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(TRAIN.read_text().splitlines(keepends=True)[:40]))
    return path


@pytest.fixture(scope="module")
def adb_server():
    """A real adb server on a private port (ANDROID_ADB_SERVER_PORT), stopped after the module."""
    from edge.adbsim import AdbServer

    server = AdbServer()
    yield server
    server.close()


@pytest.fixture
def sim(adb_server):
    """A simulated Pixel 7 speaking adb's device protocol, attached with `adb connect`."""
    from edge.adbsim import AdbSim, Phone

    phone = AdbSim(Phone(fixture="pixel_7"))
    adb_server.attach(phone)
    yield phone
    adb_server.detach(phone)
    phone.close()
