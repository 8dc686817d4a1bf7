"""The loss through a large output head: chunked cross-entropy, never holding [tokens x vocab].

    from edge.chunked_loss import chunked_cross_entropy
    loss = chunked_cross_entropy(hidden, head_weight, labels, chunk_rows=1024, softcap=30.0)

Takes the hidden states of the rows that predict a label [N, dim], the output head [vocab, dim]
(Gemma 3's is tied to the embedding: 262,144 x dim) and the labels [N]; returns the summed
cross-entropy. The head runs over `chunk_rows` rows at a time; each chunk's float32 logits are
turned into the loss and, in the same pass, into the gradient for the hidden states (and, when
the head is trained, as in `edge finetune --full`, for the head), then freed. So the backward
pass neither keeps nor recomputes logits: peak extra memory is a few [chunk_rows x vocab]
float32 buffers whatever N is. `compile=True` compiles the chunk (dynamic shapes). Used by
`edge.finetune.reply_loss`; tests: tests/test_finetune.py (softcap reference, trained head).
"""

from __future__ import annotations

IGNORE = -100  # the label of a token that is not trained (prompts, padding): cross_entropy's ignore_index


def _chunk_loss(h, weight, y, softcap: float, need_grad: bool, need_wgrad: bool = False):
    """Summed CE of one chunk, and if asked d(sum)/d(h) and d(sum)/d(weight) (full fine-tuning
    trains the tied head). Never keeps [rows x vocab] around."""
    import torch

    z = _matmul(h, weight.t())
    z = z.to(torch.promote_types(z.dtype, torch.float32))  # float32 logits (float64 stays float64)
    if softcap:
        t = torch.tanh(z / softcap)
        z = t * softcap
    logp = torch.log_softmax(z, dim=-1)
    del z
    rows = torch.arange(logp.shape[0], device=logp.device)
    loss = -logp[rows, y].sum()
    if not (need_grad or need_wgrad):
        return loss, None, None
    p = logp.exp_()                                      # softmax, in place
    p[rows, y] -= 1.0
    if softcap:
        p.mul_(1.0 - t * t)
    dh = _matmul(p, weight).to(h.dtype) if need_grad else None
    dw = None
    if need_wgrad:  # [vocab x dim]; float16 sums over the chunk's rows could overflow: float32 there
        wdt = torch.float32 if h.dtype == torch.float16 else h.dtype
        dw = p.t().to(wdt) @ h.to(wdt)
    return loss, dh, dw


def _matmul(a, b):
    """a @ b in b's dtype. On a CPU a float16 product is computed in float32 and rounded to
    float16, as a GPU's tensor cores do: the CPU has no fast float16 GEMM (edge.precision)."""
    import torch

    if a.device.type == "cpu" and b.dtype == torch.float16:
        return (a.float() @ b.float()).to(b.dtype)
    return a.to(b.dtype) @ b


_COMPILED = {}


def _chunk_fn(compile: bool):
    if not compile:
        return _chunk_loss
    if "fn" not in _COMPILED:
        import torch

        _COMPILED["fn"] = torch.compile(_chunk_loss, dynamic=True)
    return _COMPILED["fn"]


def _make_chunked_ce():
    import torch

    class ChunkedCE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, labels, chunk_rows, softcap, compile):
            need, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            fn = _chunk_fn(compile)
            total = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
            grad = torch.empty_like(hidden) if need else None
            wgrad = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            for s in range(0, hidden.shape[0], chunk_rows):
                loss, g, gw = fn(hidden[s:s + chunk_rows], weight, labels[s:s + chunk_rows], softcap, need, need_w)
                total += loss
                if need:
                    grad[s:s + chunk_rows] = g
                if need_w:
                    wgrad += gw
            empty = hidden.new_empty(0)
            ctx.save_for_backward(grad if need else empty, wgrad if need_w else empty)
            ctx.wdtype = weight.dtype
            return total

        @staticmethod
        def backward(ctx, grad_out):
            grad, wgrad = ctx.saved_tensors
            dh = grad * grad_out.to(grad.dtype) if ctx.needs_input_grad[0] else None
            dw = (wgrad * grad_out.float()).to(ctx.wdtype) if ctx.needs_input_grad[1] else None
            return dh, dw, None, None, None, None

    return ChunkedCE


_CE = {}


def chunked_cross_entropy(hidden, weight, labels, chunk_rows: int = 1024, softcap: float | None = None,
                          compile: bool = False):
    """Sum over rows of CE(hidden @ weight.T, labels) for an output head `weight` [vocab, dim].

    `hidden` [N, dim] and `labels` [N] hold only the rows that count (no ignore index).
    Peak extra memory is a few [chunk_rows x vocab] float32 tensors, whatever N is; a head
    that is trained (full fine-tuning) adds one float32 [vocab x dim] gradient buffer.
    """
    if "fn" not in _CE:
        _CE["fn"] = _make_chunked_ce()
    return _CE["fn"].apply(hidden, weight, labels, int(chunk_rows), float(softcap or 0.0), bool(compile))
