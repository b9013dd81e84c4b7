"""Reading and writing network weights, the one way every tool here does it (upscale, export, the models).

Reading accepts what people actually have on disk: BasicSR's ``net_g_*.pth`` (``params`` and/or
``params_ema``; the EMA weights are preferred because they are what BasicSR validates with), a bare state
dict, ``state_dict`` wrappers, ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (``torch.compile``)
prefixes, and ``.safetensors``. Pickled files are only ever opened with ``torch.load(weights_only=True)``:
a checkpoint is code as far as pickle is concerned, and one that asks to run any is refused with a
message, never executed.
"""
import json
import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

import torch

from msrasr_arch.utils.atomic import atomic_path
from msrasr_arch.utils.errors import UserError

# Looked for in this order when the caller names no key: EMA first, then BasicSR's raw weights, then the
# wrappers other trainers use.
PARAM_KEYS = ('params_ema', 'params', 'state_dict', 'model', 'net_g')
# Wrappers that change key names but not the weights.
_PREFIXES = ('module.', '_orig_mod.')
# Key under which exported safetensors files record the network options they were built with.
NETWORK_METADATA_KEY = 'msrasr.network_g'


@dataclass
class LoadedCheckpoint:
    """A state dict with where it came from: ``param_key`` is the wrapper key it was found under (None
    for a bare state dict), ``metadata`` the safetensors header strings (empty for pickles)."""
    path: str
    state_dict: 'OrderedDict[str, torch.Tensor]'
    param_key: Optional[str] = None
    metadata: Dict[str, str] = field(default_factory=dict)

    def network_options(self) -> Optional[dict]:
        """The ``network_g`` options recorded by ``msrasr export``, if this file has them."""
        text = self.metadata.get(NETWORK_METADATA_KEY)
        if not text:
            return None
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as err:  # the content is checked by check_network_options
            raise UserError(f'{self.path}: header entry {NETWORK_METADATA_KEY} is not valid JSON ({err})') from None


def _read_safetensors(path: str):
    try:
        from safetensors import safe_open
    except ImportError:
        raise UserError(f'{path} is a safetensors file: install the optional dependency with '
                        "`pip install safetensors` (or `pip install 'msrasr_arch[export]'`)") from None
    try:
        tensors = OrderedDict()
        with safe_open(path, framework='pt', device='cpu') as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as err:  # safetensors raises its own error types for a malformed header
        raise UserError(f'cannot read safetensors file {path}: {_first_line(err)}') from None
    return tensors, metadata


def _check_zip(path: str, what: str) -> None:
    """torch.load does not check the CRCs of a zip checkpoint (every torch.save since 1.6): a flipped
    byte in a tensor would load as a silently different network. Check them first (a fast pass)."""
    if not zipfile.is_zipfile(path):
        return  # legacy pickle: the unpickler finds what it can
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError) as err:
        raise UserError(f'cannot read {what} {path}: damaged zip archive ({_first_line(err)})') from None
    if bad is not None:
        raise UserError(f'{what} {path} is corrupt: entry {bad} fails its CRC check (copy or download it again)')


def _read_pickle(path: str, what: str = 'checkpoint', expected: str = 'a PyTorch weights file'):
    _check_zip(path, what)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it has not seen; the error below is what matters.
            warnings.simplefilter('ignore')
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        # 'Unsupported global: GLOBAL x.y' (older torch) or 'unsupported GLOBAL x.y whose module ...' (newer)
        found = re.search(r'[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)', text)
        if found:
            # weights_only refuses every global outside torch's allow-list: the file asks to import (and
            # so possibly run) code. We never execute it.
            raise UserError(f'refusing to load {path}: it asks to import {found.group(1)}, i.e. it carries code '
                            'or objects other than tensors, which unpickling could run; only tensors and plain '
                            'values are accepted') from None
        detail = re.search(r'WeightsUnpickler error:\s*(.+)', text)
        raise UserError(f'cannot read {what} {path}: not {expected}, or corrupt '
                        f'({detail.group(1).strip() if detail else _first_line(err)})') from None
    except Exception as err:  # noqa: BLE001  a damaged file can make the unpickler raise anything
        raise UserError(f'cannot read {what} {path}: {type(err).__name__}: {_first_line(err)} (is it '
                        f'{expected}, and complete?)') from None


def load_training_state(path: str) -> dict:
    """A BasicSR training state (``N.state``: epoch, iter, optimizer and scheduler states), read as data
    only, on the CPU. Every failure, a file that carries code included, is a :class:`UserError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f'training state {path} does not exist')
    state = _read_pickle(path, what='training state', expected='a BasicSR training state (.state)')
    missing = [k for k in ('epoch', 'iter', 'optimizers', 'schedulers') if not isinstance(state, Mapping)
               or k not in state]
    if missing:
        raise UserError(f'{path} is not a BasicSR training state: no {", ".join(missing)} entry')
    return dict(state)


def save_verified(obj, path: str) -> str:
    """``torch.save`` `obj` to `path` so that `path` only ever holds a complete file: written beside it,
    flushed, read back with ``weights_only=True`` and only then renamed into place. Any failure (a full
    disk, a write error, a file that does not read back) leaves `path` as it was and raises
    :class:`UserError` naming it."""
    path = os.fspath(path)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, 'wb') as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            _read_pickle(tmp, what='just written file')
    except OSError as err:
        raise UserError(f'cannot save {path}: {err.strerror or _first_line(err)}') from None
    except UserError as err:
        raise UserError(f'cannot save {path}: it did not read back ({err})') from None
    return path


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    line = text.splitlines()[0]
    return line[:300]


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    out = OrderedDict()
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def load_checkpoint(path: str, param_key: Optional[str] = None) -> LoadedCheckpoint:
    """Read weights from `path`. `param_key` picks the wrapper key (e.g. ``'params'`` to skip the EMA
    weights); None looks for ``params_ema``, then ``params``, then other usual keys, then a bare state dict.
    Every failure is a :class:`UserError` naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = 'is a folder, not a file' if os.path.isdir(path) else 'does not exist'
        raise UserError(f'weights file {path} {what}')
    metadata: Dict[str, str] = {}
    if path.endswith('.safetensors'):
        obj, metadata = _read_safetensors(path)
    else:
        obj = _read_pickle(path)

    found_key = None
    if param_key is not None:
        if not isinstance(obj, Mapping) or param_key not in obj:
            keys = ', '.join(map(str, obj.keys())) if isinstance(obj, Mapping) else type(obj).__name__
            raise UserError(f'checkpoint {path} has no "{param_key}" entry (it has: {keys})')
        obj, found_key = obj[param_key], param_key
    elif isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in PARAM_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                obj, found_key = obj[key], key
                break
    if not _is_state_dict(obj):
        keys = ', '.join(map(str, list(obj.keys())[:10])) if isinstance(obj, Mapping) else type(obj).__name__
        raise UserError(f'no network weights found in {path} (expected a state dict, or one under '
                        f'{"/".join(PARAM_KEYS)}; found: {keys or "nothing"})')
    return LoadedCheckpoint(path=path, state_dict=_strip_prefixes(obj), param_key=found_key, metadata=metadata)


def load_state_dict(path: str, param_key: Optional[str] = None) -> 'OrderedDict[str, torch.Tensor]':
    """The state dict alone; see :func:`load_checkpoint`."""
    return load_checkpoint(path, param_key=param_key).state_dict


def _listing(keys, limit: int = 4) -> str:
    keys = list(keys)
    shown = ', '.join(keys[:limit])
    return shown + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def describe_mismatch(net: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """None when `state` fits `net` exactly, else one line naming missing and unexpected keys and
    shape mismatches."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f'{k} {tuple(state[k].shape)} vs {tuple(v.shape)}' for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = []
    if missing:
        parts.append(f'{len(missing)} missing key(s): {_listing(missing)}')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected key(s): {_listing(unexpected)}')
    if shapes:
        parts.append(f'{len(shapes)} shape mismatch(es) (checkpoint vs network): {_listing(shapes, 3)}')
    return '; '.join(parts) or None


def load_into(net: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = 'checkpoint',
              hint: str = '') -> torch.nn.Module:
    """Load `state` into `net` strictly; a mismatch is a UserError naming `source` and the keys."""
    problem = describe_mismatch(net, state)
    if problem:
        raise UserError(f'{source} does not fit the network: {problem}' + (f'. {hint}' if hint else ''))
    net.load_state_dict(state, strict=True)
    return net


def save_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str,
                    network_options: Optional[dict] = None) -> str:
    """Write `state_dict` atomically: ``.safetensors`` as a flat tensor file (with `network_options` in its
    header), anything else as a BasicSR-style ``{'params': ...}`` pickle of tensors only."""
    path = os.fspath(path)
    # Contiguous, unshared copies: safetensors refuses tensors that share storage, and a view would
    # otherwise drag its whole base tensor into the file.
    tensors = OrderedDict((k, v.detach().to('cpu').contiguous().clone()) for k, v in state_dict.items())
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f'output folder {folder} does not exist')
    try:
        with atomic_path(path) as tmp:
            if path.endswith('.safetensors'):
                try:
                    from safetensors.torch import save_file
                except ImportError:
                    raise UserError('writing .safetensors needs `pip install safetensors` '
                                    "(or `pip install 'msrasr_arch[export]'`)") from None
                metadata = {'format': 'pt'}
                if network_options is not None:
                    metadata[NETWORK_METADATA_KEY] = json.dumps(network_options, sort_keys=True)
                save_file(tensors, tmp, metadata=metadata)
            else:
                with open(tmp, 'wb') as f:
                    torch.save({'params': tensors}, f)
    except OSError as err:
        raise UserError(f'cannot write {path}: {err.strerror or err}') from None
    return path
