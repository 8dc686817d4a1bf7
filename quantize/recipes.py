"""Quantization recipes as data: one table row per (tensor pattern -> GGML type), with a reason.

Two kinds of recipe:

- llama.cpp's standard file types (Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, IQ4_NL): no rows, llama.cpp
  picks every tensor's type itself (`llama_tensor_get_type`). Their `expect` table records what
  that gives on Gemma 3's 640- and 1152-wide rows, where the 256-wide K-quant blocks do not fit
  and llama.cpp silently falls back (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0). Tests read the
  files back with gguf-py and check these tables.
- our dynamic recipes (`*_XL`): every quantized tensor is chosen by the first matching row, and
  passed to llama.cpp as a per-tensor override, so nothing falls back behind our back. Three
  measured facts shape them (docs/BENCHMARKS.md, "Quantize"):
  1. A K-quant matmul rounds its *input* activations in 256-blocks (Q8_K); 32-block types
     (Q8_0, Q5_0, Q5_1, IQ4_NL) round them in 32-blocks. On Gemma 3's outlier-heavy inputs this
     matters: with bit-exact weights, Q4_K_M's KLD halves (0.0057 -> 0.0031) when only ffn_down
     goes from Q4_K/Q6_K to Q8_0. So Q4/Q5/Q6_K_XL use no K-quants at all.
  2. The embedded 270M is a dequantized Q4_K_M: its weights sit on Q5_0 / Q4_K / Q6_K / Q8_0
     grids. Re-quantizing a LoRA merge of it with the *same* type rounds each weight back to
     the base's grid point and erases much of the fine-tune (KLD on the demo task's replies:
     gate/up in Q5_0 0.032, in Q5_1 0.012, the rest Q8_0). So the XL recipes use Q5_1, not
     Q5_0, for the bulk.
  3. The tied embedding/output head is 63% of the 270M's weights: Q8_0 for it in every recipe
     but IQ4_K_XL (the small one), F16 in Q8_K_XL.
  4. Their Q5_1 bulk wants an importance matrix: on the demo fine-tune's replies (2,000 tokens)
     Q4_K_XL's KLD is 0.065 without one and 0.029 with one, where a K-quant mix like Q5_K_M's
     goes the other way (0.034 -> 0.038). `edge quantize` says so when it has none
     (`wants_imatrix`), and refuses XL6.2-Q8_0 without one (`needs_imatrix`: only the imatrix
     puts it below llama.cpp's front).

Patterns are Python/ECMAScript regexes searched in GGUF tensor names, through the `regex`
module with a time bound (`search`): a custom recipe's pattern is at most MAX_PATTERN characters,
and one that backtracks catastrophically (nested repeats such as `^((\\w+)*\\.?)*W`, which hangs
Python's `re` on a 22-character tensor name) is one error, at load or at the tensor it hangs on,
never a hang. Layer placeholders,
expanded for the model's block count n:
    {ends}    llama.cpp's "more bits" layers: i < n/8 or i >= 7n/8 (270M: 0,1,15,16,17)
    {more}    Q4_K_M's attn_v/ffn_down layers: {ends} or (i - n/8) % 3 == 2
    {eighth}  i < n/8        {first}   layer 0        {last}   layer n-1
A tensor matching no row keeps llama.cpp's choice for the recipe's `ftype`; a row matching no
tensor of the model is an error (a typo would otherwise silently do nothing).

Shapes (edge/gemma3.py): 270M rows are 640 (token_embd, attn_q/k/v, ffn_gate/up), 1024
(attn_output), 2048 (ffn_down); 1B rows are 1152, 1024 and 6912. The tied 262,144-row
token_embd is also the output head: it is 63% of the 270M's weights and read in full for
every generated token, so its type sets both the file size and the decode speed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, LlamaFileType as F

from edge.errors import EdgeError

MAX_PATTERN = 256        # characters in one custom pattern (the longest built-in one has about 60)
MATCH_TIMEOUT_S = 1.0    # one pattern on one tensor name: microseconds for a sane pattern
# names every pattern is tried on when a recipe file is read: typical ones and a long one
PROBE_NAMES = ("token_embd.weight", "blk.0.attn_q.weight", "blk.17.ffn_down.weight", "output_norm.weight",
               "blk.9." + "attn_output_" * 4 + ".weight")

# Types llama.cpp falls back to when a tensor's row length is not a multiple of the type's
# 256-block (llama.cpp src/llama-quant.cpp `tensor_type_fallback`, as vendored by
# llama-cpp-python 0.3.36: llama.cpp 0c1e570). Only the standard recipes resolve through it, by
# shape, to predict llama.cpp's own choice (checked against the types llama.cpp writes on the
# 270M's and the 1B's widths: tests/test_quantize.py::test_every_recipe_resolves_to_the_intended_types);
# our recipes never use it: a row that asks a type its tensor cannot hold names its own `alt`.
FALLBACK = {T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL, T.IQ2_S: T.IQ4_NL,
            T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL,
            T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}

# "What the file mostly is" (general.file_type, which apps show as the quantization) per type.
FILE_TYPE = {T.F32: F.ALL_F32, T.F16: F.MOSTLY_F16, T.BF16: F.MOSTLY_BF16, T.Q8_0: F.MOSTLY_Q8_0,
             T.Q5_1: F.MOSTLY_Q5_1, T.Q5_0: F.MOSTLY_Q5_0, T.Q4_1: F.MOSTLY_Q4_1, T.Q4_0: F.MOSTLY_Q4_0,
             T.IQ4_NL: F.MOSTLY_IQ4_NL, T.IQ4_XS: F.MOSTLY_IQ4_XS, T.Q6_K: F.MOSTLY_Q6_K, T.Q5_K: F.MOSTLY_Q5_K_S,
             T.Q4_K: F.MOSTLY_Q4_K_S, T.Q3_K: F.MOSTLY_Q3_K_S, T.Q2_K: F.MOSTLY_Q2_K, T.IQ3_S: F.MOSTLY_IQ3_S,
             T.IQ3_XXS: F.MOSTLY_IQ3_XXS, T.IQ2_S: F.MOSTLY_IQ2_S, T.IQ2_XS: F.MOSTLY_IQ2_XS,
             T.IQ2_XXS: F.MOSTLY_IQ2_XXS}


@dataclass(frozen=True)
class Row:
    """Tensors matching `pattern` get `qtype`; where their rows do not hold its blocks, `alt`
    (a recipe says so itself: nothing falls back silently)."""

    pattern: str
    qtype: T
    reason: str
    alt: T | None = None
    when: str = ""  # "imatrix" / "no imatrix": the row applies only then (llama.cpp's own rules)


@dataclass(frozen=True)
class Recipe:
    """A named quantization recipe. `rows` empty = llama.cpp's own mixture for `ftype`."""

    name: str
    ftype: F
    summary: str
    rows: tuple[Row, ...] = ()
    expect: tuple[Row, ...] = ()  # standard types only: what llama.cpp gives on Gemma 3 shapes
    family: str = "dynamic"  # "llama.cpp" or "dynamic"
    wants_imatrix: bool = False  # measured much worse without one (docs/BENCHMARKS.md, Quantize)
    needs_imatrix: str = ""      # why it is refused without one ('' = it is not): llama.cpp refuses the IQ2
                                 # types; ours where only an imatrix puts it below llama.cpp's front
    aliases: tuple[str, ...] = ()  # earlier names that still resolve

    @property
    def is_standard(self) -> bool:
        return self.family == "llama.cpp"


def _std(name: str, ftype: F, summary: str, expect: list[tuple], needs_imatrix: str = "") -> Recipe:
    return Recipe(name, ftype, summary, (), tuple(Row(*r) for r in expect), "llama.cpp", needs_imatrix=needs_imatrix)


def _dyn(name: str, ftype: F, summary: str, rows: list[tuple], wants_imatrix: bool = False,
         aliases: tuple[str, ...] = (), needs_imatrix: str = "") -> Recipe:
    return Recipe(name, ftype, summary, tuple(Row(*r) for r in rows), (), "dynamic", wants_imatrix, needs_imatrix,
                  aliases=aliases)


EMB = r"^token_embd\.weight$"
Q, K, V, O = r"attn_q\.weight$", r"attn_k\.weight$", r"attn_v\.weight$", r"attn_output\.weight$"
GATE, UP, DOWN = r"ffn_gate\.weight$", r"ffn_up\.weight$", r"ffn_down\.weight$"
ENDS = r"^blk\.{ends}\."

# --- llama.cpp's standard types --------------------------------------------------------------------
# What llama.cpp's `llama_tensor_get_type` asks for each tensor (src/llama-quant.cpp, llama.cpp
# 0c1e570). `resolve` applies its row-width fallback (FALLBACK) by shape, so on Gemma 3's 640- and
# 1152-wide rows the K- and IQ-types become the 32-block types these tables then show. Gemma 3
# has 4 query heads per KV head (n_gqa 4), which several rules test. The tied embedding is
# quantized as the output head: Q6_K (-> Q8_0 on 640/1152 rows), Q5_K for the IQ1/IQ2 mixtures.
HEAD_Q6_K = (EMB, T.Q6_K, "tied output head: Q6_K, which llama.cpp turns into Q8_0 on rows not 256-aligned")
STANDARD = [
    _std("Q8_0", F.MOSTLY_Q8_0, "llama.cpp Q8_0: every matrix Q8_0 (32-blocks fit every row)", [
        (EMB, T.Q8_0, "tied output head: Q8_0 like everything else"),
        (r"\.weight$", T.Q8_0, "all matrices Q8_0"),
    ]),
    _std("Q6_K", F.MOSTLY_Q6_K, "llama.cpp Q6_K: Q6_K where rows are 256-aligned, else Q8_0", [
        HEAD_Q6_K,
        (r"\.weight$", T.Q6_K, "Q6_K; Q8_0 on 640/1152-wide rows (all but attn_output and ffn_down)"),
    ]),
    _std("Q5_K_M", F.MOSTLY_Q5_K_M, "llama.cpp Q5_K_M: Q5_K falls back to Q5_1 on most tensors", [
        HEAD_Q6_K,
        (r"^blk\.{more}\.attn_v\.weight$", T.Q6_K, "attn_v Q6_K on 'more bits' layers"),
        (r"^blk\.{more}\.ffn_down\.weight$", T.Q6_K, "ffn_down Q6_K on 'more bits' layers"),
        (r"\.weight$", T.Q5_K, "Q5_K; Q5_1 on 640/1152-wide rows"),
    ]),
    _std("Q4_K_M", F.MOSTLY_Q4_K_M, "llama.cpp Q4_K_M: Q4_K falls back to Q5_0 on most tensors", [
        HEAD_Q6_K,
        (r"^blk\.{more}\.attn_v\.weight$", T.Q6_K, "attn_v Q6_K on 'more bits' layers"),
        (r"^blk\.{more}\.ffn_down\.weight$", T.Q6_K, "ffn_down Q6_K on 'more bits' layers"),
        (r"\.weight$", T.Q4_K, "Q4_K; Q5_0 on 640/1152-wide rows"),
    ]),
    _std("Q4_K_S", F.MOSTLY_Q4_K_S, "llama.cpp Q4_K_S: Q4_K (-> Q5_0 on most tensors), a few Q5_K", [
        HEAD_Q6_K,
        (r"^blk\.{first4}\.attn_v\.weight$", T.Q5_K, "attn_v of the first 4 layers Q5_K"),
        (r"^blk\.{eighth}\.ffn_down\.weight$", T.Q5_K, "ffn_down of the first n/8 layers Q5_K"),
        (r"\.weight$", T.Q4_K, "Q4_K; Q5_0 on 640/1152-wide rows"),
    ]),
    _std("Q3_K_M", F.MOSTLY_Q3_K_M, "llama.cpp Q3_K_M: Q3_K falls back to Q4_0 on most tensors", [
        HEAD_Q6_K,
        (r"^blk\.{first2}\.attn_v\.weight$", T.Q5_K, "attn_v of the first 2 layers Q5_K"),
        (V, T.Q4_K, "attn_v Q4_K"),
        (r"^blk\.{sixteenth}\.ffn_down\.weight$", T.Q5_K, "ffn_down of the first n/16 layers Q5_K"),
        (r"(ffn_down|attn_output)\.weight$", T.Q4_K, "ffn_down and attn_output Q4_K"),
        (r"\.weight$", T.Q3_K, "Q3_K; Q4_0 on 640/1152-wide rows"),
    ]),
    _std("Q2_K", F.MOSTLY_Q2_K, "llama.cpp Q2_K: Q2_K falls back to Q4_0 on most tensors", [
        HEAD_Q6_K,
        (V, T.Q4_K, "attn_v Q4_K (4 query heads per KV head)"),
        (r"(ffn_down|attn_output)\.weight$", T.Q3_K, "ffn_down and attn_output Q3_K"),
        (r"\.weight$", T.Q2_K, "Q2_K; Q4_0 on 640/1152-wide rows"),
    ]),
    _std("Q4_0", F.MOSTLY_Q4_0, "llama.cpp Q4_0: Q4_0 matrices, output head Q8_0", [
        HEAD_Q6_K,
        (r"^blk\.{eighth}\.ffn_down\.weight$", T.Q4_1, "first n/8 layers' ffn_down Q4_1 (only with an imatrix)",
         None, "imatrix"),
        (r"\.weight$", T.Q4_0, "all other matrices Q4_0"),
    ]),
    _std("IQ4_NL", F.MOSTLY_IQ4_NL, "llama.cpp IQ4_NL: non-linear 4-bit 32-blocks, output head Q8_0", [
        HEAD_Q6_K,
        (V, T.Q5_K, "attn_v Q5_K (4 query heads per KV head)"),
        (r"^blk\.{eighth}\.ffn_down\.weight$", T.Q5_K, "first n/8 layers' ffn_down Q5_K (only without an imatrix)",
         None, "no imatrix"),
        (r"\.weight$", T.IQ4_NL, "all other matrices IQ4_NL"),
    ]),
    _std("IQ4_XS", F.MOSTLY_IQ4_XS, "llama.cpp IQ4_XS: 4.25-bit 256-blocks, IQ4_NL on 640/1152-wide rows", [
        HEAD_Q6_K,
        (V, T.Q5_K, "attn_v Q5_K (4 query heads per KV head)"),
        (r"^blk\.{eighth}\.ffn_down\.weight$", T.Q5_K, "first n/8 layers' ffn_down Q5_K (only without an imatrix)",
         None, "no imatrix"),
        (r"\.weight$", T.IQ4_XS, "IQ4_XS; IQ4_NL on 640/1152-wide rows"),
    ]),
    _std("IQ3_M", F.MOSTLY_IQ3_M, "llama.cpp IQ3_M: IQ3_S falls back to IQ4_NL on most tensors", [
        HEAD_Q6_K,
        (V, T.Q4_K, "attn_v Q4_K"),
        (r"^blk\.{eighth}\.ffn_down\.weight$", T.Q4_K, "first n/8 layers' ffn_down Q4_K"),
        (O, T.Q4_K, "attn_output Q4_K"),
        (r"\.weight$", T.IQ3_S, "IQ3_S; IQ4_NL on 640/1152-wide rows"),
    ]),
    _std("IQ2_M", F.MOSTLY_IQ2_M, "llama.cpp IQ2_M (needs an imatrix): IQ2_S falls back to IQ4_NL on most tensors", [
        (EMB, T.Q5_K, "tied output head: Q5_K for the IQ2 mixtures, but Q8_0 where the rows do not hold the "
                      "file type's 256-blocks (llama.cpp checks that first)", T.Q8_0),
        (V, T.Q4_K, "attn_v Q4_K (4 query heads per KV head)"),
        (r"^blk\.{eighth}\.ffn_down\.weight$", T.IQ3_S, "first n/8 layers' ffn_down IQ3_S"),
        (O, T.IQ3_S, "attn_output IQ3_S"),
        (r"\.weight$", T.IQ2_S, "IQ2_S; IQ4_NL on 640/1152-wide rows"),
    ], needs_imatrix="llama.cpp refuses its 2-bit types without one"),
]

# --- our dynamic recipes -----------------------------------------------------------------------
# Named after what they hold: XL<body bpw>-<head type>. The body is every matrix but the tied
# embedding/output head; its bits per weight are the same on the 270M and the 1B (same mix of
# types per matrix). The whole file's bpw depends on the model (the head is 63% of the 270M's
# weights, 30% of the 1B's) and is in every report's bpw column. `aliases`: the names before
# issue 20 (Q4_K_XL held no Q4_K tensor at all).
QK_MLP_Q5_1 = ("Q5_1 (6.0 bpw, asymmetric 32-blocks), not Q5_0: the embedded base was dequantized from Q5_0 "
               "here, and re-rounding a fine-tune to that grid snaps it back to the base")
DYNAMIC = [
    # The 8-bit recipe. XL8.7-F16 (was Q8_K_XL: Q8_0 with an F16 head and attn_v) was removed in issue
    # 20: on this base the head's weights sit exactly on a Q8_0 grid (the embedded 270M was
    # dequantized from a GGUF whose head was Q8_0: re-quantizing it to Q8_0 is bit-identical), so
    # its F16 head spent 157 MB on nothing: on two fine-tunes XL8.9-Q8_0, with the same Q8_0 head,
    # came out as close or closer at 297 instead of 452 MB (docs/BENCHMARKS.md, Quantize, issue 20).
    # XL8.9-Q8_0 is Q8_0 with strictly more precise tensors, so it is never worse than Q8_0 by design,
    # and measured 1.9x (demo task) and 3.0x (weather task) closer for 6 MB more.
    _dyn("XL8.9-Q8_0", F.MOSTLY_Q8_0, "Q8_0 with 16-bit attn_k and attn_v (1 KV head: 0.3M weights a layer)", [
        (EMB, T.Q8_0, "tied output head Q8_0 as in Q8_0 (on the embedded base it sits on a Q8_0 grid: "
                      "F16 would spend 157 MB for nothing)"),
        (r"attn_[kv]\.weight$", T.F16, "attn_k/attn_v F16: the keys and values every later token attends to, "
                                       "1 KV head makes them tiny (6 MB on the 270M)"),
        (r"\.weight$", T.Q8_0, "everything else Q8_0: 32-blocks fit 640/1152 rows"),
    ], aliases=("Q8_K_XL",)),
    # XL7.4-Q8_0 (was Q6_K_XL) and XL6.7-Q8_0 (was Q5_K_XL) were removed in issue 20: on the demo
    # task's fine-tune with an imatrix their KLD lay 1.7x and 1.5x above the Q5_K_M-Q6_K front
    # (0.0065 and 0.0119 vs 0.0039 and 0.0080; docs/BENCHMARKS.md): llama.cpp's Q6_K and Q5_K_M
    # cover their sizes better.
    # XL6.1-Q8_0 (was Q4_K_XL: Q5_1 everywhere but a Q8_0 attn_v and head) was removed in issue 20: on two
    # fine-tunes it passed the front with an imatrix (1.21x, 1.05x) but not without one on the demo
    # task (Q5_K_M, 1.1 MB smaller: 0.0207 vs 0.0237). XL6.2-Q8_0 adds Q6_K to ffn_down (1.7 MB more):
    # with an imatrix 1.33x and 1.18x below the Q5_K_M-Q6_K front; without one 1.08x below on the
    # demo task and 1.11x *above* on the weather task (0.0079 vs 0.0071, error 0.0014; on 2,048 tokens
    # of a new weather fine-tune 1.02x above, 0.00715 +- 0.00093 vs 0.00699), so it is refused without an
    # imatrix, as llama.cpp refuses IQ2_M (docs/BENCHMARKS.md, Quantize, issue 20). This size class sits on
    # llama.cpp's front within the error bars: no 6-bit table here beat it in every setting.
    _dyn("XL6.2-Q8_0", F.MOSTLY_Q8_0, "Q4_K_M's size class: Q8_0 head and attn_v, Q6_K ffn_down, Q5_1 elsewhere", [
        (EMB, T.Q8_0, "output head Q8_0 (Q4_K_M does the same); below 8 bits it dominates KLD"),
        (V, T.Q8_0, "attn_v Q8_0 on every layer (Q4_K_M: only on 'more bits' layers): 0.16M/layer"),
        (DOWN, T.Q6_K, "ffn_down Q6_K: its rows (2,048 on the 270M, 6,912 on the 1B) hold 256-blocks; the "
                       "most outlier-prone matrix gets the bits (Q5_K_M gives it Q6_K on a third of the layers)",
         T.Q5_1),
        (r"(attn_[qk]|attn_output|ffn_gate|ffn_up)\.weight$", T.Q5_1, QK_MLP_Q5_1),
    ], aliases=("Q4_K_XL",), needs_imatrix="without one it is no closer to the reference than llama.cpp's Q5_K_M-Q6_K "
                                           "front (1.02x above it on a weather fine-tune); use Q5_K_M"),
    _dyn("XL5.3-IQ4_NL", F.MOSTLY_IQ4_NL, "small and fast: IQ4_NL output head, 4-bit body, 6-bit ffn_down", [
        (EMB, T.IQ4_NL, "IQ4_NL head halves the bytes read per token (the decode-speed lever)"),
        (V, T.Q8_0, "attn_v Q8_0: tiny, sensitive"),
        (DOWN, T.Q6_K, "ffn_down Q6_K: rows fit, outlier-prone"),
        (O, T.Q4_K, "1024-wide rows: real Q4_K"),
        (ENDS + r"(attn_[qk]|ffn_gate|ffn_up)\.weight$", T.Q5_0, "first/last layers Q5_0"),
        (r"(attn_[qk]|ffn_gate|ffn_up)\.weight$", T.IQ4_NL, "IQ4_NL: best 4.5-bit 32-block type with an imatrix"),
    ], aliases=("IQ4_K_XL",)),
    # the head-quantized family, for phones with 3-4 GB of RAM: the 262,144-row head in 4.5 bits
    _dyn("XL5.4-Q4_0", F.MOSTLY_Q4_0, "Q4_0 head (repacked on ARM), Q5_1 body with 4.5-bit MLP in/out", [
        (EMB, T.Q4_0, "head Q4_0 with the imatrix: 94 MB instead of Q8_0's 178 on the 270M; "
                      "llama.cpp repacks it for dotprod/i8mm CPUs"),
        (V, T.Q8_0, "attn_v Q8_0: tiny, sensitive"),
        (r"(ffn_gate|ffn_up)\.weight$", T.IQ4_NL, "ffn_gate/up IQ4_NL: the largest body matrices, "
                                                   "a grid the base never had"),
        (r"(attn_[qk]|attn_output|ffn_down)\.weight$", T.Q5_1, QK_MLP_Q5_1),
    ], wants_imatrix=True),
    _dyn("XL5.4-IQ4_NL", F.MOSTLY_IQ4_NL, "IQ4_NL head, Q5_1 body with 4.5-bit MLP in/out", [
        (EMB, T.IQ4_NL, "head IQ4_NL (non-linear 4-bit) with the imatrix: 94 MB on the 270M"),
        (V, T.Q8_0, "attn_v Q8_0: tiny, sensitive"),
        (r"(ffn_gate|ffn_up)\.weight$", T.IQ4_NL, "ffn_gate/up IQ4_NL: the largest body matrices"),
        (r"(attn_[qk]|attn_output|ffn_down)\.weight$", T.Q5_1, QK_MLP_Q5_1),
    ], wants_imatrix=True),
    _dyn("XL6.1-Q4_0", F.MOSTLY_Q4_0, "Q4_0 head (repacked on ARM), Q5_1 body with attn_v Q8_0", [
        (EMB, T.Q4_0, "head Q4_0 with the imatrix"),
        (V, T.Q8_0, "attn_v Q8_0 on every layer"),
        (r"(attn_[qk]|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$", T.Q5_1, QK_MLP_Q5_1),
    ], wants_imatrix=True),
]

# Recipes removed after measurement (docs/BENCHMARKS.md, Quantize, issue 20): their names give the reason.
REMOVED = {
    "XL8.7-F16": "its F16 output head bought nothing over Q8_0's on fine-tunes of the embedded model; "
                 "use XL8.9-Q8_0 (Q8_0 head, F16 attn_k/attn_v: closer to the reference at 297 instead of 452 MB)",
    "XL7.4-Q8_0": "llama.cpp's Q6_K is smaller and closer to the reference; use Q6_K",
    "Q6_K_XL": "llama.cpp's Q6_K is smaller and closer to the reference; use Q6_K",
    "XL6.7-Q8_0": "the Q5_K_M-Q6_K front covers its size better; use Q6_K or XL6.2-Q8_0",
    "Q5_K_XL": "the Q5_K_M-Q6_K front covers its size better; use Q6_K or XL6.2-Q8_0",
    "XL6.1-Q8_0": "without an imatrix Q5_K_M was smaller and closer to the reference; use XL6.2-Q8_0 "
                  "(ffn_down Q6_K, 1.7 MB more: below the front on both fine-tunes with an imatrix)",
}
RECIPES: dict[str, Recipe] = {r.name: r for r in STANDARD + DYNAMIC}
STANDARD_NAMES = [r.name for r in STANDARD]
DYNAMIC_NAMES = [r.name for r in DYNAMIC]
DEMO_NAMES = ["Q8_0", "XL8.9-Q8_0", "Q4_K_M", "XL6.2-Q8_0"]


# --- resolving a recipe against a model ------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: ne[0] (row length) first

    @property
    def row(self) -> int:
        return self.shape[0]

    @property
    def quantizable(self) -> bool:
        return len(self.shape) >= 2 and self.name.endswith(".weight")

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Plan:
    """A recipe resolved against one model: the type and reason of every quantized tensor."""

    recipe: Recipe
    types: dict[str, T] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def overrides(self) -> list[tuple[str, T]]:
        """Anchored per-tensor patterns for llama.cpp (order never matters)."""
        return [("^" + re.escape(n) + "$", t) for n, t in self.types.items()]

    def size_bytes(self, tensors: list[TensorInfo]) -> int:
        total = 0
        for t in tensors:
            n = 1
            for d in t.shape:
                n *= d
            qtype = self.types.get(t.name, T.F32)
            block, nbytes = GGML_QUANT_SIZES[qtype]
            total += n // block * nbytes
        return total


def layer_sets(n_layers: int) -> dict[str, str]:
    """Regex alternations for the layer placeholders."""
    def alt(ids):
        return "(?:" + "|".join(str(i) for i in sorted(ids)) + ")" if ids else "(?!)"
    n = n_layers
    ends = [i for i in range(n) if i < n // 8 or i >= 7 * n // 8]
    more = [i for i in range(n) if i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2]
    eighth = [i for i in range(n) if i < n // 8]
    return {"ends": alt(ends), "more": alt(more), "eighth": alt(eighth), "sixteenth": alt(range(n // 16)),
            "first2": alt(range(min(2, n))), "first4": alt(range(min(4, n))), "first": "0", "last": str(n - 1)}


def n_layers_of(tensors: list[TensorInfo]) -> int:
    ids = [int(m.group(1)) for t in tensors if (m := re.match(r"blk\.(\d+)\.", t.name))]
    return max(ids) + 1 if ids else 0


def compile_pattern(pattern: str, where: str):
    """A recipe row's pattern compiled (the `regex` module, `re`-compatible), after a length check."""
    import regex

    if len(pattern) > MAX_PATTERN:
        raise EdgeError(f"{where}: pattern is {len(pattern)} characters long; at most {MAX_PATTERN}")
    try:
        return regex.compile(pattern)
    except (regex.error, RecursionError, OverflowError, ValueError) as e:
        raise EdgeError(f"{where}: pattern {pattern[:80]!r} is not a valid regex ({e})") from None


def search(rx, name: str, where: str) -> bool:
    """Whether pattern `rx` is found in tensor `name`, giving up after MATCH_TIMEOUT_S."""
    try:
        return rx.search(name, timeout=MATCH_TIMEOUT_S) is not None
    except TimeoutError:
        raise EdgeError(f"{where}: pattern {rx.pattern[:80]!r} takes over {MATCH_TIMEOUT_S:g} s on the tensor name "
                        f"{name[:80]!r} (catastrophic backtracking); simplify it: no nested repeats like "
                        r"(\w+)*") from None


def expand(pattern: str, n_layers: int) -> str:
    out = pattern
    for key, val in layer_sets(n_layers).items():
        out = out.replace("{" + key + "}", val)
    return out


def _table(recipe: Recipe) -> tuple[Row, ...]:
    return recipe.rows if recipe.rows else recipe.expect


def resolve(recipe: Recipe, tensors: list[TensorInfo], check_rows: bool = True, imatrix: bool = False) -> Plan:
    """Give every quantizable tensor its type by the recipe's first matching row, by name and
    shape: where the tensor's rows do not hold the type's blocks, the row's `alt` (ours) or
    llama.cpp's own fallback (standard types, FALLBACK); the reason says so.

    For a standard recipe this is the *expected* result of llama.cpp's own mixture. Raises
    EdgeError when a row matches no tensor, or a dynamic row asks a block type the row length
    cannot hold and names no `alt` (llama.cpp would silently fall back). `imatrix`: whether the
    file is made with one (some of llama.cpp's rules depend on it).
    """
    n = n_layers_of(tensors)
    table = [r for r in _table(recipe) if r.when in ("", "imatrix" if imatrix else "no imatrix")]
    rows = [(compile_pattern(expand(r.pattern, n), f"recipe {recipe.name}"), r) for r in table]
    used = [False] * len(rows)
    plan = Plan(recipe)
    for t in tensors:
        if not t.quantizable:
            continue
        for i, (rx, row) in enumerate(rows):
            if search(rx, t.name, f"recipe {recipe.name}"):
                used[i] = True
                qtype, reason = row.qtype, row.reason
                if t.row % GGML_QUANT_SIZES[qtype][0]:
                    alt = row.alt or (FALLBACK.get(qtype) if recipe.is_standard else None)
                    if alt is None:
                        raise EdgeError(f"recipe {recipe.name}: row {row.pattern!r} asks {qtype.name} for "
                                        f"{t.name}, whose rows ({t.row}) are not a multiple of "
                                        f"{GGML_QUANT_SIZES[qtype][0]}; use a 32-block type (Q8_0, Q5_0, Q5_1, "
                                        "Q4_0, IQ4_NL) there, or give the row an alternative")
                    qtype, reason = alt, f"{reason} [{row.qtype.name} -> {alt.name}: rows of {t.row}]"
                plan.types[t.name] = qtype
                plan.reasons[t.name] = reason
                break
    if check_rows and not recipe.is_standard:
        unused = [rows[i][1].pattern for i, u in enumerate(used) if not u]
        if unused:
            names = sorted({t.name.split(".")[-2] for t in tensors if t.quantizable})
            raise EdgeError(f"recipe {recipe.name}: pattern {unused[0]!r} matches no tensor of this model "
                            f"(its matrices are: {', '.join(names)}); fix the pattern")
    return plan


def file_type(plan: Plan, tensors: list[TensorInfo]) -> F:
    """What the file mostly is, for `general.file_type`: the quantized type holding the most weights.
    A custom recipe that leaves tensors to llama.cpp keeps its declared ftype (it picks them)."""
    quantizable = [t for t in tensors if t.quantizable]
    if any(t.name not in plan.types for t in quantizable):
        return plan.recipe.ftype
    weights: dict[T, int] = {}
    for t in quantizable:
        weights[plan.types[t.name]] = weights.get(plan.types[t.name], 0) + t.n_elements
    # llama.cpp applies per-tensor types only under a quantized file type (llama-quant.cpp: the
    # overrides sit inside `if (ggml_is_quantized(default_type))`): with F16 the most common type,
    # MOSTLY_F16 would turn the whole file F16, so the most common quantized type names it
    quantized = {k: v for k, v in weights.items() if k not in (T.F32, T.F16, T.BF16)} or weights
    top = max(quantized, key=quantized.get)
    return FILE_TYPE.get(top, plan.recipe.ftype)


def load_recipe_file(path: str | Path) -> Recipe:
    """A custom recipe from JSON: {"name": ..., "ftype": "Q4_K_M", "rows": [[pattern, type, reason], ...]}."""
    from edge.fsutil import read_json, safe_name

    path = Path(path)
    data = read_json(path, "recipe file", hint='give {"name": ..., "ftype": ..., "rows": [[pattern, type, reason]]}')
    if not isinstance(data.get("rows"), list) or not data["rows"]:
        raise EdgeError(f"recipe file {path} needs a \"rows\" list of [pattern, type, reason]")
    # the name becomes part of the variant's file name (<model>-<name>.gguf): no paths, no tricks
    name = safe_name(data.get("name") or path.stem, f"recipe file {path}: name")
    ftype_name = str(data.get("ftype", "Q8_0"))
    try:
        ftype = F["MOSTLY_" + ftype_name]
    except KeyError:
        raise EdgeError(f"recipe file {path}: unknown ftype {ftype_name!r}; use e.g. Q8_0, Q4_K_M") from None
    rows = []
    for i, r in enumerate(data["rows"]):
        if not (isinstance(r, list) and len(r) in (2, 3) and all(isinstance(x, str) for x in r)):
            raise EdgeError(f"recipe file {path}: row {i} must be [pattern, type, reason], all strings")
        try:
            qtype = T[str(r[1])]
        except KeyError:
            raise EdgeError(f"recipe file {path}: row {i} has unknown type {r[1]!r}; "
                            f"use one of {', '.join(t.name for t in T)}") from None
        where = f"recipe file {path}: row {i}"
        rx = compile_pattern(expand(r[0], 18), where)      # placeholders as for the 270M's 18 layers
        for probe in PROBE_NAMES:                           # a pattern that hangs is refused here
            search(rx, probe, where)
        rows.append(Row(str(r[0]), qtype, str(r[2]) if len(r) > 2 else ""))
    return Recipe(name, ftype, str(data.get("summary", "custom recipe")), tuple(rows), (), "dynamic")


def get(name: str) -> Recipe:
    """A built-in recipe by name (any case; earlier names still resolve), or a custom one from a
    .json file. An unknown name gets "did you mean"."""
    import difflib

    if name.endswith(".json"):
        return load_recipe_file(name)
    by = {k.upper(): r for k, r in RECIPES.items()}
    label = {k.upper(): k for k in RECIPES}
    for r in RECIPES.values():
        for a in r.aliases:
            by[a.upper()], label[a.upper()] = r, f"{a} (now {r.name})"
    if name.upper() in by:
        return by[name.upper()]
    gone = {k.upper(): (k, why) for k, why in REMOVED.items()}.get(name.upper())
    if gone:
        raise EdgeError(f"recipe {gone[0]} was removed: {gone[1]}")
    close = difflib.get_close_matches(name.upper(), list(by), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(dict.fromkeys(label[c] for c in close))}? " if close else ""
    raise EdgeError(f"unknown recipe {name!r}; {hint}use one of {', '.join(RECIPES)} or a recipe .json file")


def table_markdown(recipe: Recipe) -> str:
    """The recipe as a Markdown table (for docs and `--help`)."""
    lines = [f"**{recipe.name}** ({recipe.family}): {recipe.summary}", "",
             "| pattern | type | why |", "|---|---|---|"]
    lines += [f"| `{r.pattern}` | {r.qtype.name} | {r.reason} |" for r in _table(recipe)]
    return "\n".join(lines)
