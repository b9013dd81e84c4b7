"""Arguments of `msrasr prepare`."""
import argparse

DESCRIPTION_EPILOG = """\
examples:
  msrasr prepare --hr DIV2K_train_HR --out datasets/DIV2K --name DIV2K --workers 8
  msrasr prepare --hr DF2K_HR --out datasets/DF2K --name DF2K --scales 2 3 4
  msrasr prepare --benchmark --hr Set5_HR_images --out datasets/benchmark/Set5
"""


def add_arguments(parser):
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = DESCRIPTION_EPILOG
    parser.add_argument('--hr', required=True, metavar='DIR', help='folder of HR images (png, jpg, bmp, tif, webp)')
    parser.add_argument('--out', required=True, metavar='DIR', help='dataset folder to write into, e.g. datasets/DIV2K')
    parser.add_argument('--scales', type=int, nargs='+', default=[2, 3, 4], metavar='S',
                        help='LR scale factors (default: 2 3 4)')
    parser.add_argument('--benchmark', action='store_true',
                        help='write a test set instead: <out>/HR and <out>/LR_bicubic/X<s>/<stem>x<s>.png '
                        '(whole images, no LMDB)')
    train = parser.add_argument_group('training layout (default)')
    train.add_argument('--name', default='DIV2K', help='prefix of the output names (default: DIV2K)')
    train.add_argument('--crop-size', type=int, default=480, metavar='N', help='HR sub-image size (default: 480)')
    train.add_argument('--step', type=int, default=240, metavar='N', help='stride between sub-images (default: 240)')
    train.add_argument('--thresh-size', type=int, default=0, metavar='N',
                       help='add an edge-flush crop only if more than this many pixels stay uncovered (default: 0)')
    train.add_argument('--lmdb', action=argparse.BooleanOptionalAction, default=True,
                       help='also write LMDBs (default: yes)')
    bench = parser.add_argument_group('benchmark layout (--benchmark)')
    bench.add_argument('--plain-lr-names', action='store_true',
                       help="name LR files <stem>.png (filename_tmpl '{}') instead of <stem>x<s>.png ('{}x<s>')")
    parser.add_argument('--workers', type=int, default=1, metavar='N', help='processes to use (default: 1)')
    parser.add_argument('--overwrite', action='store_true', help='replace outputs that already exist')
    parser.add_argument('--quiet', action='store_true', help='no progress bars or summary')
