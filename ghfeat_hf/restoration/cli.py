"""``ghfeat restore <task>``: restore degraded images through the generator.

    ghfeat restore inpaint photo.png --mask hole.png --out restored/          # white in the mask = missing
    ghfeat restore inpaint clean/*.png --degrade --hole 12 --out restored/    # make the holes, compare with the clean
    ghfeat restore superres small.png --factor 4 --out restored/              # a 8x8 image -> 32x32
    ghfeat restore denoise noisy.png --sigma 0.1 --originals clean.png --out restored/
    ghfeat restore colorize gray.png --out restored/                          # colour models only

IMAGES are the degraded observations (at the generator's resolution; for superres, that divided by --factor),
or, with --degrade, clean images degraded here with --seed. Writes ``<name>.png`` per restored image,
``restoration.png`` (degraded | encoder only | refined | original) and, when the originals are known (--degrade or
--originals), ``metrics.json`` with every image's PSNR and SSIM.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..arguments import MODEL_HELP, int_at_least, int_in_range
from ..editing.cli import read_images
from ..editing.codes import resize_images
from ..editing.figures import restoration_figure
from ..editing.harmonization import image_mask
from ..errors import UsageError
from ..evaluation.restoration import ENCODER_ONLY, restoration_metrics
from ..runtime import load_generator, load_model, resolve_model_path
from . import degradations as ops
from .restore import DEFAULT_LEARNING_RATE, code_prior, restore

TASKS = ("inpaint", "superres", "denoise", "colorize")


def _read(inputs: list[str], processor, size: int) -> tuple[list[str], torch.Tensor]:
    """``(names, pixel_values [N, C, size, size])`` of image files, folders or globs (the processor resizes)."""
    names, _, pixel_values = read_images(inputs, processor, size={"height": size, "width": size})
    return names, pixel_values


def _inpaint_mask(args: argparse.Namespace, count: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """``[1 or count, 1, R, R]`` known-pixel masks from --mask, --hole, --random-boxes or --strokes."""
    if args.mask:
        if len(args.mask) not in (1, count):
            raise UsageError(f"give one --mask or one per image: got {len(args.mask)} for {count} images.")
        holes = torch.stack([image_mask(path)[None] for path in args.mask])
        return 1 - (resize_images(holes, resolution) > 0.5).float()
    if args.random_boxes:
        low, _, high = args.random_boxes.partition(",")
        try:
            return ops.random_box_masks(count, resolution, int(low), int(high or low), generator)
        except ValueError:
            raise UsageError(f"--random-boxes takes MIN,MAX sides in pixels, got {args.random_boxes!r}.") from None
    if args.strokes:
        return ops.random_stroke_masks(count, resolution, args.strokes, generator=generator)
    return ops.centered_box_mask(resolution, args.hole)


def _degradation(args: argparse.Namespace, count: int, resolution: int, generator: torch.Generator) -> ops.Degradation:
    if args.task == "inpaint":
        return ops.Mask(_inpaint_mask(args, count, resolution, generator))
    if args.task == "superres":
        return ops.Downsample(args.factor, args.mode)
    if args.task == "denoise":
        return ops.Noise(args.sigma, args.noise, args.amount)
    return ops.Grayscale()


def run_restore(args: argparse.Namespace) -> int:
    """Handler of ``ghfeat restore <task>``: read, (degrade,) restore, write the images, the figure and the
    metrics."""
    model_path = resolve_model_path(args.model)
    model, processor = load_model(model_path, device=args.device)
    resolution, channels = model.config.generator_config.resolution, model.config.num_channels
    generator = torch.Generator().manual_seed(args.seed)
    if args.task == "colorize":
        ops.Grayscale().check_channels(channels)
    probe = ops.Downsample(args.factor, args.mode) if args.task == "superres" else ops.Degradation()
    clean_size = resolution if args.degrade else probe.observation_size(resolution)
    names, pixel_values = _read(args.images, processor, clean_size)
    degradation = _degradation(args, len(names), resolution, generator)
    originals = pixel_values if args.degrade else None
    if args.degrade:
        observation = degradation.degrade(pixel_values, generator)
    elif args.task in ("inpaint", "colorize"):
        observation = degradation(pixel_values)  # the masked pixels (or colour) of the inputs are unknown
    else:
        observation = pixel_values
    if args.originals:
        original_names, originals = _read(args.originals, processor, resolution)
        if len(original_names) != len(names):
            raise UsageError(f"got {len(original_names)} --originals for {len(names)} images.")
    prior = None
    if args.prior_weight:
        companion = load_generator(model_path)
        if companion is None:
            raise UsageError("--prior-weight needs the model's StyleGAN generator (stylegan-generator).")
        prior = code_prior(companion, args.prior_weight, seed=args.seed)
    result = restore(model, observation, degradation, "encoder", steps=args.steps, learning_rate=args.lr,
                     prior=prior, optimize_noise=args.optimize_noise, batch_size=args.batch_size,
                     progress=not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pil = processor.postprocess
    for name, image in zip(names, pil(result.outputs.clamp(-1, 1))):
        image.save(out / f"{name}.png")
    shown = observation if args.task != "denoise" else observation.clamp(-1, 1)
    figure = restoration_figure(pil(shown), pil(result.start_outputs.clamp(-1, 1)), pil(result.outputs.clamp(-1, 1)),
                                None if originals is None else pil(originals), names, degradation.task,
                                args.steps, args.min_cell_size)
    figure.save(out / "restoration.png")
    print(f"saved {len(names)} restored image(s) and the figure restoration.png ({figure.width}x{figure.height}) "
          f"in {out}")
    if originals is not None:
        before = restoration_metrics(result.start_outputs, originals)
        after = restoration_metrics(result.outputs, originals)
        metrics = {"task": degradation.describe(), "steps": args.steps, "images": {
            name: {ENCODER_ONLY: {"psnr": float(before["psnr"][i]), "ssim": float(before["ssim"][i])},
                   "refined": {"psnr": float(after["psnr"][i]), "ssim": float(after["ssim"][i])}}
            for i, name in enumerate(names)}}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        for name, values in metrics["images"].items():
            print(f"{name}: PSNR {values[ENCODER_ONLY]['psnr']:.2f} dB (encoder only) -> "
                  f"{values['refined']['psnr']:.2f} dB (refined)")
        print(f"metrics: {out / 'metrics.json'}")
    return 0


def add_restore_parser(subparsers) -> None:
    """Register ``ghfeat restore`` and its tasks on the main parser's subparsers."""
    parser = subparsers.add_parser(
        "restore", help="restore images through the generator: inpaint, superres, denoise, colorize",
        description="Encode degraded images, optimise their GH-Feat codes so that the degraded rendering matches "
                    "them, and write the restored images with a side-by-side figure.",
        epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", title="tasks", metavar="<task>", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("images", nargs="+", metavar="IMAGES", help="degraded images (files, folders or globs)")
    common.add_argument("--out", required=True, help="output folder")
    common.add_argument("--degrade", action="store_true",
                        help="IMAGES are clean: degrade them here (seeded) and compare the results with them")
    common.add_argument("--originals", nargs="+", metavar="IMAGE", help="the clean images, for the metrics")
    common.add_argument("--steps", type=int_in_range(0, 5000), default=100,
                        help="optimisation steps, 0 = encoder only (default: 100)")
    common.add_argument("--lr", type=float, default=DEFAULT_LEARNING_RATE,
                        help=f"Adam learning rate (default: {DEFAULT_LEARNING_RATE:g})")
    common.add_argument("--prior-weight", type=float, default=0.0,
                        help="weight of a Gaussian prior keeping the codes in the generator's code distribution "
                             "(needs the model's stylegan-generator; default: 0 = none)")
    common.add_argument("--optimize-noise", action="store_true", help="also optimise per-image noise maps")
    common.add_argument("--seed", type=int, default=0, help="seed of --degrade and random masks (default: 0)")
    common.add_argument("--model", help=MODEL_HELP)
    common.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, mps, ...")
    common.add_argument("--batch-size", type=int_at_least(1), default=64, help="images optimised together")
    common.add_argument("--min-cell-size", type=int, default=96, help="figure cell size in pixels (default: 96)")
    common.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    common.set_defaults(handler=run_restore, factor=4, mode="area", sigma=0.1, noise="gaussian", amount=0.1)

    inpaint = tasks.add_parser("inpaint", parents=[common], help="fill missing pixels")
    holes = inpaint.add_mutually_exclusive_group()
    holes.add_argument("--mask", nargs="+", metavar="MASK",
                       help="mask images, white = missing (one, or one per image; resized to the generator)")
    holes.add_argument("--hole", type=int, default=12, help="a centred square hole of this side (default: 12)")
    holes.add_argument("--random-boxes", metavar="MIN,MAX", help="one random rectangular hole per image")
    holes.add_argument("--strokes", type=int_at_least(1), help="this many random brush strokes per image")
    superres = tasks.add_parser("superres", parents=[common], help="upsample low-resolution images")
    superres.add_argument("--factor", type=int, choices=ops.DOWNSAMPLE_FACTORS, default=4, help="(default: 4)")
    superres.add_argument("--mode", choices=ops.DOWNSAMPLE_MODES, default="area",
                          help="how the observation was downsampled (default: area)")
    denoise = tasks.add_parser("denoise", parents=[common], help="remove noise")
    denoise.add_argument("--noise", choices=ops.NOISE_KINDS, default="gaussian", help="(default: gaussian)")
    denoise.add_argument("--sigma", type=float, default=0.1, help="Gaussian sigma on [0, 1] pixels (default: 0.1)")
    denoise.add_argument("--amount", type=float, default=0.1, help="salt-and-pepper fraction (default: 0.1)")
    tasks.add_parser("colorize", parents=[common], help="colour grayscale images (colour models)")


__all__ = ["TASKS", "add_restore_parser", "run_restore"]
