"""Pictures of editing results: labelled PNG grids (one layout per operation) and animated GIFs.

Every function takes PIL images (``processor.postprocess`` of the tensors the operations return) and returns a
PIL image; small images are enlarged by an integer factor (nearest neighbour) until a cell is at least
``min_cell_size`` pixels, so that 32 px images stay sharp and the labels stay readable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import PIL.Image

from ..visualization import enlarged_cell_size, make_grid

Images = Sequence[PIL.Image.Image]


def _grid(rows, column_labels, row_labels=None, min_cell_size: int = 96) -> PIL.Image.Image:
    """``make_grid`` with the cell enlarged from the largest image to at least ``min_cell_size``."""
    size = max(max(image.size) for row in rows for image in row if image is not None)
    return make_grid(rows, column_labels, row_labels, cell_size=enlarged_cell_size(size, min_cell_size))


def mixing_figure(
    contents: Images,
    styles: Images,
    mixed: Mapping[str, Sequence[Images]],
    content_names: Sequence[str],
    style_names: Sequence[str],
    min_cell_size: int = 96,
) -> PIL.Image.Image:
    """Sources x targets: a first row of style images, then one row per content image and layer selection;
    ``mixed[label][i][j]`` is content ``i`` with the ``label`` layers of style ``j``."""
    rows = [[None, *styles]]
    row_labels = ["style ->"]
    for index, (content, name) in enumerate(zip(contents, content_names)):
        for label, images in mixed.items():
            rows.append([content, *images[index]])
            row_labels.append(f"{name}\n{label} <- style")
    return _grid(rows, ["content", *style_names], row_labels, min_cell_size)


def interpolation_figure(
    keyframes: Images,
    keyframe_names: Sequence[str],
    paths: Mapping[str, Images],
    min_cell_size: int = 96,
) -> PIL.Image.Image:
    """A strip per layer selection (``paths[label]``: the decoded path through the keyframes), under a row of the
    input images placed at their keyframe columns."""
    num_frames = len(next(iter(paths.values())))
    segment = (num_frames - 1) // (len(keyframes) - 1)
    columns, inputs = [], []
    for frame in range(num_frames):
        if frame % segment == 0:
            columns.append(keyframe_names[frame // segment])
            inputs.append(keyframes[frame // segment])
        else:
            columns.append(f"t={frame % segment / segment:.2f}")
            inputs.append(None)
    rows = [inputs, *paths.values()]
    return _grid(rows, columns, ["input", *paths.keys()], min_cell_size)


def interpolation_gif_frames(paths: Mapping[str, Images], min_cell_size: int = 96) -> list[PIL.Image.Image]:
    """One labelled frame per interpolation step, the layer selections side by side."""
    return [_grid([list(step)], list(paths.keys()), None, min_cell_size) for step in zip(*paths.values())]


def save_gif(frames: Images, path: str | os.PathLike, duration_ms: int = 120, bounce: bool = True) -> None:
    """An endlessly looping GIF; ``bounce`` plays the frames forward then backward."""
    frames = list(frames)
    if bounce and len(frames) > 2:
        frames = frames + frames[-2:0:-1]
    frames = [frame.convert("RGB") for frame in frames]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0, optimize=False)


def harmonization_figure(
    bases: Images,
    sources: Images,
    pasted: Images,
    harmonized: Images,
    base_reconstructions: Images,
    names: Sequence[str],
    min_cell_size: int = 96,
) -> PIL.Image.Image:
    """One row per pair: base | source | pasted | harmonized | base reconstruction."""
    rows = [list(row) for row in zip(bases, sources, pasted, harmonized, base_reconstructions)]
    return _grid(rows, ["base", "source", "pasted", "harmonized", "base\nreconstruction"], names, min_cell_size)


def manipulation_figure(
    inputs: Images,
    manipulated: Sequence[Images],
    names: Sequence[str],
    strengths: Sequence[float],
    attribute: str,
    min_cell_size: int = 96,
) -> PIL.Image.Image:
    """One row per image: input, then ``manipulated[i][k]`` at ``strengths[k]`` (in standard deviations)."""
    rows = [[image, *row] for image, row in zip(inputs, manipulated)]
    columns = ["input", *(f"{attribute}\n{strength:+g} sd" for strength in strengths)]
    return _grid(rows, columns, names, min_cell_size)


def refinement_figure(
    inputs: Images,
    encoded: Images,
    refined: Images,
    names: Sequence[str],
    initial_psnr: Sequence[float],
    final_psnr: Sequence[float],
    steps: int,
    min_cell_size: int = 96,
) -> PIL.Image.Image:
    """One row per image: input | encoder reconstruction | refined reconstruction, PSNRs in the row label."""
    rows = [list(row) for row in zip(inputs, encoded, refined)]
    labels = [f"{name}\n{before:.2f} -> {after:.2f} dB" for name, before, after in zip(names, initial_psnr, final_psnr)]
    return _grid(rows, ["input", "encoder", f"refined\n{steps} steps"], labels, min_cell_size)


def restoration_figure(
    degraded: Images,
    encoded: Images,
    refined: Images,
    originals: Images | None,
    names: Sequence[str],
    task: str,
    steps: int,
    min_cell_size: int = 96,
) -> PIL.Image.Image:
    """One row per image: degraded | encoder only | refined (| original, when known)."""
    rows = [list(row) for row in zip(degraded, encoded, refined, *([originals] if originals is not None else []))]
    columns = [f"degraded\n{task}", "encoder only", f"refined\n{steps} steps", *(["original"] if originals else [])]
    return _grid(rows, columns, names, min_cell_size)


__all__ = [
    "harmonization_figure",
    "interpolation_figure",
    "interpolation_gif_frames",
    "manipulation_figure",
    "mixing_figure",
    "refinement_figure",
    "restoration_figure",
    "save_gif",
]
