"""Everything this toolkit knows about Gemma 3's shapes and quirks, in one place.

Export, precision, budget and the quantization recipes read these facts instead of
repeating them. Sources: ../shared/REFERENCE.md (measured on the real 270M), the
Gemma 3 technical report, llama.cpp's `convert_hf_to_gguf.py` (Gemma3Model) and
transformers' `modeling_gemma3.py`.
"""

from __future__ import annotations

# Architectures we accept (HF `config.architectures[0]` / `config.model_type`).
TEXT_ARCHITECTURES = ("Gemma3ForCausalLM",)
MULTIMODAL_ARCHITECTURES = ("Gemma3ForConditionalGeneration",)
MODEL_TYPES = ("gemma3_text", "gemma3")

# Special token ids of the Gemma 3 SentencePiece vocabulary (REFERENCE.md).
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
START_OF_TURN_ID, END_OF_TURN_ID = 105, 106
BOS, EOS = "<bos>", "<eos>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"

# float16's largest finite value: Gemma 3's residual stream exceeds it (103,795 measured).
FP16_MAX = 65504.0

# Recommended inference settings (Gemma team, quoted in the seed document).
SAMPLING = {
    "temperature": 1.0,
    "top_k": 64,
    "top_p": 0.95,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
}

# The chat format (turn markers above, system folded into the first turn) is defined in
# edge/template.py, with its Jinja and Ollama renderings.

# Gemma's RMSNorm computes x * (1 + w) and HF checkpoints store w; llama.cpp applies the GGUF
# weight as is, so every `*norm.weight` (q/k norms included) gets +1 at export
# (llama.cpp convert_hf_to_gguf.py, Gemma3Model.norm_shift).
NORM_SHIFT = 1.0

# Sliding-window pattern: llama.cpp and transformers both make every 6th layer global.
SLIDING_WINDOW_PATTERN = 6
LOCAL_ROPE_BASE = 10_000.0


def is_global_layer(layer: int, pattern: int = SLIDING_WINDOW_PATTERN) -> bool:
    """Layer il is global (full attention) when il % pattern == pattern - 1 (llama.cpp)."""
    return layer % pattern == pattern - 1


def layer_types(n_layers: int, pattern: int = SLIDING_WINDOW_PATTERN) -> list[str]:
    return ["full_attention" if is_global_layer(i, pattern) else "sliding_attention" for i in range(n_layers)]


GLOBAL_ROPE_BASE = 1_000_000.0
ROPE_PARAMETERS = {
    "full_attention": {"rope_type": "default", "rope_theta": GLOBAL_ROPE_BASE},
    "sliding_attention": {"rope_type": "default", "rope_theta": LOCAL_ROPE_BASE},
}

# The two sizes this toolkit targets (public config.json of google/gemma-3-270m and -1b-pt).
CONFIG_270M = dict(
    vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
    num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
    max_position_embeddings=32768, query_pre_attn_scalar=256,
    rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
    rope_parameters=ROPE_PARAMETERS,
)
CONFIG_1B = dict(
    vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
    num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
    max_position_embeddings=32768, query_pre_attn_scalar=256,
    rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
    rope_parameters=ROPE_PARAMETERS,
)
