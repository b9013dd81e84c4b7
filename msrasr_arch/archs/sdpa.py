"""The one place the archs call ``scaled_dot_product_attention``."""
import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# On CUDA, leave out the cuDNN backend: on an H100 with torch 2.11 its bf16 backward failed on our
# shapes ("mha_graph.execute(...) is_good()"), where the memory-efficient kernel handles additive
# masks in every dtype. CPU dispatch is untouched (its fused kernel is the FLASH_ATTENTION backend).
_CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask=None, scale=None) -> torch.Tensor:
    if q.is_cuda:
        with sdpa_kernel(_CUDA_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
