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
"""
from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn import functional as F

from basicsr.archs.arch_util import trunc_normal_

from .sdpa import sdpa
from .window import ShiftMask, relative_position_index

ATTN_IMPLS = ('fused', 'reference')


class SharedLogits(NamedTuple):
    """What a layer hands to the layer that inherits from it (per window, per head).

    ``fused``: ``q`` (B*nW, h, N, e) already scaled, ``k`` (B*nW, h, N, e), ``bias`` (h, N, N): the logits
    are ``q @ k^T + bias``. ``reference``: ``logits`` (B*nW, h, N, N).
    """
    q: Optional[torch.Tensor] = None
    k: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None


def _row_shifts(t: torch.Tensor, radius: int) -> torch.Tensor:
    """``(..., N, e)`` -> ``(..., N, 2r+1, e)``: entry ``[i, a]`` is row ``i + a - r``, zero outside 0..N-1."""
    n = t.shape[-2]
    padded = F.pad(t, (0, 0, radius, radius))
    return torch.stack([padded[..., a:a + n, :] for a in range(2 * radius + 1)], dim=-2)


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
    ``(B*nW, N, C)`` and the :class:`SharedLogits` for the layer that inherits from this one.
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
        if self.computes:
            q, k, v = self.qkv(x).view(bw, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
            state = SharedLogits(q=q * self.scale, k=k, bias=self.position_bias().to(x.dtype))
            if impl == 'reference':
                state = SharedLogits(logits=state.q @ state.k.transpose(-2, -1) + state.bias)
        else:
            if shared is None:
                raise RuntimeError('an inheriting attention layer needs the shared map of the layer two before')
            v = self.v(x).view(bw, n, h, d).transpose(1, 2)
            state = self._transform(shared, impl)

        if impl == 'reference':
            logits = state.logits
            if mask is not None:
                nw = mask.mask.shape[0]
                logits = (logits.view(bw // nw, nw, h, n, n) + mask.mask[None, :, None]).view(bw, h, n, n)
            out = logits.softmax(dim=-1) @ v
        else:
            out = self._sdpa(state, v, mask)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c)), state

    def _transform(self, shared: SharedLogits, impl: str) -> SharedLogits:
        """Apply ``F`` to an inherited map, in the representation of ``impl``."""
        conv = self.transform
        if conv is None:
            return shared
        if impl == 'reference':
            return SharedLogits(logits=conv(shared.logits))
        r = conv.kernel_size[0] // 2
        h = self.num_heads
        w = conv.weight.view(h, 2 * r + 1, 2 * r + 1, 1, 1).to(shared.k.dtype)
        bw, _, n, e = shared.q.shape
        q = _row_shifts(shared.q, r).reshape(bw, h, n, (2 * r + 1) * e)
        # K'[j, a] = sum_b w[a, b] k[j + b]: a few fused multiply-adds (an einsum here becomes a slow bmm).
        ks = _row_shifts(shared.k, r)
        k = torch.stack([sum(w[:, a, b] * ks[..., b, :] for b in range(2 * r + 1)) for a in range(2 * r + 1)],
                        dim=-2).reshape(bw, h, n, (2 * r + 1) * e)
        bias = conv(shared.bias.unsqueeze(0)).squeeze(0)
        return SharedLogits(q=q, k=k, bias=bias)

    @staticmethod
    def _sdpa(state: SharedLogits, v: torch.Tensor, mask: Optional[ShiftMask]) -> torch.Tensor:
        q, k, bias = state.q, state.k, state.bias
        bw, h, n, e = q.shape
        d = v.shape[-1]
        if not q.is_cuda and torch.is_grad_enabled() and bias.requires_grad:
            # SDPA's fused CPU kernel has no gradient for the mask (our trainable position bias), so in
            # training it would take its math path anyway; doing that math here skips the padding below
            # and the math path's safe-softmax checks (2x faster training steps on CPU).
            logits = q @ k.transpose(-2, -1) + bias
            if mask is not None:
                nw = mask.mask.shape[0]
                logits = (logits.view(bw // nw, nw, h, n, n) + mask.mask[None, :, None]).view(bw, h, n, n)
            return logits.softmax(dim=-1) @ v
        # SDPA's fused CPU kernel needs 4-D inputs, a 4-D mask and equal q/v head dims; anything else drops
        # to the math path, which materialises the maps. An inheriting layer's q/k are wider than v (the
        # shifted copies), so v is zero-padded and the padding sliced off the output.
        if e != d:
            v = F.pad(v, (0, e - d))
        if mask is None:
            out = sdpa(q, k, v, attn_mask=bias.unsqueeze(0), scale=1.0)
        else:
            nw = mask.mask.shape[0]
            b = bw // nw
            if not mask.groups:  # graph capture: fold the windows into the heads, one (1, nW*h, N, N) mask
                attn_mask = (bias + mask.mask[:, None]).reshape(1, nw * h, n, n)
                out = sdpa(*(t.reshape(b, nw * h, n, e) for t in (q, k, v)), attn_mask=attn_mask, scale=1.0)
                out = out.reshape(bw, h, n, e)
                return out[..., :d] if e != d else out
            # Windows with the same shift mask are attended together, each group with one (1, h, N, N) mask
            # broadcast over its windows: no (nW, h, N, N) tensor is built (see ShiftMask).
            q, k, v = (t.reshape(b, nw, h, n, e) for t in (q, k, v))
            outs = []
            for idx, window_mask in mask.groups:
                group_bias = bias if window_mask is None else bias + window_mask
                outs.append(sdpa(
                    *(t.index_select(1, idx).reshape(-1, h, n, e) for t in (q, k, v)),
                    attn_mask=group_bias.unsqueeze(0), scale=1.0).view(b, len(idx), h, n, e))
            out = torch.cat(outs, dim=1).index_select(1, mask.order).view(bw, h, n, e)
        return out[..., :d] if e != d else out
