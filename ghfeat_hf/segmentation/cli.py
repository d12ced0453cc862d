"""``ghfeat segment <operation>`` and ``ghfeat evaluate segmentation``: argument parsing over the segmentation
library.

    ghfeat segment export-silhouettes --per-class 1 -o fmnist-few       # images/, masks/, labels.json
    ghfeat segment fit --images fmnist-few/images --masks fmnist-few/masks --labels fmnist-few/labels.json \\
        --out fmnist-head
    ghfeat segment fit --images user/parts --split train --mask-column label --labels labels.json --out head
    ghfeat segment predict --head fmnist-head a.png b.png -o segmented/   # <stem>_mask.png, _overlay.png, _labels.png
    ghfeat evaluate segmentation --dataset fashion-mnist --shots 1 5 10 --draws 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import PIL.Image

from ..arguments import MODEL_HELP, int_at_least
from ..data import FASHION_MNIST_NAMES
from ..errors import UsageError
from ..extraction import file_sources
from ..image_io import to_pil_image
from ..runtime import load_model, resolve_device
from .data import SegmentationData, dataset_data, folder_data, silhouette_data
from .features import GHFeatSpatialFeatures, PixelPositionFeatures, random_init_spatial_model
from .head import FitSettings, load_head, save_head
from .labels import LabelSet, colorize, load_label_set, overlay, save_label_set, silhouette_labels
from .segmenter import DEFAULT_PIXELS_PER_IMAGE, features_from_settings, fit_segmenter, predict_masks

SEGMENTATION_BASELINES = ("pixels", "random-init", "pyramid")


def add_head_arguments(parser: argparse.ArgumentParser) -> None:
    """The spatial features and the head: layers, pyramid, refinement, head shape and fitting."""
    parser.add_argument("--layers", default="all",
                        help="synthesis layers read: all, coarse, middle, fine, 0-3,6 or none (default: all)")
    parser.add_argument("--pyramid", action="store_true", help="add the encoder's FPN levels to the synthesis maps")
    parser.add_argument("--refine-steps", type=int_at_least(0), default=0,
                        help="inversion refinement steps on each image's codes before synthesis (default: 0)")
    parser.add_argument("--hidden", type=int_at_least(0), default=0,
                        help="hidden units of an MLP head; 0 for a linear head (default: 0)")
    parser.add_argument("--members", type=int_at_least(1), default=1, help="ensemble members (default: 1)")
    parser.add_argument("--steps", type=int_at_least(1), default=200, help="AdamW steps of the fit (default: 200)")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="AdamW learning rate (default: 0.01)")
    parser.add_argument("--pixels-per-image", type=int_at_least(1), default=DEFAULT_PIXELS_PER_IMAGE,
                        help=f"pixels sampled per annotated image (default: {DEFAULT_PIXELS_PER_IMAGE})")


def _settings(args: argparse.Namespace) -> FitSettings:
    return FitSettings(steps=args.steps, learning_rate=args.learning_rate, seed=args.seed)


def _labels(args: argparse.Namespace, silhouettes: bool) -> LabelSet:
    if args.labels:
        return load_label_set(args.labels)
    if silhouettes:
        return silhouette_labels()
    raise UsageError("pass the label set with --labels labels.json ({\"names\": [...], \"palette\": [...]}).")


def _is_fashion_mnist(source: str) -> bool:
    return str(source).lower() in FASHION_MNIST_NAMES


def _dataset_split(args: argparse.Namespace, split: str, labels: LabelSet, size: int,
                   max_images: int | None) -> SegmentationData:
    """A split of `--dataset` / `--images`: the Fashion-MNIST silhouettes or a `datasets` image + mask column."""
    source = getattr(args, "dataset", None) or args.images
    if _is_fashion_mnist(source):
        return silhouette_data(split, size, max_images)
    from ..data import load_image_dataset

    try:
        dataset = load_image_dataset(source, split=split, image_column=args.image_column)
    except (OSError, ValueError, KeyError, ConnectionError) as error:
        raise UsageError(f"could not load split {split!r} of {source!r}: {error}") from error
    if max_images is not None:
        dataset = dataset.select(range(min(max_images, len(dataset))))
    return dataset_data(dataset, labels, size, image_column=args.image_column, mask_column=args.mask_column,
                        class_column=getattr(args, "class_column", None))


def _run_fit(args: argparse.Namespace) -> int:
    model, processor = load_model(args.model, device=args.device)
    extractor = GHFeatSpatialFeatures(model, processor, layers=args.layers, pyramid=args.pyramid,
                                      refine_steps=args.refine_steps)
    silhouettes = args.masks is None and _is_fashion_mnist(args.images)
    labels = _labels(args, silhouettes)
    if args.masks is not None:
        data, _ = folder_data(args.images, args.masks, labels, extractor.size)
    else:
        data = _dataset_split(args, args.split, labels, extractor.size, args.max_images)
    head = fit_segmenter(extractor, data.images, data.masks, labels, hidden=args.hidden, members=args.members,
                         settings=_settings(args), pixels_per_image=args.pixels_per_image, batch_size=args.batch_size)
    save_head(head, args.out)
    print(f"fitted a {'linear' if not args.hidden else f'{args.hidden}-unit MLP'} head on {len(data.images)} annotated "
          f"images ({len(labels.names)} labels): {args.out}")
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    head = load_head(args.head)
    settings = head.config.features
    model = processor = None
    if settings.get("kind") == GHFeatSpatialFeatures.kind:
        model, processor = load_model(args.model or settings.get("model") or None, device=args.device)
    extractor = features_from_settings(settings, model, processor)
    items = file_sources(args.inputs).items()
    images, names = [], []
    for item in items:
        try:
            images.append(to_pil_image(item.payload))
        except (OSError, ValueError) as error:
            raise UsageError(f"cannot read {item.id}: {error}") from error
        names.append(Path(item.id).stem)
    if not images:
        raise UsageError("no input images.")
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    palette = head.config.palette or LabelSet.from_names(head.config.names).palette
    done = 0
    for batch in predict_masks(extractor, head, images, batch_size=args.batch_size, progress=not args.no_progress):
        for mask in batch.numpy():
            image, name = images[done], names[done]
            full = np.asarray(PIL.Image.fromarray(mask.astype(np.int32)).resize(image.size, PIL.Image.Resampling.NEAREST))
            PIL.Image.fromarray(full.astype(np.uint8 if len(head.config.names) < 256 else np.int32)).save(
                output / f"{name}_labels.png")
            colorize(full, palette).save(output / f"{name}_mask.png")
            overlay(image, full, palette).save(output / f"{name}_overlay.png")
            done += 1
    print(f"segmented {done} images into {output} (<name>_labels.png, _mask.png, _overlay.png)")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    data = silhouette_data(args.split)
    rng = np.random.default_rng(args.seed)
    chosen = np.concatenate([rng.choice(np.flatnonzero(data.classes == label), args.per_class, replace=False)
                             for label in np.unique(data.classes)])
    output = Path(args.output_dir)
    (output / "images").mkdir(parents=True, exist_ok=True)
    (output / "masks").mkdir(parents=True, exist_ok=True)
    for index in sorted(chosen.tolist()):
        data.images[index].save(output / "images" / f"{args.split}-{index:05d}.png")
        PIL.Image.fromarray(data.masks[index].astype(np.uint8)).save(output / "masks" / f"{args.split}-{index:05d}.png")
    save_label_set(silhouette_labels(), output / "labels.json")
    print(f"wrote {len(chosen)} images, their silhouette masks and labels.json into {output}")
    return 0


def add_segment_parser(subparsers) -> None:
    """Register ``ghfeat segment`` and its operations on the main parser's subparsers."""
    parser = subparsers.add_parser(
        "segment", help="few-shot semantic segmentation with spatial GH-Feat: fit a head, predict label maps",
        description="Fit a per-pixel head on a few annotated images over the spatial features of a GH-Feat model (its "
                    "synthesis maps driven by each image's codes), then label new images.",
        epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    operations = parser.add_subparsers(dest="operation", title="operations", metavar="<operation>", required=True)

    fit = operations.add_parser("fit", help="fit a head on annotated images")
    fit.add_argument("--images", required=True,
                     help="a folder of images (with --masks), fashion-mnist or a datasets source (with --mask-column)")
    fit.add_argument("--masks", help="a folder of PNG label masks named as the images (<stem>.png)")
    fit.add_argument("--labels", help="label set JSON: {\"names\": [...], \"palette\": [[r, g, b], ...]} or a list")
    fit.add_argument("--split", default="train", help="dataset split (default: train)")
    fit.add_argument("--image-column", default="image", help="dataset image column (default: image)")
    fit.add_argument("--mask-column", default="label", help="dataset mask column (default: label)")
    fit.add_argument("--max-images", type=int_at_least(1), help="the first N images of the dataset only")
    fit.add_argument("--out", required=True, help="head folder (head.safetensors + head_config.json)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the pixel sampling and the head (default: 0)")
    add_head_arguments(fit)
    fit.set_defaults(handler=_run_fit)

    predict = operations.add_parser("predict", help="label images with a fitted head")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, globs or lists")
    predict.add_argument("--head", required=True, help="a head folder written by `ghfeat segment fit`")
    predict.add_argument("-o", "--output-dir", required=True, help="output folder")
    predict.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    predict.set_defaults(handler=_run_predict)

    export = operations.add_parser("export-silhouettes",
                                   help="write Fashion-MNIST images with silhouette masks and labels.json")
    export.add_argument("--split", default="train", choices=["train", "test"], help="split (default: train)")
    export.add_argument("--per-class", type=int_at_least(1), default=1, help="images per class (default: 1)")
    export.add_argument("--seed", type=int, default=0, help="seed of the draw (default: 0)")
    export.add_argument("-o", "--output-dir", required=True, help="output folder")
    export.set_defaults(handler=_run_export)
    for command in (fit, predict):
        command.add_argument("--model", help=MODEL_HELP + " (predict: default the head's)")
        command.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
        command.add_argument("--batch-size", type=int_at_least(1), default=64, help="images per batch (default: 64)")


def add_segmentation_task(tasks, parents) -> None:
    """Register `ghfeat evaluate segmentation` on the evaluate task sub-parsers."""
    task = tasks.add_parser("segmentation", parents=parents,
                            help="few-shot semantic segmentation (mIoU) with spatial features, baselines in the same run")
    task.add_argument("--train-split", default="train", help="split of the annotated images (default: train)")
    task.add_argument("--test-split", default="test", help="test split (default: test)")
    task.add_argument("--max-train-samples", type=int_at_least(1), help="the first N training images only")
    task.add_argument("--max-test-samples", type=int_at_least(1), help="the first N test images only")
    task.add_argument("--mask-column", default="label", help="mask column, label images (default: label)")
    task.add_argument("--class-column", help="image class column: K images per class (default: K images in all)")
    task.add_argument("--labels", help="label set JSON (default for fashion-mnist: background + the 10 classes)")
    task.add_argument("--shots", type=int_at_least(1), nargs="+", default=[1, 5, 10],
                      help="annotated images per class (or in all) (default: 1 5 10)")
    task.add_argument("--draws", type=int_at_least(2), default=5, help="random draws per K (default: 5)")
    task.add_argument("--baselines", nargs="*", default=list(SEGMENTATION_BASELINES), choices=SEGMENTATION_BASELINES,
                      help="pixels (raw pixels + position), random-init (random encoder and generator), pyramid "
                           "(encoder FPN levels alone) (default: all)")
    task.add_argument("--figure-count", type=int_at_least(0), default=6, help="test images in the figure (default: 6)")
    add_head_arguments(task)


def _ranges(layers: list[int]) -> str:
    """`[0, 1, 2, 5]` -> `"0-2,5"`."""
    parts, start = [], 0
    for index in range(1, len(layers) + 1):
        if index == len(layers) or layers[index] != layers[index - 1] + 1:
            first, last = layers[start], layers[index - 1]
            parts.append(str(first) if first == last else f"{first}-{last}")
            start = index
    return ",".join(parts)


def run_segmentation_task(args: argparse.Namespace, model_path: str):
    """`ghfeat evaluate segmentation`: spatial GH-Feat and its baselines; returns the report."""
    from ..evaluation.segmentation import SegmentationMethod, evaluate_segmentation

    device = resolve_device(args.device)
    model, processor = load_model(model_path, device=device)
    main = GHFeatSpatialFeatures(model, processor, layers=args.layers, pyramid=True, refine_steps=args.refine_steps,
                                 dtype=args.dtype)
    synthesis = list(range(len(main.layers)))
    pyramid = [len(synthesis) + level for level in range(3)]
    described = f"synthesis {_ranges(main.layers)}" if main.layers else ""
    methods = [SegmentationMethod("spatial GH-Feat", main, synthesis + (pyramid if args.pyramid else []) or None,
                                  described + (" + pyramid" if args.pyramid else ""))]
    if "pixels" in args.baselines:
        mode = "L" if model.config.num_channels == 1 else "RGB"
        methods.append(SegmentationMethod("raw pixels + position", PixelPositionFeatures(main.size, mode), None,
                                          "pixels, x, y, 4 sin/cos pairs"))
    if "random-init" in args.baselines:
        random_model = random_init_spatial_model(model, args.seed).to(device)
        methods.append(SegmentationMethod("random init (encoder + generator)", GHFeatSpatialFeatures(
            random_model, processor, layers=args.layers, dtype=args.dtype), None, described))
    if "pyramid" in args.baselines:
        methods.append(SegmentationMethod("encoder pyramid alone", main, pyramid, "FPN p4, p5, p6"))
    labels = _labels(args, _is_fashion_mnist(args.dataset))
    train = _dataset_split(args, args.train_split, labels, main.size, args.max_train_samples)
    test = _dataset_split(args, args.test_split, labels, main.size, args.max_test_samples)
    figure = Path(args.output_dir) / "segmentation_grid.png" if args.figure_count else None
    name = "fashion-mnist silhouettes" if _is_fashion_mnist(args.dataset) else args.dataset
    data_info = {"name": name, "splits": {role: {"split": split, "num_rows": len(data.images)} for role, split, data in
                                          (("train", args.train_split, train), ("test", args.test_split, test))}}
    return evaluate_segmentation(methods, train, test, labels, shots=args.shots, draws=args.draws, hidden=args.hidden,
                                 members=args.members, pixels_per_image=args.pixels_per_image,
                                 settings=_settings(args), batch_size=args.batch_size, progress=not args.no_progress,
                                 figure_path=figure, figure_count=args.figure_count, data_info=data_info)


__all__ = ["SEGMENTATION_BASELINES", "add_head_arguments", "add_segment_parser", "add_segmentation_task",
           "run_segmentation_task"]
