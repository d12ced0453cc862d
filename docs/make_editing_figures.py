"""Make the editing pictures of the README with the ``ghfeat edit`` command line.

    python docs/make_editing_figures.py [--model DIR] [--output-dir editing-figures] [--device auto]
    python docs/make_editing_figures.py --output-dir docs/editing   # the README's pictures, replaced

Runs every ``ghfeat edit`` operation (printing each command) on the bundled Fashion-MNIST test images
(``ghfeat_hf/assets/demo_images``) and writes one picture per operation into the output folder. The two attribute
boundaries ("footwear": sandal, sneaker, ankle boot; "upper-body": T-shirt/top, pullover, coat, shirt) are learned
on Fashion-MNIST training images (``apt-get install -y dataset-fashion-mnist``) and saved next to the pictures.
Without ``--model`` the default model is used.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from ghfeat_hf.cli import main as ghfeat  # noqa: E402
from ghfeat_hf.demo import demo_image_paths  # noqa: E402
from ghfeat_hf.error_reporting import run_script  # noqa: E402

OUTPUT_DIR = Path("editing-figures")  # in the working directory: the committed docs/editing/ only when asked
FOOTWEAR = "5,7,9"  # Fashion-MNIST classes Sandal, Sneaker, Ankle boot
UPPER_BODY = "0,2,4,6"  # T-shirt/top, Pullover, Coat, Shirt


def short_named_images(directory: Path) -> dict[str, Path]:
    """Copy the demo images into ``directory`` as ``<class>.png`` (``pullover-2.png`` for a second pullover), so
    that the grids are labelled with short names."""
    images = {}
    for path in demo_image_paths():
        name = re.sub(r"^test\d+_", "", path.stem)
        count = sum(1 for key in images if key == name or key.startswith(f"{name}-"))
        key = name if count == 0 else f"{name}-{count + 1}"
        images[key] = directory / f"{key}.png"
        shutil.copyfile(path, images[key])
    return images


def operations(images: dict[str, Path], out: Path, max_samples: int, refine_steps: int) -> list[list[str]]:
    """The ``ghfeat edit`` argument lists, one per picture (boundaries before the manipulations using them)."""
    img = {name: str(path) for name, path in images.items()}
    boundary = ["learn-boundary", "--dataset", "fashion-mnist", "--split", "train", "--attribute-column", "label",
                "--max-samples", str(max_samples)]
    return [
        ["mix", "--content", img["ankle-boot"], img["pullover"], img["dress"],
         "--style", img["sneaker"], img["trouser"], img["bag"],
         "--layers", "coarse", "--layers", "middle", "--layers", "fine", "-o", str(out / "mixing.png")],
        ["interpolate", img["t-shirt-top"], img["dress"], img["ankle-boot"], "--steps", "6",
         "--layers", "all", "--layers", "coarse", "--layers", "fine", "-o", str(out / "interpolation.png")],
        ["harmonize", "--base", img["t-shirt-top"], img["trouser"], "--source", img["bag"], img["dress"],
         "--box", "6,16,26,30", "-o", str(out / "harmonization.png")],
        [*boundary, "--positive", FOOTWEAR, "--attribute", "footwear", "-o", str(out / "footwear.safetensors")],
        [*boundary, "--positive", UPPER_BODY, "--attribute", "upper-body", "-o", str(out / "upper-body.safetensors")],
        ["manipulate", img["bag"], img["trouser"], img["dress"], img["sneaker"],
         "--boundary", str(out / "footwear.safetensors"), "--strengths", "-3", "-1.5", "0", "1.5", "3",
         "-o", str(out / "manipulation.png")],
        ["manipulate", img["t-shirt-top"], img["pullover"], img["bag"],
         "--boundary", str(out / "footwear.safetensors"), "--condition", str(out / "upper-body.safetensors"),
         "--strengths", "-3", "-1.5", "0", "1.5", "3", "-o", str(out / "manipulation_conditional.png")],
        ["refine", img["ankle-boot"], img["pullover"], img["bag"], img["shirt"],
         "--refine-steps", str(refine_steps), "-o", str(out / "refinement.png")],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory or Hub id (default: the default model)")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR, help="default: %(default)s")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-samples", type=int, default=5000, help="training images per boundary")
    parser.add_argument("--refine-steps", type=int, default=200)
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    common = ["--device", args.device, *(["--model", args.model] if args.model else [])]
    with tempfile.TemporaryDirectory() as scratch:
        images = short_named_images(Path(scratch))
        for command in operations(images, args.output_dir, args.max_samples, args.refine_steps):
            argv = ["edit", *command, *common]
            print(f"$ ghfeat {shlex.join(argv)}", flush=True)
            code = ghfeat(argv)
            if code:
                return code
    return 0


if __name__ == "__main__":
    run_script(main)
