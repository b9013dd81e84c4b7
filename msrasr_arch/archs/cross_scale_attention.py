"""Cross-scale attention (CSA, paper section 3.2 and Fig. 4)."""
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .backend import REFERENCE, Backend, sdpa
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
        self.backend: Backend = REFERENCE  # set by the network (see .backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend.reference:
            return self._reference(x)
        b, hh, ww, _ = x.shape
        ws, nh, hd, n = self.window_size, self.num_heads, self.head_dim, self.window_size**2
        dim = self.fuse.out_features
        q = window_partition(self.q(x), ws).view(-1, n, nh, hd).transpose(1, 2)  # (bw, nh, N, hd)
        k = self.k(x).permute(0, 3, 1, 2)  # (B, c, H, W)
        v = self.v(x).permute(0, 3, 1, 2)
        bw = q.shape[0]
        # fuse(cat_s(Y_s)) = sum_s Y_s W_s^T + bias, with W_s the columns of scale s, ordered (head, channel);
        # fusing per scale inside the windows never builds the 21c-wide concatenation, and the window
        # reverse moves C channels instead.
        y, offset = None, 0
        for s in self.scales:
            wss, ev = self.window_size // s, hd * s * s
            ns = wss * wss
            w_s = self.fuse.weight[:, offset:offset + nh * ev]  # (C, nh * ev)
            offset += nh * ev
            ks = F.avg_pool2d(k, s) if s > 1 else k
            vs = F.pixel_unshuffle(v.reshape(b * nh, hd, hh, ww), s).view(b, nh * ev, hh // s, ww // s)
            ks = window_partition(ks.permute(0, 2, 3, 1), wss).view(-1, ns, nh, hd).transpose(1, 2)
            vs = window_partition(vs.permute(0, 2, 3, 1), wss).view(-1, ns, nh, ev).transpose(1, 2)
            if ns * ev * dim + n * ns * dim < n * ns * ev + n * ev * dim:
                # Few keys with wide values (large s): project the values first, softmax(QK^T) (V W_s^T),
                # summing over heads in the same matmul: e.g. 8.7x fewer multiply-adds at s = 4, classical.
                p = ((q * hd**-0.5) @ ks.transpose(-2, -1)).softmax(dim=-1)  # (bw, nh, N, ns)
                # One (bw * ns, ev) x (ev, C) product per head (a broadcast matmul would copy W_s per window).
                vw = vs.transpose(0, 1).reshape(nh, bw * ns, ev) @ w_s.view(dim, nh, ev).permute(1, 2, 0)
                vw = vw.view(nh, bw, ns, dim).transpose(0, 1).reshape(bw, nh * ns, dim)
                part = p.transpose(1, 2).reshape(bw, n, nh * ns) @ vw
            else:
                # No mask here, so SDPA's fused kernels serve training too. The fused CPU kernel needs equal
                # q/v head dims (zero-padding q and k leaves q k^T unchanged) and is fastest with q/k at a
                # multiple of 16 floats; a wider v is left as it is there (s = 2 at 256x256: 7.0 ms at 24,
                # 10.4 ms padded to 32). CUDA's kernel needs every width a multiple of 8.
                width = max(ev, self.backend.width(hd))
                if self.backend.cuda:
                    width = self.backend.width(width)
                qs, ks = (F.pad(q, (0, width - hd)), F.pad(ks, (0, width - hd))) if width > hd else (q, ks)
                vs = F.pad(vs, (0, width - ev)) if width > ev else vs
                o = sdpa(self.backend, qs, ks, vs, scale=hd**-0.5)[..., :ev]
                part = o.transpose(1, 2).reshape(bw, n, nh * ev) @ w_s.t()
            y = part if y is None else y.add_(part)
        y = y + self.fuse.bias
        return window_reverse(y.view(-1, ws, ws, dim), ws, hh, ww)

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        """The literal form: per-scale attention outputs concatenated, window-reversed, then fused."""
        b, hh, ww, _ = x.shape
        ws, nh, hd = self.window_size, self.num_heads, self.head_dim
        q = window_partition(self.q(x), ws).view(-1, ws * ws, nh, hd).transpose(1, 2)
        k = self.k(x).permute(0, 3, 1, 2)
        v = self.v(x).permute(0, 3, 1, 2)
        outs = []
        for s in self.scales:
            wss = ws // s
            ks = F.avg_pool2d(k, s) if s > 1 else k
            vs = F.pixel_unshuffle(v.reshape(b * nh, hd, hh, ww), s).view(b, nh * hd * s * s, hh // s, ww // s)
            ks = window_partition(ks.permute(0, 2, 3, 1), wss).view(-1, wss * wss, nh, hd).transpose(1, 2)
            vs = window_partition(vs.permute(0, 2, 3, 1), wss).view(-1, wss * wss, nh, hd * s * s).transpose(1, 2)
            o = ((q * hd**-0.5) @ ks.transpose(-2, -1)).softmax(dim=-1) @ vs
            outs.append(o.transpose(1, 2).reshape(-1, ws * ws, nh * hd * s * s))
        y = torch.cat(outs, dim=-1)
        return self.fuse(window_reverse(y.view(-1, ws, ws, y.shape[-1]), ws, hh, ww))
