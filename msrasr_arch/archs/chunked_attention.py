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

The windows come in :class:`~.window.WindowGroup` s: a shifted window at the border attends region by
region (its tokens gathered per :class:`~.window.WindowPart`, each region with its block of the bias), so
no entry a shift mask would cancel is computed.
"""
import torch

from .window import whole_windows

# Bytes of one chunk's (windows, h, N, N) buffer: about a core's L2 cache, where the dozen passes of the
# forward and backward over it stay. One window of 6 heads x 256 x 256 floats is 1.5 MB; forward and
# backward of 64 such windows at head width 16 on 2 cores: 114 ms in chunks of one window, 157 ms in
# chunks of 8 MB.
CHUNK_BYTES = 2 * 2**20
# Probabilities kept per call (per layer) for the backward; beyond it they are recomputed. 256 MB keeps
# them for batches up to 8 x 64x64 LR patches at window 16 (light x2: 1.6 GB for all 16 layers at batch 4).
KEEP_BYTES = 256 * 2**20


def _chunks(group, part, heads: int, itemsize: int):
    """The number of windows per chunk of ``part`` of ``group``'s windows, and the chunks, as slices of the
    group's windows."""
    step = max(1, CHUNK_BYTES // (heads * part.regions * part.size**2 * itemsize))
    return min(step, group.count), [slice(s, min(s + step, group.count)) for s in range(0, group.count, step)]


def _probabilities(q, k, mask, c: slice, out: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T + mask)`` of the windows ``c``, the logits computed in ``out``."""
    s = torch.matmul(q[c], k[c].transpose(-2, -1), out=out)
    return s.add_(mask).softmax(dim=-1)


def _visits(groups, *tensors):
    """For each group and part, in the order both passes take them: the group, the part, and each tensor's
    windows of the group gathered by the part ``(count, h, regions, size, e)``."""
    for group in groups:
        for part in group.parts:
            yield group, part, [part.gather(t[group.windows]) for t in tensors]


def _scatter(dst: torch.Tensor, group, part, src: torch.Tensor) -> None:
    """Write a part's ``(count, h, regions, size, e)`` result back to its tokens of ``dst`` (B, h, N, e); a whole
    window's result was computed in place."""
    if part.tokens is not None:
        dst[group.windows].index_copy_(2, part.tokens, src.flatten(2, 3))


def _target(dst: torch.Tensor, group, part, like: torch.Tensor) -> torch.Tensor:
    """Where a part's result goes: a view of ``dst`` for a whole window, else a new ``like``-shaped tensor."""
    if part.tokens is None:
        return part.gather(dst[group.windows])
    return torch.empty_like(like)


class _ChunkedAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, bias, groups):
        b, h, n, _ = q.shape
        out = q.new_empty(b, h, n, v.shape[-1])
        entries = sum(g.count * h * p.regions * p.size**2 for g in groups for p in g.parts)
        keep = entries * q.element_size() <= KEEP_BYTES
        kept = []
        for group, part, (qp, kp, vp) in _visits(groups, q, k, v):
            mask = part.blocks(bias[0])
            op = _target(out, group, part, vp)
            step, chunks = _chunks(group, part, h, q.element_size())
            buf = q.new_empty(step, *qp.shape[1:-1], part.size)
            for c in chunks:
                p = _probabilities(qp, kp, mask, c, buf[:c.stop - c.start])
                torch.matmul(p, vp[c], out=op[c])
                if keep:
                    kept.append(p)
            _scatter(out, group, part, op)
        ctx.groups = groups
        ctx.save_for_backward(q, k, v, bias, out, *kept)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias, out, *kept = ctx.saved_tensors
        groups = ctx.groups
        h = q.shape[1]
        # Contiguous gradients whatever the inputs' strides (a scaled q or an inheriting layer's v is laid
        # out transposed, and empty_like would keep that): matmul then writes each chunk in place, where a
        # strided out= costs a temporary and a copy per chunk and breaks torch.compile's graph.
        dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
        dbias = torch.zeros_like(bias) if ctx.needs_input_grad[3] else None
        # softmax backward: dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dout * out).
        rows = (dout * out).sum(-1, keepdim=True)
        recompute, kept = not kept, iter(kept)
        for group, part, (qp, kp, vp, dop, rp) in _visits(groups, q, k, v, dout, rows):
            dqp, dkp, dvp = (_target(g, group, part, t) for g, t in ((dq, qp), (dk, kp), (dv, vp)))
            whole = part.tokens is None
            dmask = None
            if dbias is not None:
                dmask = part.blocks(dbias[0]) if whole else dbias.new_zeros(h, part.regions, part.size, part.size)
            mask = part.blocks(bias[0]) if recompute else None
            step, chunks = _chunks(group, part, h, q.element_size())
            buf_s = None if mask is None else q.new_empty(step, *qp.shape[1:-1], part.size)
            buf_d = q.new_empty(step, *qp.shape[1:-1], part.size)
            for c in chunks:
                m = c.stop - c.start
                p = next(kept) if mask is None else _probabilities(qp, kp, mask, c, buf_s[:m])
                torch.matmul(p.transpose(-2, -1), dop[c], out=dvp[c])
                ds = torch.matmul(dop[c], vp[c].transpose(-2, -1), out=buf_d[:m]).sub_(rp[c]).mul_(p)
                torch.matmul(ds, kp[c], out=dqp[c])
                torch.matmul(ds.transpose(-2, -1), qp[c], out=dkp[c])
                if dmask is not None:
                    dmask.add_(ds[0] if m == 1 else ds.sum(0))
            for g, gp in ((dq, dqp), (dk, dkp), (dv, dvp)):
                _scatter(g, group, part, gp)
            if dmask is not None and not whole:
                dbias[0].view(h, -1).index_add_(1, part.block, dmask.view(h, -1))
        return dq, dk, dv, dbias, None


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                      groups=None) -> torch.Tensor:
    """``softmax(q k^T + bias) v`` for q, k (B, H, N, e), v (B, H, N, ev) and bias (1, H, N, N), differentiable
    in q, k, v and bias, each window's tokens attending within their regions only. ``groups``: the
    :class:`~.window.WindowGroup` s covering the B windows in order (see :class:`~.window.WindowLayout`);
    default all whole windows. Scale q beforehand."""
    b, _, n, _ = q.shape
    return _ChunkedAttention.apply(q, k, v, bias, tuple(groups) if groups else (whole_windows(b, n), ))
