"""``MSRASRModel``: BasicSR's ``SRModel`` with the inference MSRA-SR needs and CPU-capable DDP.

Option keys it reads on top of ``SRModel``'s (all under ``val``):
    tile: {size: 256, overlap: 32}   # LR pixels; tiled inference for images that do not fit in memory
    self_ensemble: false             # x8 geometric self-ensemble (the paper's "MSRA-SR+")
    reparameterize: true             # test a re-parameterised copy (false: the multi-branch net, Table 4)

Training: Adam runs its fused kernel unless ``train.optim_g`` (or ``optim_d``) sets ``fused`` or ``foreach``,
and the EMA update takes two multi-tensor operations; both compute what BasicSR's defaults compute. A
resumed training state keeps the Adam settings it was saved with (PyTorch restores them), so a run started
before this default resumes with the per-tensor loop: slower, same results.
"""
import os
import shutil
from collections import OrderedDict
from copy import deepcopy

import torch
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from torch.nn.parallel import DistributedDataParallel

from msrasr_arch.archs.size_requirement import size_requirement
from msrasr_arch.archs.window import pad_to_multiple
from msrasr_arch.utils.atomic import remove_partial_files
from msrasr_arch.utils.checkpoint import load_checkpoint, load_into, save_verified
from msrasr_arch.utils.errors import UserError
from msrasr_arch.utils.tiling import self_ensemble, tile_forward


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


def ema_update_(ema, params, decay: float) -> None:
    """BasicSR's EMA update, ``ema * decay + param * (1 - decay)`` tensor by tensor, as two multi-tensor
    operations instead of two per tensor: the same arithmetic, element for element."""
    torch._foreach_mul_(ema, decay)
    torch._foreach_add_(ema, params, alpha=1 - decay)


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

    # --- training -----------------------------------------------------------------------------------
    def get_optimizer(self, optim_type, params, lr, **kwargs):
        # Adam's default on the CPU is a loop of about a dozen operations per parameter tensor, and
        # MSRA-SR-light has 458 small ones: 40 ms a step on 2 cores against 9 ms fused (SwinIR-light's 330
        # tensors: 20 against 5; benchmarks/components.py). On CUDA, PyTorch's documentation names fused
        # the fastest of its implementations too (not measured here).
        if optim_type == 'Adam' and 'fused' not in kwargs and 'foreach' not in kwargs:
            kwargs['fused'] = True
        return super().get_optimizer(optim_type, params, lr, **kwargs)

    @torch.no_grad()
    def model_ema(self, decay=0.999):
        params = dict(self.get_bare_model(self.net_g).named_parameters())
        names, ema = zip(*self.net_g_ema.named_parameters())
        ema_update_(ema, [params[k] for k in names], decay)

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
        multiple = size_requirement(net).multiple
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
    def __init__(self, opt):
        super().__init__(opt)
        if self.is_train and self.opt.get('rank', 0) == 0:
            self._remove_save_leftovers()

    def _remove_save_leftovers(self):
        """Delete what saves killed mid-write left in this run's folders: temporary files, and the
        ``.saving-*`` staging folders earlier versions of this class wrote through."""
        for key in ('models', 'training_states'):
            folder = self.opt['path'].get(key)
            if not folder or not os.path.isdir(folder):
                continue
            remove_partial_files(folder)
            for name in os.listdir(folder):
                if name.startswith('.saving-') and os.path.isdir(os.path.join(folder, name)):
                    shutil.rmtree(os.path.join(folder, name), ignore_errors=True)

    def save(self, epoch, current_iter):
        """BasicSR's save (networks first, then the training state that points at them), where every file
        is published only once it is completely written and reads back; a failed write stops training
        instead of being logged and ignored, so the newest files on disk always form a resumable
        checkpoint."""
        try:
            super().save(epoch, current_iter)
        except UserError as err:
            where = 'the end of training' if current_iter == -1 else f'iteration {current_iter}'
            raise UserError(f'{err}; training stopped at {where}: the newest complete checkpoint is still in '
                            'place, so fix the cause and rerun with --auto_resume') from None

    def save_network(self, net, net_label, current_iter, param_key='params'):
        if self.opt.get('rank', 0) != 0:
            return  # BasicSR writes on rank 0 only
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(keys):
            raise ValueError(f'save_network: {len(nets)} networks but {len(keys)} param keys')
        save_dict = {}
        for one, key in zip(nets, keys):
            state = self.get_bare_model(one).state_dict()
            save_dict[key] = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v.detach().cpu())
                                         for k, v in state.items())
        label = 'latest' if current_iter == -1 else current_iter
        save_verified(save_dict, os.path.join(self.opt['path']['models'], f'{net_label}_{label}.pth'))

    def save_training_state(self, epoch, current_iter):
        if current_iter == -1 or self.opt.get('rank', 0) != 0:
            return  # as BasicSR: no state for the final 'latest' networks, rank 0 only
        state = {'epoch': epoch, 'iter': current_iter,
                 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers]}
        save_verified(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))
