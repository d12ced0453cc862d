"""``ghfeat demo``: what GH-Feat does, on bundled real images, offline, in well under a minute on a CPU.

Writes into the output directory:

* ``reconstruction.png``: input | reconstruction for every bundled image, with PSNR;
* ``style_mixing.png``: each image with its coarse, middle or fine layers taken from a style image;
* ``interpolation.png``: codes interpolated between two images, all layers;
* ``features.parquet``: the GH-Feat features of the images (``datasets.load_dataset("parquet", ...)``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .editing import interpolate_style_codes, mix_style_codes
from .errors import UsageError
from .extraction import extract_features
from .image_io import to_pil_image
from .reconstruction import format_metrics_table, reconstruct_images, reconstruction_grid
from .runtime import layers_by_head, load_model
from .visualization import enlarged_cell_size, make_grid

DEMO_IMAGES = Path(__file__).resolve().parent / "assets" / "demo_images"


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, and the mean reconstruction PSNR (dB)."""

    reconstruction: Path
    style_mixing: Path
    interpolation: Path
    features: Path
    mean_psnr: float
    table: str


def demo_image_paths(directory: str | Path = DEMO_IMAGES, minimum: int = 1) -> list[Path]:
    """The PNG images in `directory` (default: the bundled ones), sorted; a [`UsageError`] when there are fewer
    than `minimum`."""
    paths = sorted(Path(directory).glob("*.png"))
    if len(paths) < minimum:
        raise UsageError(f"the demo needs at least {minimum} PNG images in {os.fspath(directory)!r}, found "
                         f"{len(paths)}.")
    return paths


def _to_pil(images: torch.Tensor, processor) -> list[PIL.Image.Image]:
    return processor.postprocess(images.float().clamp(-1, 1))


def run_demo(
    output_dir: str | Path,
    model: str | Path | None = None,
    images: str | Path = DEMO_IMAGES,
    device: str | None = None,
    interpolation_steps: int = 8,
) -> DemoResult:
    """Run the demo with ``model`` (default: the embedded model) on the PNGs in ``images`` (at least two: the
    interpolation goes from the first to the second)."""
    paths = demo_image_paths(images, minimum=2)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ghfeat, processor = load_model(model, device=device)
    names = [path.stem for path in paths]
    pil_images = [to_pil_image(path) for path in paths]
    device = next(ghfeat.parameters()).device

    result = reconstruct_images(ghfeat, processor, pil_images, device=device)
    reconstruction = output_dir / "reconstruction.png"
    reconstruction_grid(result, names, min_cell_size=96).save(reconstruction)

    pixel_values = processor(pil_images, return_tensors="pt")["pixel_values"].to(device)
    with torch.inference_mode():
        codes = ghfeat.encode(pixel_values)
        contents, style = list(range(min(4, len(paths)))), len(paths) - 1
        style_codes = tuple(code[style : style + 1] for code in codes)
        content_codes = tuple(code[contents] for code in codes)
        groups = layers_by_head(ghfeat.config)
        mixed = {name: _to_pil(ghfeat.decode(mix_style_codes(content_codes, style_codes, layers)), processor)
                 for name, layers in groups.items()}
        path = interpolate_style_codes(
            tuple(code[:1] for code in codes), tuple(code[1:2] for code in codes), interpolation_steps
        )
        strip = _to_pil(torch.cat([ghfeat.decode(step) for step in path]), processor)

    cell = enlarged_cell_size(max(result.inputs[0].size), 96)
    style_image = result.inputs[style]
    rows = [[result.inputs[i], style_image] + [mixed[name][row] for name in groups] for row, i in enumerate(contents)]
    columns = ["content", "style"] + [f"{name} <- style\nlayers {layers[0]}-{layers[-1]}"
                                      for name, layers in groups.items()]
    style_mixing = output_dir / "style_mixing.png"
    make_grid(rows, columns, [names[i] for i in contents], cell_size=cell).save(style_mixing)

    labels = [f"t={t:.2f}" for t in np.linspace(0, 1, interpolation_steps)]
    interpolation = output_dir / "interpolation.png"
    make_grid([[result.inputs[0], *strip, result.inputs[1]]], [names[0], *labels, names[1]],
              cell_size=cell).save(interpolation)

    features = output_dir / "features.parquet"
    extract_features(ghfeat, processor, [str(p) for p in paths], features, device=device, progress=False,
                     overwrite=True)
    mean_psnr = float(np.mean([metric["psnr"] for metric in result.metrics]))
    table = format_metrics_table(names, result.metrics)
    (output_dir / "summary.json").write_text(json.dumps({"mean_psnr": mean_psnr, "images": names}, indent=2) + "\n")
    return DemoResult(reconstruction, style_mixing, interpolation, features, mean_psnr, table)


__all__ = ["DEMO_IMAGES", "DemoResult", "demo_image_paths", "run_demo"]
