"""Arguments of `msrasr upscale`."""
DEFAULT_TILE = 384
DEFAULT_OVERLAP = 32
# Same value as msrasr_arch.inference.image_io.DEFAULT_MAX_PIXELS (this package imports no msrasr_arch).
DEFAULT_MAX_PIXELS = 100_000_000


def add_arguments(parser):
    parser.add_argument('-i', '--input', required=True, help='an image file, or a folder of images (not recursive)')
    parser.add_argument('-o', '--output', required=True, help='output folder (created if missing)')
    parser.add_argument('--weights', required=True,
                        help='checkpoint: BasicSR net_g_*.pth (params_ema preferred), a bare state dict, '
                             'or .safetensors')
    parser.add_argument('-opt', '--opt', default=None,
                        help='BasicSR option file whose network_g describes the weights (default: read the '
                             'architecture from the weights)')
    parser.add_argument('--scale', type=int, default=None,
                        help='expected scale; refuse a checkpoint of another scale')
    parser.add_argument('--param-key', default=None,
                        help='checkpoint entry to load (default: params_ema, else params)')
    parser.add_argument('--tile', type=int, default=DEFAULT_TILE,
                        help=f'tile size in input pixels, 0 = whole image at once (default {DEFAULT_TILE}); '
                             'peak device memory grows with it, not with the image')
    parser.add_argument('--tile-overlap', type=int, default=DEFAULT_OVERLAP,
                        help=f'pixels shared by neighbouring tiles, cross-faded (default {DEFAULT_OVERLAP})')
    parser.add_argument('--precision', choices=('fp32', 'bf16', 'fp16'), default='fp32',
                        help='arithmetic: fp32 (default), bf16, fp16 (CUDA only)')
    parser.add_argument('--device', default='auto', help='auto (CUDA if available), cpu, cuda or cuda:N')
    parser.add_argument('--self-ensemble', action='store_true', help='average the 8 flips/rotations (x8 time)')
    parser.add_argument('--alpha', choices=('bicubic', 'model'), default='bicubic',
                        help='how to upscale an alpha channel (default bicubic)')
    parser.add_argument('--suffix', default=None,
                        help='appended to each output name before the extension (default _x<scale>; "" for none)')
    parser.add_argument('--ext', default=None,
                        help='output format by extension, e.g. png (default: the input\'s)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs (default: skip them)')
    parser.add_argument('--max-pixels', type=int, default=DEFAULT_MAX_PIXELS, metavar='N',
                        help=f'refuse inputs with more pixels than this, read from the file header before decoding '
                             f'(a guard against decompression bombs; default {DEFAULT_MAX_PIXELS:_}, 0 = no limit)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
