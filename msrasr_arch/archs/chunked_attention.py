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


def _probabilities(qp, kp, mask, rows: slice, out: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T + mask)`` of the blocks' ``rows`` (a chunk of windows), the logits computed in ``out``
    (windows, heads * regions, size, size); returned as ``(rows, size, size)``."""
    size = mask.shape[-1]
    torch.bmm(qp[rows], kp[rows].transpose(1, 2), out=out.view(-1, size, size))
    return out.add_(mask).softmax(dim=-1).view(-1, size, size)


def _parts(groups):
    """Each group and part, in the order both passes take them."""
    return [(group, part) for group in groups for part in group.parts]


def _block(t: torch.Tensor, group, part) -> torch.Tensor:
    """``t``'s windows of the group gathered by the part, as one contiguous ``(count * h * regions, size, e)``
    block (a view of a contiguous ``t`` for whole windows, else one copy), which ``bmm`` takes chunk by
    chunk with no reshape or copy of its own."""
    return part.gather(t[group.windows]).contiguous().view(-1, part.size, t.shape[-1])


def _scatter(dst: torch.Tensor, group, part, src: torch.Tensor) -> None:
    """Write a part's ``(count * h * regions, size, e)`` result back to its tokens of ``dst`` (B, h, N, e); a
    whole window's result was computed in place."""
    if part.tokens is not None:
        dst[group.windows].index_copy_(2, part.tokens, src.view(group.count, dst.shape[1], -1, src.shape[-1]))


def _target(dst: torch.Tensor, group, part, like: torch.Tensor) -> torch.Tensor:
    """Where a part's result goes, shaped as ``like``: a view of ``dst`` (contiguous) for a whole window, else a
    new tensor."""
    if part.tokens is None:
        return dst[group.windows].view(like.shape)
    return torch.empty_like(like)


class _ChunkedAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, bias, groups):
        b, h, n, _ = q.shape
        out = q.new_empty(b, h, n, v.shape[-1])
        entries = sum(g.count * h * p.regions * p.size**2 for g in groups for p in g.parts)
        keep = entries * q.element_size() <= KEEP_BYTES
        blocks, kept = [], []
        for group, part in _parts(groups):
            qp, kp, vp = (_block(t, group, part) for t in (q, k, v))
            blocks += [qp, kp, vp]
            hr, size = h * part.regions, part.size
            mask = part.blocks(bias[0]).view(hr, size, size)
            op = _target(out, group, part, vp)
            step, chunks = _chunks(group, part, h, q.element_size())
            buf = q.new_empty(step, hr, size, size)
            for c in chunks:
                rows = slice(c.start * hr, c.stop * hr)
                p = _probabilities(qp, kp, mask, rows, buf[:c.stop - c.start])
                torch.bmm(p, vp[rows], out=op[rows])
                if keep:
                    kept.append(p)
            _scatter(out, group, part, op)
        ctx.groups, ctx.shapes = groups, (q.shape, k.shape, v.shape)
        # The blocks, not q, k and v: the backward takes them as they are (the same memory, as a view or as
        # the one copy the forward made).
        ctx.save_for_backward(bias, out, *blocks, *kept)
        return out

    @staticmethod
    def backward(ctx, dout):
        bias, out, *saved = ctx.saved_tensors
        parts = _parts(ctx.groups)
        blocks, kept = saved[:3 * len(parts)], iter(saved[3 * len(parts):])
        recompute = len(saved) == len(blocks)
        h = bias.shape[1]
        # Contiguous gradients whatever the inputs' strides: each chunk's products write in place.
        dq, dk, dv = (out.new_empty(shape) for shape in ctx.shapes)
        dbias = torch.zeros_like(bias) if ctx.needs_input_grad[3] else None
        # softmax backward: dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dout * out).
        rowsums = (dout * out).sum(-1, keepdim=True)
        for i, (group, part) in enumerate(parts):
            qp, kp, vp = blocks[3 * i:3 * i + 3]
            dop, rp = _block(dout, group, part), _block(rowsums, group, part)
            hr, size = h * part.regions, part.size
            dqp, dkp, dvp = (_target(g, group, part, t) for g, t in ((dq, qp), (dk, kp), (dv, vp)))
            whole = part.tokens is None
            dmask = None
            if dbias is not None:
                dmask = part.blocks(dbias[0]) if whole else dbias.new_zeros(h, part.regions, size, size)
                dmask = dmask.view(hr, size, size)
            mask = part.blocks(bias[0]).view(hr, size, size) if recompute else None
            step, chunks = _chunks(group, part, h, out.element_size())
            buf_s = None if mask is None else out.new_empty(step, hr, size, size)
            buf_d = out.new_empty(step * hr, size, size)
            for c in chunks:
                m = c.stop - c.start
                rows = slice(c.start * hr, c.stop * hr)
                p = next(kept) if mask is None else _probabilities(qp, kp, mask, rows, buf_s[:m])
                torch.bmm(p.transpose(1, 2), dop[rows], out=dvp[rows])
                ds = torch.bmm(dop[rows], vp[rows].transpose(1, 2), out=buf_d[:m * hr]).sub_(rp[rows]).mul_(p)
                torch.bmm(ds, kp[rows], out=dqp[rows])
                torch.bmm(ds.transpose(1, 2), qp[rows], out=dkp[rows])
                if dmask is not None:
                    dmask.add_(ds if m == 1 else ds.view(m, hr, size, size).sum(0))
            for g, gp in ((dq, dqp), (dk, dkp), (dv, dvp)):
                _scatter(g, group, part, gp)
            if dmask is not None and not whole:
                dbias[0].view(h, -1).scatter_add_(1, part.block.expand(h, -1), dmask.view(h, -1))
        return dq, dk, dv, dbias, None


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                      groups=None) -> torch.Tensor:
    """``softmax(q k^T + bias) v`` for q, k (B, H, N, e), v (B, H, N, ev) and bias (1, H, N, N), differentiable
    in q, k, v and bias, each window's tokens attending within their regions only. ``groups``: the
    :class:`~.window.WindowGroup` s covering the B windows in order (see :class:`~.window.WindowLayout`);
    default all whole windows. Scale q beforehand."""
    b, _, n, _ = q.shape
    return _ChunkedAttention.apply(q, k, v, bias, tuple(groups) if groups else (whole_windows(b, n), ))
