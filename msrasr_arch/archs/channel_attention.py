"""Channel attention, the paper's "Global Attn" (eq. 4)."""
import torch
from torch import nn


class ChannelAttention(nn.Module):
    """``y = x * sigmoid(W2 relu(W1 GAP(x)))`` over channels-last images.

    The reduction (16) follows RCAN/HAT; the paper only says "a two-layer MLP".

    Args:
        dim: channels C.
        reduction: hidden width is ``max(1, C // reduction)``.

    Shapes: ``x``: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, *, dim: int, reduction: int):
        super().__init__()
        hidden = max(1, dim // reduction)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc2(self.act(self.fc1(x.mean(dim=(1, 2))))))
        return x * w[:, None, None, :]
