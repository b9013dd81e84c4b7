"""How a network's attention and depth-wise convs execute, chosen once per device and mode: the one place
for CPU and CUDA specialisations (the way timm decides ``fused_attn`` once).

:func:`choose_backend` runs when a network is built, moved (``.to``, ``.cuda``, ``.half``...) or switched
between ``train()`` and ``eval()``, and every module that runs attention or a depth-wise conv holds the
result. Four attention backends:

* ``reference``: materialised maps and literal formulas; the test oracle and what Mult-Adds count.
* ``native``: CPU, training and inference, where the C++ kernel of :mod:`.native` was built (a C++
  compiler is on the machine; ``MSRASR_NATIVE=0`` switches it off): :func:`~.native_attention.native_attention`.
  Opaque to tracing, ONNX export and ``torch.compile``, so while a graph is captured or compiled its
  :attr:`Backend.fallback` (``chunked`` / ``sdpa``) runs instead (:meth:`Backend.under`).
* ``sdpa``: ``scaled_dot_product_attention`` (CPU inference without the kernel; CUDA in every mode, whose
  memory-efficient kernel gives the gradient of an additive mask).
* ``chunked``: CPU training without the kernel. SDPA's fused CPU kernel gives no gradient for the mask (our
  trainable position bias), so SDPA would take its math path and store every ``N x N`` map as one large
  block; :func:`~.chunked_attention.chunked_attention` works in cache-sized chunks instead.

Head widths are padded with zero columns (no dot product changes) to :attr:`Backend.head_multiple`:

* CPU (``sdpa``, ``chunked``): the fused kernel vectorises over the head dimension in 16-float steps:
  measured with 64 windows x 6 heads x 256 tokens on 2 AVX-512 cores, e = 10 takes 37 ms, e = 16 21 ms,
  e = 30 36 ms, e = 32 31 ms; the chunked path's small matmuls are faster at a multiple of 16 as well (a
  light x2 training step on 2 cores: 3.8-4.7 s padded, 5.0-6.0 s at widths 10 and 30). The native kernel
  vectorises over tokens and takes any width (1).
* CUDA: with a mask, only the memory-efficient kernel applies (flash takes no mask, cuDNN is left out
  below), and it refuses head widths that are not a multiple of its GEMM alignment (8 for bf16/fp16);
  refused, SDPA falls back to the math path and builds every ``N x N`` map.

The depth-wise convs (the FFN's MS-DWC) run on the C++ kernel with the ``native`` backend, forward and
backward; CPU training without it takes their gradients as two depth-wise convs (:mod:`.depthwise`).
"""
from typing import NamedTuple, Optional

import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import native
from .chunked_attention import chunked_attention
from .native_attention import native_attention
from .window import whole_windows

__all__ = ['Backend', 'choose_backend', 'attend']

# On CUDA, leave out the cuDNN backend: on an H100 with torch 2.11 its bf16 backward failed on our
# shapes ("mha_graph.execute(...) is_good()"), where the memory-efficient kernel handles additive
# masks in every dtype. CPU dispatch is untouched (its fused kernel is the FLASH_ATTENTION backend).
_CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class Backend(NamedTuple):
    """An execution choice. ``name``: ``reference``, ``native``, ``sdpa`` or ``chunked``; ``head_multiple``: head
    widths are padded to a multiple of it; ``cuda``: SDPA runs with cuDNN left out; ``split_dw_backward``: see
    :func:`~.depthwise.depthwise_conv2d`; ``fallback``: what runs where this choice cannot (``native`` while a
    graph is captured or compiled, and the cross-scale attention, which SDPA serves)."""
    name: str
    head_multiple: int = 1
    cuda: bool = False
    split_dw_backward: bool = False
    fallback: Optional['Backend'] = None

    @property
    def reference(self) -> bool:
        return self.name == 'reference'

    @property
    def native(self) -> bool:
        """The C++ kernels of :mod:`.native` run (attention, depth-wise convs, Q' and K')."""
        return self.name == 'native'

    @property
    def operators(self) -> 'Backend':
        """This choice in PyTorch operators only (itself unless it is ``native``)."""
        return self.fallback or self

    def under(self, layout) -> 'Backend':
        """The choice for a forward through ``layout`` (a :class:`~.window.WindowLayout`): the fallback where
        the layout says the forward is not eager."""
        return self.when(layout.eager)

    def when(self, eager: bool) -> 'Backend':
        """The choice for an eager forward, or the fallback for one captured or compiled."""
        return self if eager or self.fallback is None else self.fallback

    def width(self, e: int) -> int:
        """The padded head width for a true width ``e``."""
        m = self.head_multiple
        # Non-negative operands: traced into ONNX, integer division truncates, it does not floor.
        return (e + m - 1) // m * m

    def value_width(self, q_width: int, e: int) -> int:
        """The padded width of v beside a q of width ``q_width``: SDPA's fused CPU kernel takes nothing but
        equal q and v widths; the chunked and native paths have no such rule and pad v only to their own
        multiple."""
        return self.width(e) if self.name in ('chunked', 'native') else q_width


REFERENCE = Backend('reference')


def choose_backend(device: torch.device, training: bool, reference: bool = False, kernels: bool = True,
                   dtype: torch.dtype = torch.float32) -> Backend:
    """The backend for a network whose tensors live on ``device`` as ``dtype``, in training mode or not.
    ``kernels``: False keeps to PyTorch's operators (no :mod:`.native` kernel, which computes in float32 and
    so does not serve a float64 network)."""
    if reference:
        return REFERENCE
    if device.type == 'cuda':
        return Backend('sdpa', head_multiple=8, cuda=True)
    if device.type == 'cpu':
        operators = Backend('chunked' if training else 'sdpa', head_multiple=16, split_dw_backward=training)
        if kernels and dtype != torch.float64 and native.library() is not None:
            return Backend('native', split_dw_backward=training, fallback=operators)
        return operators
    return Backend('sdpa')  # meta (counting), mps...


def sdpa(backend: Backend, q, k, v, attn_mask: Optional[torch.Tensor] = None, scale: Optional[float] = None):
    """``scaled_dot_product_attention`` as the backend runs it."""
    if backend.cuda:
        with sdpa_kernel(_CUDA_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


def attend(backend: Backend, q, k, v, bias, layout, d: int) -> torch.Tensor:
    """Softmax attention of ``q`` (scaled), ``k`` (bw, h, N, e) and ``v`` (bw, h, N, ev >= d) with the additive
    ``bias`` (h, N, N) and the window layout's masks: the first ``d`` channels of each head's output, token-major
    ``(bw, N, h * d)``, the layout ``proj`` reads. The ``native`` backend also takes, as ``bias``, the (M, h)
    relative-position table the map is read from (see :func:`~.native_attention.native_attention`)."""
    bw, h, n, _ = q.shape
    if backend.name in ('chunked', 'native'):
        attention = chunked_attention if backend.name == 'chunked' else native_attention

        def kernel(q, k, v, attn_mask, groups=None):
            return attention(q, k, v, attn_mask, groups)[..., :d]
    else:
        # SDPA's fused CPU kernel needs 4-D inputs, a 4-D mask and equal q/v widths; anything else drops
        # to the math path, which materialises the maps.
        def kernel(q, k, v, attn_mask):
            return sdpa(backend, q, k, v, attn_mask=attn_mask, scale=1.0)[..., :d]

    if layout.mask is not None:
        # Raster shifted windows (graph capture): fold the windows into the heads, one (1, nW*h, N, N) mask.
        nw = layout.mask.shape[0]
        attn_mask = (bias + layout.mask[:, None]).reshape(1, nw * h, n, n)
        out = kernel(*(t.reshape(bw // nw, nw * h, n, -1) for t in (q, k, v)), attn_mask)
        return out.reshape(bw, h, n, d).transpose(1, 2).reshape(bw, n, h * d)
    # Grouped layout: each group is a contiguous slice of windows that split alike; each part of a group is one
    # call with the regions folded into the heads and their blocks of the bias broadcast over the windows,
    # so no per-window mask is built, and the output is assembled straight into the token-major layout proj
    # reads. Regular windows are one group of whole windows.
    groups = layout.groups or (whole_windows(bw, n), )
    if backend.name in ('chunked', 'native'):
        # All groups in one call: slicing q, k and v per group would cost each group a zero-filled
        # full-size gradient in the backward.
        bias = bias.unsqueeze(0) if bias.dim() == 3 else bias
        return kernel(q, k, v, bias, groups).transpose(1, 2).reshape(bw, n, h * d)
    outs = []
    for group in groups:
        parts = []
        for part in group.parts:
            qp, kp, vp = (part.gather(t[group.windows]).flatten(1, 2) for t in (q, k, v))
            mask = part.blocks(bias).flatten(0, 1).unsqueeze(0)
            parts.append(kernel(qp, kp, vp, mask).unflatten(1, (h, part.regions)).flatten(2, 3))
        out = torch.cat(parts, 2) if len(parts) > 1 else parts[0]
        outs.append((out if group.inverse is None else out.index_select(2, group.inverse)).transpose(1, 2))
    return (torch.cat(outs) if len(outs) > 1 else outs[0]).reshape(bw, n, h * d)
