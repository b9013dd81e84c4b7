"""Feed-forward network with multi-scale depth-wise convolution (MS-DWC) and its re-parameterisation."""
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from . import native
from .backend import REFERENCE, Backend
from .depthwise import depthwise_conv2d


class MSDWConv(nn.Module):
    """Parallel depth-wise convolutions of several odd kernel sizes, summed (paper Fig. 5).

    Training form: one ``Conv2d(groups=channels)`` per kernel size in ``branches``. Deployed form: a single
    depth-wise conv ``conv`` of the largest size whose kernel is the sum of the zero-padded, centred branch
    kernels and whose bias is the sum of the biases; both forms compute the same function, because every
    branch pads by ``k // 2`` and so is centred on the same pixel.

    In training mode the branches are merged on the fly (one conv with the summed kernel; each branch's
    gradient is its crop of the merged kernel's gradient, exactly as with separate convs), which is 84/49
    less arithmetic and, on CUDA, one slow depth-wise weight-gradient kernel instead of four. In eval
    mode the un-deployed form runs the branches literally: that is the multi-branch inference the paper
    times against the re-parameterised one.

    Args:
        channels: channels of the NCHW input.
        kernels: odd kernel sizes, e.g. (1, 3, 5, 7).
        deploy: build the single-branch form directly (to load a re-parameterised checkpoint).

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, *, channels: int, kernels: Sequence[int], deploy: bool = False):
        super().__init__()
        kernels = tuple(int(k) for k in kernels)
        if not kernels or any(k < 1 or k % 2 == 0 for k in kernels) or len(set(kernels)) != len(kernels):
            raise ValueError(f'ms_kernels must be distinct positive odd sizes, got {list(kernels)}')
        self.channels = channels
        self.kernels = kernels
        self.kernel_size = max(kernels)
        if deploy:
            self.conv = self._dwconv(self.kernel_size)
        else:
            self.branches = nn.ModuleList(self._dwconv(k) for k in kernels)
        self.backend: Backend = REFERENCE  # set by the network (see .backend)

    def _dwconv(self, k: int) -> nn.Conv2d:
        return nn.Conv2d(self.channels, self.channels, k, padding=k // 2, groups=self.channels)

    @property
    def deployed(self) -> bool:
        return hasattr(self, 'conv')

    def merged(self):
        """The re-parameterised ``(weight, bias)`` of the branches, differentiable w.r.t. them."""
        weight = sum(F.pad(b.weight, [(self.kernel_size - b.kernel_size[0]) // 2] * 4) for b in self.branches)
        return weight, sum(b.bias for b in self.branches)

    def forward(self, x: torch.Tensor, eager: bool = True) -> torch.Tensor:
        """``eager``: no graph is being captured or compiled (the window layout's word), so the C++ kernel of
        the ``native`` backend may run."""
        backend = self.backend.when(eager)
        kernel = backend.native and native.depthwise_supports(self.kernel_size)
        if self.deployed:
            return depthwise_conv2d(x, self.conv.weight, self.conv.bias, backend.split_dw_backward, kernel)
        if self.training:
            weight, bias = self.merged()
            return depthwise_conv2d(x, weight, bias, backend.split_dw_backward, kernel)
        out = None
        for branch in self.branches:
            y = depthwise_conv2d(x, branch.weight, branch.bias, False, kernel)
            out = y if out is None else out + y
        return out

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Merge the branches into ``conv`` in place; a no-op when already deployed."""
        if self.deployed:
            return
        weight, bias = self.merged()
        conv = self._dwconv(self.kernel_size).to(device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        conv.train(self.training)
        del self.branches
        self.conv = conv


class FFN(nn.Module):
    """``fc2(GELU(MSDWC(fc1(x))))`` over channels-last images; no MS-DWC when ``kernels`` is empty.

    Args:
        dim: channels C.
        hidden_dim: hidden channels (``mlp_ratio * C``).
        kernels: MS-DWC kernel sizes; ``()`` gives the plain MLP ("w/o MS-DWC").
        deploy: build the MS-DWC in its re-parameterised form.

    Shapes: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, *, dim: int, hidden_dim: int, kernels: Sequence[int], deploy: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.msdwc = MSDWConv(channels=hidden_dim, kernels=kernels, deploy=deploy) if len(kernels) else None
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, eager: bool = True) -> torch.Tensor:
        x = self.fc1(x)
        if self.msdwc is not None:
            # The permuted view is channels-last in memory, which oneDNN/cuDNN and the C++ kernel convolve
            # without a copy.
            x = self.msdwc(x.permute(0, 3, 1, 2), eager).permute(0, 2, 3, 1)
        return self.fc2(self.act(x))
