"""Write the bundled demo images: the first two Fashion-MNIST test images of each class, padded to 32x32.

    python training/make_demo_images.py   # -> ghfeat_hf/assets/demo_images/*.png

Fashion-MNIST (Zalando Research) is MIT licensed; the images come from the Debian package dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import PIL.Image

from ghfeat_hf.data import FASHION_MNIST_CLASSES, fashion_mnist_arrays
from ghfeat_hf.demo import DEMO_IMAGES
from ghfeat_hf.error_reporting import run_script


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(DEMO_IMAGES), help="where to write the PNGs")
    parser.add_argument("--per-class", type=int, default=2, help="images per class")
    args = parser.parse_args(argv)
    images, labels = fashion_mnist_arrays("test", pad_to=32)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for label, name in enumerate(FASHION_MNIST_CLASSES):
        slug = name.lower().replace("/", "-").replace(" ", "-")
        for index in (labels == label).nonzero()[0][: args.per_class]:
            PIL.Image.fromarray(images[index], mode="L").save(output / f"test{index:05d}_{slug}.png", optimize=True)
    print(f"wrote {len(list(output.glob('*.png')))} images to {output}")
    return 0


if __name__ == "__main__":
    run_script(main)
