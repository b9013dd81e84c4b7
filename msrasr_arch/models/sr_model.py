"""``MSRASRModel``: BasicSR's ``SRModel`` with the inference MSRA-SR needs and CPU-capable DDP.

Option keys it reads on top of ``SRModel``'s (all under ``val``):
    tile: {size: 256, overlap: 32}   # LR pixels; tiled inference for images that do not fit in memory
    self_ensemble: false             # x8 geometric self-ensemble (the paper's "MSRA-SR+")
    reparameterize: true             # test a re-parameterised copy (false: the multi-branch net, Table 4)
"""
import os
import shutil
import tempfile
from copy import deepcopy

import torch
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from torch.nn.parallel import DistributedDataParallel

from msrasr_arch.archs.window import pad_to_multiple
from msrasr_arch.utils.checkpoint import load_checkpoint, load_into
from msrasr_arch.utils.errors import UserError
from msrasr_arch.utils.tiling import self_ensemble, tile_forward


def pad_multiple_of(net, default=1):
    """The input-size multiple a network needs: ``pad_multiple``, else ``window_size``, else ``default``
    (BasicSR's SwinIR keeps its window size only in the option file)."""
    for attr in ('pad_multiple', 'window_size'):
        value = getattr(net, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def padded_forward(net, img, multiple, scale):
    """Run ``net`` on ``img`` padded to ``multiple`` and crop the output to exactly ``scale`` x input.

    MSRA-SR pads internally as well; padding here too keeps tiles and self-ensemble transforms on the
    window grid, and lets BasicSR archs that do not pad (e.g. SwinIR) run through this model.
    """
    h, w = img.shape[-2:]
    return net(pad_to_multiple(img, multiple))[..., :h * scale, :w * scale]


def parse_tile(value):
    """``val.tile`` as (size, overlap) or None. Accepts ``{size, overlap}``, ``[size, overlap]`` (what
    ``--force_yml val:tile=[256,32]`` produces) or a bare size (overlap = size / 8)."""
    if value in (None, False, 0):
        return None
    if isinstance(value, dict) and 'size' in value:
        size, overlap = value['size'], value.get('overlap', 0)
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        size, overlap = value
    elif isinstance(value, int) and not isinstance(value, bool):
        size, overlap = value, value // 8
    else:
        raise UserError(f'val:tile: expected {{size: N, overlap: M}}, [N, M] or N, got {value!r}')
    try:
        size, overlap = int(size), int(overlap)
    except (TypeError, ValueError):
        raise UserError(f'val:tile: size and overlap must be integers, got {value!r}') from None
    if size <= 0 or not 0 <= overlap < size:
        raise UserError(f'val:tile: need size > 0 and 0 <= overlap < size, got size={size} overlap={overlap}')
    return size, overlap


@MODEL_REGISTRY.register()
class MSRASRModel(SRModel):
    """SR model for MSRA-SR (works for any BasicSR SR arch).

    Validation/testing run a *copy* of the network (the EMA one when ``train.ema_decay`` > 0), with its
    multi-branch depth-wise convolutions merged (``net.reparameterize()``); training continues on the
    multi-branch original. Padding, tiling and self-ensemble are described in the module docstring.
    """

    # --- device placement -------------------------------------------------------------------------
    def model_to_device(self, net):
        # BasicSR passes device_ids=[torch.cuda.current_device()] to DDP, which fails without CUDA;
        # a CPU module must be wrapped without device_ids (the gloo process group handles the rest).
        if self.opt['dist'] and self.device.type == 'cpu':
            net = net.to(self.device)
            return DistributedDataParallel(net, find_unused_parameters=self.opt.get('find_unused_parameters', False))
        return super().model_to_device(net)

    # --- inference ----------------------------------------------------------------------------------
    def _val_opt(self):
        return self.opt.get('val') or {}

    def _inference_net(self):
        """A re-parameterised eval-mode copy of the net that testing should use (EMA if present)."""
        source = self.net_g_ema if hasattr(self, 'net_g_ema') else self.get_bare_model(self.net_g)
        net = deepcopy(source).eval()
        if self._val_opt().get('reparameterize', True) and hasattr(net, 'reparameterize'):
            net = net.reparameterize() or net
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    def _tile_settings(self, multiple):
        tile = parse_tile(self._val_opt().get('tile'))
        if tile is None:
            return None
        size, overlap = tile
        # Tiles and strides on the window grid, so every tile sees the windows the whole image would.
        size = max(multiple, size // multiple * multiple)
        overlap = max(0, min(size - multiple, -(-overlap // multiple) * multiple))
        return size, overlap

    def _upscale(self, net, lq):
        scale = int(self.opt.get('scale', getattr(net, 'upscale', 1)))
        multiple = pad_multiple_of(net, default=int(self.opt['network_g'].get('window_size', 1)))
        tiling = self._tile_settings(multiple)

        def forward(x):
            if tiling is None:
                return padded_forward(net, x, multiple, scale)
            # Pad the whole image once, so every tile start (including the flush last one) is on the grid.
            h, w = x.shape[-2:]
            out = tile_forward(net, pad_to_multiple(x, multiple), scale, tiling[0], tiling[1], device=self.device)
            return out[..., :h * scale, :w * scale]

        if self._val_opt().get('self_ensemble', False):
            return self_ensemble(forward, lq)
        return forward(lq)

    def test(self):
        net = getattr(self, '_eval_net', None)
        owns_net = net is None
        if owns_net:
            net = self._inference_net()
        with torch.no_grad():
            self.output = self._upscale(net, self.lq)
        if owns_net:
            del net

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        # One re-parameterised copy per validation pass, not one per image.
        self._eval_net = self._inference_net()
        try:
            super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            del self._eval_net

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """BasicSR's ``params`` / ``params_ema`` semantics through the package's one checkpoint loader:
        ``.safetensors`` and bare state dicts too, ``module.`` prefixes stripped, pickles opened with
        ``weights_only=True`` only, and a mismatch named key by key in one line."""
        net = self.get_bare_model(net)
        # BasicSR asks for params_ema and falls back to params; load_checkpoint(None) prefers them in that order.
        wanted = None if param_key == 'params_ema' else param_key
        try:
            ckpt = load_checkpoint(load_path, param_key=wanted)
        except UserError:
            if wanted is None or not os.path.isfile(load_path):
                raise
            ckpt = load_checkpoint(load_path)  # a bare state dict or an exported .safetensors
        state = ckpt.state_dict
        get_root_logger().info(f'Loading {net.__class__.__name__} model from {load_path}, '
                               f'with param key: [{ckpt.param_key}].')
        if strict:
            load_into(net, state, source=f'{load_path}')
        else:
            self._print_different_keys_loading(net, state, strict)
            net.load_state_dict(state, strict=False)

    # --- checkpoints --------------------------------------------------------------------------------
    def save(self, epoch, current_iter):
        """BasicSR's save, but a crash mid-write never leaves a truncated ``.pth`` / ``.state``: files are
        written into a temporary folder beside their destination and renamed into place."""
        if self.opt.get('rank', 0) != 0:
            return super().save(epoch, current_iter)  # master_only: nothing is written on other ranks
        paths = self.opt['path']
        final = {key: paths[key] for key in ('models', 'training_states')}
        staging = {key: tempfile.mkdtemp(prefix='.saving-', dir=final[key]) for key in final}
        try:
            paths.update(staging)
            super().save(epoch, current_iter)
        finally:
            paths.update(final)
        for key in final:
            for name in os.listdir(staging[key]):
                os.replace(os.path.join(staging[key], name), os.path.join(final[key], name))
            shutil.rmtree(staging[key], ignore_errors=True)
