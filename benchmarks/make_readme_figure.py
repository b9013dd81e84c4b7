"""Make the README's before/after picture with a `msrasr quickstart` model and the `msrasr upscale` command.

    msrasr quickstart   # trains msrasr_quickstart/experiments/quickstart_MSRASR_light_x2/models/net_g_latest.pth
    python benchmarks/make_readme_figure.py   # or --weights PATH

1. Takes a held-out built-in photo (``chelsea``: never in the quick start's training set), crops it to a
   multiple of the scale and makes its LR input with the same MATLAB-style bicubic downscaling the
   quick start trains on.
2. Upscales the LR file with the command users run: ``msrasr upscale -i lr.png -o ... --weights ...``.
3. Writes ``docs/before_after.png``: a zoomed crop of bicubic upscaling | MSRA-SR | the original, each
   titled with its PSNR (Y channel, border 2, BasicSR's metric) on the whole photo, and prints a caption
   saying how the model was trained (read from the training option file beside the checkpoint).
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile

import cv2
import numpy as np

import msrasr_arch  # noqa: F401  (shim + registration before basicsr)
from basicsr.metrics import calculate_psnr
from msrasr_arch.data.bicubic import bicubic_downscale, mod_crop
from msrasr_arch.data.builtin import load_photo
from msrasr_arch.inference.image_io import read_image, write_image

# Where `msrasr quickstart` (default --out) leaves its model.
DEFAULT_WEIGHTS = os.path.join('msrasr_quickstart', 'experiments', 'quickstart_MSRASR_light_x2', 'models',
                               'net_g_latest.pth')


def training_summary(weights):
    """How the checkpoint was trained, from the option file BasicSR saved in the experiment folder."""
    import yaml
    experiment = os.path.dirname(os.path.dirname(os.path.abspath(weights)))
    options = sorted(glob.glob(os.path.join(experiment, '*.yml')))
    if not options:
        return 'training options not found next to the checkpoint'
    with open(options[0], encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    train, data = opt.get('train', {}), opt.get('datasets', {}).get('train', {})
    net = opt.get('network_g', {})
    init = (opt.get('path') or {}).get('pretrain_network_g')
    start = f'starting from {os.path.basename(init)}' if init else 'from random initialisation'
    return (f"{net.get('type')} x{net.get('upscale')} (embed_dim {net.get('embed_dim')}, depths {net.get('depths')}), "
            f"trained by `msrasr quickstart` {start}, for {train.get('total_iter')} iterations, batch "
            f"{data.get('batch_size_per_gpu')} of {data.get('gt_size')}px HR patches, on CPU, on "
            'scikit-image\'s bundled photos (the paper trains 500K iterations on DIV2K)')


def label(panel, text):
    bar = np.full((28, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', default=DEFAULT_WEIGHTS, help=f'checkpoint (default: {DEFAULT_WEIGHTS})')
    parser.add_argument('--photo', default='chelsea', help='built-in photo (default chelsea, held out of training)')
    parser.add_argument('--scale', type=int, default=2)
    parser.add_argument('--crop', type=int, nargs=4, default=[40, 150, 150, 150], metavar=('TOP', 'LEFT', 'H', 'W'),
                        help='zoomed region of the HR photo')
    parser.add_argument('--zoom', type=int, default=2, help='nearest-neighbour zoom of the crop')
    parser.add_argument('--out', default=os.path.join('docs', 'before_after.png'))
    args = parser.parse_args()
    weights = args.weights
    if not os.path.isfile(weights):
        sys.exit(f'{weights} not found: run `msrasr quickstart` first, or pass --weights')

    hr = mod_crop(load_photo(args.photo), args.scale)  # RGB uint8
    lr = bicubic_downscale(hr, args.scale)
    with tempfile.TemporaryDirectory() as tmp:
        lr_path = os.path.join(tmp, f'{args.photo}.png')
        write_image(lr_path, lr)
        cmd = [sys.executable, '-m', 'msrasr_cli', 'upscale', '-i', lr_path, '-o', tmp,
               '--weights', weights, '--scale', str(args.scale), '--device', 'cpu', '--suffix', '_sr', '--quiet']
        print('$', ' '.join(cmd[2:]).replace('msrasr_cli', 'msrasr'))
        subprocess.run(cmd, check=True)
        sr = read_image(os.path.join(tmp, f'{args.photo}_sr.png'))
    h, w = hr.shape[:2]
    bicubic = cv2.resize(lr, (w, h), interpolation=cv2.INTER_CUBIC)

    def psnr(img):  # BasicSR's metric takes BGR (its Y conversion assumes it)
        return calculate_psnr(img[:, :, ::-1], hr[:, :, ::-1], crop_border=args.scale, test_y_channel=True)

    top, left, ch, cw = args.crop
    panels = []
    for name, img in ((f'bicubic x{args.scale}: {psnr(bicubic):.2f} dB', bicubic),
                      (f'MSRA-SR x{args.scale}: {psnr(sr):.2f} dB', sr), ('original (HR)', hr)):
        crop = img[top:top + ch, left:left + cw]
        crop = cv2.resize(crop, (cw * args.zoom, ch * args.zoom), interpolation=cv2.INTER_NEAREST)
        panels.append(label(np.ascontiguousarray(crop), name))
        panels.append(np.full((panels[-1].shape[0], 6, 3), 255, np.uint8))
    figure = np.concatenate(panels[:-1], axis=1)
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    write_image(args.out, figure, overwrite=True)
    print(f'wrote {args.out} ({figure.shape[1]}x{figure.shape[0]}) from {weights}')
    print(f'PSNR-Y on the whole {w}x{h} photo: bicubic {psnr(bicubic):.2f} dB, MSRA-SR {psnr(sr):.2f} dB')
    print('caption: ' + training_summary(weights))


if __name__ == '__main__':
    main()
