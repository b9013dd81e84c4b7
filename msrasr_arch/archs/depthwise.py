"""Depth-wise convolution with a backward that is fast on the CPU.

oneDNN's backward of a depth-wise conv is 5-10x its forward on the CPU: on 2 cores, a 7x7 conv over a
channels-last (4, 120, 64, 64) map takes 5 ms forward and 40-55 ms backward. Both gradients are depth-wise
convs themselves, which run at forward speed:

* the input gradient is the output gradient convolved with the flipped kernel (stride 1, 'same' padding);
* the weight gradient is the padded input correlated with the output gradient, channel by channel and
  image by image: one grouped conv with the batch folded into the channels (``B * C`` groups, the output
  gradient as a ``H x W`` kernel), summed over the batch.

Measured on 2 cores (forward + backward of a 7x7 conv over (4, 120, P, P)): P = 16 2.5-3.7 ms -> 1.2-1.3 ms,
P = 32 10-14 ms -> 5-12 ms, P = 64 39-54 ms -> 17-20 ms. ``benchmarks/speed.py`` shows it in the
training step.
"""
import torch
from torch.nn import functional as F

from . import native


class _DepthwiseConv(torch.autograd.Function):
    # Under CPU autocast the forward's conv runs in bf16 on fp32 x and weight; the backward's convs must
    # see the same casts, or they meet a bf16 gradient with fp32 weights.

    @staticmethod
    @torch.amp.custom_fwd(device_type='cpu')
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])

    @staticmethod
    @torch.amp.custom_bwd(device_type='cpu')
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        c, k = weight.shape[0], weight.shape[-1]
        p = k // 2
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = F.conv2d(grad, weight.flip(-2, -1), padding=p, groups=c)
        if ctx.needs_input_grad[1]:
            gw = depthwise_weight_grad(x, grad, k)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb


def depthwise_weight_grad(x: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor:
    """The ``(C, 1, k, k)`` weight gradient of a 'same'-padded depth-wise conv of x (B, C, H, W) given the
    output gradient ``grad`` (B, C, H, W).

    The batch is folded into the channels in (image, channel) order, a free view of NCHW tensors; the
    (channel, image) order cost a padded copy and two transposes (``benchmarks/components.py``), and the
    conv pads, so no padded copy of x is made."""
    b, c, h, w = x.shape
    images = x.contiguous().view(1, b * c, h, w)
    kernel = grad.contiguous().view(b * c, 1, h, w)
    return F.conv2d(images, kernel, padding=k // 2, groups=b * c).view(b, c, k, k).sum(0).unsqueeze(1)


class _NativeDepthwiseConv(torch.autograd.Function):
    """The C++ kernel's conv (:mod:`.native`): the input gradient is its conv with the flipped kernel, the
    weight gradient its own pass; float32 in and out."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return native.depthwise_conv(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = native.depthwise_conv(grad, weight.flip(-2, -1))
        if ctx.needs_input_grad[1]:
            gw = native.depthwise_weight_grad(x, grad, weight.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias, split_backward: bool,
                     kernel: bool = False) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=k // 2, groups=C)`` for x (B, C, H, W) and an odd square kernel
    ``weight`` (C, 1, k, k). ``kernel``: the C++ kernel of :mod:`.native`, forward and backward (computed in
    float32, returned in x's dtype; the CPU choice where it is built, see :mod:`.backend`).
    ``split_backward``: compute the gradients as the two depth-wise convs above (the CPU training choice
    without the kernel); otherwise autograd's own backward (cuDNN's on CUDA)."""
    if kernel:
        out = _NativeDepthwiseConv.apply(x.float(), weight.float(), None if bias is None else bias.float())
        return out.to(x.dtype)
    if split_backward:
        return _DepthwiseConv.apply(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])
