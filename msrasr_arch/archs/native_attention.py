"""Window attention by the C++ kernel of :mod:`.native`, forward and backward (CPU, eager mode).

The same contract as :func:`~.chunked_attention.chunked_attention` (the windows in groups, each part one
contiguous block of its regions' tokens, each region with its block of the bias), but each block's logits
live a panel of rows at a time in the kernel's buffers: nothing of size ``N x N`` is written to memory, and
the backward recomputes the probabilities from each row's log-sum-exp (one product of width e per entry,
where PyTorch's operators make a dozen passes over a stored map). Computed in float32 whatever the inputs'
dtype (bf16 autocast included).
"""
import torch

from . import native
from .chunked_attention import _block, _gradient_targets, _gradients_back, _parts, _scatter, _target
from .window import whole_windows


def _part_forward(q, k, v, bias, group, part, out, lse: bool):
    """Run one part of a group: its contiguous blocks, its result written into ``out`` (B, h, N, C); returns the
    blocks and, when ``lse``, each row's log-sum-exp ``(rows, size)``."""
    h = q.shape[1]
    qp, kp, vp = (_block(t, group, part) for t in (q, k, v))
    mask = part.blocks(bias[0]).reshape(h * part.regions, part.size, part.size)
    op = _target(out, group, part, vp)
    rows = qp.shape[0]
    lse_p = qp.new_empty(rows, part.size) if lse else None
    native.forward(qp, kp, vp, mask, op, lse_p)
    _scatter(out, group, part, op)
    return (qp, kp, vp), lse_p


class _NativeAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, bias, groups):
        b, h, n, _ = q.shape
        out = q.new_empty(b, h, n, v.shape[-1])
        saved = []
        for group, part in _parts(groups):
            blocks, lse = _part_forward(q, k, v, bias, group, part, out, lse=True)
            saved += [*blocks, lse]
        ctx.groups, ctx.shapes = groups, (q.shape, k.shape, v.shape)
        ctx.save_for_backward(bias, out, *saved)
        return out

    @staticmethod
    def backward(ctx, dout):
        bias, out, *saved = ctx.saved_tensors
        dout = dout.contiguous()
        h = bias.shape[1]
        parts = _parts(ctx.groups)
        dq, dk, dv = (out.new_empty(shape) for shape in ctx.shapes)
        # The kernel writes a part's bias-gradient blocks rather than adding to them: a first part of whole
        # windows covers the whole map (no zeroing pass over it), region parts get blocks of their own.
        dbias = None
        if ctx.needs_input_grad[3]:
            dbias = torch.empty_like(bias) if parts[0][1].tokens is None else torch.zeros_like(bias)
        rowsums = (dout * out).sum(-1, keepdim=True)
        for i, (group, part) in enumerate(parts):
            qp, kp, vp, lse = saved[4 * i:4 * i + 4]
            hr, size = h * part.regions, part.size
            dop = _block(dout, group, part)
            rp = _block(rowsums, group, part).view(-1, size)
            (dqp, dkp, dvp), dmask = _gradient_targets((dq, dk, dv), (qp, kp, vp), dbias, group, part, zeroed=False)
            mask = part.blocks(bias[0]).reshape(hr, size, size)
            whole = part.tokens is None
            native.backward(qp, kp, vp, mask, lse, dop, rp, dqp, dkp, dvp, dmask, add_dbias=whole and i > 0)
            _gradients_back((dq, dk, dv), (dqp, dkp, dvp), dbias, dmask, group, part)
        return dq, dk, dv, dbias, None


def native_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                     groups=None) -> torch.Tensor:
    """``softmax(q k^T + bias) v`` for q, k (B, H, N, e), v (B, H, N, ev) and bias (1, H, N, N), each window's
    tokens attending within their regions only (``groups``: see :func:`~.chunked_attention.chunked_attention`).
    Differentiable in q, k, v and bias. Scale q beforehand. Returns v's dtype."""
    b, _, n, _ = q.shape
    groups = tuple(groups) if groups else (whole_windows(b, n), )
    dtype = v.dtype
    q, k, v, bias = (t.float() for t in (q, k, v, bias))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, bias)):
        out = _NativeAttention.apply(q, k, v, bias, groups)
    else:
        out = q.new_empty(b, q.shape[1], n, v.shape[-1])
        bias = bias.contiguous()
        for group, part in _parts(groups):
            _part_forward(q, k, v, bias, group, part, out, lse=False)
    return out.to(dtype)
