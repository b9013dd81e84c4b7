"""Cross-scale attention (CSA, paper section 3.2 and Fig. 4)."""
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .sdpa import sdpa
from .window import window_partition, window_reverse


class CrossScaleAttention(nn.Module):
    """Full-resolution queries attend to keys downscaled by ``s`` and values pixel-unshuffled by ``s``.

    For each scale s: ``K_s = AvgPool_s(k(x))`` (equal to projecting the pooled input: both are linear),
    ``V_s = PixelUnshuffle_s(v(x))`` (no information lost: each key carries its s x s sub-pixels as
    channels), and ``Y_s = softmax(Q K_s^T * tau) V_s`` inside windows aligned on the same image region
    at every scale: Q in ws x ws windows, K_s/V_s in (ws/s) x (ws/s) windows, which keeps the cost close
    to window attention's. The per-scale outputs (c * s^2 channels each) are concatenated and fused by a
    1x1 projection back to C.

    Decisions where the paper is silent (architecture.md section 4): the width is a narrow ``dim_csa``;
    heads split that width (``max(1, dim_csa // 16)`` heads, chosen by the caller) with V split into heads
    before unshuffling so each head keeps its own sub-pixels; ``tau = head_dim^-0.5`` (eq. 5 divides by C,
    we use the usual scaled dot product); no shift and no position bias.

    Args:
        dim: channels C of the input.
        dim_csa: width c of q/k/v.
        num_heads: heads splitting c.
        window_size: ws, divisible by every scale.
        scales: the factors s, e.g. (1, 2, 4).

    Shapes: (B, H, W, C) -> (B, H, W, C), H and W multiples of ws.
    """

    def __init__(self, *, dim: int, dim_csa: int, num_heads: int, window_size: int, scales: Sequence[int]):
        super().__init__()
        scales = tuple(int(s) for s in scales)
        if not scales or any(s < 1 or window_size % s for s in scales):
            raise ValueError(f'csa_scales {list(scales)} must be positive divisors of window_size {window_size}')
        if dim_csa % num_heads:
            raise ValueError(f'csa_dim {dim_csa} is not divisible by its {num_heads} heads')
        self.window_size, self.scales, self.num_heads = window_size, scales, num_heads
        self.head_dim = dim_csa // num_heads
        self.q = nn.Linear(dim, dim_csa)
        self.k = nn.Linear(dim, dim_csa)
        self.v = nn.Linear(dim, dim_csa)
        self.fuse = nn.Linear(dim_csa * sum(s * s for s in scales), dim)

    def forward(self, x: torch.Tensor, impl: str = 'fused') -> torch.Tensor:
        b, hh, ww, _ = x.shape
        ws, nh, hd = self.window_size, self.num_heads, self.head_dim
        q = window_partition(self.q(x), ws).view(-1, ws * ws, nh, hd).transpose(1, 2)
        k = self.k(x).permute(0, 3, 1, 2)  # (B, c, H, W)
        v = self.v(x).permute(0, 3, 1, 2)
        outs = []
        for s in self.scales:
            wss = ws // s
            ks = F.avg_pool2d(k, s) if s > 1 else k
            vs = F.pixel_unshuffle(v.reshape(b * nh, hd, hh, ww), s).view(b, nh * hd * s * s, hh // s, ww // s)
            ks = window_partition(ks.permute(0, 2, 3, 1), wss).view(-1, wss * wss, nh, hd).transpose(1, 2)
            vs = window_partition(vs.permute(0, 2, 3, 1), wss).view(-1, wss * wss, nh, hd * s * s).transpose(1, 2)
            if impl == 'reference':
                o = ((q * hd**-0.5) @ ks.transpose(-2, -1)).softmax(dim=-1) @ vs
            else:
                # The fused CPU kernel needs equal q/v head dims: zero-padding q and k leaves q k^T unchanged.
                ev = hd * s * s
                qs, ks = (F.pad(q, (0, ev - hd)), F.pad(ks, (0, ev - hd))) if s > 1 else (q, ks)
                o = sdpa(qs, ks, vs, scale=hd**-0.5)
            outs.append(o.transpose(1, 2).reshape(-1, ws * ws, nh * hd * s * s))
        y = torch.cat(outs, dim=-1)
        return self.fuse(window_reverse(y.view(-1, ws, ws, y.shape[-1]), ws, hh, ww))
