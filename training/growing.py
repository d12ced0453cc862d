"""Coarse-to-fine StyleGAN training: a run that starts from a lower-resolution run's networks (``--grow_from``) and
can fade its new resolution in as StyleGAN v1's progressive growing does (``--fade_in_steps``).

The fade-in follows the official "linear" structure for the last resolution step: with ``alpha`` rising linearly
from 0 to 1 over the first ``--fade_in_steps`` steps, the generator renders
``lerp(upscale2d(to_rgb_prev(x_prev)), to_rgb(x), alpha)`` (``x_prev``: the features of the half-resolution block,
``to_rgb_prev``: the previous run's output layer, nearest-neighbour upscaling) and the discriminator reads
``lerp(from_rgb_prev(downscale2d(images)), block_0(from_rgb(images)), alpha)`` into its second block (2x2 average
downscaling). Both previous layers keep training during the fade, as in the official graph. At ``alpha = 0`` the
networks are exactly the previous run's, upscaled; from ``alpha = 1`` on, the previous layers no longer count. The
sample grids and the exported generator are the plain StyleGAN v1 network (the new layers alone), so those written
during the fade show where the new layers are, not what the discriminator sees.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ghfeat_hf import StyleGANDiscriminator, StyleGANGenerator
from ghfeat_hf.layers import LRELU_SLOPE
from ghfeat_hf.modeling_stylegan import StyleGANSynthesis

GENERATOR_DIR = "stylegan-generator"
DISCRIMINATOR_DIR = "stylegan-discriminator"


def _discriminator_key(key: str, shift: int) -> str:
    """A discriminator parameter name with its block index (counted from the input resolution) moved by ``shift``."""
    match = re.match(r"(network\.blocks\.)(\d+)(\..*)", key)
    return f"{match[1]}{int(match[2]) + shift}{match[3]}" if match else key


def _load_previous_run(run_dir: Path, generator: StyleGANGenerator) -> tuple[StyleGANGenerator, StyleGANDiscriminator]:
    small_g = StyleGANGenerator.from_pretrained(run_dir / GENERATOR_DIR)
    small_d = StyleGANDiscriminator.from_pretrained(run_dir / DISCRIMINATOR_DIR)
    small, big = small_g.config, generator.config
    if small.resolution >= big.resolution or small.num_channels != big.num_channels:
        raise ValueError(f"--grow_from needs a lower-resolution run with {big.num_channels} channels; {run_dir} has "
                         f"{small.resolution} px x{small.num_channels}.")
    return small_g, small_d


@torch.no_grad()
def grow_from(generator: StyleGANGenerator, discriminator: StyleGANDiscriminator, run_dir: Path) -> None:
    """Initialise ``generator`` and ``discriminator`` from a lower-resolution run's exports: the mapping, the synthesis
    layers it has (counted from 4x4) and w_avg; the discriminator blocks it has (counted from 4x4) and its 4x4 head;
    every other tensor whose name and shape match."""
    small_g, small_d = _load_previous_run(run_dir, generator)
    shift = int(math.log2(generator.config.resolution)) - int(math.log2(small_g.config.resolution))
    for net, source, rename in ((generator, small_g, lambda key: key),
                                (discriminator, small_d, lambda key: _discriminator_key(key, shift))):
        target = net.state_dict()
        update = {rename(key): value for key, value in source.state_dict().items()
                  if rename(key) in target and target[rename(key)].shape == value.shape}
        net.load_state_dict(update, strict=False)


class FadeInOutput(nn.Module):
    """The generator side of the fade-in: the previous run's output layer and the blend weight ``alpha`` (a 0-d
    buffer the trainer sets every step; 0: the previous run's output upscaled, 1: the new layers alone)."""

    def __init__(self, to_rgb: nn.Module):
        super().__init__()
        self.to_rgb = to_rgb
        self.register_buffer("alpha", torch.zeros(()))

    def forward(self, synthesis: StyleGANSynthesis, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        """Images ``[N, C, R, R]`` of w+ ``[N, L, dlatent]``, blended between the two output layers."""
        layers, x, previous = synthesis.layers, None, None
        for index, (layer, code) in enumerate(zip(layers, synthesis.style_codes(w))):
            if index == len(layers) - 2:  # the half-resolution block's output
                previous = x
            x = layer(x, code, noise_mode)
        upscaled = F.interpolate(self.to_rgb(previous), scale_factor=2, mode="nearest")
        return torch.lerp(upscaled, synthesis.to_rgb(x), self.alpha.to(x.dtype))


class FadeInDiscriminator(nn.Module):
    """The discriminator during the fade-in: ``discriminator`` with the previous run's input layer blended in after
    its first block, weight ``alpha`` (a 0-d buffer, as in [`FadeInOutput`]). Images ``[N, C, R, R]`` -> scores
    ``[N, 1]``."""

    def __init__(self, discriminator: StyleGANDiscriminator, from_rgb: nn.Module):
        super().__init__()
        self.discriminator = discriminator
        self.from_rgb = from_rgb
        self.register_buffer("alpha", torch.zeros(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        network = self.discriminator.network
        x = network.blocks[0](F.leaky_relu(network.from_rgb(images), LRELU_SLOPE))
        previous = F.leaky_relu(self.from_rgb(F.avg_pool2d(images, 2)), LRELU_SLOPE)
        x = torch.lerp(previous, x, self.alpha.to(x.dtype))
        for block in network.blocks[1:]:
            x = block(x)
        return network.score(x)


def fade_in_layers(generator: StyleGANGenerator, run_dir: Path) -> tuple[FadeInOutput, nn.Module]:
    """``(generator side, previous input layer)`` of a fade-in from ``run_dir``, a run at half ``generator``'s
    resolution: its generator's output layer and its discriminator's input layer."""
    small_g, small_d = _load_previous_run(run_dir, generator)
    if 2 * small_g.config.resolution != generator.config.resolution:
        raise ValueError(f"--fade_in_steps fades in one resolution step: {run_dir} is {small_g.config.resolution} px, "
                         f"this run {generator.config.resolution} px; grow through "
                         f"{2 * small_g.config.resolution} px first.")
    return FadeInOutput(small_g.synthesis.to_rgb), small_d.network.from_rgb


def unwrap_discriminator(discriminator: nn.Module) -> StyleGANDiscriminator:
    """The plain discriminator inside a [`FadeInDiscriminator`] (or ``discriminator`` itself)."""
    return discriminator.discriminator if isinstance(discriminator, FadeInDiscriminator) else discriminator


__all__ = ["DISCRIMINATOR_DIR", "GENERATOR_DIR", "FadeInDiscriminator", "FadeInOutput", "fade_in_layers", "grow_from",
           "unwrap_discriminator"]
