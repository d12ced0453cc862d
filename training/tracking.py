"""What a run shows while it trains: the progress bar with images/s, tracker scalars (TensorBoard, ...), memory
statistics and image grids."""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from checkpoints import TrainState

logger = get_logger(__name__)

def flat_hparams(args: argparse.Namespace | dict) -> dict[str, int | float | str | bool]:
    """Hyper-parameters as TensorBoard's ``add_hparams`` accepts them (None and containers become strings)."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}


def init_trackers(accelerator: Accelerator, project_name: str, args: argparse.Namespace | dict | None = None) -> None:
    """Start the trackers (TensorBoard events land in ``<logging_dir>/<project_name>/``)."""
    if accelerator.log_with:
        accelerator.init_trackers(project_name, config=flat_hparams(args) if args is not None else None)


def memory_stats(accelerator: Accelerator) -> dict[str, float]:
    """Peak memory in MiB: the device's allocator peak on accelerators, the process peak RSS on the CPU."""
    stats = {"memory/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    device = accelerator.device
    if device.type == "cuda":
        stats["memory/peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return stats


def log_scalars(accelerator: Accelerator, values: dict[str, Any], step: int) -> dict[str, float]:
    """``accelerator.log`` of the numeric scalar values (tensors become floats; NaN and inf are logged too, so a
    diverging run shows in TensorBoard); returns what was logged."""
    scalars = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().float().item()
        if isinstance(value, (int, float, np.floating, np.integer)):
            scalars[key] = float(value)
    if accelerator.log_with:
        accelerator.log(scalars, step=step)
    return scalars


def process_mean(accelerator: Accelerator, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean over processes of a step's scalar ``metrics`` (0-d tensors), by name."""
    keys = sorted(metrics)
    stacked = torch.stack([metrics[k].float().to(accelerator.device) for k in keys])
    if accelerator.num_processes > 1:
        stacked = accelerator.reduce(stacked, reduction="mean")
    return dict(zip(keys, stacked.tolist()))


def throughput_line(images_per_second: float, global_batch: int, excluded: str) -> str:
    """The end-of-run throughput line of a trainer; ``excluded`` names what :meth:`Progress.excluded` left out."""
    return (f"throughput: {images_per_second:.2f} images/s ({global_batch / images_per_second:.3f} s/step at global "
            f"batch {global_batch}; training steps only: {excluded} excluded)")


class Progress:
    """tqdm progress bar over optimizer steps with images/s (sliding window; shown on the main process only) and the
    training throughput of this invocation (:attr:`training_images_per_second`).

    Call :meth:`update` at the end of every step and run validation, sample grids and checkpoint saves inside
    :meth:`excluded`.
    """

    def __init__(self, accelerator: Accelerator, total_steps: int, state: TrainState, images_per_step: int,
                 window: int = 20, desc: str = "train"):
        from tqdm.auto import tqdm

        self.images_per_step = images_per_step
        self.times: deque[tuple[float, int]] = deque([(time.perf_counter(), state.step)], maxlen=window + 1)
        self.last_step_end: float | None = None  # None until the first (warm-up) step, which is not measured
        self.measured_steps, self.measured_seconds = 0, 0.0
        self.pending_excluded = 0.0  # excluded seconds since the last update
        self.bar = tqdm(total=total_steps, initial=state.step, desc=desc, unit="step", dynamic_ncols=True,
                        disable=not accelerator.is_local_main_process)

    @contextmanager
    def excluded(self) -> Iterator[None]:
        """Leave the time spent inside out of :attr:`training_images_per_second` (validation, grids, checkpoints)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.pending_excluded += time.perf_counter() - start

    def update(self, state: TrainState, **postfix: Any) -> None:
        """Mark the end of a step (``state.step`` just advanced) and refresh the bar with ``postfix`` values."""
        now = time.perf_counter()
        if self.last_step_end is not None:
            self.measured_steps += 1
            self.measured_seconds += now - self.last_step_end - self.pending_excluded
        self.last_step_end, self.pending_excluded = now, 0.0
        self.times.append((now, state.step))
        self.bar.update(state.step - self.bar.n)
        shown = {"img/s": f"{self.images_per_second:.1f}"}
        shown.update({k: f"{v:.3g}" if isinstance(v, float) else v for k, v in postfix.items()})
        self.bar.set_postfix(shown, refresh=False)

    @property
    def images_per_second(self) -> float:
        (t0, s0), (t1, s1) = self.times[0], self.times[-1]
        return (s1 - s0) * self.images_per_step / (t1 - t0) if t1 > t0 else 0.0

    @property
    def training_images_per_second(self) -> float:
        """Images/s of the steps of this invocation after the first (warm-up) one, the time spent in :meth:`excluded`
        blocks between them left out; NaN before two steps."""
        seconds = self.measured_seconds
        return self.measured_steps * self.images_per_step / seconds if self.measured_steps and seconds > 0 else float("nan")

    def close(self) -> None:
        self.bar.close()


def tensor_to_pil(images: torch.Tensor) -> list:
    """``[N, C, H, W]`` images in [-1, 1] (C = 1 or 3) to PIL images with the official rounding
    ``uint8(clip((x + 1) * 127.5 + 0.5, 0, 255))``."""
    import PIL.Image

    array = ((images.detach().float().cpu() + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
    array = array.permute(0, 2, 3, 1).numpy()
    return [PIL.Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in array]


def save_image_grid(
    accelerator: Accelerator,
    rows: list[list],
    path: str | os.PathLike,
    step: int,
    tag: str = "samples",
    column_labels: list[str] | None = None,
    row_labels: list[str] | None = None,
    cell_size: int | None = None,
):
    """Save ``rows`` of PIL images as a PNG grid (``ghfeat_hf.visualization.make_grid``) and log it to TensorBoard
    under ``tag``; main process only (returns the grid there, None elsewhere)."""
    if not accelerator.is_main_process:
        return None
    from ghfeat_hf.visualization import make_grid

    grid = make_grid(rows, column_labels=column_labels, row_labels=row_labels, cell_size=cell_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{path.name}")
    grid.save(temporary, format="PNG")
    os.replace(temporary, path)
    if accelerator.log_with:
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image(tag, np.asarray(grid.convert("RGB")), global_step=step, dataformats="HWC")
                tracker.writer.flush()
            elif hasattr(tracker, "log_images"):
                try:
                    tracker.log_images({tag: [grid]}, step=step)
                except Exception as error:  # a tracker with another image convention
                    logger.warning(f"Could not log the image grid to {tracker.name}: {error}")
    return grid
