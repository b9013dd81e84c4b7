"""Window self-attention with shared similarity maps (the paper's SSA, section 3.3).

Pair sharing (architecture.md section 3): in each MSTB the first two layers compute their own logits
``S = q k^T * d^-0.5 + B`` (B the relative-position bias); layer ``i + 2`` inherits layer ``i``'s map
through a learnable depth-wise conv ``F`` (``S' = F(S)``), so it needs no q/k projections and no bias
table. The shift mask is added after ``F``, before the softmax.

Two exact implementations:

* ``reference``: the logits are materialised and ``F`` is a conv over the ``(B*nW, h, N, N)`` maps.
  Simple, and what the Mult-Adds count describes.
* ``fused`` (default): ``F`` is bilinear-friendly: with ``w[a][b]`` its kernel,
  ``F(q k^T)[i, j] = sum_a q_{i+a} . (sum_b w[a][b] k_{j+b})`` (zero outside the window), so
  ``F(S) = Q' K'^T + F(B) + bias_F`` where ``Q'`` stacks the row-shifted copies of ``q`` and ``K'`` the
  ``w``-weighted sums of shifted copies of ``k`` (architecture.md section 8). No ``N x N`` map is ever
  built: every layer is one ``scaled_dot_product_attention`` call. A chain (depth > 4) nests the
  construction again, which stays exact at the window borders where composing kernels would not.
  ``F(B)`` is computed on the bias's distinct values, never as a conv over an ``N x N`` map
  (:mod:`.bias_maps`).

How the fused form runs (SDPA's kernels, the chunked CPU training path, head widths padded with zero
weight rows) is decided once per device and mode by :mod:`.backend`; which windows attend
together, and which of their tokens attend to each other, by the :class:`~.window.WindowLayout` the
layer passes in.
"""
from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn import functional as F

from . import native
from .backend import REFERENCE, Backend, attend
from .bias_maps import gather_map, map_index, transform_keys, transform_values
from .swin_blocks import trunc_normal_
from .window import WindowLayout

ATTN_IMPLS = ('fused', 'operators', 'reference')


class SharedLogits(NamedTuple):
    """What a layer hands to the layer that inherits from it (per window, per head).

    ``fused``: ``q`` and ``k`` (B*nW, h, N, e) and ``bias`` (h, N, N), contiguous: the logits are
    ``q @ k^T + bias`` (a computing layer's q comes scaled); with the ``native`` backend a computing layer's
    ``bias`` is its (M, h) position-bias table, which the kernel reads the map from. ``values`` (M, h): the
    distinct values ``bias`` is gathered from (see :mod:`.bias_maps`), which the next ``F`` transforms.
    ``reference``: ``logits`` (B*nW, h, N, N).
    """
    q: Optional[torch.Tensor] = None
    k: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None


def _padded_linear(x: torch.Tensor, linear: nn.Linear, blocks: int, e: int, width: int,
                   scales: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``linear(x)`` with each of its ``blocks`` output blocks of ``e`` channels followed by ``width - e`` zero
    channels: zero weight rows cost a few extra multiply-adds, where padding the output would cost a copy.
    ``scales`` (G, 1, 1): factors for G equal groups of output rows, applied to the weight and bias (the logit
    scale folded into q's rows costs a 180 x 60 product, where scaling q costs a pass over it and its
    gradient)."""
    weight, bias = linear.weight, linear.bias
    if scales is not None:
        g = scales.shape[0]
        weight = (weight.view(g, -1, weight.shape[-1]) * scales).view(weight.shape)
        bias = None if bias is None else (bias.view(g, -1) * scales.view(g, 1)).view(-1)
    if width != e:
        weight = F.pad(weight.view(blocks, e, -1), (0, 0, 0, width - e)).view(blocks * width, -1)
        bias = None if bias is None else F.pad(bias.view(blocks, e), (0, width - e)).view(-1)
    return F.linear(x, weight, bias)


def _shift_stack(x: torch.Tensor, size: int, width: int) -> torch.Tensor:
    """``(bw, h, N, e)`` to ``(bw, h, N, width)``: row ``i`` holds ``x[i - r], ..., x[i + r]`` (zero outside
    0..N-1, ``r = size // 2``), then zero channels up to ``width``."""
    bw, h, n, e = x.shape
    r = size // 2
    xp = F.pad(x, (0, 0, r, r))
    return torch.cat([xp[..., a:a + n, :] for a in range(size)] + [xp.new_zeros(bw, h, n, width - size * e)], -1)


def _shift_sum(blocks) -> torch.Tensor:
    """The adjoint of :func:`_shift_stack` over its ``size`` blocks of ``(bw, h, N, e)``:
    ``out[m] = sum_a blocks[a][m - (a - r)]``, terms outside 0..N-1 dropped."""
    r, n = len(blocks) // 2, blocks[0].shape[-2]
    out = blocks[r].clone(memory_format=torch.contiguous_format)
    for a, block in enumerate(blocks):
        off = a - r
        if off:
            out[..., max(0, off):n + min(0, off), :] += block[..., max(0, -off):n - max(0, off), :]
    return out


def _combine(xs, coefs) -> torch.Tensor:
    """``sum_b coefs[b] * xs[b]``: one pass per term (``addcmul``), no zero to start from."""
    out = xs[0] * coefs[0]
    for x, c in zip(xs[1:], coefs[1:]):
        out = torch.addcmul(out, x, c)
    return out


def _factors(q, k, w, width: int):
    """Q' and K' by plain operators (see :func:`_shifted_factors`)."""
    bw, h, n, e = q.shape
    size = w.shape[-1]
    r, wide = size // 2, size * e
    kp = F.pad(k, (0, 0, r, r)).reshape(bw, h, -1)
    rows = [kp[..., b * e:(b + n) * e] for b in range(size)]  # k[j + b - r], j = 0..N-1, flattened
    taps = w.unsqueeze(-1)  # (h, size, size, 1): broadcast over the flattened rows
    blocks = [_combine(rows, taps[:, a].unbind(1)).view(bw, h, n, e) for a in range(size)]
    return _shift_stack(q, size, width), torch.cat(blocks + [kp.new_zeros(bw, h, n, width - wide)], -1)


def _windows_of_rows(x: torch.Tensor, size: int, width: int) -> torch.Tensor:
    """:func:`_shift_stack`, contiguous, by one sliding ``unfold`` over the flattened rows of the padded x and one
    copy (no ONNX export with free sizes)."""
    bw, h, n, e = x.shape
    r = size // 2
    rows = F.pad(x, (0, 0, r, r)).reshape(bw, h, -1).unfold(2, size * e, e)
    return F.pad(rows, (0, width - size * e)) if width > size * e else rows.contiguous()


def _mixing(w: torch.Tensor, e: int) -> torch.Tensor:
    """``(h, size * e, size * e)``: block ``(a, b)`` is ``w[a, b] I_e``, so that block ``b`` of ``X @ mixing`` is
    ``sum_a w[a, b] X_a`` over the ``e``-channel blocks ``X_a`` of ``X``."""
    h, size = w.shape[0], w.shape[-1]
    eye = torch.eye(e, dtype=w.dtype, device=w.device)
    return torch.einsum('hab,cd->hacbd', w, eye).reshape(h, size * e, size * e)


class _ShiftedFactors(torch.autograd.Function):
    """:func:`_factors` by sliding rows, with the backward written out: Q' is the padded q's sliding rows, K'
    the padded k's sliding rows (kept for the backward, where they give F's gradient) times :func:`_mixing`,
    each built in one pass; through autograd, each shifted slice of the padded q and k gives back a
    zero-filled gradient of the whole padded tensor."""

    @staticmethod
    def forward(ctx, q, k, w, width):
        e, size = k.shape[-1], w.shape[-1]
        rows = _windows_of_rows(k, size, size * e)
        ctx.save_for_backward(rows, w)
        # Block a of K' is sum_b w[a, b] k[j + b - r]: k's sliding rows times the transposed mixing.
        mixing = F.pad(_mixing(w, e).transpose(-2, -1), (0, width - size * e))
        return _windows_of_rows(q, size, width), torch.matmul(rows, mixing)

    @staticmethod
    def backward(ctx, dq_out, dk_out):
        rows, w = ctx.saved_tensors
        size = w.shape[-1]
        e = rows.shape[-1] // size
        wide = size * e
        dq = dk = dw = None
        if ctx.needs_input_grad[0]:
            dq = _shift_sum([dq_out[..., a * e:(a + 1) * e] for a in range(size)])
        if ctx.needs_input_grad[1]:
            # Block b of dK'_wide @ mixing is sum_a w[a, b] dK'_a: one matmul, where a product per tap over
            # the strided e-channel blocks took 5x as long.
            g = torch.matmul(dk_out[..., :wide], _mixing(w, e))
            dk = _shift_sum([g[..., b * e:(b + 1) * e] for b in range(size)])
        if ctx.needs_input_grad[2]:
            # dw[a, b] = sum over windows, rows and channels of dK'_a[j, c] k[j + b - r, c]: the diagonals of
            # the (wide x wide) blocks of dK'^T rows, one batched matmul.
            c = torch.matmul(dk_out[..., :wide].transpose(-2, -1), rows).sum(0)
            dw = c.view(-1, size, e, size, e).diagonal(dim1=2, dim2=4).sum(-1)
        return dq, dk, dw, None


class _NativeFactors(torch.autograd.Function):
    """:func:`_factors` by the C++ kernel of :mod:`.native` (float32), forward and backward: a pass over q and k
    each way, where the operators above cost a dozen calls a layer."""

    @staticmethod
    def forward(ctx, q, k, w, width):
        ctx.save_for_backward(k, w)
        return native.factors(q, k, w, width)

    @staticmethod
    def backward(ctx, dq_out, dk_out):
        k, w = ctx.saved_tensors
        return (*native.factors_backward(k, w, dq_out, dk_out, ctx.needs_input_grad[:3]), None)


def _shifted_factors(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, width: int, plain: bool = False,
                     kernel: bool = False):
    """Q' and K' of architecture.md section 8, each ``(bw, h, N, width)``.

    ``q`` (scaled), ``k``: (bw, h, N, e). ``w``: (h, 2r+1, 2r+1), the F kernel.
    ``Q'[i, a]`` is ``q[i + a - r]`` and ``K'[j, a]`` is ``sum_b w[a, b] k[j + b - r]`` (zero outside
    0..N-1), so ``Q' K'^T = F(q k^T)`` with F's zero padding. Channels beyond ``(2r+1) * e`` are
    zero in both.

    By default :class:`_ShiftedFactors`: sliding ``unfold`` s and one matmul, with a written-out backward
    (in inference too: the whole forward took 0.95-0.97x the plain form's time at 128x128 and 256x256 inputs
    on 2 cores, ``benchmarks/ab_revision.py``).
    ``plain`` (while a graph is captured for every size, see :class:`~.window.WindowLayout`): operators that
    ONNX exports with free sizes, which ``unfold`` over the flattened rows does not (its traced step is a
    number): Q' is one concatenation of row-shifted views of the padded q; K' is accumulated over whole
    contiguous rows of the padded k (``e``-float blocks one by one do not vectorise), block by block, and
    laid out by the same concatenation. Both give the same values.
    ``kernel``: by the C++ kernel of :mod:`.native` (the ``native`` backend's choice; float32 out).
    """
    if kernel:
        return _NativeFactors.apply(q.float(), k.float(), w.float(), width)
    return _factors(q, k, w, width) if plain else _ShiftedFactors.apply(q, k, w, width)


class SharedWindowAttention(nn.Module):
    """Window multi-head self-attention that either computes its similarity map or inherits one.

    Args:
        dim: channels C.
        num_heads: heads h (C must be divisible by h).
        window_size: window side ws; N = ws^2 tokens per window.
        computes: True for a layer with its own q/k (and bias table); False for an inheriting layer.
        transform_kernel: size of ``F`` for an inheriting layer: 0 = identity (plain sharing), 1, 3, 5...
        transform_level: how many ``F`` an inheriting layer's map has been through, its own included: 1 for
            a layer that inherits from a computing one, 2 for the next in a chain.
        qkv_bias: bias in the q/k/v projections.

    Shapes: ``forward(x (B*nW, N, C), layout (:class:`~.window.WindowLayout`), shared)`` returns the
    output ``(B*nW, N, C)`` and the :class:`SharedLogits` for the layer that inherits from this one. The
    windows of ``x`` are in the layout's order (the output keeps it). ``backend`` (set by the network, see
    :mod:`.backend`) decides how it runs: the reference form or the fused one.
    """

    def __init__(self, *, dim: int, num_heads: int, window_size: int, computes: bool,
                 transform_kernel: int = 3, transform_level: int = 1, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed_dim {dim} is not divisible by num_heads {num_heads}')
        if transform_kernel < 0 or (transform_kernel and transform_kernel % 2 == 0):
            raise ValueError(f'attn_transform_kernel must be 0 or odd, got {transform_kernel}')
        self.dim, self.num_heads, self.window_size = dim, num_heads, window_size
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.computes = computes
        if computes:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
            self.register_buffer('qkv_scales', torch.tensor([self.scale, 1.0, 1.0]).view(3, 1, 1), persistent=False)
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1)**2, num_heads))
            trunc_normal_(self.relative_position_bias_table, std=.02)
            self.register_buffer('relative_position_index', map_index(window_size, transform_kernel, 0),
                                 persistent=False)
            self.transform = None
        else:
            self.v = nn.Linear(dim, dim, bias=qkv_bias)
            self.transform = None
            if transform_kernel:
                # Depth-wise over the heads: each head's N x N map is an image. Identity at init, so
                # training starts from plain sharing.
                self.transform = nn.Conv2d(num_heads, num_heads, transform_kernel, padding=transform_kernel // 2,
                                           groups=num_heads)
                # F(B) on the inherited map's distinct values (see .bias_maps).
                self.register_buffer('transform_keys', transform_keys(window_size, transform_kernel, transform_level),
                                     persistent=False)
                self.register_buffer('transform_index', map_index(window_size, transform_kernel, transform_level),
                                     persistent=False)
        self.proj = nn.Linear(dim, dim)
        self.backend: Backend = REFERENCE

    def reset_transform(self) -> None:
        """Set ``F`` to the identity (centre tap 1, bias 0)."""
        if self.transform is not None:
            with torch.no_grad():
                self.transform.weight.zero_()
                k = self.transform.kernel_size[0]
                self.transform.weight[:, :, k // 2, k // 2] = 1
                self.transform.bias.zero_()

    def position_bias(self) -> torch.Tensor:
        """``(h, N, N)`` relative-position bias of a computing layer, contiguous.

        ``benchmarks/components.py`` times it with ``F``."""
        return gather_map(self.relative_position_bias_table, self.relative_position_index)

    def forward(self, x: torch.Tensor, layout: WindowLayout, shared: Optional[SharedLogits]):
        if not self.computes and shared is None:
            raise RuntimeError('an inheriting attention layer needs the shared map of the layer two before')
        if self.backend.reference:
            return self._reference(x, layout, shared)
        bw, n, _ = x.shape
        h, d, backend = self.num_heads, self.head_dim, self.backend.under(layout)
        if self.computes:
            width = backend.width(d)
            # q comes out scaled (the logits are q k^T + B): nothing scales it or its gradient again.
            qkv = _padded_linear(x, self.qkv, 3 * h, d, width, self.qkv_scales).view(bw, n, 3, h, width)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            table = self.relative_position_bias_table
            # The kernel reads the map's entries from the table: the map is never built, nor its gradient.
            bias = table if backend.native else self.position_bias().to(x.dtype)
            state = SharedLogits(q=q[..., :d], k=k[..., :d], bias=bias, values=table)
        else:
            state, q, k = self._transform(shared, backend, layout.captured)
            width = backend.value_width(q.shape[-1], d)
            v = _padded_linear(x, self.v, h, d, width).view(bw, n, h, width).transpose(1, 2)
        return self.proj(attend(backend, q, k, v, state.bias, layout, d)), state

    def _reference(self, x: torch.Tensor, layout: WindowLayout, shared: Optional[SharedLogits]):
        """The literal form: logits materialised, ``F`` a conv over them, the mask added per window."""
        bw, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        if self.computes:
            q, k, v = self.qkv(x).view(bw, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
            state = SharedLogits(logits=(q * self.scale) @ k.transpose(-2, -1) + self.position_bias().to(x.dtype))
        else:
            v = self.v(x).view(bw, n, h, d).transpose(1, 2)
            state = shared if self.transform is None else SharedLogits(logits=self.transform(shared.logits))
        logits = state.logits
        if layout.mask is not None:
            nw = layout.mask.shape[0]
            logits = (logits.view(bw // nw, nw, h, n, n) + layout.mask[None, :, None]).view(bw, h, n, n)
        out = logits.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(bw, n, c)), state

    def transform_bias(self, values: torch.Tensor):
        """``F(B)`` of the inherited bias with distinct ``values`` (M, h): the map ``(h, N, N)`` and its values."""
        conv = self.transform
        values = transform_values(values, self.transform_keys, conv.weight, conv.bias)
        return gather_map(values, self.transform_index), values

    def _transform(self, shared: SharedLogits, backend: Backend, captured: bool):
        """Apply ``F`` to an inherited map: the state handed on, and the q and k to attend with (padded to the
        ``backend``'s head width). ``captured``: the layout's (plain operators while a graph is captured)."""
        conv = self.transform
        if conv is None:
            q, k, wide = shared.q, shared.k, shared.q.shape[-1]
            width = backend.width(wide)
            if width != wide:
                q, k = F.pad(q, (0, width - wide)), F.pad(k, (0, width - wide))
            return shared, q, k
        bias, values = self.transform_bias(shared.values)
        h, e = self.num_heads, shared.q.shape[-1]
        size = conv.kernel_size[0]
        wide = size * e
        w = conv.weight.view(h, size, size).to(shared.k.dtype)
        q, k = _shifted_factors(shared.q, shared.k, w, backend.width(wide), captured, backend.native)
        state = SharedLogits(q=q[..., :wide], k=k[..., :wide], bias=bias.to(shared.bias.dtype), values=values)
        return state, q, k
