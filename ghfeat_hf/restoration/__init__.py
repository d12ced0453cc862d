"""Image restoration with GH-Feat: inpainting, super-resolution, denoising and colorization through the generator
(the library behind ``ghfeat restore``).

A restoration starts from the encoder's codes of the degraded image and optimises them so that the degraded
rendering ``A(G(codes))`` matches the observation; the result is ``G(codes)`` (with the known pixels kept for
inpainting):

* [`degradations`]: the operators ``A`` ([`Mask`], [`Downsample`], [`Noise`], [`Grayscale`]), their observations,
  classical baselines and mask generators;
* [`restore`]: the encoder or average-code start, the optimisation, the Gaussian code prior.
"""

from .degradations import (
    DOWNSAMPLE_FACTORS,
    DOWNSAMPLE_MODES,
    NOISE_KINDS,
    Degradation,
    Downsample,
    Grayscale,
    Mask,
    Noise,
    centered_box_mask,
    random_box_masks,
    random_stroke_masks,
)
from .restore import (
    DEFAULT_LEARNING_RATE,
    STARTS,
    CodePrior,
    RestorationResult,
    average_style_codes,
    code_prior,
    encoder_start,
    restore,
)

__all__ = [
    "DEFAULT_LEARNING_RATE",
    "DOWNSAMPLE_FACTORS",
    "DOWNSAMPLE_MODES",
    "NOISE_KINDS",
    "STARTS",
    "CodePrior",
    "Degradation",
    "Downsample",
    "Grayscale",
    "Mask",
    "Noise",
    "RestorationResult",
    "average_style_codes",
    "centered_box_mask",
    "code_prior",
    "encoder_start",
    "random_box_masks",
    "random_stroke_masks",
    "restore",
]
