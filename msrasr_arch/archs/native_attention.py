"""Window attention by the C++ kernel of :mod:`.native`, forward and backward (CPU, eager mode).

The same contract as :func:`~.chunked_attention.chunked_attention` (the windows in groups, each part's
regions attending alone with their blocks of the bias), but the kernel reads q, k, v and writes the output
and the gradients in place, in the network's token-major layouts, and reads each region's tokens and bias
entries through the part's indices: no copies, gathers or scatters around it. Each block's logits live a
panel of rows at a time in the kernel's buffers: nothing of size ``N x N`` is written to memory, and the
backward recomputes the probabilities from each row's log-sum-exp. Computed in float32 whatever the
inputs' dtype (bf16 autocast included).
"""
import torch

from . import native
from .chunked_attention import _parts
from .window import whole_windows


def _token_major(b: int, h: int, n: int, c: int, like: torch.Tensor) -> torch.Tensor:
    """A new (b, h, n, c) tensor laid out (b, n, h, c): the layout ``proj`` reads and ``v`` comes in."""
    return like.new_empty(b, n, h, c).transpose(1, 2)


class _NativeAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, bias, groups):
        b, h, n, _ = q.shape
        out = _token_major(b, h, n, v.shape[-1], q)
        lses = []
        for group, part in _parts(groups):
            s = group.windows
            lses.append(q.new_empty(group.count * h * part.regions, part.size))
            native.forward(q[s], k[s], v[s], out[s], _kernel_bias(bias), lses[-1], part.tokens, part.regions)
        ctx.groups = groups
        ctx.save_for_backward(q, k, v, bias, out, *lses)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias, out, *lses = ctx.saved_tensors
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        parts = _parts(ctx.groups)
        b, h, n, _ = q.shape
        dq, dk = (torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k))
        dv = _token_major(b, h, n, v.shape[-1], v)
        # The kernel writes a first part of whole windows' bias gradient over the map (no zeroing pass);
        # region parts add to it, as every part does to a table's.
        dbias = None
        if ctx.needs_input_grad[3]:
            written = parts[0][1].tokens is None and bias.dim() == 4
            dbias = torch.empty_like(bias) if written else torch.zeros_like(bias)
        for i, (group, part) in enumerate(parts):
            s = group.windows
            native.backward(q[s], k[s], v[s], out[s], dout[s], dq[s], dk[s], dv[s], _kernel_bias(bias), lses[i],
                            None if dbias is None else _kernel_bias(dbias), add_dbias=i > 0, tokens=part.tokens,
                            regions=part.regions)
        return dq, dk, dv, dbias, None


def _kernel_bias(bias: torch.Tensor) -> torch.Tensor:
    """A (1, H, N, N) map as the kernel takes it, (H, N, N); a table as it is."""
    return bias[0] if bias.dim() == 4 else bias


def native_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                     groups=None) -> torch.Tensor:
    """``softmax(q k^T + bias) v`` for q, k (B, H, N, e), v (B, H, N, ev) and bias (1, H, N, N), each window's
    tokens attending within their regions only (``groups``: see :func:`~.chunked_attention.chunked_attention`).
    ``bias`` may instead be the (M, H) relative-position table the map is read from (square windows, SwinIR's
    index; see :func:`.native.forward`): no map is built, forward or backward.
    Differentiable in q, k, v and bias. Scale q beforehand. Returns v's dtype, laid out (B, N, H, ev) in memory.
    """
    b, _, n, _ = q.shape
    groups = tuple(groups) if groups else (whole_windows(b, n), )
    dtype = v.dtype
    q, k, v = (t.float() if t.stride(-1) == 1 else t.float().contiguous() for t in (q, k, v))
    bias = bias.float().contiguous()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, bias)):
        out = _NativeAttention.apply(q, k, v, bias, groups)
    else:
        out = _token_major(b, q.shape[1], n, v.shape[-1], q)
        for group, part in _parts(groups):
            s = group.windows
            native.forward(q[s], k[s], v[s], out[s], _kernel_bias(bias), None, part.tokens, part.regions)
    return out.to(dtype)
