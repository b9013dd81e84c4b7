"""Softmax attention with a trainable additive mask, computed in chunks of windows (CPU training).

SDPA's fused CPU kernel gives no gradient for the mask, and the position bias needs one, so CPU training
attends explicitly. Done by autograd, that stores every layer's ``(B*nW, h, N, N)`` logits and
probabilities as single blocks (100 MB each per layer for a batch of 4 x 64x64 LR patches at window 16)
and allocates as much again four times per layer and step; blocks that large are mapped afresh by glibc
each time (above its 32 MB ceiling for reusing freed memory), and touching them page-faults: a light x2
training step on 2 cores took 7.8 s, and 4.8 s with mmap switched off in glibc (``MALLOC_MMAP_MAX_=0``).

:func:`chunked_attention` works through the windows a few at a time, in blocks small enough for glibc to
reuse. The probabilities of each chunk are kept for the backward when the whole call's fit in
:data:`KEEP_BYTES` (the softmax and the ``q k^T`` product are then not recomputed: a quarter of the
attention arithmetic of a step); above that budget the backward recomputes them chunk by chunk, flash-
attention style, and the call stores nothing of size ``N x N``.
"""
import torch

# Bytes of one chunk's (windows, h, N, N) buffer: about a core's L2 cache, where the dozen passes of the
# forward and backward over it stay. One window of 6 heads x 256 x 256 floats is 1.5 MB; forward and
# backward of 64 such windows at head width 16 on 2 cores: 114 ms in chunks of one window, 157 ms in
# chunks of 8 MB.
CHUNK_BYTES = 2 * 2**20
# Probabilities kept per call (per layer) for the backward; beyond it they are recomputed. 256 MB keeps
# them for batches up to 8 x 64x64 LR patches at window 16 (light x2: 1.6 GB for all 16 layers at batch 4).
KEEP_BYTES = 256 * 2**20


def _chunks(q: torch.Tensor, keys: int, groups):
    """The number of windows per chunk, and ``(slice of windows, group index)`` chunk by chunk: chunks never
    straddle two groups, so each sees one mask."""
    _, h, n, _ = q.shape
    step = max(1, CHUNK_BYTES // (h * n * keys * q.element_size()))
    chunks = [(slice(s, min(s + step, start + count)), g)
              for g, (start, count, _) in enumerate(groups) for s in range(start, start + count, step)]
    return min(step, max(count for _, count, _ in groups)), chunks


def group_masks(bias: torch.Tensor, groups) -> list:
    """The additive mask of each group: ``bias`` plus the group's shift mask (``bias`` itself where none)."""
    return [bias if extra is None else bias + extra for _, _, extra in groups]


def _probabilities(q, k, mask, c: slice, out: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T + mask)`` of the windows ``c``, the logits computed in ``out``."""
    s = torch.matmul(q[c], k[c].transpose(-2, -1), out=out)
    return s.add_(mask).softmax(dim=-1)


class _ChunkedAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, bias, groups):
        b, h, n, _ = q.shape
        out = q.new_empty(b, h, n, v.shape[-1])
        step, chunks = _chunks(q, k.shape[-2], groups)
        masks = group_masks(bias, groups)
        keep = b * h * n * k.shape[-2] * q.element_size() <= KEEP_BYTES
        buf = q.new_empty(step, h, n, k.shape[-2])
        kept = []
        for c, g in chunks:
            p = _probabilities(q, k, masks[g], c, buf[:c.stop - c.start])
            torch.matmul(p, v[c], out=out[c])
            if keep:
                kept.append(p)
        ctx.groups = groups
        ctx.save_for_backward(q, k, v, bias, out, *kept)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias, out, *kept = ctx.saved_tensors
        groups = ctx.groups
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dbias = torch.zeros_like(bias) if ctx.needs_input_grad[3] else None
        # softmax backward: dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dout * out).
        rows = (dout * out).sum(-1, keepdim=True)
        step, chunks = _chunks(q, k.shape[-2], groups)
        masks = None if kept else group_masks(bias, groups)
        buf_s = None if kept else q.new_empty(step, *q.shape[1:3], k.shape[-2])
        buf_d = q.new_empty(step, *q.shape[1:3], k.shape[-2])
        for i, (c, g) in enumerate(chunks):
            m = c.stop - c.start
            p = kept[i] if kept else _probabilities(q, k, masks[g], c, buf_s[:m])
            torch.matmul(p.transpose(-2, -1), dout[c], out=dv[c])
            ds = torch.matmul(dout[c], v[c].transpose(-2, -1), out=buf_d[:m]).sub_(rows[c]).mul_(p)
            torch.matmul(ds, k[c], out=dq[c])
            torch.matmul(ds.transpose(-2, -1), q[c], out=dk[c])
            if dbias is not None:
                dbias.add_(ds if m == 1 else ds.sum(0, keepdim=True))
        return dq, dk, dv, dbias, None


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                      groups=None) -> torch.Tensor:
    """``softmax(q k^T + bias + mask_g) v`` for q, k (B, H, N, e), v (B, H, N, ev) and bias (1, H, N, N),
    differentiable in q, k, v and bias. ``groups``: ``((start, count, mask_g (N, N) or None), ...)``
    covering the B windows in order (a constant shift mask per contiguous group, see
    :class:`~.window.WindowLayout`); default one group without a mask. Scale q beforehand."""
    return _ChunkedAttention.apply(q, k, v, bias, tuple(groups) if groups else ((0, q.shape[0], None), ))
