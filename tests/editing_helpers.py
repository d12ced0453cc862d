"""Shared inputs of the editing tests: real images at the resolution of the tiny model (conftest's ``tiny_model``)."""

import PIL.Image
import torch

from ghfeat_hf import GHFeatImageProcessor
from ghfeat_hf.demo import demo_image_paths


def demo_pixel_values(count: int | None = None, size: int = 32, num_channels: int = 3) -> torch.Tensor:
    """The first ``count`` bundled Fashion-MNIST images as ``pixel_values`` ``[count, num_channels, size, size]``."""
    processor = GHFeatImageProcessor(size={"height": size, "width": size}, num_channels=num_channels)
    images = [PIL.Image.open(path) for path in demo_image_paths()[:count]]
    return processor(images, return_tensors="pt")["pixel_values"]


def brightness_dataset(count: int, seed: int = 1, num_channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Real images at random brightness: ``(pixel_values [count, num_channels, 32, 32], labels [count])``, label =
    brighter than the middle of the range."""
    base = demo_pixel_values(num_channels=num_channels)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, len(base), (count,), generator=generator)
    level = torch.rand(count, generator=generator)
    pixel_values = ((base[index] + 1) / 2 * 0.5 + level.view(-1, 1, 1, 1) * 0.5) * 2 - 1
    return pixel_values, level > 0.5
