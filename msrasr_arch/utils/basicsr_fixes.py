"""Run-time fixes for BasicSR 1.4.2's training/testing pipeline on machines without CUDA.

BasicSR's ``train_pipeline`` / ``parse_options`` look these functions up as module globals at call time,
so replacing the module attributes is enough; site-packages stays untouched. ``apply()`` is idempotent
and is called by the ``basicsr`` command (``msrasr_arch.cli.basicsr_cmd``) before it runs a pipeline.

Fixed here:
* ``basicsr.train.load_resume_state`` calls ``torch.cuda.current_device()`` and maps the state to CUDA,
  so ``--auto_resume`` / ``path.resume_state`` crash without a GPU. Ours maps to the device the model will
  use (CUDA only when the option file asks for GPUs and one exists).
* ``basicsr.utils.options.init_dist`` forces NCCL and ``torch.cuda.set_device``, so ``--launcher pytorch``
  dies on CPU (``ZeroDivisionError``). Ours picks gloo when there is no GPU.
The third CPU/DDP problem (``model_to_device`` passing ``device_ids=[cuda]``) lives in the model class,
``msrasr_arch.models.sr_model.MSRASRModel``, because it is a method, not a module global.
"""
import os
from os import path as osp

import torch

_APPLIED_FLAG = '_msrasr_fixed'


def _resume_map_location(opt):
    wants_gpu = opt.get('num_gpu', 0) not in (0, None)
    if wants_gpu and torch.cuda.is_available():
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def _find_latest_state(opt):
    # Same place BasicSR's --auto_resume looks (relative to the working directory, which the `basicsr`
    # command makes the root), but via opt['path'] so it also follows a forced root.
    state_dir = opt['path'].get('training_states') or osp.join('experiments', opt['name'], 'training_states')
    if not osp.isdir(state_dir):
        return None
    iters = []
    for name in os.listdir(state_dir):
        stem, ext = osp.splitext(name)
        if ext == '.state' and stem.isdigit():
            iters.append(int(stem))
    if not iters:
        return None
    return osp.join(state_dir, f'{max(iters)}.state')


def load_resume_state(opt):
    """Drop-in for ``basicsr.train.load_resume_state`` that also works without CUDA."""
    from basicsr.utils import check_resume

    if opt['auto_resume']:
        resume_state_path = _find_latest_state(opt)
        if resume_state_path is not None:
            opt['path']['resume_state'] = resume_state_path
    else:
        resume_state_path = opt['path'].get('resume_state')
    if not resume_state_path:
        return None
    if not osp.isfile(resume_state_path):
        from msrasr_arch.utils.errors import UserError
        raise UserError(f'path:resume_state: {resume_state_path} does not exist')
    resume_state = torch.load(resume_state_path, map_location=_resume_map_location(opt))
    check_resume(opt, resume_state['iter'])
    return resume_state


def make_init_dist(original):
    """Wrap ``basicsr.utils.dist_util.init_dist``: gloo without a GPU, BasicSR's own path otherwise."""

    def init_dist(launcher, backend='nccl', **kwargs):
        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return original(launcher, backend=backend, **kwargs)
        if launcher != 'pytorch':
            from msrasr_arch.utils.errors import UserError
            raise UserError(f'--launcher {launcher} needs GPUs; on CPU use torchrun with --launcher pytorch')
        import torch.distributed as dist
        import torch.multiprocessing as mp

        # Keep BasicSR's start method so dataloader workers behave as they do on GPU.
        if mp.get_start_method(allow_none=True) is None:
            mp.set_start_method('spawn')
        if not dist.is_initialized():
            dist.init_process_group(backend='gloo', **kwargs)

    init_dist.__wrapped__ = original
    return init_dist


def apply():
    """Install the fixes into BasicSR's modules (idempotent)."""
    import msrasr_arch._compat  # noqa: F401  (the torchvision shim must precede basicsr)
    import basicsr.train
    import basicsr.utils.options

    if getattr(basicsr.train, _APPLIED_FLAG, False):
        return
    basicsr.train.load_resume_state = load_resume_state
    basicsr.utils.options.init_dist = make_init_dist(basicsr.utils.options.init_dist)
    setattr(basicsr.train, _APPLIED_FLAG, True)
