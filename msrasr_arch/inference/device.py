"""Which device and number format to run on, refused up front with a clear message when unsupported.

Reduced precision runs under ``torch.autocast`` with fp32 weights, not by converting the network
(``net.half()``): layer norms, softmax and the residual sums stay in fp32, which is what keeps fp16 from
overflowing in attention, and the same weights serve every precision.
"""
import torch

from msrasr_arch.utils.errors import UserError

PRECISIONS = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def resolve_device(name: str = 'auto') -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    name = (name or 'auto').lower()
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f'unknown device {name!r} (use cpu, cuda or cuda:N)') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise UserError('CUDA was asked for but is not available (no GPU visible, or a CPU-only PyTorch); '
                            'use --device cpu')
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f'{name}: only {torch.cuda.device_count()} CUDA device(s) visible')
    elif device.type != 'cpu':
        raise UserError(f'device {name!r} is not supported (use cpu, cuda or cuda:N)')
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for `precision` on `device`; a UserError where the device cannot run it."""
    if precision not in PRECISIONS:
        raise UserError(f'unknown precision {precision!r} (use {", ".join(PRECISIONS)})')
    dtype = PRECISIONS[precision]
    if device.type == 'cpu' and dtype == torch.float16:
        raise UserError('fp16 is not supported on CPU (PyTorch has no fast fp16 CPU kernels for this network); '
                        'use --precision bf16 or fp32, or --device cuda')
    if device.type == 'cuda' and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UserError(f'{torch.cuda.get_device_name(device)} does not support bf16; use fp16 or fp32')
    return dtype
