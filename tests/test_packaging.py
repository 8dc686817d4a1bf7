"""The toolkit as users install it: a wheel (`pip install .`), not this editable checkout.

Builds the wheel from a copy of the sources, installs it with `--no-deps` into a fresh venv
that sees this venv's packages (torch, llama-cpp-python, textual: nothing is downloaded or
rebuilt) but not its editable install of this checkout, and runs `edge profiles`,
`edge budget` and the TUI (a headless screenshot of the Budget screen) from a folder outside
the checkout. A data file the wheel forgets (a phone profile, the TUI's styles) fails here.

    .venv/bin/python -m pytest tests/test_packaging.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_tui_gguf import tiny_variants
from tests.conftest import ROOT

SOURCES = ("pyproject.toml", "README.md", "edge", "quantize", "tui_screens", "tui.py")

pytestmark = pytest.mark.slow


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert out.returncode == 0, f"{cmd}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def build_isolation() -> list[str]:
    """Build with this venv's setuptools (offline, seconds) when it meets pyproject.toml's build
    requirement; else let pip fetch one into an isolated build environment."""
    import tomllib
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    (req,) = (Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"])
    try:
        return ["--no-build-isolation"] if req.specifier.contains(version(req.name)) else []
    except PackageNotFoundError:
        return []


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with the built wheel installed (its bin/ folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:                      # a copy: the build's build/ and egg-info stay out of the checkout
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", *build_isolation(), "-q", src, "-w", tmp / "dist"])
    (wheel,) = (tmp / "dist").glob("edge_gemma-*.whl")

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel])
    # then let it see this venv's site-packages: a path line in a .pth, which adds the folder but
    # does not run the .pth files in it (so this checkout's editable install stays out)
    purelib = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    import site

    (purelib / "project-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv / "bin"


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["COLUMNS"] = "200"
    return env


def test_the_wheel_runs_outside_the_checkout(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bin_, env = installed, clean_env()
    venv = bin_.parent

    code = "import edge, quantize, tui, tui_screens; print(json.dumps([m.__file__ for m in (edge, quantize, tui, tui_screens)]))"
    files = json.loads(run([bin_ / "python", "-c", "import json; " + code], cwd=elsewhere, env=env).stdout)
    assert all(Path(f).is_relative_to(venv) for f in files), files       # the wheel's copy, not ROOT's

    from edge.profiles import load_profiles

    out = run([bin_ / "edge", "profiles", "--json"], cwd=elsewhere, env=env).stdout
    assert sorted(p["key"] for p in json.loads(out)["profiles"]) == sorted(load_profiles())
    out = run([bin_ / "edge", "profiles"], cwd=elsewhere, env=env).stdout
    assert f"{len(load_profiles())} profiles in {venv}" in out

    variants = tiny_variants(elsewhere / "ggufs")
    out = run([bin_ / "edge", "budget", variants[0], "--device", "pixel_7"], cwd=elsewhere, env=env).stdout
    assert "pixel_7" in out.lower().replace(" ", "_") and "fits" in out

    # the TUI: `edge tui` is there, and the app starts with its styles and draws the budget grid
    run([bin_ / "edge", "tui", "--help"], cwd=elsewhere, env=env)
    bad = subprocess.run([bin_ / "edge", "tui", "--folder", elsewhere / "missing"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=120)    # imports tui, then refuses the folder
    assert bad.returncode == 2 and "--folder" in bad.stderr and "no such folder" in bad.stderr, bad.stderr
    svg = elsewhere / "budget.svg"
    out = run([bin_ / "python", "-m", "tui", "--folder", elsewhere / "ggufs", "--screenshot", svg,
               "--screen", "budget"], cwd=elsewhere, env=env)
    assert svg.is_file(), out.stdout[-3000:] + out.stderr[-3000:]     # no styles: Textual stops before drawing
    text = svg.read_text().replace("&#160;", " ")
    assert "Budget at n_ctx 4096" in text and "Pixel 7" in text

