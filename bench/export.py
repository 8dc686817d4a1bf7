"""Benchmark: how long does exporting the real 270M to GGUF take, and how much RAM, against
the I/O floor (bytes read + written at this disk's measured throughput)?

    EDGE_CACHE=/tmp/edgecache python bench/export.py                  # F32
    python bench/export.py --outtype f32 --outtype bf16 --outtype q8_0 --runs 2 --out bench-export.json
    python bench/export.py --outtype f32 --outtype q8_0 --fidelity 128    # + logits vs transformers

Each export runs in a fresh subprocess (`edge.export.export_gguf`); its peak RSS is that
process's VmHWM. The floor is measured in the same run, through the page cache like the
export itself (no fsync): read throughput = reading the source safetensors again, write
throughput = writing as many bytes of zeros into the output folder; the fsync'd write speed
is printed beside it for reference. With --fidelity N, each exported file's llama.cpp logits
(llama-cpp-python, logits_all) on the first N tokens of the seed document's opening
(tests/fixtures/seed/gemma3_guide_ja.txt, about 1,100 tokens) are compared with transformers fp32: top-1 agreement and mean KL per token.
Prints a table; --out writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SEED_GUIDE = ROOT / "tests" / "fixtures" / "seed" / "gemma3_guide_ja.txt"

CHILD = """
import json, sys, time
t0 = time.time()
from edge.export import export_gguf
r = export_gguf(sys.argv[1], sys.argv[2], sys.argv[3], force=True)
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
print(json.dumps({"seconds": time.time() - t0, "export_seconds": r.seconds, "size": r.size_bytes,
                  "peak_rss": int(hwm.split()[1]) * 1024}))
"""


def throughput(path: Path, nbytes: int, out_dir: Path, chunk: int = 64 << 20) -> dict:
    """Read `path` once, then write nbytes of zeros into out_dir (buffered, then fsync'd)."""
    t = time.time()
    with open(path, "rb") as f:
        while f.read(chunk):
            pass
    read_s = time.time() - t
    block = bytes(chunk)
    out = {"read_MBps": path.stat().st_size / read_s / 1e6}
    for label, sync in (("write_MBps", False), ("write_fsync_MBps", True)):
        fd, tmp = tempfile.mkstemp(dir=out_dir)
        os.close(fd)
        t = time.time()
        with open(tmp, "wb") as f:
            left = nbytes
            while left > 0:
                f.write(block[: min(chunk, left)])
                left -= chunk
            if sync:
                f.flush()
                os.fsync(f.fileno())
        out[label] = nbytes / (time.time() - t) / 1e6
        os.unlink(tmp)
    return out


_REF: dict = {}


def fidelity(spec: str, gguf_path: Path, n_tokens: int) -> dict:
    """top-1 agreement and mean KL(transformers || llama.cpp) over n_tokens positions."""
    import numpy as np
    import torch

    from edge.llamacpp import open_llama
    from edge.models import load

    if not _REF:
        model, tok = load(spec)
        text = SEED_GUIDE.read_text(encoding="utf-8")
        ids = tok(text, add_special_tokens=True)["input_ids"][:n_tokens]
        with torch.no_grad():
            _REF["ids"], _REF["logits"] = ids, model(torch.tensor([ids])).logits[0].double().numpy()
        del model
    ids, ref = _REF["ids"], _REF["logits"]
    llm = open_llama(gguf_path, n_ctx=len(ids) + 8, logits_all=True)
    llm.eval(ids)
    got = np.array(llm.scores[:len(ids)], dtype=np.float64)
    llm.close()

    def lsm(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = lsm(ref), lsm(got)
    return {"top1": float((ref.argmax(-1) == got.argmax(-1)).mean()),
            "mean_kl": float((np.exp(p) * (p - q)).sum(-1).mean()), "fidelity_tokens": len(ids)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded", help="model spec (default: the embedded 270M)")
    ap.add_argument("--outtype", action="append", help="f32, f16, bf16, q8_0 (repeatable; default f32)")
    ap.add_argument("--runs", type=int, default=1, help="exports per type (the best and median are shown)")
    ap.add_argument("--fidelity", type=int, default=0, help="compare N tokens of logits with transformers")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()

    from edge.models import resolve

    src = resolve(args.model)
    weights = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    tok = src / "tokenizer.json"
    read_bytes = weights + (tok.stat().st_size if tok.is_file() else 0)
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    rows = []
    try:
        for outtype in args.outtype or ["f32"]:
            dest = work / f"bench-{outtype}.gguf"
            runs = []
            for _ in range(args.runs):
                p = subprocess.run([sys.executable, "-c", CHILD, str(src), str(dest), outtype], cwd=ROOT,
                                   capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
                if p.returncode:
                    sys.exit(p.stderr[-2000:])
                runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
            size = runs[0]["size"]
            tp = throughput(src / "model.safetensors", size, work)
            floor = weights / (tp["read_MBps"] * 1e6) + size / (tp["write_MBps"] * 1e6)
            best = min(r["export_seconds"] for r in runs)
            rows.append({
                "outtype": outtype, "read_MB": read_bytes / 1e6, "written_MB": size / 1e6,
                "export_s_best": best, "export_s_median": statistics.median(r["export_seconds"] for r in runs),
                "process_s": min(r["seconds"] for r in runs),
                "peak_rss_MB": max(r["peak_rss"] for r in runs) / 1e6, "source_MB": weights / 1e6,
                "io_floor_s": floor, "x_floor": best / floor, **tp,
            })
            if args.fidelity:
                rows[-1].update(fidelity(args.model, dest, args.fidelity))
            dest.unlink(missing_ok=True)
            dest.with_suffix(".Modelfile").unlink(missing_ok=True)
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()

    load = os.getloadavg()
    print(f"export of {src.name} ({weights / 1e6:.0f} MB safetensors), {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    head = ("type", "read MB", "written MB", "export s", "median s", "peak RSS MB", "read MB/s",
            "write MB/s", "fsync MB/s", "I/O floor s", "x floor")
    print(" | ".join(head + (("top-1", "mean KL") if args.fidelity else ())))
    for r in rows:
        print(" | ".join([r["outtype"].upper(), f"{r['read_MB']:.0f}", f"{r['written_MB']:.0f}",
                          f"{r['export_s_best']:.1f}", f"{r['export_s_median']:.1f}", f"{r['peak_rss_MB']:.0f}",
                          f"{r['read_MBps']:.0f}", f"{r['write_MBps']:.0f}", f"{r['write_fsync_MBps']:.0f}",
                          f"{r['io_floor_s']:.2f}", f"{r['x_floor']:.1f}"]
                         + ([f"{r['top1']:.4f}", f"{r['mean_kl']:.2e}"] if args.fidelity else [])))
    if args.out:
        Path(args.out).write_text(json.dumps({"load_average": load, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
