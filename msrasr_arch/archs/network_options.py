"""Checking ``network_g`` options before a network is built.

Options reach the constructor from YAML files, from the JSON header of an exported ``.safetensors`` file
and from the tensor shapes of a checkpoint; any of them can be wrong or hostile. Every value is checked for
type and range, the options are checked against each other, and the network's parameter count is
computed by arithmetic and compared with a budget, all before a tensor is allocated: a 262 KB file whose
header claims ``embed_dim: 1024`` is refused in microseconds instead of allocating gigabytes. Errors are
one line, naming the source (a file, or the class) and the key.

Torch-free, so anything (the training side, a loader) can call it. The constructor of
:class:`~msrasr_arch.archs.msrasr_arch.MSRASR` calls :func:`check_arguments` itself.
"""
import math
import numbers
from typing import Callable, Dict, Mapping, Optional

from msrasr_arch.utils.errors import UserError

ARCH_TYPES = ('MSRASR', 'MSRAGANNet')
UPSAMPLERS = ('pixelshuffle', 'pixelshuffledirect', 'nearest+conv')
RESI_CONNECTIONS = ('1conv', '3conv', 'none')
SHARED_ATTN = ('pair', 'none')
# About 1 GiB of float32 weights, 20 times the classical model.
MAX_PARAMS = 256_000_000


class NetworkOptionError(UserError, ValueError):
    """Invalid network options. A :class:`UserError` for the command-line tools, a ``ValueError`` for code
    that builds networks and catches the constructor's errors."""


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + '...'


def _key(k) -> str:
    # Keys come from files: anything unprintable is shown quoted, so the message stays one line.
    return k if isinstance(k, str) and k.isprintable() and 0 < len(k) <= 60 else _show(k)


def _integer(lo: int, hi: int, optional: bool = False) -> Callable:
    def check(v) -> Optional[str]:
        if optional and v is None:
            return None
        if not _is_int(v):
            return f'expected an integer{" or null" if optional else ""}, got {_show(v)}'
        if not lo <= v <= hi:
            return f'{v} is out of range ({lo}..{hi})'
        return None
    return check


def _number(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable:
    def check(v) -> Optional[str]:
        if not _is_number(v):
            return f'expected a number, got {_show(v)}'
        if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            return f'{v} is out of range ({"(" if lo_open else "["}{lo}, {hi}{")" if hi_open else "]"})'
        return None
    return check


def _integers(lo: int, hi: int, min_len: int, max_len: int) -> Callable:
    def check(v) -> Optional[str]:
        if not isinstance(v, (list, tuple)) or not all(_is_int(x) for x in v):
            return f'expected a list of integers, got {_show(v)}'
        if not min_len <= len(v) <= max_len:
            return f'expected {min_len} to {max_len} entries, got {len(v)}'
        bad = [x for x in v if not lo <= x <= hi]
        return f'entry {bad[0]} is out of range ({lo}..{hi})' if bad else None
    return check


def _choice(allowed) -> Callable:
    def check(v) -> Optional[str]:
        return None if isinstance(v, str) and v in allowed else f'expected one of {", ".join(allowed)}, got {_show(v)}'
    return check


def _flag(v) -> Optional[str]:
    return None if isinstance(v, bool) else f'expected true or false, got {_show(v)}'


# One rule per constructor argument (a test keeps the two in step). The ranges are generous: several
# times the paper's largest setting, small enough that no single value asks for an absurd allocation.
RULES: Dict[str, Callable] = {
    'upscale': _integer(1, 16),
    'in_chans': _integer(1, 64),
    'img_size': _integer(1, 65536, optional=True),
    'window_size': _integer(2, 64),
    'img_range': _number(0, 65535, lo_open=True),
    'depths': _integers(1, 64, 1, 32),
    'embed_dim': _integer(1, 1024),
    'num_heads': _integers(1, 1024, 1, 32),
    'mlp_ratio': _number(0, 16, lo_open=True),
    'upsampler': _choice(UPSAMPLERS),
    'resi_connection': _choice(RESI_CONNECTIONS),
    'num_feat': _integer(1, 1024),
    'shared_attn': _choice(SHARED_ATTN),
    'attn_transform_kernel': _integer(0, 15),
    'csa_dim': _integer(0, 1024),
    'csa_scales': _integers(1, 64, 1, 8),
    'ms_kernels': _integers(1, 31, 0, 8),
    'ca_reduction': _integer(0, 1024),
    'drop_path_rate': _number(0, 1, hi_open=True),
    'deploy': _flag,
}


def _consistency(a: Mapping) -> Optional[tuple]:
    """The first ``(key, problem)`` among the options' relations to each other, or None."""
    dim, depths, heads = a['embed_dim'], a['depths'], a['num_heads']
    if len(heads) != len(depths):
        return 'num_heads', f'{list(heads)} must have one entry per MSTB, like depths {list(depths)}'
    for h in heads:
        if dim % h:
            return 'num_heads', f'{h} heads do not divide embed_dim {dim}'
    s, up = a['upscale'], a['upsampler']
    if up == 'pixelshuffledirect' and s not in (2, 3, 4):
        return 'upscale', f'{s} is not supported by pixelshuffledirect (2, 3, 4)'
    if up == 'pixelshuffle' and not (s == 3 or (s >= 2 and s & (s - 1) == 0)):
        return 'upscale', f'{s} is not supported by pixelshuffle (2^n or 3)'
    if up == 'nearest+conv' and s not in (2, 4):
        return 'upscale', f'{s} is not supported by nearest+conv (2, 4)'
    if int(dim * a['mlp_ratio']) < 1:
        return 'mlp_ratio', f'{a["mlp_ratio"]} leaves the FFN of embed_dim {dim} no hidden channel'
    if a['resi_connection'] == '3conv' and dim < 4:
        return 'resi_connection', f'3conv needs embed_dim >= 4, got {dim}'
    k = a['attn_transform_kernel']
    if k and k % 2 == 0:
        return 'attn_transform_kernel', f'must be 0 or odd, got {k}'
    csa = a['csa_dim']
    if csa:
        scales = list(a['csa_scales'])
        if len(set(scales)) != len(scales) or any(a['window_size'] % x for x in scales):
            return 'csa_scales', f'{scales} must be distinct divisors of window_size {a["window_size"]}'
        if csa % max(1, csa // 16):
            return 'csa_dim', f'{csa} is not divisible by its {max(1, csa // 16)} heads (csa_dim // 16)'
    kernels = list(a['ms_kernels'])
    if any(x % 2 == 0 for x in kernels) or len(set(kernels)) != len(kernels):
        return 'ms_kernels', f'{kernels} must be distinct odd sizes'
    return None


def count_parameters(a: Mapping) -> int:
    """The parameters of the network that the complete constructor arguments `a` build, by arithmetic
    (a test checks it against built networks). `a` must have passed the per-key and consistency checks."""
    c, cin, ws = a['embed_dim'], a['in_chans'], a['window_size']

    def linear(i, o):
        return i * o + o

    def conv(i, o, k, groups=1):
        return i // groups * o * k * k + o

    hidden = int(c * a['mlp_ratio'])
    kernels = list(a['ms_kernels'])
    if kernels:
        ks = [max(kernels)] if a['deploy'] else kernels
        msdwc = sum(conv(hidden, hidden, k, groups=hidden) for k in ks)
    else:
        msdwc = 0
    ffn = linear(c, hidden) + msdwc + linear(hidden, c)
    ca = 0
    if a['ca_reduction']:
        r = max(1, c // a['ca_reduction'])
        ca = linear(c, r) + linear(r, c)
    csa = 0
    if a['csa_dim']:
        d = a['csa_dim']
        csa = 2 * c + 3 * linear(c, d) + linear(d * sum(x * x for x in a['csa_scales']), c)
    k = a['attn_transform_kernel']
    total = conv(cin, c, 3) + 2 * c  # conv_first, patch_norm
    for depth, heads in zip(a['depths'], a['num_heads']):
        for i in range(depth):
            if a['shared_attn'] == 'none' or i < 2:
                attn = linear(c, 3 * c) + (2 * ws - 1)**2 * heads
            else:
                attn = linear(c, c) + (conv(heads, heads, k, groups=heads) if k else 0)
            total += 2 * c + attn + linear(c, c) + 2 * c + ffn + ca + (csa if i == 0 else 0)
        if a['resi_connection'] == '1conv':
            total += conv(c, c, 3)
        elif a['resi_connection'] == '3conv':
            q = c // 4
            total += conv(c, q, 3) + conv(q, q, 1) + conv(q, c, 3)
    total += 2 * c + conv(c, c, 3)  # norm, conv_after_body
    s, f = a['upscale'], a['num_feat']
    if a['upsampler'] == 'pixelshuffledirect':
        return total + conv(c, s * s * cin, 3)
    total += conv(c, f, 3) + conv(f, cin, 3)  # conv_before_upsample, conv_last
    if a['upsampler'] == 'pixelshuffle':
        steps = [3] if s == 3 else [2] * (s.bit_length() - 1)
        return total + sum(conv(f, x * x * f, 3) for x in steps)
    return total + conv(f, f, 3) * (3 if s == 4 else 2)  # conv_up1 (+ conv_up2), conv_hr


def check_arguments(args: Mapping, *, source: str, max_params: int = MAX_PARAMS) -> int:
    """Check complete constructor arguments (every key of :data:`RULES`); returns the parameter count.

    Raises :class:`NetworkOptionError`, one line: ``"{source}: {key}: {problem}"``."""
    for key, rule in RULES.items():
        if key not in args:
            raise NetworkOptionError(f'{source}: {key}: missing')
        problem = rule(args[key])
        if problem:
            raise NetworkOptionError(f'{source}: {key}: {problem}')
    found = _consistency(args)
    if found:
        raise NetworkOptionError(f'{source}: {found[0]}: {found[1]}')
    params = count_parameters(args)
    if params > max_params:
        # A budget under the global cap comes from the bytes the weights occupy (see check_network_options).
        what = 'the weights hold at one byte each' if max_params < MAX_PARAMS else 'allowed'
        raise NetworkOptionError(
            f'{source}: embed_dim {args["embed_dim"]}, depths {_show(list(args["depths"]))}: these options build '
            f'{params:,} parameters, over the budget of {max_params:,} ({what})')
    return params


def _defaults(arch_type: str) -> Dict:
    import inspect

    from msrasr_arch.archs import msrasr_arch  # imported here: msrasr_arch imports this module
    signature = inspect.signature(getattr(msrasr_arch, arch_type).__init__)
    return {name: p.default for name, p in signature.parameters.items() if name != 'self'}


def check_network_options(opt, *, source: str, max_params: int = MAX_PARAMS) -> int:
    """Check a ``network_g`` block (``type`` plus any constructor arguments, the others taking their
    defaults) before building it; returns the network's parameter count.

    `source` names where the options come from (a file path) and starts every message. `max_params` caps
    the parameter count; pass the size in bytes of the file the weights come from, since every stored
    parameter takes at least a byte. Raises :class:`NetworkOptionError` (one line, naming the key)."""
    if not isinstance(opt, Mapping):
        raise NetworkOptionError(f'{source}: network options must be a mapping of option names to values, '
                                 f'got {type(opt).__name__}')
    arch_type = opt.get('type')
    if arch_type not in ARCH_TYPES:
        got = 'no type' if 'type' not in opt else f'type {_show(arch_type)}'
        raise NetworkOptionError(f'{source}: type: expected {" or ".join(ARCH_TYPES)} (an MSRA-SR network), '
                                 f'got {got}')
    unknown = [k for k in opt if k != 'type' and k not in RULES]
    if unknown:
        more = f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''
        raise NetworkOptionError(f'{source}: {_key(unknown[0])}: unknown option for {arch_type}{more}')
    args = _defaults(arch_type)
    args.update((k, v) for k, v in opt.items() if k != 'type')
    return check_arguments(args, source=source, max_params=max_params)
