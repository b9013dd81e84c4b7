"""Softmax attention with a trainable additive mask, computed in chunks of windows (CPU training).

SDPA's fused CPU kernel gives no gradient for the mask, and the position bias needs one, so CPU training
attends explicitly. Done by autograd, that stores every layer's ``(B*nW, h, N, N)`` probabilities (100 MB
per layer for a batch of 4 x 64x64 LR patches at window 16) and allocates as much again four times per
layer and step; blocks that large are mapped afresh by glibc each time (above its 32 MB ceiling for
reusing freed memory), and touching them page-faults: a light x2 training step on 2 cores took 7.8 s,
and 4.8 s with mmap switched off in glibc (``MALLOC_MMAP_MAX_=0``).

:func:`chunked_attention` keeps only q, k, v, the mask and the output: the forward and the backward
work through the windows a few at a time in small reused buffers, and the backward recomputes the
probabilities of each chunk (flash-attention style, with materialised chunks).
"""
import torch

# Bytes of one chunk's (windows, h, N, N) buffer: well under glibc's 32 MB ceiling, so freed buffers are
# reused rather than mapped afresh, and small enough to stay near the caches.
CHUNK_BYTES = 8 * 2**20


def _chunks(q: torch.Tensor, keys: int):
    """A ``(windows, h, N, keys)`` buffer for one chunk, and the slices of the windows, chunk by chunk."""
    b, h, n, _ = q.shape
    step = max(1, min(b, CHUNK_BYTES // (h * n * keys * q.element_size())))
    return q.new_empty(step, h, n, keys), [slice(s, min(s + step, b)) for s in range(0, b, step)]


def _probabilities(q, k, mask, c: slice, buf: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T + mask)`` of the windows ``c``, the logits written into ``buf``."""
    s = torch.matmul(q[c], k[c].transpose(-2, -1), out=buf[:c.stop - c.start])
    return s.add_(mask).softmax(dim=-1)


class _ChunkedAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, mask):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        buf, chunks = _chunks(q, k.shape[-2])
        for c in chunks:
            torch.matmul(_probabilities(q, k, mask, c, buf), v[c], out=out[c])
        ctx.save_for_backward(q, k, v, mask, out)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, mask, out = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dmask = torch.zeros_like(mask) if ctx.needs_input_grad[3] else None
        # softmax backward: dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dout * out).
        rows = (dout * out).sum(-1, keepdim=True)
        buf_s, chunks = _chunks(q, k.shape[-2])
        buf_d = torch.empty_like(buf_s)
        for c in chunks:
            p = _probabilities(q, k, mask, c, buf_s)
            torch.matmul(p.transpose(-2, -1), dout[c], out=dv[c])
            ds = torch.matmul(dout[c], v[c].transpose(-2, -1), out=buf_d[:c.stop - c.start]).sub_(rows[c]).mul_(p)
            torch.matmul(ds, k[c], out=dq[c])
            torch.matmul(ds.transpose(-2, -1), q[c], out=dk[c])
            if dmask is not None:
                dmask.add_(ds.sum(0, keepdim=True))
        return dq, dk, dv, dmask


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T + mask) v`` for q, k (B, H, N, e), v (B, H, N, ev) and mask (1, H, N, N), differentiable
    in all four, without storing the (B, H, N, N) maps. Scale q beforehand."""
    return _ChunkedAttention.apply(q, k, v, mask)
