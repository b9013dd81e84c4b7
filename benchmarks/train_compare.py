"""Train MSRA-SR-light and BasicSR's SwinIR-light for the same small budget on the same built-in data
(scikit-image photos, `msrasr_arch.data.builtin`) through BasicSR's training pipeline, then print each
one's PSNR/SSIM (Y, border 2) on the held-out photos and its training speed.

    python benchmarks/train_compare.py [--out DIR] [--iters 300] [--batch 4] [--patch 16] [--lr 5e-4]
                                       [--from-scratch]

Both models get the same iterations, batch, LR patch (16: a multiple of both windows), learning rate and
schedule, seed and data; no EMA. Both start from the bicubic warm start of `msrasr quickstart`
(`msrasr_arch.utils.bicubic_start`, which fits both: same stem and pixelshuffledirect upsampler) unless
--from-scratch, so that a short run compares what each body adds on top of interpolation. "it/s" times only the training steps (forward, backward, Adam), measured
around the model's `optimize_parameters`. This takes minutes on a CPU; run it on a quiet machine.
"""
import argparse
import os
import platform
import sys
import time

import msrasr_arch  # noqa: F401  (shim before basicsr)

from msrasr_arch.cli import quickstart as qs
from msrasr_arch.cli.basicsr_cmd import run_pipeline

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import cpu_name, interleaved_times, training_step  # noqa: E402

SWINIR_LIGHT = dict(type='SwinIR', upscale=2, in_chans=3, img_size=64, window_size=8, img_range=1.0,
                    depths=[6, 6, 6, 6], embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2.0,
                    upsampler='pixelshuffledirect', resi_connection='1conv')
MODELS = {'MSRA-SR-light': qs.LIGHT_X2, 'SwinIR-light': SWINIR_LIGHT}


def _timed_build_model(step_times):
    """Wrap basicsr.train.build_model so the created model times its optimize_parameters calls."""
    import basicsr.train

    original = basicsr.train.build_model

    def build_model(opt):
        model = original(opt)
        step = model.optimize_parameters

        def timed(current_iter):
            t0 = time.perf_counter()
            step(current_iter)
            step_times.append(time.perf_counter() - t0)

        model.optimize_parameters = timed
        return model

    basicsr.train.build_model = build_model
    return original


def interleaved_speed(networks, batch, patch, rounds=12):
    """Training steps per second of each network: ``speed.py``'s step (fused Adam, as in the runs above),
    timed alternately (one step of each per round, median over rounds) so that a shared machine's changing
    load hits both alike."""
    import statistics

    import torch
    from basicsr.archs import build_network

    fns = {}
    for i, network in enumerate(networks):
        torch.manual_seed(0)
        fns[i] = training_step(build_network(dict(network)).train(), patch, batch)
    times = interleaved_times(fns, rounds, torch.device('cpu'))
    return [1 / statistics.median(times[i]) for i in range(len(networks))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='train_compare_out')
    parser.add_argument('--iters', type=int, default=300)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--patch', type=int, default=16, help='LR patch size')
    parser.add_argument('--lr', type=float, default=5e-4)
    parser.add_argument('--from-scratch', action='store_true', help='random initial weights for both')
    args = parser.parse_args(argv)
    args.ema = 0

    import basicsr.train
    import torch
    from basicsr.archs import build_network

    from msrasr_arch.utils.bicubic_start import bicubic_start

    out = os.path.abspath(args.out)
    paths, _ = qs.builtin_data(os.path.join(out, 'datasets', 'builtin'))
    qs.quiet_basicsr_logger(os.path.join(out, 'train_compare.log'))
    results = []
    for label, network in MODELS.items():
        name = 'compare_' + label.replace('-', '_')
        params = sum(p.numel() for p in build_network(dict(network)).parameters())
        init = None
        if not args.from_scratch:
            torch.manual_seed(0)
            init = os.path.join(out, 'init', f'{name}.pth')
            os.makedirs(os.path.dirname(init), exist_ok=True)
            torch.save({'params': bicubic_start(build_network(dict(network))).state_dict()}, init)
        train_yml = qs.write_yaml(os.path.join(out, 'options', f'train_{name}.yml'),
                                  qs.train_options(paths, args, args.iters, name=name, network=network, init=init))
        steps = []
        original = _timed_build_model(steps)
        try:
            run_pipeline('train', ['-opt', train_yml], root=out)
        finally:
            basicsr.train.build_model = original
        ckpt = os.path.join(out, 'experiments', name, 'models', 'net_g_latest.pth')
        test_yml = qs.write_yaml(os.path.join(out, 'options', f'test_{name}.yml'),
                                 qs.test_options(paths, ckpt, use_ema=False, name=name, network=network))
        run_pipeline('test', ['-opt', test_yml], root=out)
        rows = qs.score(paths, os.path.join(out, 'results', name, 'visualization', 'builtin_test'), name)
        mean = [sum(r[i] for r in rows) / len(rows) for i in range(1, 5)]
        # the first steps include one-off allocation work; report the steady rate
        steady = steps[len(steps) // 10:]
        results.append((label, params, len(steps), len(steady) / sum(steady), mean))

    alternating = interleaved_speed(list(MODELS.values()), args.batch, args.patch)
    print(f'\ntrain_compare: x2, {args.iters} iterations, batch {args.batch}, LR patch {args.patch}, '
          f'Adam lr {args.lr:g} (halved at 70% and 90%), no EMA, built-in photos, '
          f'{"random init" if args.from_scratch else "bicubic warm start"}')
    print(f'machine: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}; '
          f'Python {platform.python_version()}')
    print("it/s (run): steady rate during that model's own training run; it/s (alt): both models timed "
          'alternately afterwards, same load')
    print(f'{"model":<15} {"params":>8} {"iters":>6} {"it/s (run)":>10} {"it/s (alt)":>10} {"PSNR":>7} {"SSIM":>7}')
    for (label, params, iters, speed, mean), alt in zip(results, alternating):
        print(f'{label:<15} {params / 1e3:7.0f}K {iters:6d} {speed:10.2f} {alt:10.2f} {mean[0]:7.2f} {mean[1]:7.4f}')
    print(f'{"bicubic":<15} {"":>8} {"":>6} {"":>10} {"":>10} {results[0][4][2]:7.2f} {results[0][4][3]:7.4f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
