"""Where DIV2K-style sub-images are cut. Same rule as BasicSR's (uninstalled) scripts/data_preparation/
extract_subimages.py: a grid with stride `step`, plus one crop flush with the far edge when the grid
leaves more than `thresh_size` pixels uncovered; numbered `_s001`, `_s002`, ... row by row."""
from msrasr_arch.utils.errors import UserError


def crop_positions(length, crop_size, step, thresh_size=0):
    """Start offsets along one axis of `length` pixels; empty when `length < crop_size`."""
    if length < crop_size:
        return []
    positions = list(range(0, length - crop_size + 1, step))
    if length - (positions[-1] + crop_size) > thresh_size:
        positions.append(length - crop_size)
    return positions


def subimage_boxes(height, width, crop_size, step, thresh_size=0):
    """[(index, y, x)] of the sub-images of an image, index starting at 1 as in BasicSR's names."""
    ys = crop_positions(height, crop_size, step, thresh_size)
    xs = crop_positions(width, crop_size, step, thresh_size)
    return [(i + 1, y, x) for i, (y, x) in enumerate((y, x) for y in ys for x in xs)]


def subimage_name(stem, index):
    return f'{stem}_s{index:03d}'


def check_geometry(*, scales, crop_size, step, thresh_size):
    """LR crops are the HR crops divided by the scale, so every offset must be a multiple of every
    scale: crop_size and step must be (the flush-edge crop is, because HR is mod-cropped)."""
    if crop_size <= 0 or step <= 0:
        raise UserError(f'--crop-size and --step must be positive, got {crop_size} and {step}')
    if thresh_size < 0:
        raise UserError(f'--thresh-size must be >= 0, got {thresh_size}')
    for scale in scales:
        for flag, value in (('--crop-size', crop_size), ('--step', step)):
            if value % scale:
                raise UserError(f'{flag} {value} is not a multiple of scale {scale}: LR sub-images '
                                'would not line up with HR ones')
