"""Plain-torch use of the package: the networks, the spandrel architecture and the ComfyUI node load no
BasicSR, OpenCV or SciPy."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = f'''
import sys
import torch
import msrasr_arch.archs
from msrasr_arch.archs import MSRAGANNet
from msrasr_arch.archs.presets import PRESETS
from msrasr_arch.archs.profile import build_on_meta
for name, opt in PRESETS.items():
    build_on_meta(opt)
net = MSRAGANNet(upscale=2, embed_dim=12, depths=[3], num_heads=[2], window_size=8, csa_dim=4, num_feat=8)
with torch.no_grad():
    assert net(torch.rand(1, 3, 9, 7)).shape == (1, 3, 18, 14)

import msrasr_arch.spandrel
from spandrel import ModelLoader
assert ModelLoader().load_from_state_dict(net.state_dict()).scale == 2
sys.path.insert(0, {os.path.join(ROOT, 'integrations')!r})
import comfyui

loaded = sorted(m for m in ('basicsr', 'cv2', 'scipy') if m in sys.modules)
assert not loaded, loaded
'''


def test_networks_spandrel_and_comfyui_node_need_only_torch():
    # The other half, registration once BasicSR is imported: tests/test_arch.py::test_import_order.
    subprocess.run([sys.executable, '-c', SCRIPT], check=True, cwd=ROOT)
