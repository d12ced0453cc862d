"""`ghfeat evaluate <task>`: argument parsing over the evaluation tasks.

    ghfeat evaluate classification --model M --dataset fashion-mnist [--baselines pixels random-init timm:resnet50]
    ghfeat evaluate retrieval --model M --dataset D --split test [--layers all coarse middle fine]
    ghfeat evaluate verification --model M --dataset pairs/ --image-columns image_a image_b --same-column same
    ghfeat evaluate landmarks --model M --dataset D --train-split train --test-split test
    ghfeat evaluate reconstruction --model M --dataset D --split test [--grid-count 4]

Each run writes `<output-dir>/<task>.json` and `<task>.md` (plus `reconstruction_grid.png`) and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import int_at_least
from ..extraction import UsageError, load_model, resolve_device, resolve_model_path
from .classification import evaluate_classification
from .data import load_split, subsample
from .extractors import GHFeatExtractor, build_baselines
from .features import ExtractionOptions, as_pil_image
from .landmarks import evaluate_landmarks
from .probes import DEFAULT_C_GRID
from .reconstruction import evaluate_reconstruction
from .report import EvaluationReport
from .retrieval import evaluate_retrieval
from .verification import DEFAULT_LAYER_GROUPS, evaluate_verification

DEFAULT_BASELINES = {"reconstruction": ["random-init"]}
FEATURE_BASELINES = ["pixels", "random-init"]


def _common_arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", help="Hub id or local GH-Feat model directory (default: $GHFEAT_MODEL).")
    parser.add_argument("--dataset", required=True,
                        help="fashion-mnist, a datasets Hub name, an image folder or a save_to_disk folder")
    parser.add_argument("--dataset-config", help="dataset configuration name (Hub datasets)")
    parser.add_argument("--image-column", default="image", help="column holding the images (default: image)")
    parser.add_argument("--layers", nargs="+", metavar="GROUP",
                        help="layer groups evaluated separately: all, coarse, middle, fine or selections such as 0-3,8 "
                             "(default: all; verification: all coarse middle fine)")
    parser.add_argument("--baselines", nargs="*", metavar="BASELINE",
                        help="pixels[:SIZE], random-init, timm:<model>[@random|@<weights file>]; none with an empty "
                             "list (default: pixels random-init; reconstruction: random-init)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, mps, ...")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="compute dtype (autocast)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=64, help="images per extraction batch (default: 64)")
    parser.add_argument("-o", "--output-dir", default="ghfeat-eval", help="report folder (default: %(default)s)")
    parser.add_argument("--cache-dir", help="feature cache folder (default: <HF datasets cache>/ghfeat_evaluation)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached features")
    parser.add_argument("--seed", type=int, default=0, help="seed of subsets, splits and random baselines")
    parser.add_argument("--update-model-card", action="store_true",
                        help="store the report in the (local) model directory and render its model card again")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    return parser


def _add_splits(parser: argparse.ArgumentParser, two_splits: bool, default_split: str = "test") -> None:
    if two_splits:
        parser.add_argument("--train-split", default="train", help="training split (default: train)")
        parser.add_argument("--test-split", default="test", help="test split (default: test)")
        parser.add_argument("--max-train-samples", type=int, help="random subset of the training split (seeded)")
        parser.add_argument("--max-test-samples", type=int, help="random subset of the test split (seeded)")
    else:
        parser.add_argument("--split", default=default_split, help=f"split (default: {default_split})")
        parser.add_argument("--max-samples", type=int, help="random subset of the split (seeded)")


def add_evaluate_parser(subparsers) -> None:
    """Register `ghfeat evaluate` and its task sub-commands on the `ghfeat` sub-parsers."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a GH-Feat model (reconstruction, classification, retrieval, verification, landmarks) with "
             "baselines in the same run",
        description="Evaluate a GH-Feat model on a datasets source, with baselines (raw pixels, a random-init "
                    "encoder, timm models) through the same pipeline. Features are extracted once per model and "
                    "dataset and cached. Writes a JSON report and a Markdown table.",
    )
    tasks = parser.add_subparsers(dest="task", title="tasks", metavar="<task>", required=True)
    common = _common_arguments()

    task = tasks.add_parser("reconstruction", parents=[common], help="MSE, PSNR, SSIM and a worst / best grid")
    _add_splits(task, two_splits=False)
    task.add_argument("--grid-count", type=int, default=4, help="worst and best images in the grid (default: 4)")

    task = tasks.add_parser("classification", parents=[common], help="linear probe and k-NN accuracy")
    _add_splits(task, two_splits=True)
    task.add_argument("--validation-split", help="split choosing the probe's C (default: 10%% of the training split)")
    task.add_argument("--label-column", default="label", help="label column (default: label)")
    task.add_argument("--k", type=int, default=10, help="neighbours of the k-NN classifier (default: 10)")
    task.add_argument("--c-grid", type=float, nargs="+", default=list(DEFAULT_C_GRID), help="probe C candidates")
    task.add_argument("--validation-fraction", type=float, default=0.1, help="held-out share for C (default: 0.1)")
    task.add_argument("--max-iter", type=int, default=1000, help="lbfgs iterations per probe fit (default: 1000)")

    task = tasks.add_parser("retrieval", parents=[common], help="mAP and recall@k with cosine similarity")
    _add_splits(task, two_splits=False)
    task.add_argument("--gallery-split", help="gallery split (default: queries and gallery from --split by label)")
    task.add_argument("--label-column", default="label", help="label column (default: label)")
    task.add_argument("--query-fraction", type=float, default=0.2, help="share of each class used as queries")
    task.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10], help="k of recall@k (default: 1 5 10)")

    task = tasks.add_parser("verification", parents=[common], help="LFW-style 10-fold pair verification accuracy")
    _add_splits(task, two_splits=False)
    task.add_argument("--image-columns", nargs=2, default=["image_a", "image_b"], metavar=("A", "B"),
                      help="the two image columns (default: image_a image_b)")
    task.add_argument("--same-column", default="same", help="boolean column, same identity (default: same)")
    task.add_argument("--fold-column", help="column of fold ids (default: folds assigned in dataset order)")
    task.add_argument("--num-folds", type=int, default=10, help="folds when none are given (default: 10)")

    task = tasks.add_parser("landmarks", parents=[common], help="linear keypoint regression, normalised mean error")
    _add_splits(task, two_splits=True)
    task.add_argument("--keypoints-column", help="column of [K, 2] keypoints (default: <name>_x / <name>_y columns)")
    task.add_argument("--keypoint-names", help="comma-separated names of the keypoints column's points (without "
                      "--keypoints-column: the <name>_x / <name>_y pairs to use; default: all of them)")

    parser.set_defaults(handler=run_evaluate)


def _load(args: argparse.Namespace, split: str, max_samples: int | None = None, image_column: str | None = None):
    dataset = load_split(args.dataset, split, image_column=image_column or args.image_column,
                         config_name=args.dataset_config)
    return subsample(dataset, max_samples, args.seed)


def _load_data(args: argparse.Namespace) -> dict:
    """The task's splits: `train` / `test` for classification and landmarks, else `data`."""
    if args.task in ("classification", "landmarks"):
        return {"train": _load(args, args.train_split, args.max_train_samples),
                "test": _load(args, args.test_split, args.max_test_samples)}
    column = args.image_columns[0] if args.task == "verification" else None
    return {"data": _load(args, args.split, args.max_samples, column)}


def _run_task(args: argparse.Namespace, data: dict, extractors, options: ExtractionOptions) -> EvaluationReport | None:
    common = {"options": options, "dataset_name": args.dataset}
    if args.task == "classification":
        validation = _load(args, args.validation_split) if args.validation_split else None
        return evaluate_classification(
            extractors, data["train"], data["test"], validation=validation, image_column=args.image_column,
            label_column=args.label_column, layer_groups=args.layers, k=args.k, c_grid=args.c_grid,
            validation_fraction=args.validation_fraction, max_iter=args.max_iter, seed=args.seed, **common)
    if args.task == "retrieval":
        if args.gallery_split == args.split:
            raise UsageError(f"--gallery-split {args.gallery_split} is the query split (--split): every query would "
                             "retrieve its own image; pass another split, or no --gallery-split.")
        gallery = _load(args, args.gallery_split) if args.gallery_split else None
        return evaluate_retrieval(extractors, data["data"], gallery=gallery, image_column=args.image_column,
                                  label_column=args.label_column, layer_groups=args.layers, ks=args.ks,
                                  query_fraction=args.query_fraction, seed=args.seed, **common)
    if args.task == "verification":
        return evaluate_verification(extractors, data["data"], image_columns=tuple(args.image_columns),
                                     same_column=args.same_column, fold_column=args.fold_column,
                                     num_folds=args.num_folds, layer_groups=args.layers or DEFAULT_LAYER_GROUPS,
                                     **common)
    if args.task == "landmarks":
        names = [name.strip() for name in args.keypoint_names.split(",")] if args.keypoint_names else None
        return evaluate_landmarks(extractors, data["train"], data["test"], image_column=args.image_column,
                                  keypoints_column=args.keypoints_column, keypoint_names=names,
                                  layer_groups=args.layers, seed=args.seed, **common)
    grid = Path(args.output_dir) / "reconstruction_grid.png"
    return evaluate_reconstruction(extractors, data["data"], image_column=args.image_column, grid_path=grid,
                                   grid_count=args.grid_count, **common)


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of `ghfeat evaluate <task>`: load the model and the data, build the baselines, run the task, write
    the report; returns the exit status."""
    try:
        model_path = resolve_model_path(args.model)
        if args.update_model_card and not Path(model_path).is_dir():
            raise UsageError("--update-model-card needs a local model directory (--model).")
        options = ExtractionOptions(batch_size=args.batch_size, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                                    progress=not args.no_progress)
        state = options.process_state
        device = state.device if state is not None and args.device == "auto" else resolve_device(args.device)
        data = _load_data(args)
        model, processor = load_model(model_path)
        baselines = args.baselines
        if baselines is None:
            baselines = DEFAULT_BASELINES.get(args.task, FEATURE_BASELINES)
        first = next(iter(data.values()))
        column = args.image_columns[0] if args.task == "verification" else args.image_column
        sample = as_pil_image(first[0][column]) if len(first) and column in first.column_names else None
        extractors = [GHFeatExtractor(model, processor, device=device, dtype=args.dtype)]
        extractors += build_baselines(baselines, model, processor, sample_image=sample, device=device,
                                      dtype=args.dtype, seed=args.seed)
        report = _run_task(args, data, extractors, options)
        if report is None:  # a non-main process of a multi-process run
            return 0
        report.settings = {key: value for key, value in vars(args).items() if key != "handler"}
        json_path, markdown_path = report.save(args.output_dir)
        if args.update_model_card:
            from ..model_card import add_evaluation_report

            print(f"model card: {add_evaluation_report(model_path, report)}")
    except UsageError as error:
        print(f"ghfeat evaluate {args.task}: error: {error}", file=sys.stderr)
        return 2
    print(report.table())
    for note in report.notes:
        print(f"note: {note}")
    print(f"\nreport: {json_path} and {markdown_path}")
    if "grid" in report.artifacts:
        print(f"worst / best reconstructions: {report.artifacts['grid']}")
    return 0


__all__ = ["add_evaluate_parser", "run_evaluate"]
