"""The ``ghfeat`` command line: thin argument parsing over library functions.

    ghfeat extract photos/ -o feats.parquet --model ghfeat-ffhq [--layers coarse] [--keep-codes] [--resume]
    ghfeat extract --dataset user/faces --split train --image-column image --streaming -o feats.parquet --model M
    ghfeat extract photos/ -o feats.parquet --num-processes 8   (or: accelerate launch -m ghfeat_hf.cli extract ...)
    ghfeat reconstruct a.jpg b.png --model ghfeat-ffhq -o grid.png
    ghfeat demo [-o ghfeat-demo] [--model M]
    ghfeat convert --pickle ghfeat-encoder-ffhq-256.pkl [--output ghfeat-ffhq] [--overwrite] [--push-to-hub REPO]
    ghfeat evaluate classification --model M --dataset fashion-mnist [--baselines pixels random-init timm:resnet50]
    ghfeat restore inpaint photo.png --mask hole.png --out restored/ [--steps 100]
    ghfeat segment fit --images imgs/ --masks masks/ --labels labels.json --out head; ghfeat segment predict ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .arguments import MODEL_HELP, int_at_least, int_in_range
from .error_reporting import DEBUG_ENV, run_command
from .version import __version__


def _default_num_workers() -> int:
    return min(4, os.cpu_count() or 1)


_positive_int = int_at_least(1)


MAX_CELL_SIZE = 1024
def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, mps, ...")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="compute dtype (autocast); outputs are stored as float32.")


def _add_extract_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="extract GH-Feat vectors of an image collection into a Parquet/Arrow/npy/safetensors file",
        description="Extract GH-Feat vectors, one row per image. Unreadable images are skipped and listed (also in "
                    "the output's metadata, key ghfeat_skipped). The output is written atomically; an interrupted "
                    "run keeps its rows in <output>.partial/ and continues with --resume.",
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image folders (recursive), glob patterns, text lists (.txt/.lst, one path per line) "
                             "or image files")
    parser.add_argument("-o", "--output", required=True,
                        help="output file: .parquet, .arrow (datasets-loadable), .safetensors or .npy")
    _add_model_arguments(parser)
    group = parser.add_argument_group("datasets input")
    group.add_argument("--dataset", help="a datasets Hub name, data folder or save_to_disk folder (instead of INPUT)")
    group.add_argument("--dataset-config", help="dataset configuration name")
    group.add_argument("--split", default="train", help="dataset split (default: train)")
    group.add_argument("--image-column", default="image", help="column holding the images (default: image)")
    group.add_argument("--id-column", help="column used as the row id (default: the row position)")
    group.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="images per model batch (default: 32)")
    parser.add_argument("--num-workers", type=int_at_least(0), default=_default_num_workers(),
                        help="decoding workers (default: %(default)s)")
    parser.add_argument("--layers", help="keep a subset of generator layers: e.g. 0-3,8 or coarse|middle|fine")
    parser.add_argument("--keep-codes", action="store_true", help="also store one style_code_XX column per layer")
    parser.add_argument("--keep-tiled", action="store_true",
                        help="also store the official tiled array, [L_kept, max(style_dims)] per image")
    parser.add_argument("--reconstructions", metavar="DIR", help="also save every reconstruction as a PNG in DIR")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run of the same command (its progress record and parts are "
                             "checked against their checksums; a finished output is read back whole first)")
    parser.add_argument("--fingerprint", choices=["stat", "content"], default="stat",
                        help="how input files are fingerprinted for --resume to find the ones changed since: stat "
                             "(size + mtime, default) or content (sha256; a resume reads the files already done again)")
    parser.add_argument("--on-changed-input", choices=["reencode", "error"], default="reencode",
                        help="what --resume does with input files changed since the interrupted run read them: "
                             "extract them again (default) or stop with an error")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output or discard an interrupted run")
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.add_argument("--max-rows-per-file", type=_positive_int, default=None, metavar="N",
                        help="split a .parquet output into files of at most N rows: OUTPUT becomes a folder holding "
                             "<stem>-00000-of-000NN.parquet, ... in input order (load it with datasets.load_dataset("
                             "'parquet', data_files='OUTPUT/*.parquet')); not for .npy/.safetensors/.arrow")
    parser.add_argument("--num-processes", type=_positive_int, default=1,
                        help="split the work between N processes on this machine, one per GPU (or N CPU processes "
                             "without CUDA), through `accelerate launch`; the same as `accelerate launch "
                             "--num_processes N -m ghfeat_hf.cli extract ...` (default: 1)")
    parser.set_defaults(handler=_run_extract)


def _add_reconstruct_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "reconstruct",
        help="encode and decode images; save an input | reconstruction grid and print MSE/PSNR",
        description="Encode and decode images with a GH-Feat model, print per-image MSE and PSNR (pixels scaled to "
                    "[0, 1], at the model resolution) and save a side-by-side PNG grid.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders, glob patterns or lists")
    parser.add_argument("-o", "--output", default="reconstructions.png", help="grid image (default: %(default)s)")
    _add_model_arguments(parser)
    parser.add_argument("--batch-size", type=_positive_int, default=16, help="images per model batch (default: 16)")
    parser.add_argument("--cell-size", type=int_in_range(8, MAX_CELL_SIZE),
                        help=f"grid cell size in pixels, at most {MAX_CELL_SIZE} (default: the model resolution "
                             "enlarged to at least 128)")
    parser.add_argument("--rows-per-grid", type=_positive_int, default=32,
                        help="images per grid picture; more images give GRID-2.png, GRID-3.png, ... (default: 32)")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    parser.set_defaults(handler=_run_reconstruct)


def _add_demo_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="reconstruct, mix styles and interpolate bundled images; write the pictures and features",
        description="Run GH-Feat on the bundled real test images, offline: an input | reconstruction grid, a "
                    "style-mixing grid (coarse/middle/fine layers from a second image), an interpolation strip "
                    "and the features as a Parquet file loadable with datasets.",
    )
    parser.add_argument("-o", "--output-dir", default="ghfeat-demo", help="output folder (default: %(default)s)")
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, ...")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(args.output_dir, model=args.model, device=args.device)
    print(result.table)
    print(f"\nmean reconstruction PSNR: {result.mean_psnr:.2f} dB")
    for label, path in (("input | reconstruction", result.reconstruction), ("style mixing", result.style_mixing),
                        ("interpolation", result.interpolation), ("features (parquet)", result.features)):
        print(f"{label:>24}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghfeat",
        description="GH-Feat (Generative Hierarchical Features) for PyTorch, transformers and timm.",
    )
    parser.add_argument("--version", action="version", version=f"ghfeat-hf {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error instead of one line (also: {DEBUG_ENV}=1)")
    subparsers = parser.add_subparsers(dest="command", title="commands", metavar="<command>")
    _add_extract_parser(subparsers)
    _add_reconstruct_parser(subparsers)
    _add_demo_parser(subparsers)
    from .conversion.command import add_convert_parser

    add_convert_parser(subparsers)
    from .editing.cli import add_edit_parser

    add_edit_parser(subparsers)
    from .segmentation.cli import add_segment_parser

    add_segment_parser(subparsers)
    from .evaluation.cli import add_evaluate_parser

    add_evaluate_parser(subparsers)
    from .restoration.cli import add_restore_parser

    add_restore_parser(subparsers)
    return parser


def _launch_extract(args: argparse.Namespace) -> int:
    """Run this `ghfeat extract` command again under `accelerate launch` with `--num-processes` processes (on the
    CPU, with gloo, when there is no CUDA or `--device cpu`); the launched processes see `WORLD_SIZE` and run it."""
    import socket
    import subprocess

    import torch

    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(args.num_processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = dict(os.environ)
    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        env["ACCELERATE_USE_CPU"] = "1"
    if args.num_processes > 1:
        with socket.socket() as probe:  # a free port for the processes' rendezvous
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command += ["--multi_gpu", "--main_process_port", str(port)]
    command += ["-m", "ghfeat_hf.cli", *args.argv]
    return subprocess.run(command, env=env, check=False).returncode


def _run_extract(args: argparse.Namespace) -> int:
    from .errors import UsageError
    from .extraction import (
        dataset_source,
        extract_features,
        file_sources,
        output_format,
        partial_path,
        read_partial_progress,
    )
    from .runtime import launched_process_state, load_model, resolve_device, resolve_model_path

    try:
        if args.dataset and args.inputs:
            raise UsageError("pass either INPUT paths or --dataset, not both.")
        if args.resume and args.overwrite:
            raise UsageError("--resume and --overwrite exclude each other.")
        if args.num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return _launch_extract(args)
        fmt = output_format(args.output)
        if fmt == "npy" and (args.keep_codes or args.keep_tiled):
            raise UsageError("a .npy output holds only the compact matrix; use .parquet, .arrow or .safetensors "
                             "with --keep-codes/--keep-tiled.")
        model_path = resolve_model_path(args.model)
        device = resolve_device(args.device)
        if args.dataset:
            source = dataset_source(args.dataset, args.split, args.image_column, args.id_column, args.streaming,
                                    args.dataset_config)
        else:
            source = file_sources(args.inputs)
        model, processor = load_model(model_path)
        result = extract_features(
            model, processor, source, args.output, batch_size=args.batch_size, device=device, dtype=args.dtype,
            num_workers=args.num_workers, layers=args.layers, keep_codes=args.keep_codes,
            keep_tiled=args.keep_tiled, reconstructions_dir=args.reconstructions, resume=args.resume,
            overwrite=args.overwrite, fingerprint=args.fingerprint, on_changed_input=args.on_changed_input,
            progress=not args.no_progress, max_rows_per_file=args.max_rows_per_file,
        )
    except KeyboardInterrupt:
        state = read_partial_progress(args.output) or {"rows": 0, "skipped": []}
        print(f"\ninterrupted: {state['rows']} rows and {len(state['skipped'])} skipped items are saved in "
              f"{partial_path(args.output)}; run the same command with --resume to continue.", file=sys.stderr)
        return 130
    state = launched_process_state()
    if state is not None and not state.is_main_process:
        return 0
    for stats in result.processes:
        print(f"process {stats['process']}: {stats['rows']} rows encoded in {stats['seconds']:.1f} s "
              f"({stats['images_per_second']} images/s), peak RSS {stats['peak_rss_mib']:.0f} MiB")
    resumed = f" ({result.num_resumed} from the interrupted run)" if result.num_resumed else ""
    if result.num_changed:
        resumed += f" ({result.num_changed} changed inputs extracted again)"
    print(f"wrote {result.num_rows} rows to {result.output}{resumed}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable items (also in the output metadata):")
        for item in result.skipped:
            print(f"  {item.id}: {item.error}")
    return 0


def _warn_about_inputs(images, processor, model_path: str) -> None:
    """Say on stderr when inputs are not square (the processor resizes them without keeping the aspect ratio) and
    what the model was trained on (inputs far from that domain reconstruct poorly)."""
    sizes = [image.size for image in images if hasattr(image, "size") and isinstance(image.size, tuple)]
    squashed = sum(1 for width, height in sizes if abs(width / height - 1) > 0.05)
    size = processor.size["height"]
    if squashed:
        print(f"note: {squashed} of {len(images)} images are not square; they are resized to {size}x{size} without "
              "keeping their aspect ratio (crop them first to keep it).", file=sys.stderr)
    provenance = Path(model_path) / "provenance.json"
    if provenance.is_file():
        try:
            domain = json.loads(provenance.read_text(encoding="utf-8")).get("domain")
        except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
            domain = None
        if isinstance(domain, str) and domain:
            print(f"note: the model was trained on {' '.join(domain.split())}; images far from that domain "
                  "reconstruct poorly.", file=sys.stderr)


def _run_reconstruct(args: argparse.Namespace) -> int:
    from .errors import UsageError
    from .extraction import decode_image, file_sources, image_extensions
    from .image_io import open_image
    from .reconstruction import format_metrics_table, reconstruct_images, reconstruction_grid
    from .runtime import load_model, resolve_model_path

    suffix = os.path.splitext(args.output)[1].lower()
    if suffix not in image_extensions():
        raise UsageError(f"unknown image extension {suffix or '(none)'!r} for --output {args.output!r}; "
                         "use .png (or .jpg, .webp, ...).")
    source = file_sources(args.inputs)
    model, processor = load_model(args.model, device=args.device)
    names, images = [], []
    for item in source.items():
        _, error = decode_image(item.payload, processor)
        if error is not None:
            print(f"skipping {item.id}: {error}", file=sys.stderr)
            continue
        names.append(item.id)
        images.append(open_image(item.payload))
    if not images:
        raise UsageError("none of the inputs could be read as an image.")
    _warn_about_inputs(images, processor, resolve_model_path(args.model))
    result = reconstruct_images(model, processor, images, batch_size=args.batch_size, dtype=args.dtype,
                                progress=not args.no_progress)
    print(format_metrics_table(names, result.metrics))
    grid_kwargs = {"cell_size": args.cell_size} if args.cell_size is not None else {}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    stem, suffix = os.path.splitext(args.output)
    for page, start in enumerate(range(0, len(names), args.rows_per_grid), 1):
        rows = slice(start, start + args.rows_per_grid)
        part = type(result)(result.inputs[rows], result.reconstructions[rows], result.metrics[rows])
        grid = reconstruction_grid(part, names[rows], **grid_kwargs)
        path = args.output if page == 1 else f"{stem}-{page}{suffix}"
        grid.save(path)
        print(f"saved the input | reconstruction grid of images {start + 1}-{start + len(names[rows])} "
              f"({grid.width}x{grid.height}) to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `ghfeat` with `argv` (default: the process arguments); returns the exit status. Errors end in one line
    on stderr (see [`ghfeat_hf.error_reporting`])."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 0
    words = ["ghfeat", args.command] + [word for word in (getattr(args, "task", None),
                                                           getattr(args, "operation", None)) if word]
    return run_command(" ".join(words), lambda: args.handler(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
