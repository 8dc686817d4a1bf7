#!/usr/bin/env bash
# Set up (or reuse) the project-local virtual environment in .venv, CPU build of PyTorch.
#   ./scripts/setup.sh            # idempotent: a second run only checks
# GPU users: see README ("Installing on a GPU machine").
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools: adb (push / devices, and the tests' adb server) and tmux (TUI smoke test).
missing=()
command -v adb >/dev/null || missing+=(adb)
command -v tmux >/dev/null || missing+=(tmux)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: please install ${missing[*]} (e.g. sudo apt-get install ${missing[*]}); continuing without" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned to the CPU build, so nothing later pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==${EDGE_TORCH_VERSION:-2.13.0}"
# llama-cpp-python compiles llama.cpp (about 6 minutes on 2 cores, cached by pip afterwards).
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: ready ($(.venv/bin/python -c 'import torch, llama_cpp; print("torch", torch.__version__, "llama-cpp-python", llama_cpp.__version__)'))"
