"""Check, on whatever torch/transformers this machine has, that packed rows give the same loss
as one chat per row (tests/test_finetune.py does it with the real tokenizer; this needs none).

    python bench/packing_check.py            # cuda if present, else cpu
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main():
    import torch
    import transformers

    from edge.finetune import IGNORE, Example, LoraSettings, add_lora, make_batch, reply_loss
    from tests.tiny import tiny_model

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rng = random.Random(0)
    examples = []
    for i in range(12):
        n = rng.randint(8, 90)  # many longer than the 16-token sliding window
        ids = [2] + [rng.randint(1000, 5000) for _ in range(n - 1)]
        labels = [IGNORE if j < n // 2 else t for j, t in enumerate(ids)]
        examples.append(Example(ids, labels, i))
    for impl in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = tiny_model(n_layers=6, sliding_window=16, attn_implementation=impl).to(dev)
        net = add_lora(model, LoraSettings(r=4))
        out = []
        for packed in (True, False):
            ids, att, lab, pos, n = make_batch(examples, dev, 1, packed)
            with torch.no_grad():
                loss, k = reply_loss(net, ids, att, lab, 64, position_ids=pos)
            out.append((float(loss) / k, ids.shape))
        rel = abs(out[0][0] - out[1][0]) / abs(out[1][0])
        print(f"transformers {transformers.__version__} {dev} {impl}: packed {out[0][0]:.6f} {tuple(out[0][1])} "
              f"vs one chat per row {out[1][0]:.6f} {tuple(out[1][1])}: rel diff {rel:.2e} "
              f"{'OK' if rel < 1e-4 else 'MISMATCH'}")


if __name__ == "__main__":
    main()
