"""Tiny random Gemma 3 models for fast logic tests (torchtune's habit: 2 layers, 64 wide).

    model = tiny_model()                       # real 262,144 vocab, so the real tokenizer fits
    path = save_tiny(tmp_path / "m")           # a HF directory with the real tokenizer
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edge import gemma3


def tiny_config(n_layers: int = 2, hidden: int = 64, ffn: int = 128, n_heads: int = 2, n_kv_heads: int = 1,
                head_dim: int = 32, vocab: int = 262144, sliding_window: int = 16, **overrides):
    from transformers import Gemma3TextConfig

    cfg = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, head_dim=head_dim,
        sliding_window=sliding_window, max_position_embeddings=2048, query_pre_attn_scalar=head_dim,
        rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        rope_parameters=gemma3.ROPE_PARAMETERS, layer_types=gemma3.layer_types(n_layers),
        bos_token_id=gemma3.BOS_ID, eos_token_id=gemma3.EOS_ID, pad_token_id=gemma3.PAD_ID,
    )
    cfg.update(overrides)
    c = Gemma3TextConfig(**cfg)
    c.architectures = ["Gemma3ForCausalLM"]
    return c


def tiny_model(seed: int = 0, norm_noise: float = 0.1, **config):
    """A random tiny Gemma3ForCausalLM in float32. Norm weights get noise so the +1 matters."""
    import torch
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(tiny_config(**config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, norm_noise)
    return model.eval()


def save_tiny(path: Path, seed: int = 0, **config) -> Path:
    """Save a tiny model with the real Gemma 3 tokenizer (from the embedded checkpoint)."""
    from edge.models import ensure_embedded

    path = Path(path)
    model = tiny_model(seed=seed, **config)
    model.generation_config.eos_token_id = [gemma3.EOS_ID, gemma3.END_OF_TURN_ID]
    model.save_pretrained(path, safe_serialization=True)
    src = ensure_embedded()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "tokenizer.model",
                 "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, path / name)
    return path
