"""Checking a BasicSR option dict before ``basicsr train`` / ``basicsr test`` create any folder.

BasicSR creates ``experiments/<name>`` (or ``results/<name>``) first and only then builds the data sets and
networks, so a wrong key, a missing data set or a too large ``gt_size`` ends in a traceback and an
experiment folder holding nothing but a log. Every check here raises a one-line :class:`UserError` that
names the option file and the key (``datasets:train:dataroot_gt``, the ``--force_yml`` spelling) and says
what to do. Keys are checked as far as this package and BasicSR 1.4.2 read them; networks and data sets
registered by other plugins get the structural checks only.
"""
import difflib
import numbers
import os
import re
import sys

from msrasr_arch.utils.errors import UserError

# Top-level keys BasicSR 1.4.2's pipelines and SR/Real-ESRGAN models read (plus every `network_*`), the
# ones BasicSR sets itself, and this package's.
TOP_LEVEL_KEYS = frozenset((
    'name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'path', 'train', 'val', 'logger',
    'dist_params', 'find_unused_parameters',
    'dist', 'rank', 'world_size', 'is_train', 'auto_resume', 'root_path',
    # Real-ESRGAN models: training-pair pool, sharpening, on-device second-order degradation
    'gt_size', 'queue_size', 'high_order_degradation', 'gt_usm', 'l1_gt_usm', 'percep_gt_usm', 'gan_gt_usm',
    'resize_prob', 'resize_range', 'gaussian_noise_prob', 'noise_range', 'poisson_scale_range',
    'gray_noise_prob', 'jpeg_range', 'second_blur_prob', 'resize_prob2', 'resize_range2',
    'gaussian_noise_prob2', 'noise_range2', 'poisson_scale_range2', 'gray_noise_prob2', 'jpeg_range2',
))
# Roots each data set type cannot do without.
REQUIRED_ROOTS = {
    'PairedImageDataset': ('dataroot_gt', 'dataroot_lq'),
    'SingleImageDataset': ('dataroot_lq',),
    'RealESRGANDataset': ('dataroot_gt',),
    'RealESRGANPairedDataset': ('dataroot_gt', 'dataroot_lq'),
    'BSRGANDataset': ('dataroot_gt',),
}
_NAME = re.compile(r'^[\w+-][\w.+-]*$', re.ASCII)
_META_SHAPE = re.compile(r'\((\d+),\s*(\d+)(?:,\s*\d+)?\)')


def warn(message):
    print(f'basicsr: warning: {message}', file=sys.stderr)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive(opt, section, key, source, required=True):
    node = opt.get(section)
    if not isinstance(node, dict):
        raise UserError(f'{source}: {section}: missing (a mapping of options)')
    if key not in node:
        if required:
            raise UserError(f'{source}: {section}:{key}: missing')
        return
    if not _is_number(node[key]) or node[key] <= 0:
        raise UserError(f'{source}: {section}:{key}: expected a positive number, got {node[key]!r}')


def _lookup(registry, name):
    """The class `registry` has under `name` (BasicSR also finds ``<name>_basicsr``), or None."""
    if not isinstance(name, str):
        return None
    try:
        return registry.get(name)
    except KeyError:
        return None


def _suggest(key, known):
    close = difflib.get_close_matches(key, known, n=1)
    return f' (did you mean {close[0]}?)' if close else ''


def check_top_level(opt, *, source, is_train):
    from basicsr.utils.registry import MODEL_REGISTRY

    name = opt.get('name')
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f'{source}: name: expected a folder name (letters, digits, _ . + -, not starting with '
                        f'.), got {name!r}; it names experiments/<name> and results/<name>')
    model_type = opt.get('model_type')
    model_class = _lookup(MODEL_REGISTRY, model_type)
    if model_class is None:
        raise UserError(f'{source}: model_type: {model_type!r} is not a registered BasicSR model'
                        + (_suggest(model_type, list(MODEL_REGISTRY.keys())) if isinstance(model_type, str) else ''))
    num_gpu = opt.get('num_gpu', '<missing>')
    if num_gpu != 'auto' and not (isinstance(num_gpu, int) and not isinstance(num_gpu, bool) and num_gpu >= 0):
        raise UserError(f'{source}: num_gpu: expected a number of GPUs (0 = CPU) or auto, got {num_gpu!r}')
    scale = opt.get('scale', 1)
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise UserError(f'{source}: scale: expected a positive integer, got {scale!r}')
    for key in ('datasets', 'network_g'):
        if not isinstance(opt.get(key), dict) or not opt[key]:
            raise UserError(f'{source}: {key}: missing (a mapping of options)')
    if not isinstance(opt.get('path', {}), dict):
        raise UserError(f'{source}: path: expected a mapping')

    unknown = [k for k in opt if k not in TOP_LEVEL_KEYS and not str(k).startswith('network_')]
    if unknown:
        key = unknown[0]
        message = f'{source}: {key}: unknown top-level option{_suggest(str(key), sorted(TOP_LEVEL_KEYS))}'
        if model_class.__module__.startswith('msrasr_arch.'):
            raise UserError(message)
        warn(message + f' (kept: {model_type} may read it)')

    if is_train:
        _positive(opt, 'train', 'total_iter', source)
        _positive(opt, 'logger', 'print_freq', source)
        _positive(opt, 'logger', 'save_checkpoint_freq', source)
        if opt.get('val') is not None:
            _positive(opt, 'val', 'val_freq', source)


def check_networks(opt, *, source):
    """Every ``network_*`` block: a registered type; MSRA-SR networks through their full option check,
    others against their constructor's keyword arguments."""
    import inspect

    from basicsr.utils.registry import ARCH_REGISTRY

    from msrasr_arch.archs.network_options import ARCH_TYPES, check_network_options

    for key in [k for k in opt if str(k).startswith('network_')]:
        block = opt[key]
        if not isinstance(block, dict):
            raise UserError(f'{source}: {key}: expected a mapping with a type, got {block!r}')
        arch = block.get('type')
        arch_class = _lookup(ARCH_REGISTRY, arch)
        if arch_class is None:
            raise UserError(f'{source}: {key}:type: {arch!r} is not a registered network'
                            + (_suggest(arch, list(ARCH_REGISTRY.keys())) if isinstance(arch, str) else ''))
        if arch in ARCH_TYPES:
            check_network_options(block, source=f'{source}: {key}')
            continue
        params = inspect.signature(arch_class.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        accepted = [n for n in params if n != 'self']
        for option in block:
            if option != 'type' and option not in accepted:
                raise UserError(f'{source}: {key}:{option}: unknown option for {arch}{_suggest(option, accepted)}')


def prepare_hint(root):
    """How to make a missing data set folder, judged from the names `msrasr prepare` writes."""
    norm = os.path.normpath(root)
    leaf, parent = os.path.basename(norm), os.path.dirname(norm)
    found = (re.fullmatch(r'(.+)_train_HR_sub(?:\.lmdb)?', leaf)
             or re.fullmatch(r'(.+)_train_LR_bicubic_X\d_sub\.lmdb', leaf))
    if found is None and re.fullmatch(r'X\d_sub', leaf):
        found = re.fullmatch(r'(.+)_train_LR_bicubic', os.path.basename(parent))
        parent = os.path.dirname(parent)
    if found:
        prefix = found.group(1)
        return f'make it with `msrasr prepare --hr <{prefix} HR images> --out {parent or "."} --name {prefix}`'
    if leaf == 'HR' or (re.fullmatch(r'X\d', leaf) and os.path.basename(parent) == 'LR_bicubic'):
        out = parent if leaf == 'HR' else os.path.dirname(parent)
        return (f'make it with `msrasr prepare --benchmark --hr <{os.path.basename(out) or "benchmark"} HR images> '
                f'--out {out or "."}`')
    return f'check the path (relative paths start at {os.getcwd()}); `msrasr prepare --help` makes data sets'


def _files(folder):
    # As BasicSR's scandir: hidden files are not images.
    return sorted(n for n in os.listdir(folder) if not n.startswith('.') and os.path.isfile(os.path.join(folder, n)))


def _lmdb_shapes(root):
    """{key: (h, w)} from an LMDB's meta_info.txt (lines ``<key>.png (h,w,c) <level>``)."""
    shapes = {}
    with open(os.path.join(root, 'meta_info.txt'), encoding='utf-8', errors='replace') as f:
        for line in f:
            if line.strip():
                found = _META_SHAPE.search(line)
                shapes[line.split('.')[0]] = (int(found.group(1)), int(found.group(2))) if found else None
    return shapes


def _image_size(path):
    """(h, w) from the image header, or None where the header cannot be read."""
    try:
        from PIL import Image

        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except Exception:  # noqa: BLE001  not an image PIL knows: the data loader will say more
        return None


def _check_root(where, root, backend, source):
    if not isinstance(root, str) or not root:
        raise UserError(f'{source}: {where}: expected a path, got {root!r}')
    root = os.path.expanduser(root)
    if not os.path.exists(root):
        raise UserError(f'{source}: {where}: {root} does not exist; {prepare_hint(root)}')
    if backend == 'lmdb':
        if not root.endswith('.lmdb') or not os.path.isdir(root):
            raise UserError(f'{source}: {where}: {root} is not an LMDB folder (name.lmdb); with '
                            'io_backend type lmdb both dataroots must be .lmdb folders')
        for needed in ('meta_info.txt', 'data.mdb'):
            if not os.path.isfile(os.path.join(root, needed)):
                raise UserError(f'{source}: {where}: {root} has no {needed}, so it is not an LMDB made by '
                                '`msrasr prepare` or BasicSR\'s create_lmdb.py (or it is incomplete): make it again')
    elif root.endswith('.lmdb') and os.path.isdir(root):
        raise UserError(f'{source}: {where}: {root} is an LMDB; set the data set\'s io_backend to '
                        '{type: lmdb} (or point it at an image folder)')
    elif not os.path.isdir(root):
        raise UserError(f'{source}: {where}: {root} is a file, not a folder of images')
    return root


def _check_paired_folders(prefix, ds, gt_root, lq_root, source):
    """Every GT image has its LQ partner under ``filename_tmpl``, as BasicSR pairs them."""
    tmpl = ds.get('filename_tmpl', '{}')
    gt_names, lq_names = _files(gt_root), set(_files(lq_root))
    if not gt_names:
        raise UserError(f'{source}: {prefix}:dataroot_gt: {gt_root} holds no images')
    for name in gt_names:
        stem, ext = os.path.splitext(name)
        partner = f'{tmpl.format(stem)}{ext}'
        if partner not in lq_names:
            raise UserError(f'{source}: {prefix}:dataroot_lq: no {partner} in {lq_root} for {name} of {gt_root} '
                            f"(filename_tmpl '{tmpl}')")
    if len(lq_names) != len(gt_names):
        raise UserError(f'{source}: {prefix}: {lq_root} holds {len(lq_names)} files but {gt_root} holds '
                        f'{len(gt_names)}; BasicSR pairs them one to one')


def _check_gt_size(prefix, ds, gt_root, backend, source):
    gt_size = ds['gt_size']
    if not isinstance(gt_size, int) or isinstance(gt_size, bool) or gt_size < 1:
        raise UserError(f'{source}: {prefix}:gt_size: expected a positive integer, got {gt_size!r}')
    if backend == 'lmdb':
        sizes = ((f'{key} in {gt_root}', shape) for key, shape in _lmdb_shapes(gt_root).items())
    elif ds.get('meta_info_file'):
        return
    else:
        sizes = ((os.path.join(gt_root, n), _image_size(os.path.join(gt_root, n))) for n in _files(gt_root))
    for what, shape in sizes:
        if shape is not None and min(shape) < gt_size:
            raise UserError(f'{source}: {prefix}:gt_size: {what} is {shape[0]}x{shape[1]}, smaller than gt_size '
                            f'{gt_size}; lower gt_size or remove the smaller images (`msrasr prepare '
                            '--crop-size` sets the size of sub-images)')


def check_datasets(opt, *, source, is_train):
    from basicsr.utils.registry import DATASET_REGISTRY

    for phase, ds in opt['datasets'].items():
        prefix = f'datasets:{phase}'
        if not isinstance(ds, dict):
            raise UserError(f'{source}: {prefix}: expected a mapping of data set options')
        if is_train and phase != 'train' and str(phase).split('_')[0] != 'val':
            raise UserError(f'{source}: {prefix}: training reads only datasets train and val (or val_<n>)')
        kind = ds.get('type')
        if _lookup(DATASET_REGISTRY, kind) is None:
            raise UserError(f'{source}: {prefix}:type: {kind!r} is not a registered data set'
                            + (_suggest(kind, list(DATASET_REGISTRY.keys())) if isinstance(kind, str) else ''))
        backend_opt = ds.get('io_backend')
        if not isinstance(backend_opt, dict) or 'type' not in backend_opt:
            raise UserError(f'{source}: {prefix}:io_backend: missing (e.g. {{type: disk}} or {{type: lmdb}})')
        backend = backend_opt['type']
        for key in REQUIRED_ROOTS.get(kind, ()):
            if ds.get(key) is None:
                raise UserError(f'{source}: {prefix}: missing {key} (the folder or .lmdb of '
                                f'{"ground-truth" if key == "dataroot_gt" else "low-resolution"} images) for {kind}')
        roots = {}
        for key in sorted(k for k in ds if str(k).startswith('dataroot_') and ds[k] is not None):
            values = ds[key] if isinstance(ds[key], list) else [ds[key]]
            roots[key] = [_check_root(f'{prefix}:{key}', v, backend, source) for v in values]
        for key in ('meta_info_file', 'meta_info'):
            path = ds.get(key)
            if path is not None and backend != 'lmdb' and not os.path.isfile(os.path.expanduser(str(path))):
                raise UserError(f'{source}: {prefix}:{key}: {path} does not exist')
        if kind != 'PairedImageDataset' or 'dataroot_gt' not in roots or 'dataroot_lq' not in roots:
            continue
        gt_root, lq_root = roots['dataroot_gt'][0], roots['dataroot_lq'][0]
        if backend == 'lmdb':
            if set(_lmdb_shapes(gt_root)) != set(_lmdb_shapes(lq_root)):
                raise UserError(f'{source}: {prefix}: {gt_root} and {lq_root} hold different keys (meta_info.txt); '
                                'they must come from the same images')
        elif backend == 'disk' and not ds.get('meta_info_file'):
            _check_paired_folders(prefix, ds, gt_root, lq_root, source)
        if is_train and phase == 'train' and 'gt_size' in ds:
            _check_gt_size(prefix, ds, gt_root, backend, source)


def check_pretrained(opt, *, source):
    """``path:pretrain_network_*`` files that are set must exist (they are not read when resuming)."""
    for key, value in (opt.get('path') or {}).items():
        if str(key).startswith('pretrain_network') and value is not None:
            path = os.path.expanduser(str(value))
            if not os.path.isfile(path):
                raise UserError(f'{source}: path:{key}: {path} does not exist')


def check_options(opt, *, source, is_train, resuming=False):
    """All checks, in the order a reader fixes them. `resuming`: the pretrained-network paths are replaced
    by the run's own checkpoints, so they are not checked."""
    check_top_level(opt, source=source, is_train=is_train)
    check_networks(opt, source=source)
    check_datasets(opt, source=source, is_train=is_train)
    if not resuming:
        check_pretrained(opt, source=source)
    if is_train:
        from msrasr_arch.models.realesr_models import require_vgg_weights

        require_vgg_weights(dict(opt, is_train=True))
