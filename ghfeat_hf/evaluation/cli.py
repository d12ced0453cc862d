"""`ghfeat evaluate <task>`: argument parsing over the evaluation tasks.

    ghfeat evaluate classification --model M --dataset fashion-mnist [--baselines pixels random-init timm:resnet50]
    ghfeat evaluate retrieval --model M --dataset D --split test [--layers all coarse middle fine]
    ghfeat evaluate verification --model M --dataset pairs/ --image-columns image_a image_b --same-column same
    ghfeat evaluate landmarks --model M --dataset D --train-split train --test-split test
    ghfeat evaluate reconstruction --model M --dataset D --split test [--grid-count 4]
    ghfeat evaluate style-mixing --model M --dataset fashion-mnist --split test [--num-pairs 1000]
    ghfeat evaluate generation --model M --dataset fashion-mnist --split test [--generators DIR ...]
    ghfeat evaluate restoration --model M --dataset fashion-mnist --split test --task inpaint superres [--steps 50]
    ghfeat evaluate segmentation --model M --dataset fashion-mnist --shots 1 5 10 [--draws 5]

Each run writes `<output-dir>/<task>.json` and `<task>.md` (plus `reconstruction_grid.png` or
`style_mixing_grid.png`, `segmentation_grid.png`) and prints the table. `style-mixing` and `generation` are judged by a domain classifier
(`--classifier`; the shipped Fashion-MNIST one by default for fashion-mnist).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..arguments import MODEL_HELP, int_at_least, int_in_range
from ..editing.inversion import MAX_REFINEMENT_STEPS
from ..embedded import PRETRAINED_DIR
from ..errors import UsageError
from ..evaluation_report import EvaluationReport
from ..image_io import to_pil_image
from ..modeling_stylegan import StyleGANGenerator
from ..restoration.degradations import DOWNSAMPLE_FACTORS
from ..restoration.restore import DEFAULT_LEARNING_RATE
from ..runtime import GENERATOR_SUBFOLDER, load_generator, load_model, resolve_device, resolve_dtype, resolve_model_path
from ..segmentation.cli import add_segmentation_task, run_segmentation_task
from .classification import evaluate_classification
from .domain_classifier import DEFAULT_CLASSIFIER, load_domain_classifier
from .extractors import GHFeatExtractor, build_baselines
from .features import ExtractionOptions
from .generation import evaluate_generation
from .hierarchy import DEFAULT_GROUPS, evaluate_style_mixing
from .landmarks import evaluate_landmarks
from .probes import DEFAULT_C_GRID
from .reconstruction_quality import evaluate_reconstruction
from .restoration import evaluate_restoration
from .retrieval import evaluate_retrieval
from .splits import load_split, subsample
from .verification import DEFAULT_LAYER_GROUPS, evaluate_verification

DEFAULT_BASELINES = {"reconstruction": ["random-init"]}
JUDGED_TASKS = ("style-mixing", "generation")
RESTORATION_TASKS = ("inpaint", "superres", "denoise", "colorize")
FEATURE_BASELINES = ["pixels", "random-init"]


def _run_arguments() -> argparse.ArgumentParser:
    """The options of every task: model, data, device, output."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--dataset", required=True,
                        help="fashion-mnist, a datasets Hub name, an image folder or a save_to_disk folder")
    parser.add_argument("--dataset-config", help="dataset configuration name (Hub datasets)")
    parser.add_argument("--image-column", default="image", help="column holding the images (default: image)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, mps, ...")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="compute dtype (autocast)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=64, help="images per batch (default: 64)")
    parser.add_argument("-o", "--output-dir", default="ghfeat-eval", help="report folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of subsets, splits, pairs, samples and baselines")
    parser.add_argument("--update-model-card", action="store_true",
                        help="store the report in the (local) model directory and render its model card again")
    parser.add_argument("--replace-larger-report", action="store_true",
                        help="with --update-model-card, replace the card's results even when they were measured on "
                             "more data than this run")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    return parser


def _feature_arguments() -> argparse.ArgumentParser:
    """The options of the feature tasks: layer groups, baselines, the feature cache."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--layers", nargs="+", metavar="GROUP",
                        help="layer groups evaluated separately: all, coarse, middle, fine or selections such as 0-3,8 "
                             "(default: all; verification: all coarse middle fine)")
    parser.add_argument("--baselines", nargs="*", metavar="BASELINE",
                        help="pixels[:SIZE], random-init, timm:<model>[@random|@<weights file>], ghfeat:[LABEL=]<model> "
                             "(another GH-Feat model, e.g. a previous version); none with an empty list (default: "
                             "pixels random-init; reconstruction: random-init)")
    parser.add_argument("--cache-dir", help="feature cache folder (default: <HF datasets cache>/ghfeat_evaluation)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached features")
    return parser


def _add_classifier(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classifier", help="the judging DomainClassifier: a shipped name or a save_pretrained "
                        f"folder (default for fashion-mnist: {DEFAULT_CLASSIFIER}; train one with "
                        "training/train_classifier.py)")


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
        help="evaluate a GH-Feat model (reconstruction, classification, retrieval, verification, landmarks, style "
             "mixing, generation) with baselines in the same run",
        description="Evaluate a GH-Feat model on a datasets source, with baselines (raw pixels, a random-init "
                    "encoder, timm models) through the same pipeline. Features are extracted once per model and "
                    "dataset and cached. Writes a JSON report and a Markdown table.",
    )
    tasks = parser.add_subparsers(dest="task", title="tasks", metavar="<task>", required=True)
    run_options = _run_arguments()
    common = [run_options, _feature_arguments()]

    task = tasks.add_parser("reconstruction", parents=common, help="MSE, PSNR, SSIM and a worst / best grid")
    _add_splits(task, two_splits=False)
    task.add_argument("--grid-count", type=int, default=4, help="worst and best images in the grid (default: 4)")

    task = tasks.add_parser("classification", parents=common, help="linear probe and k-NN accuracy")
    _add_splits(task, two_splits=True)
    task.add_argument("--validation-split", help="split choosing the probe's C (default: 10%% of the training split)")
    task.add_argument("--label-column", default="label", help="label column (default: label)")
    task.add_argument("--k", type=int, default=10, help="neighbours of the k-NN classifier (default: 10)")
    task.add_argument("--c-grid", type=float, nargs="+", default=list(DEFAULT_C_GRID), help="probe C candidates")
    task.add_argument("--validation-fraction", type=float, default=0.1, help="held-out share for C (default: 0.1)")
    task.add_argument("--max-iter", type=int, default=1000, help="lbfgs iterations per probe fit (default: 1000)")

    task = tasks.add_parser("retrieval", parents=common, help="mAP and recall@k with cosine similarity")
    _add_splits(task, two_splits=False)
    task.add_argument("--gallery-split", help="gallery split (default: queries and gallery from --split by label)")
    task.add_argument("--label-column", default="label", help="label column (default: label)")
    task.add_argument("--query-fraction", type=float, default=0.2, help="share of each class used as queries")
    task.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10], help="k of recall@k (default: 1 5 10)")

    task = tasks.add_parser("verification", parents=common, help="LFW-style 10-fold pair verification accuracy")
    _add_splits(task, two_splits=False)
    task.add_argument("--image-columns", nargs=2, default=["image_a", "image_b"], metavar=("A", "B"),
                      help="the two image columns (default: image_a image_b)")
    task.add_argument("--same-column", default="same", help="boolean column, same identity (default: same)")
    task.add_argument("--fold-column", help="column of fold ids (default: folds assigned in dataset order)")
    task.add_argument("--num-folds", type=int, default=10, help="folds when none are given (default: 10)")

    task = tasks.add_parser("landmarks", parents=common, help="linear keypoint regression, normalised mean error")
    _add_splits(task, two_splits=True)
    task.add_argument("--keypoints-column", help="column of [K, 2] keypoints (default: <name>_x / <name>_y columns)")
    task.add_argument("--keypoint-names", help="comma-separated names of the keypoints column's points (without "
                      "--keypoints-column: the <name>_x / <name>_y pairs to use; default: all of them)")

    task = tasks.add_parser("style-mixing", parents=[run_options],
                            help="class transfer when A takes one layer group of B, judged by a domain classifier "
                                 "(also between the generator's own samples when the model folder has its generator)")
    _add_splits(task, two_splits=False)
    _add_classifier(task)
    task.add_argument("--label-column", default="label", help="label column (default: label)")
    task.add_argument("--layers", nargs="+", metavar="GROUP", default=list(DEFAULT_GROUPS),
                      help="layer groups taken from B (default: coarse middle fine)")
    task.add_argument("--num-pairs", type=int_at_least(1), default=1000, help="image pairs (default: 1000)")
    task.add_argument("--grid-pairs", type=int_at_least(0), default=6, help="pairs in the picture (default: 6)")

    task = tasks.add_parser("generation", parents=[run_options],
                            help="FD of StyleGAN samples vs real images in a domain classifier's feature space")
    _add_splits(task, two_splits=False)
    _add_classifier(task)
    task.add_argument("--generators", nargs="*", default=[], metavar="[NAME=]DIR",
                      help="StyleGAN generator folders compared with the model's own (<model>/stylegan-generator), "
                           "each row named NAME (default: the folder)")
    task.add_argument("--real-split", default="train",
                      help="real images of this split as the floor row; 'none' for no row (default: train)")
    task.add_argument("--num-images", type=int_at_least(2), default=10000,
                      help="samples per generator and real baseline images (default: 10000)")
    task.add_argument("--truncation-psi", type=float, default=1.0, help="truncation of the samples (default: 1.0)")

    task = tasks.add_parser("restoration", parents=[run_options],
                            help="inpainting / super-resolution / denoising PSNR and SSIM against classical methods, "
                                 "the encoder alone and the average-code start")
    _add_splits(task, two_splits=False)
    task.add_argument("--task", nargs="+", dest="restoration_tasks", choices=RESTORATION_TASKS,
                      default=["inpaint", "superres"], help="degradations (default: inpaint superres)")
    task.add_argument("--hole", type=int, default=12, help="inpaint: side of the centred hole (default: 12)")
    task.add_argument("--factor", type=int, choices=DOWNSAMPLE_FACTORS, default=4, help="superres (default: 4)")
    task.add_argument("--sigma", type=float, default=0.1, help="denoise: Gaussian sigma on [0, 1] (default: 0.1)")
    task.add_argument("--steps", type=int_in_range(1, MAX_REFINEMENT_STEPS), default=50,
                      help="optimisation steps of both starts (default: 50)")
    task.add_argument("--lr", type=float, default=DEFAULT_LEARNING_RATE,
                      help=f"Adam learning rate (default: {DEFAULT_LEARNING_RATE:g})")
    task.add_argument("--prior-weight", type=float, default=0.0,
                      help="weight of the Gaussian code prior (default: 0 = none)")
    task.add_argument("--curve-steps", type=int, nargs="+", default=[5, 10, 20, 30, 40],
                      help="steps at which the PSNR of both starts is recorded (default: 5 10 20 30 40)")

    add_segmentation_task(tasks, [run_options])
    parser.set_defaults(handler=run_evaluate)


def _load(args: argparse.Namespace, split: str, max_samples: int | None = None, image_column: str | None = None):
    dataset = load_split(args.dataset, split, image_column=image_column or args.image_column,
                         config_name=args.dataset_config)
    return subsample(dataset, max_samples, args.seed)


def _load_data(args: argparse.Namespace) -> dict:
    """The task's splits: `train` / `test` for classification and landmarks, else `data`."""
    if args.task in ("classification", "landmarks"):
        splits = {"train": _load(args, args.train_split, args.max_train_samples),
                  "test": _load(args, args.test_split, args.max_test_samples)}
        if splits["train"]._fingerprint == splits["test"]._fingerprint:
            raise UsageError(f"{args.dataset} gives the same data for --train-split {args.train_split} and "
                             f"--test-split {args.test_split} (a single-split dataset?): evaluate on separate splits.")
        return splits
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
    model_path = resolve_model_path(args.model)
    if args.update_model_card:
        _check_card_is_writable(model_path)
    started = time.perf_counter()
    if args.task in JUDGED_TASKS:
        report = _run_judged_task(args, model_path)
    elif args.task == "restoration":
        report = _run_restoration(args, model_path)
    elif args.task == "segmentation":
        report = run_segmentation_task(args, model_path)
    else:
        report = _run_feature_task(args, model_path)
    if report is None:  # a non-main process of a multi-process run
        return 0
    if report.seconds is None:  # a task that does not time itself: the whole run
        report.seconds = time.perf_counter() - started
    report.settings = {key: value for key, value in vars(args).items() if key not in ("handler", "debug", "argv")}
    json_path, markdown_path = report.save(args.output_dir)
    if args.update_model_card:
        from ..model_card import add_evaluation_report, stored_report_conflict

        conflict = stored_report_conflict(model_path, report)
        if conflict and not args.replace_larger_report:
            raise UsageError(f"{conflict}: the card keeps its results (the report is saved in {args.output_dir}); pass "
                             "--replace-larger-report to replace them.")
        print(f"model card: {add_evaluation_report(model_path, report)}")
    print(report.table())
    for note in report.notes:
        print(f"note: {note}")
    print(f"\nreport: {json_path} and {markdown_path}")
    for name, path in report.artifacts.items():
        print(f"{name}: {path}")
    return 0


def _check_card_is_writable(model_path: str) -> None:
    """--update-model-card writes into a local model directory, but never into an installed package."""
    path = Path(model_path).resolve()
    if not path.is_dir():
        raise UsageError("--update-model-card needs a local model directory (--model).")
    if path.is_relative_to(PRETRAINED_DIR.resolve()) and not any(
            (parent / ".git").exists() for parent in PRETRAINED_DIR.resolve().parents):
        raise UsageError(f"{path} is a model of the installed package: copy it (e.g. `cp -r {path} my-model`) and "
                         "update the copy's card.")


def _run_feature_task(args: argparse.Namespace, model_path: str) -> EvaluationReport | None:
    """The feature tasks: extract features of the model and its baselines, run the task."""
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
    sample = to_pil_image(first[0][column]) if len(first) and column in first.column_names else None
    extractors = [GHFeatExtractor(model, processor, device=device, dtype=args.dtype)]
    extractors += build_baselines(baselines, model, processor, sample_image=sample, device=device,
                                  dtype=args.dtype, seed=args.seed)
    return _run_task(args, data, extractors, options)


def _classifier(args: argparse.Namespace):
    if args.classifier:
        return load_domain_classifier(args.classifier)
    if str(args.dataset).lower() in ("fashion-mnist", "fashion_mnist", "zalando-datasets/fashion_mnist"):
        return load_domain_classifier(DEFAULT_CLASSIFIER)
    raise UsageError(f"{args.task} needs --classifier for {args.dataset!r} (a DomainClassifier folder; train one with "
                     "`python training/train_classifier.py --dataset <data> --output_dir <folder>`).")


def _run_judged_task(args: argparse.Namespace, model_path: str) -> EvaluationReport:
    """`style-mixing` and `generation`: tasks judged by a domain classifier."""
    started = time.perf_counter()
    device = resolve_device(args.device)
    classifier = _classifier(args).to(device)
    data = _load(args, args.split, args.max_samples)
    model, processor = load_model(model_path)
    if args.task == "style-mixing":
        extractor = GHFeatExtractor(model, processor, device=device, dtype=args.dtype)
        grid = Path(args.output_dir) / "style_mixing_grid.png" if args.grid_pairs else None
        report = evaluate_style_mixing(extractor, data, classifier, image_column=args.image_column,
                                       label_column=args.label_column, num_pairs=args.num_pairs,
                                       layer_groups=args.layers, batch_size=args.batch_size, seed=args.seed,
                                       grid_path=grid, grid_pairs=args.grid_pairs, dataset_name=args.dataset,
                                       generator=load_generator(model_path))
    else:
        generators = {}
        for spec in [f"{Path(model_path).name}={Path(model_path) / GENERATOR_SUBFOLDER}", *args.generators]:
            name, _, path = spec.rpartition("=") if "=" in spec else (spec, "", spec)
            if not (Path(path) / "config.json").is_file():
                raise UsageError(f"no StyleGAN generator in {path} (expected a folder with config.json).")
            if name in generators:
                raise UsageError(f"two generators are named {name!r}; name them with NAME=DIR.")
            generators[name] = StyleGANGenerator.from_pretrained(path).eval()
        real = {} if args.real_split.lower() == "none" else {
            f"{args.real_split} images": _load(args, args.real_split)}
        report = evaluate_generation(generators, data, classifier, processor, real_baselines=real,
                                     image_column=args.image_column, num_images=args.num_images,
                                     truncation_psi=args.truncation_psi, batch_size=args.batch_size,
                                     dtype=resolve_dtype(args.dtype), seed=args.seed, dataset_name=args.dataset)
    report.seconds = time.perf_counter() - started
    return report


def _run_restoration(args: argparse.Namespace, model_path: str) -> EvaluationReport:
    """`restoration`: degrade the clean images, restore them with every method, measure."""
    from ..restoration import Downsample, Grayscale, Mask, Noise, centered_box_mask, code_prior

    data = _load(args, args.split, args.max_samples)
    model, processor = load_model(model_path, device=args.device)
    resolution = model.config.generator_config.resolution
    build = {"inpaint": lambda: Mask(centered_box_mask(resolution, args.hole)),
             "superres": lambda: Downsample(args.factor), "denoise": lambda: Noise(args.sigma), "colorize": Grayscale}
    generator = load_generator(model_path)
    if generator is not None:
        generator = generator.to(next(model.parameters()).device)
    prior = None
    if args.prior_weight:
        if generator is None:
            raise UsageError("--prior-weight needs the model's StyleGAN generator (stylegan-generator).")
        prior = code_prior(generator, args.prior_weight, seed=args.seed)
    return evaluate_restoration(model, processor, data, [build[task]() for task in args.restoration_tasks],
                                generator=generator, steps=args.steps, learning_rate=args.lr, prior=prior,
                                snapshot_steps=[step for step in args.curve_steps if 0 < step < args.steps],
                                image_column=args.image_column, batch_size=args.batch_size, seed=args.seed,
                                dataset_name=args.dataset, progress=not args.no_progress)


__all__ = ["add_evaluate_parser", "run_evaluate"]
