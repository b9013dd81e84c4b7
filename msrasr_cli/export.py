"""Arguments of `msrasr export`."""


def add_arguments(parser):
    parser.add_argument('--weights', required=True, help='checkpoint to export (any format upscale reads)')
    parser.add_argument('-opt', '--opt', default=None, help='BasicSR option file (default: infer from the weights)')
    parser.add_argument('-o', '--output', required=True, help='output folder (created if missing)')
    parser.add_argument('--name', default=None, help='base name of the outputs (default: the weights file name)')
    parser.add_argument('--param-key', default=None, help='checkpoint entry to load (default: params_ema, else params)')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset (>= 17; default 17)')
    parser.add_argument('--method', choices=('auto', 'trace', 'dynamo'), default='auto',
                        help='ONNX exporter: trace (TorchScript tracer), dynamo (torch.export), or auto (the first '
                             'that works, in that order)')
    parser.add_argument('--no-onnx', action='store_true', help='write only the deployed checkpoint')
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs')
