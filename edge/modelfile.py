"""An Ollama Modelfile for a Gemma 3 GGUF: its FROM path, Gemma 3's template, stop token, sampling.

Takes a .gguf file; writes `NAME.Modelfile` beside it (or `--out PATH`, whose FROM line then
points back at the GGUF from the Modelfile's own folder). `edge export` and the run's
quantize stage write one beside each file they make.

    edge modelfile model-Q4_K_M.gguf [--out elsewhere/Modelfile] [--force]
    ollama create NAME -f model-Q4_K_M.Modelfile
"""

from __future__ import annotations

import os
from pathlib import Path

from edge import __version__, gemma3
from edge.errors import EdgeError, printable
from edge.fsutil import check_not_input, check_writable, write_text_atomic
from edge.ggufinfo import read_gguf
from edge.template import OLLAMA_TEMPLATE


def modelfile_path(gguf_path: Path) -> Path:
    return Path(gguf_path).with_suffix(".Modelfile")


def modelfile_text(gguf: str, modelfile_name: str = "") -> str:
    """An Ollama Modelfile: FROM the GGUF, Gemma 3's template (edge.template), stop token, sampling.

    `gguf` is the GGUF's path as seen from the Modelfile's folder (its name when they sit side by
    side): Ollama resolves a relative FROM from the Modelfile's folder. The path goes into a
    `FROM` line: one with a newline or another control character would add lines (ADAPTER,
    SYSTEM) to the Modelfile, so it is refused."""
    if printable(gguf) != gguf or '"""' in gguf:
        raise EdgeError(f"the file name {printable(gguf)!r} holds control characters; rename the "
                        "GGUF to a plain name before writing a Modelfile for it")
    source = gguf if Path(gguf).is_absolute() or gguf.startswith(("./", "../")) else f"./{gguf}"
    s = gemma3.SAMPLING
    return "\n".join([
        f"# Ollama Modelfile written by edge {__version__}: "
        f"`ollama create NAME -f {modelfile_name or Path(gguf).stem + '.Modelfile'}`",
        f"FROM {source}",
        f'TEMPLATE """{OLLAMA_TEMPLATE}"""',
        f'PARAMETER stop "{gemma3.END_OF_TURN}"',
        f"PARAMETER temperature {s['temperature']}",
        f"PARAMETER top_k {s['top_k']}",
        f"PARAMETER top_p {s['top_p']}",
        f"PARAMETER min_p {s['min_p']}",
        f"PARAMETER repeat_penalty {s['repetition_penalty']}",
        "",
    ])


def modelfile_cmd(file: str, *, out: str = "", force: bool = False) -> str:
    """Write an Ollama Modelfile for a GGUF (Gemma 3 template, stop token, recommended sampling).

    Args:
        file: the .gguf file the Modelfile points at.
        out: where to write the Modelfile (default: FILE with the suffix .Modelfile); its FROM
            line names FILE relative to this Modelfile's folder.
        force: overwrite an existing Modelfile.
    """
    arch = read_gguf(file).metadata.get("general.architecture")
    if arch != "gemma3":
        raise EdgeError(f"{file} is a {printable(arch, 40)!r} model; this Modelfile is for Gemma 3 (gemma3)")
    path = Path(out) if out else modelfile_path(Path(file))
    check_not_input(path, Path(file))
    if path.is_dir():
        raise EdgeError(f"--out {path} is a folder; give the Modelfile's file name")
    check_writable(path, force)
    source = os.path.relpath(Path(file).resolve(), path.parent.resolve())  # Ollama reads FROM from the Modelfile's folder
    text = modelfile_text(source, path.name)
    write_text_atomic(path, text, force=True)
    print(f"wrote {path}; run: ollama create NAME -f {path}")
    return str(path)
