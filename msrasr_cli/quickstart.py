"""Arguments of `msrasr quickstart`."""
import argparse

# The default budget; msrasr_arch.cli.quickstart imports it from here.
DEFAULT_ITERS = 400


def add_arguments(parser):
    parser.add_argument('--out', default='msrasr_quickstart',
                        help='working folder for data, checkpoints and results (default: ./msrasr_quickstart)')
    parser.add_argument('--iters', type=int, default=DEFAULT_ITERS,
                        help=f'training iterations (default {DEFAULT_ITERS}: about 5 minutes on a quiet 2-core CPU; '
                             'a slower machine takes longer to reach the same result)')
    parser.add_argument('--from-scratch', action='store_true',
                        help='start from random weights instead of the bicubic warm start (needs far more '
                             'than a few CPU minutes to beat bicubic)')
    # Tuning knobs, kept out of --help: the defaults are what docs/quickstart.md's figures were measured with.
    parser.add_argument('--batch', type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument('--patch', type=int, default=16, help=argparse.SUPPRESS)  # LR patch: one 16x16 window
    parser.add_argument('--lr', type=float, default=5e-4, help=argparse.SUPPRESS)
    parser.add_argument('--ema', type=float, default=0.0, help=argparse.SUPPRESS)  # a few hundred steps: EMA only lags
    parser.add_argument('--threads', type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument('--tiny', action='store_true', help=argparse.SUPPRESS)  # tests: a small network
