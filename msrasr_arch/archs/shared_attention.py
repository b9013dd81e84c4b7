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

What makes ``fused`` fast on CPU (measured with 64 windows x 6 heads x 256 tokens, 2 threads):

* SDPA's fused CPU kernel is used only for 4-D inputs, a 4-D mask and equal q/v widths, and is fastest at
  head widths that are multiples of 16 floats; CUDA's memory-efficient kernel needs multiples of 8
  (:func:`fused_width`). q, k and v come out of the projections already padded with zeros (zero weight
  rows), which changes no dot product.
* Shifted windows arrive in the grouped layout of :class:`~msrasr_arch.archs.window.ShiftMask`: one
  attention call per group of windows sharing a mask, on a contiguous slice, with no gathers.
* In CPU training (the position bias needs a gradient, which the fused kernel does not give) attention is
  explicit, per group, in chunks of windows, with no map stored (:mod:`.chunked_attention`).
"""
from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn import functional as F

from .chunked_attention import chunked_attention
from .sdpa import sdpa
from .swin_blocks import trunc_normal_
from .window import ShiftMask, exporting, relative_position_index

ATTN_IMPLS = ('fused', 'reference')


class SharedLogits(NamedTuple):
    """What a layer hands to the layer that inherits from it (per window, per head).

    ``fused``: ``q`` and ``k`` (B*nW, h, N, e), ``bias`` (h, N, N) and ``scale``: the logits are
    ``scale * q @ k^T + bias``. ``reference``: ``logits`` (B*nW, h, N, N).
    """
    q: Optional[torch.Tensor] = None
    k: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    scale: float = 1.0
    logits: Optional[torch.Tensor] = None


def fused_width(e: int, device: torch.device) -> int:
    """Head width to feed SDPA's fused kernels for a true width ``e``; zero columns change no dot product.

    * CPU: the fused kernel vectorises over the head dimension in 16-float steps: measured with 64 windows
      x 6 heads x 256 tokens on 2 AVX-512 cores, e = 10 takes 37 ms, e = 16 21 ms, e = 30 36 ms, e = 32
      31 ms. So a multiple of 16.
    * CUDA: with a mask, only the memory-efficient kernel applies (flash takes no mask, cuDNN is left out,
      see :mod:`.sdpa`), and it refuses head widths that are not a multiple of its GEMM alignment (8 for
      bf16/fp16, 4 for fp32 on sm80 and newer); refused, SDPA falls back to the math path and builds every
      N x N map. So a multiple of 8.
    """
    # Non-negative operands: traced into ONNX, integer division truncates, it does not floor.
    step = {'cpu': 16, 'cuda': 8}.get(device.type, 1)
    return (e + step - 1) // step * step


def _padded_linear(x: torch.Tensor, linear: nn.Linear, blocks: int, e: int, width: int) -> torch.Tensor:
    """``linear(x)`` with each of its ``blocks`` output blocks of ``e`` channels followed by ``width - e`` zero
    channels: zero weight rows cost a few extra multiply-adds, where padding the output would cost a copy."""
    if width == e:
        return linear(x)
    weight = F.pad(linear.weight.view(blocks, e, -1), (0, 0, 0, width - e)).view(blocks * width, -1)
    bias = None if linear.bias is None else F.pad(linear.bias.view(blocks, e), (0, width - e)).view(-1)
    return F.linear(x, weight, bias)


def _shifted_factors(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, width: int):
    """Q' and K' of architecture.md section 8, each ``(bw, h, N, width)``.

    ``q``, ``k``: (bw, h, N, e). ``w``: (h, 2r+1, 2r+1), the F kernel (times the logit scale).
    ``Q'[i, a]`` is ``q[i + a - r]`` and ``K'[j, a]`` is ``sum_b w[a, b] k[j + b - r]`` (zero outside
    0..N-1), so ``Q' K'^T = F(scale * q k^T)`` with F's zero padding. Channels beyond ``(2r+1) * e`` are
    zero in K'; in the inference form of Q' they hold the following rows of q, which meet those zeros.
    """
    bw, h, n, e = q.shape
    size = w.shape[-1]
    r, wide = size // 2, size * e
    extra = (width - wide + e - 1) // e  # zero rows to append so that the last Q' row can read ``width`` floats
    qp = F.pad(q, (0, 0, r, r + extra))  # (bw, h, N + 2r + extra, e), contiguous
    kp = F.pad(k, (0, 0, r, r))
    taps = [w[:, :, b].reshape(h, size, 1, 1) for b in range(size)]
    # The inference form below writes through non-contiguous out= views, which torch.compile cannot trace.
    if torch.is_grad_enabled() or exporting() or torch.compiler.is_compiling():
        q_out = torch.cat([qp[..., a:a + n, :] for a in range(size)] + [qp.new_zeros(bw, h, n, width - wide)], -1)
        k_out = torch.cat([sum(taps[b][:, a] * kp[..., b:b + n, :] for b in range(size)) for a in range(size)]
                          + [kp.new_zeros(bw, h, n, width - wide)], -1)
        return q_out, k_out
    # Inference: Q' is one copy of a view whose overlapping rows slide by one token over the padded q
    # (SDPA reads the overlapping view itself 6x slower), and K' is accumulated over whole contiguous
    # rows, then laid out in one copy (writing its 10-float blocks in place is 4x slower, a conv 2.5x:
    # nothing vectorises over them).
    q_out = qp.as_strided((bw, h, n, width), (qp.stride(0), qp.stride(1), e, 1)).contiguous()
    kp = kp.reshape(bw, h, -1)
    acc = kp.new_empty(bw, h, size, n * e)
    for a in range(size):
        torch.mul(kp[..., :n * e], w[:, a, 0].view(h, 1), out=acc[:, :, a])
        for b in range(1, size):
            acc[:, :, a].addcmul_(kp[..., b * e:(b + n) * e], w[:, a, b].view(h, 1))
    k_out = kp.new_empty(bw, h, n, width)
    k_out[..., :wide].unflatten(-1, (size, e)).copy_(acc.view(bw, h, size, n, e).transpose(2, 3))
    k_out[..., wide:] = 0
    return q_out, k_out


class SharedWindowAttention(nn.Module):
    """Window multi-head self-attention that either computes its similarity map or inherits one.

    Args:
        dim: channels C.
        num_heads: heads h (C must be divisible by h).
        window_size: window side ws; N = ws^2 tokens per window.
        computes: True for a layer with its own q/k (and bias table); False for an inheriting layer.
        transform_kernel: size of ``F`` for an inheriting layer: 0 = identity (plain sharing), 1, 3, 5...
        qkv_bias: bias in the q/k/v projections.

    Shapes: ``forward(x (B*nW, N, C), mask (a :class:`ShiftMask`) or None, shared, impl)`` returns the output
    ``(B*nW, N, C)`` and the :class:`SharedLogits` for the layer that inherits from this one. The windows of
    ``x`` are in raster order, or in the mask's grouped order when it has groups (the output keeps it).
    """

    def __init__(self, *, dim: int, num_heads: int, window_size: int, computes: bool,
                 transform_kernel: int = 3, qkv_bias: bool = True):
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
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1)**2, num_heads))
            trunc_normal_(self.relative_position_bias_table, std=.02)
            self.register_buffer('relative_position_index', relative_position_index(window_size), persistent=False)
            self.transform = None
        else:
            self.v = nn.Linear(dim, dim, bias=qkv_bias)
            self.transform = None
            if transform_kernel:
                # Depth-wise over the heads: each head's N x N map is an image. Identity at init, so
                # training starts from plain sharing.
                self.transform = nn.Conv2d(num_heads, num_heads, transform_kernel, padding=transform_kernel // 2,
                                           groups=num_heads)
        self.proj = nn.Linear(dim, dim)

    def reset_transform(self) -> None:
        """Set ``F`` to the identity (centre tap 1, bias 0)."""
        if self.transform is not None:
            with torch.no_grad():
                self.transform.weight.zero_()
                k = self.transform.kernel_size[0]
                self.transform.weight[:, :, k // 2, k // 2] = 1
                self.transform.bias.zero_()

    def position_bias(self) -> torch.Tensor:
        """``(h, N, N)`` relative-position bias of a computing layer."""
        n = self.window_size**2
        table = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return table.view(n, n, -1).permute(2, 0, 1).contiguous()

    def forward(self, x: torch.Tensor, mask: Optional[ShiftMask], shared: Optional[SharedLogits],
                impl: str = 'fused'):
        bw, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        if not self.computes and shared is None:
            raise RuntimeError('an inheriting attention layer needs the shared map of the layer two before')
        if impl == 'reference':
            if self.computes:
                q, k, v = self.qkv(x).view(bw, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
                state = SharedLogits(logits=(q * self.scale) @ k.transpose(-2, -1) + self.position_bias().to(x.dtype))
            else:
                v = self.v(x).view(bw, n, h, d).transpose(1, 2)
                state = shared if self.transform is None else SharedLogits(logits=self.transform(shared.logits))
            logits = state.logits
            if mask is not None:
                nw = mask.mask.shape[0]
                logits = (logits.view(bw // nw, nw, h, n, n) + mask.mask[None, :, None]).view(bw, h, n, n)
            out = logits.softmax(dim=-1) @ v
            return self.proj(out.transpose(1, 2).reshape(bw, n, c)), state

        if self.computes:
            bias = self.position_bias().to(x.dtype)
            explicit = self._explicit(x, bias)
            width = fused_width(d, x.device)
            qkv = _padded_linear(x, self.qkv, 3 * h, d, width).view(bw, n, 3, h, width)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            state, scale = SharedLogits(q=q[..., :d], k=k[..., :d], bias=bias, scale=self.scale), self.scale
        else:
            state, q, k, explicit = self._transform(shared, x)
            scale = 1.0
            # The fused CPU kernel takes nothing but equal q/v widths (see _attend): v gets q's padding. The
            # explicit path has no such rule, and its matmuls are faster at a multiple of 16 as well.
            width = fused_width(d, x.device) if explicit else q.shape[-1]
            v = _padded_linear(x, self.v, h, d, width).view(bw, n, h, width).transpose(1, 2)
        return self.proj(self._attend(q, k, v, state.bias, scale, mask, explicit, d)), state

    def _explicit(self, x: torch.Tensor, bias: torch.Tensor) -> bool:
        """Whether to attend by :func:`~.chunked_attention.chunked_attention` rather than SDPA's fused kernel.

        On CPU the fused kernel has no gradient for the mask (our trainable position bias), so in training
        SDPA would take its math path, which stores every N x N map for the backward; the chunked form
        stores none. The widths stay padded to :func:`fused_width`: the small matmuls are faster at a
        multiple of 16 floats too (a light x2 training step on 2 cores: 3.8-4.7 s padded, 5.0-6.0 s at widths 10 and 30).
        """
        return x.device.type == 'cpu' and torch.is_grad_enabled() and bias.requires_grad

    def _transform(self, shared: SharedLogits, x: torch.Tensor):
        """Apply ``F`` to an inherited map: the state handed on, the q and k to attend with (scale folded in,
        padded for the fused kernel) and whether to attend explicitly."""
        conv = self.transform
        if conv is None:
            state, q, k, wide = shared, shared.q * shared.scale, shared.k, shared.q.shape[-1]
        else:
            state = SharedLogits(bias=conv(shared.bias.unsqueeze(0)).squeeze(0))
        explicit = self._explicit(x, state.bias)
        if conv is None:
            width = fused_width(wide, x.device)
            if width != wide:
                q, k = F.pad(q, (0, width - wide)), F.pad(k, (0, width - wide))
            return state, q, k, explicit
        h, e = self.num_heads, shared.q.shape[-1]
        size = conv.kernel_size[0]
        wide = size * e
        width = fused_width(wide, x.device)
        w = conv.weight.view(h, size, size).to(shared.k.dtype) * shared.scale
        q, k = _shifted_factors(shared.q, shared.k, w, width)
        return SharedLogits(q=q[..., :wide], k=k[..., :wide], bias=state.bias, scale=1.0), q, k, explicit

    @staticmethod
    def _attend(q, k, v, bias, scale: float, mask: Optional[ShiftMask], explicit: bool, d: int) -> torch.Tensor:
        """Softmax attention of ``q``, ``k`` (bw, h, N, e) and ``v`` (bw, h, N, ev >= d) with additive ``bias``
        (h, N, N) and the shift mask: the first ``d`` channels of each head's output, token-major
        ``(bw, N, h * d)``, the layout ``proj`` reads."""
        bw, h, n, _ = q.shape
        if explicit:
            # Scaling q costs N x e, scaling the logits N x N.
            q = q * scale if scale != 1.0 else q
            scale = 1.0

            def attend(q, k, v, attn_mask):
                return chunked_attention(q, k, v, attn_mask)[..., :d]
        else:
            # SDPA's fused CPU kernel needs 4-D inputs, a 4-D mask and equal q/v widths; anything else drops
            # to the math path, which materialises the maps.
            def attend(q, k, v, attn_mask):
                return sdpa(q, k, v, attn_mask=attn_mask, scale=scale)[..., :d]

        if mask is not None and not mask.groups:
            # Raster window order (graph capture): fold the windows into the heads, one (1, nW*h, N, N) mask.
            nw = mask.mask.shape[0]
            attn_mask = (bias + mask.mask[:, None]).reshape(1, nw * h, n, n)
            out = attend(*(t.reshape(bw // nw, nw * h, n, -1) for t in (q, k, v)), attn_mask)
            return out.reshape(bw, h, n, d).transpose(1, 2).reshape(bw, n, h * d)
        # Grouped layout (ShiftMask): each group is a contiguous slice of windows sharing one (h, N, N) mask
        # broadcast over them, so no per-window mask is built, and the output is assembled straight into the
        # token-major layout proj reads.
        groups = mask.groups if mask is not None else ((0, bw, None), )
        outs = []
        for start, count, window_mask in groups:
            group = slice(start, start + count)
            group_bias = bias if window_mask is None else bias + window_mask
            outs.append(attend(q[group], k[group], v[group], group_bias.unsqueeze(0)).transpose(1, 2))
        return (torch.cat(outs) if len(outs) > 1 else outs[0]).reshape(bw, n, h * d)
