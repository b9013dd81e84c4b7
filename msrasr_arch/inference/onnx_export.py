"""ONNX export of an MSRA-SR network with dynamic height and width, and a check against PyTorch.

The exporter traces the network (``dynamo=False``). Tracing records the shape arithmetic of the forward
pass (padding to the window multiple, window partitioning, the shift mask, the final crop) as graph
operations, so one graph serves any height and width — with two caveats that follow from what tracing
cannot record, both handled here:

* A Python branch is frozen at the example's value. The forward skips padding when the size is already a
  multiple of the window, so the example size is chosen to need padding on both sides (then zero padding
  at run time is just a pad by 0).
* The batch size is read with ``int()`` inside SwinIR's ``window_reverse`` and so frozen: the graph takes
  a batch of 1 (height and width are free). Upscaling tools run one image or tile at a time anyway.
* The reflection padding needs the image to be larger than the padding: inputs at least one window wide
  and high always work (PyTorch falls back to edge replication below that; the graph cannot).

While a graph is captured the network builds its shift mask from the traced sizes and attends all
windows in one call (``msrasr_arch.archs.window.capturing_for_all_sizes``), so nothing size-specific is frozen.
``torch.export`` (``dynamo=True``) is tried second, since newer PyTorch may drop the tracer.
"""
import os
import warnings
from typing import Iterable, List, Optional, Tuple

import numpy as np
import torch

from msrasr_arch.archs.size_requirement import size_requirement
from msrasr_arch.utils.atomic import atomic_path
from msrasr_arch.utils.errors import UserError

DEFAULT_OPSET = 17


def _example_size(multiple: int) -> Tuple[int, int]:
    # Not a multiple of the window in either direction (so the padding branch is traced), and not square
    # (so height and width cannot be confused in the graph).
    return 2 * multiple + 3, 3 * multiple - 5 if multiple > 5 else 3 * multiple + 1


def check_sizes(net: torch.nn.Module) -> List[Tuple[int, int]]:
    """Two (H, W) to compare an exported `net` with PyTorch at (:func:`compare_onnx`): the first needs
    padding in both directions, the second in width only, so the graph is checked with and without a
    height pad."""
    m = size_requirement(net).multiple
    return [(m + 5, 2 * m - 3), (2 * m, 3 * m + 7)]


def _export(net, path: str, example: torch.Tensor, opset: int, dynamo: bool) -> None:
    kwargs = dict(opset_version=opset, input_names=['lr'], output_names=['sr'], dynamo=dynamo)
    if dynamo:
        h, w = torch.export.Dim('height', min=1), torch.export.Dim('width', min=1)
        kwargs['dynamic_shapes'] = {'x': {2: h, 3: w}}
    else:
        kwargs['dynamic_axes'] = {'lr': {2: 'height', 3: 'width'}, 'sr': {2: 'out_height', 3: 'out_width'}}
    with warnings.catch_warnings():
        # The tracer warns about every shape it reads as a Python number; the docstring above lists the
        # ones that matter and the checks below prove the graph right at several sizes.
        warnings.simplefilter('ignore')
        torch.onnx.export(net, (example, ), path, **kwargs)


def export_onnx(net: torch.nn.Module, path: str, opset: int = DEFAULT_OPSET, method: str = 'auto') -> str:
    """Export `net` (put in eval mode, on CPU, fp32) to `path` atomically; returns the method that worked
    ('trace' or 'dynamo'). `method`: 'auto' (each in that order) or one of them."""
    if opset < 17:
        raise UserError(f'opset {opset} is too old: scaled_dot_product_attention and LayerNorm need >= 17')
    net = net.eval().to('cpu', torch.float32)
    example = torch.rand(1, getattr(net, 'in_chans', 3), *_example_size(size_requirement(net).multiple))
    methods = ('trace', 'dynamo') if method == 'auto' else (method, )
    errors = []
    for name in methods:
        try:
            with atomic_path(path) as tmp, torch.no_grad():
                _export(net, tmp, example, opset, dynamo=name == 'dynamo')
            return name
        except ImportError as err:
            errors.append(f'{name}: needs {err.name or err} (pip install onnx onnxscript)')
        except Exception as err:  # exporter failures come as many exception types
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ''
            errors.append(f'{name}: {type(err).__name__}: {first}')
    raise UserError('ONNX export failed: ' + ' | '.join(errors))


def compare_onnx(net: torch.nn.Module, path: str, sizes: Iterable[Tuple[int, int]],
                 seed: int = 0) -> Optional[list]:
    """Max absolute difference between onnxruntime and PyTorch on random inputs of each size; None when
    onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    net = net.eval().to('cpu', torch.float32)
    gen = torch.Generator().manual_seed(seed)
    diffs = []
    for h, w in sizes:
        x = torch.rand(1, getattr(net, 'in_chans', 3), h, w, generator=gen)
        with torch.no_grad():
            ref = net(x).numpy()
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        if out.shape != ref.shape:
            raise UserError(f'ONNX output shape {out.shape} differs from PyTorch {ref.shape} at {h}x{w}')
        diffs.append(float(np.abs(out - ref).max()))
    return diffs


def check_model(path: str) -> None:
    """Validate the graph with onnx's checker when onnx is installed."""
    try:
        import onnx
    except ImportError:
        return
    onnx.checker.check_model(path)


def model_size_mb(path: str) -> float:
    return os.path.getsize(path) / 2**20
