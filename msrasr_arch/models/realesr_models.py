"""CPU- and CUDA-capable versions of BasicSR's Real-ESRGAN models, for MSRA-SR's real-world training.

BasicSR 1.4.2's ``RealESRNetModel`` / ``RealESRGANModel`` hard-code ``.cuda()`` for DiffJPEG, USMSharp and
the training-pair queue, so they cannot run without a GPU. These subclasses make those helpers on the
model's device and otherwise keep BasicSR's behaviour. They also inherit from ``MSRASRModel``, so testing
and validation pad to the window, use the re-parameterised (EMA) network, and may tile.

``MSRAESRNetModel``  stage 1: L1 only. With ``high_order_degradation: true`` (default) it synthesises
                     LQ images on the device from ``RealESRGANDataset`` output (Real-ESRGAN's second-order
                     degradation); with ``false`` it trains on ready pairs (e.g. ``BSRGANDataset``).
``MSRAESRGANModel``  stage 2: + discriminator, perceptual and GAN losses; same two data modes.

Defaults added here (BasicSR raises ``KeyError`` without them): with the second-order degradation
``gt_usm`` / ``l1_gt_usm`` / ``percep_gt_usm`` default to true and ``gan_gt_usm`` to false, as in
Real-ESRGAN's options; on ready pairs all four default to false, because there the dataset decides about
sharpening (e.g. BSRGAN+'s ``use_sharp``).
"""
import os.path as osp

import torch
from basicsr.archs.vgg_arch import VGG_PRETRAIN_PATH
from basicsr.models.realesrgan_model import RealESRGANModel
from basicsr.models.realesrnet_model import RealESRNetModel
from basicsr.utils import DiffJPEG, USMSharp
from basicsr.utils.registry import MODEL_REGISTRY

from msrasr_arch.models.sr_model import MSRASRModel
from msrasr_arch.utils.errors import UserError

VGG19_URL = 'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth'
# Real-ESRGAN's own option values; on ready pairs all default to false (see the module docstring).
_USM_DEFAULTS = {'gt_usm': True, 'l1_gt_usm': True, 'percep_gt_usm': True, 'gan_gt_usm': False}


def require_vgg_weights(opt):
    """Stop with one line when the perceptual loss would make torchvision download VGG19.

    BasicSR's ``VGGFeatureExtractor`` loads ``experiments/pretrained_models/vgg19-dcbb9e9d.pth`` relative to
    the working directory if it exists and otherwise asks torchvision to download ImageNet weights, which
    fails (slowly, with a long traceback) on machines without internet access.
    """
    train_opt = opt.get('train') or {}
    if opt.get('is_train') and train_opt.get('perceptual_opt') and not osp.isfile(VGG_PRETRAIN_PATH):
        raise UserError(f'train.perceptual_opt needs the VGG19 weights: put {VGG19_URL.rsplit("/", 1)[1]} '
                        f'(from {VGG19_URL}) at {osp.abspath(VGG_PRETRAIN_PATH)}')


class _ContiguousJPEG(torch.nn.Module):
    """DiffJPEG whose output is contiguous: on CPU it comes back channels-last, which BasicSR's
    ``filter2D`` (a ``.view`` inside) cannot take."""

    def __init__(self):
        super().__init__()
        self.jpeg = DiffJPEG(differentiable=False)

    def forward(self, x, quality):
        return self.jpeg(x, quality=quality).contiguous()


class _OnModelDevice:
    """Helpers and queue of BasicSR's Real-ESRGAN models, placed on ``self.device`` instead of CUDA."""

    def _make_helpers(self, opt):
        paired = not opt.get('high_order_degradation', True)
        for key, default in _USM_DEFAULTS.items():
            opt.setdefault(key, default and not paired)
        self.jpeger = _ContiguousJPEG().to(self.device)
        self.usm_sharpener = USMSharp().to(self.device)
        self.queue_size = opt.get('queue_size', 180)

    @torch.no_grad()
    def _dequeue_and_enqueue(self):
        # Allocate the pool here (BasicSR would put it on CUDA); BasicSR's method then skips its own
        # allocation because the attributes exist.
        if not hasattr(self, 'queue_lr'):
            b, c, h, w = self.lq.size()
            if self.queue_size % b:
                raise UserError(f'queue_size {self.queue_size} must be a multiple of the batch size {b} '
                                '(datasets.train.batch_size_per_gpu)')
            self.queue_lr = torch.zeros(self.queue_size, c, h, w, device=self.device)
            _, c, h, w = self.gt.size()
            self.queue_gt = torch.zeros(self.queue_size, c, h, w, device=self.device)
            self.queue_ptr = 0
        super()._dequeue_and_enqueue()


@MODEL_REGISTRY.register()
class MSRAESRNetModel(_OnModelDevice, RealESRNetModel, MSRASRModel):
    """``RealESRNetModel`` (L1 stage of Real-ESRGAN-style training) that also runs on CPU."""

    def __init__(self, opt):
        require_vgg_weights(opt)
        # Skip RealESRNetModel.__init__ (it calls .cuda()); the next class in line builds the network.
        super(RealESRNetModel, self).__init__(opt)
        self._make_helpers(self.opt)


@MODEL_REGISTRY.register()
class MSRAESRGANModel(_OnModelDevice, RealESRGANModel, MSRASRModel):
    """``RealESRGANModel`` (GAN stage) that also runs on CPU; ``high_order_degradation: false`` for pairs."""

    def __init__(self, opt):
        require_vgg_weights(opt)
        # Skip RealESRGANModel.__init__ (it calls .cuda()); SRGANModel builds G, D and the losses.
        super(RealESRGANModel, self).__init__(opt)
        self._make_helpers(self.opt)
