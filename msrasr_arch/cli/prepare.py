"""`msrasr prepare`: a folder of HR images -> the dataset layout BasicSR option files read (DIV2K-style
sub-images + bicubic LR + LMDBs, or a benchmark set with --benchmark). See msrasr_arch.data.prepare."""
import os
import sys


def run(args):
    from msrasr_arch.data.prepare import prepare_benchmark_set, prepare_train_set
    from msrasr_arch.utils.errors import UserError

    if args.workers < 1:
        raise UserError(f'--workers must be >= 1, got {args.workers}')
    # tqdm only where someone watches: a log file full of carriage returns helps nobody.
    progress = not args.quiet and _stderr_is_tty()
    if args.benchmark:
        result = prepare_benchmark_set(args.hr, args.out, scales=args.scales, lr_suffix=not args.plain_lr_names,
                                       workers=args.workers, overwrite=args.overwrite, progress=progress)
        lines = [f'wrote {result["images"]} images']
    else:
        result = prepare_train_set(args.hr, args.out, scales=args.scales, name=args.name, crop_size=args.crop_size,
                                   step=args.step, thresh_size=args.thresh_size, lmdb=args.lmdb,
                                   workers=args.workers, overwrite=args.overwrite, progress=progress)
        lines = [f'wrote {result["subimages"]} sub-images of {args.crop_size}x{args.crop_size} '
                 f'from {result["images"]} images']
        if result['skipped']:
            lines.append(f'skipped {len(result["skipped"])} images smaller than {args.crop_size}x{args.crop_size}: '
                         + ', '.join(os.path.basename(p) for p in result['skipped'][:5])
                         + (' ...' if len(result['skipped']) > 5 else ''))
    if not args.quiet:
        print('\n'.join(lines + _option_lines(result)))
    return 0


def _stderr_is_tty():
    return sys.stderr.isatty()


def _option_lines(result):
    """The dataset keys to put in an option file, per scale."""
    lines = []
    for scale, lq in result['lq'].items():
        lines.append(f'option-file keys for x{scale}:')
        if result.get('gt_lmdb'):
            lines += [f'  dataroot_gt: {result["gt_lmdb"]}', f'  dataroot_lq: {result["lq_lmdb"][scale]}',
                      '  io_backend: {type: lmdb}']
        else:
            lines += [f'  dataroot_gt: {result["gt"]}', f'  dataroot_lq: {lq}', '  io_backend: {type: disk}']
        lines.append(f"  filename_tmpl: '{result['filename_tmpl'][scale]}'")
    return lines
