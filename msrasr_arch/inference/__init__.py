"""Using trained MSRA-SR networks: load a checkpoint, upscale numpy images, read and write image files.

>>> from msrasr_arch.inference import Upscaler, read_image, write_image
>>> up = Upscaler.from_checkpoint('net_g_latest.pth', tile=256)
>>> write_image('photo_x2.png', up.upscale(read_image('photo.png')))
"""
from msrasr_arch.archs.from_weights import infer_network_options
from msrasr_arch.inference.image_io import read_image, write_image
from msrasr_arch.inference.network import build_network
from msrasr_arch.inference.upscaler import Upscaler

__all__ = ['Upscaler', 'build_network', 'infer_network_options', 'read_image', 'write_image']
