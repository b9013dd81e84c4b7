"""`msrasr upscale`: upscale an image or a folder of images with a trained checkpoint.

    msrasr upscale -i photo.png -o out/ --weights net_g_latest.pth
    msrasr upscale -i photos/ -o out/ --weights model.safetensors --device cuda --precision fp16 --tile 512

Each output is written to a temporary name and renamed, and an existing output is skipped unless
--overwrite, so re-running an interrupted batch picks up where it stopped.
"""
import os
import sys
import time
import warnings

from msrasr_arch.utils.errors import UserError

def _warn(message: str) -> None:
    from tqdm import tqdm
    tqdm.write(f'msrasr upscale: warning: {message}', file=sys.stderr)


def list_inputs(path: str):
    """Image files to process: `path` itself, or the images in folder `path` (others skipped with a
    warning; hidden files, such as our own partial outputs, silently)."""
    from msrasr_arch.inference.image_io import is_image_file
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f'input {path} does not exist')
    files = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name.startswith('.') or os.path.isdir(full):
            continue
        if is_image_file(name):
            files.append(full)
        else:
            _warn(f'skipping {full}: not an image file')
    if not files:
        raise UserError(f'no image files in {path}')
    return files


def prepare_output_folder(folder: str) -> str:
    """Create `folder` if needed and check that we can write there; temporary files that killed runs left
    in it are removed."""
    from msrasr_arch.utils.atomic import remove_partial_files, temporary_name
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UserError(f'cannot create output folder {folder}: {err.strerror or err}') from None
    # os.access answers for root as if every folder were writable; only a real write tells the truth. The
    # probe has a temporary file's name, so one left by a kill at this instant is cleaned up like the rest.
    probe = temporary_name(os.path.join(folder, 'msrasr-write-test'))
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        os.remove(probe)
    except OSError as err:
        raise UserError(f'output folder {folder} is not writable: {err.strerror or err}') from None
    remove_partial_files(folder)
    return folder


def output_path(input_path: str, folder: str, suffix: str, ext) -> str:
    from msrasr_arch.inference.image_io import check_output_extension, output_extension
    stem = os.path.splitext(os.path.basename(input_path))[0]
    return os.path.join(folder, f'{stem}{suffix}{check_output_extension(output_extension(input_path, ext))}')


def plan_outputs(inputs, folder: str, suffix: str, ext) -> dict:
    """input path -> output path, refusing (before any work) an unwritable format, an output that would
    replace its input and two inputs with the same output (a.png and a.jpg with --ext png)."""
    if os.sep in suffix or (os.altsep and os.altsep in suffix):
        raise UserError(f'--suffix must not contain a path separator; got {suffix!r}')
    plan, taken = {}, {}
    for path in inputs:
        out = output_path(path, folder, suffix, ext)
        key = os.path.normcase(os.path.abspath(out))
        if key == os.path.normcase(os.path.abspath(path)):
            raise UserError(f'the output for {path} would replace the input; use another -o folder or a --suffix')
        if key in taken:
            raise UserError(f'{taken[key]} and {path} would both be written to {out}; rename one, or choose '
                            'another --ext')
        taken[key] = path
        plan[path] = out
    return plan


def run(args) -> int:
    from tqdm import tqdm

    from msrasr_arch.inference.image_io import check_pixels, read_image, write_image
    from msrasr_arch.inference.upscaler import Upscaler

    inputs = list_inputs(args.input)
    single = len(inputs) == 1 and os.path.isfile(args.input)
    # Everything that can be refused without the network is refused before loading it.
    if args.max_pixels < 0:
        raise UserError(f'--max-pixels must be >= 0 (0 = no limit); got {args.max_pixels}')
    # The default suffix needs the network's scale; any common suffix finds the same collisions.
    provisional = f'_x{args.scale or "<scale>"}' if args.suffix is None else args.suffix
    plan_outputs(inputs, args.output, provisional, args.ext)
    if single:
        check_pixels(inputs[0], args.max_pixels)
    folder = prepare_output_folder(args.output)
    from msrasr_arch.utils.cpu_memory import keep_freed_memory

    keep_freed_memory()  # tiles and images free and take the same memory again (see cpu_memory)
    upscaler = Upscaler.from_checkpoint(args.weights, opt=args.opt, scale=args.scale, param_key=args.param_key,
                                        device=args.device, precision=args.precision, tile=args.tile or None,
                                        tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble,
                                        alpha=args.alpha)
    plan = plan_outputs(inputs, folder, f'_x{upscaler.scale}' if args.suffix is None else args.suffix, args.ext)
    done, skipped, failed = 0, 0, []
    start = time.perf_counter()
    bar = tqdm(inputs, unit='image', disable=args.quiet or None, file=sys.stderr, desc='images')
    for path in bar:
        out = plan[path]
        if os.path.exists(out) and not args.overwrite:
            _warn(f'skipping {path}: {out} exists (use --overwrite to replace it)')
            skipped += 1
            continue
        try:
            image = read_image(path, max_pixels=args.max_pixels)
        except UserError as err:
            if single:
                raise
            _warn(f'skipping {err}')
            failed.append(path)
            continue
        tiles = tqdm(total=upscaler.calls_for(image), unit='tile', leave=False, desc=os.path.basename(path),
                     disable=args.quiet or None, file=sys.stderr)
        with tiles:
            result = upscaler.upscale(image, on_tile=tiles.update)
        del image  # the next image's memory, not both at once
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            try:
                write_image(out, result, overwrite=args.overwrite)
            except OSError as err:
                raise UserError(f'cannot write {out}: {err.strerror or err}') from None
        del result
        for w in caught:
            _warn(str(w.message))
        done += 1
    bar.close()
    seconds = time.perf_counter() - start
    print(f'upscaled {done} image(s) x{upscaler.scale} into {folder} in {seconds:.1f} s'
          + (f'; {skipped} skipped (outputs exist)' if skipped else ''), file=sys.stderr)
    if failed:
        raise UserError(f'{len(failed)} of {len(inputs)} image(s) could not be read: {", ".join(failed[:5])}')
    return 0
