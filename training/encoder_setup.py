"""What an encoder run is built from, read from ``train_encoder.py``'s flags: the GHFeatModel around the frozen
generator's synthesis, the discriminator to fine-tune, the perceptual network, the training and validation images."""

from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path

import torch

from data_loop import shard_iterable_dataset
from ghfeat_hf import (
    GHFeatConfig,
    GHFeatModel,
    StyleGANDiscriminator,
    StyleGANDiscriminatorConfig,
    StyleGANGenerator,
    StyleGANGeneratorConfig,
)
from ghfeat_hf.data import load_training_images, make_image_dataloader
from ghfeat_hf.perceptual import PerceptualLoss, PerceptualWeightsUnavailable, build_perceptual_loss
from stylegan_trainer import DISCRIMINATOR_DIR, GENERATOR_DIR

# ----------------------------------------------------------------------------------------------------------------
# Networks


def from_pretrained(cls, name: str, **kwargs):
    """``cls.from_pretrained`` of a directory, a Hub id, or ``org/repo/subfolder``."""
    path = Path(name).expanduser()
    if path.exists():
        return cls.from_pretrained(str(path), **kwargs)
    parts = name.split("/")
    if len(parts) > 2:
        return cls.from_pretrained("/".join(parts[:2]), subfolder="/".join(parts[2:]), **kwargs)
    return cls.from_pretrained(name, **kwargs)


def resolve_generator_source(name: str) -> str:
    """``name``, or the ``stylegan-generator`` directory of a ``train_stylegan.py`` run directory."""
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
        model = from_pretrained(GHFeatModel, args.encoder_init)
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


def load_discriminator(source: str | None, g_config: StyleGANGeneratorConfig) -> StyleGANDiscriminator:
    """The discriminator to fine-tune (random weights of the generator's size when ``source`` is None)."""
    if source is not None:
        discriminator = from_pretrained(StyleGANDiscriminator, source)
    else:
        discriminator = StyleGANDiscriminator(StyleGANDiscriminatorConfig(
            resolution=g_config.resolution, num_channels=g_config.num_channels, fmap_base=g_config.fmap_base,
            fmap_decay=g_config.fmap_decay, fmap_max=g_config.fmap_max))
    config = discriminator.config
    if (config.resolution, config.num_channels) != (g_config.resolution, g_config.num_channels):
        raise ValueError(f"The discriminator works on {config.num_channels}x{config.resolution} px images, the "
                         f"generator renders {g_config.num_channels}x{g_config.resolution} px.")
    return discriminator


def build_networks(args: argparse.Namespace):
    """``(model, discriminator, perceptual, generator_source, discriminator_source)`` of an encoder run: the
    perceptual network first (refusing early when no pretrained VGG16 is available), then the GHFeatModel around the
    generator's synthesis (mapping and StyleMod affines are not used) and the discriminator."""
    perceptual = load_perceptual(args)
    generator_source = resolve_generator_source(args.generator)
    discriminator_source = resolve_discriminator_source(args, generator_source)
    generator = from_pretrained(StyleGANGenerator, generator_source)
    model = build_ghfeat_model(args, generator)
    discriminator = load_discriminator(discriminator_source, generator.config)
    return model, discriminator, perceptual, generator_source, discriminator_source


def load_perceptual(args: argparse.Namespace) -> PerceptualLoss | None:
    """The pretrained VGG16 feature loss the flags name, None when ``--perceptual_weight 0`` disables it."""
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


def is_hub_id(name: str) -> bool:
    """Whether ``--dataset`` names a Hub dataset (``org/name``, not a local path)."""
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


def load_validation_images(args: argparse.Namespace, dataset, resolution: int, num_channels: int) -> torch.Tensor | None:
    """The validation images as one ``[N, C, H, W]`` tensor in [-1, 1] (not mirrored), None without a dataset."""
    if dataset is None:
        return None
    loader = make_image_dataloader(dataset, batch_size=64, resolution=resolution, num_channels=num_channels,
                                   image_column=args.image_column, random_flip=False, shuffle=False, drop_last=False)
    images = [batch["pixel_values"] for batch in loader if len(batch["pixel_values"])]
    return torch.cat(images)[: args.num_validation_images] if images else None



def load_dataloader(accelerator, args: argparse.Namespace, train_set, resolution: int, num_channels: int):
    """Batches of ``pixel_values``: decoding, resizing (GHFeatImageProcessor) and mirroring in the workers."""
    if args.streaming:
        train_set = shard_iterable_dataset(train_set.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer), accelerator)
    return make_image_dataloader(
        train_set, args.batch_size, resolution, num_channels=num_channels, image_column=args.image_column,
        random_flip=args.mirror_augment, seed=args.seed, shuffle=True, drop_last=True, num_workers=args.num_workers,
    )
