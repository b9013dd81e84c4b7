"""`msrasr export`: a deployed checkpoint (re-parameterised, safetensors) and an ONNX model.

    msrasr export --weights experiments/x/models/net_g_latest.pth -o exported/

writes ``exported/<name>_deploy.safetensors`` (``params`` only: the multi-branch depth-wise convs merged,
the network options in the header so `msrasr upscale` needs no -opt) and ``exported/<name>.onnx``
(opset 17, dynamic height and width, batch 1), then checks the ONNX model against PyTorch at two sizes.
"""
import os

from msrasr_arch.utils.errors import UserError


def _require_onnx():
    missing = []
    for module in ('onnx', 'onnxruntime'):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(f'ONNX export needs {" and ".join(missing)}: pip install "msrasr_arch[export]" '
                        '(or pass --no-onnx for the deployed checkpoint alone)')


def run(args) -> int:
    from msrasr_arch.cli.upscale import prepare_output_folder
    if not args.no_onnx:
        _require_onnx()
    try:
        import safetensors  # noqa: F401
    except ImportError:
        raise UserError('the deployed checkpoint is written as safetensors: '
                        'pip install "msrasr_arch[export]"') from None

    from msrasr_arch.inference.network import build_network
    from msrasr_arch.inference.onnx_export import (check_model, check_sizes, compare_onnx, export_onnx,
                                                   model_size_mb)
    from msrasr_arch.utils.checkpoint import save_checkpoint

    name = args.name or os.path.splitext(os.path.basename(args.weights))[0]
    if name in ('.', '..') or os.sep in name or (os.altsep and os.altsep in name):
        raise UserError(f'--name must be a plain file name, written inside -o; got {name!r}')
    folder = prepare_output_folder(args.output)
    targets = [os.path.join(folder, f'{name}_deploy.safetensors')]
    if not args.no_onnx:
        targets.append(os.path.join(folder, f'{name}.onnx'))
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not args.overwrite:
        raise UserError(f'{existing[0]} exists; pass --overwrite to replace it')

    net, options, _ = build_network(args.weights, opt_path=args.opt, param_key=args.param_key)
    net.reparameterize()
    options = dict(options, deploy=True)
    save_checkpoint(net.state_dict(), targets[0], network_options=options)
    params = sum(p.numel() for p in net.parameters())
    print(f'deployed checkpoint: {targets[0]} ({params / 1e3:.1f}K parameters, x{net.upscale})')
    if args.no_onnx:
        return 0

    method = export_onnx(net, targets[1], opset=args.opset, method=args.method)
    check_model(targets[1])
    sizes = check_sizes(net)
    diffs = compare_onnx(net, targets[1], sizes)
    report = ', '.join(f'{h}x{w}: {d:.1e}' for (h, w), d in zip(sizes, diffs))
    print(f'ONNX model: {targets[1]} ({model_size_mb(targets[1]):.1f} MB, opset {args.opset}, {method}; '
          f'input "lr" 1x3xHxW in [0,1], output "sr"); max |ONNX - PyTorch| {report}')
    worst = max(diffs)
    if worst > 1e-3:
        raise UserError(f'the ONNX model disagrees with PyTorch by up to {worst:.2e}; do not use it')
    return 0
