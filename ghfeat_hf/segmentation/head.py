"""The few-shot segmentation head: a per-pixel classifier on spatial feature maps.

A head is a linear layer or a small MLP (`hidden` units, ReLU) over the per-pixel hypercolumn, or an ensemble of
such members (their softmax probabilities averaged). The hypercolumn is the concatenation of every source map
upsampled (bilinear) to the label resolution, standardised per channel. Its first layer is linear and the
upsampling's weights sum to one, so the head never builds the hypercolumn to predict: it standardises each source
and applies that source's block of the first layer *at the source's own resolution*, then upsamples the
`hidden`-wide results and sums them. This is the same function (up to float rounding), at a fraction of the
memory (`hidden` channels at the label resolution instead of `sum C_s`) and compute.

Fitting runs on hypercolumn rows of sampled pixels (`[P, sum C_s]`, [`gather_pixels`]) with class-balanced
cross-entropy and full-batch Adam. [`save_head`] / [`load_head`] store the weights in safetensors and the shape,
labels and feature settings in `head_config.json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from .features import upsample

HEAD_CONFIG = "head_config.json"
HEAD_WEIGHTS = "head.safetensors"


@dataclass
class HeadConfig:
    """The shape of a head: `channels` per source, the label map `size`, the label `names` (and an optional RGB
    `palette`), `hidden` units (0: linear), `members` of the ensemble, and the spatial `features` settings that
    produced its input (recorded so `ghfeat segment predict` can rebuild them)."""

    channels: list[int]
    size: int
    names: list[str]
    hidden: int = 0
    members: int = 1
    palette: list[list[int]] | None = None
    features: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.names)


class SegmentationHead(nn.Module):
    """Spatial maps (a list of `[N, C_s, H_s, W_s]`) -> label logits / probabilities at `size x size`."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        if config.hidden < 0 or config.members < 1:
            raise UsageError(f"a head needs hidden >= 0 and members >= 1, got {config.hidden} and {config.members}.")
        self.config = config
        width = sum(config.channels)
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))

        def member() -> nn.Module:
            if not config.hidden:
                return nn.Sequential(nn.Linear(width, config.num_labels))
            return nn.Sequential(nn.Linear(width, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.num_labels))

        self.members = nn.ModuleList(member() for _ in range(config.members))

    def rows_logits(self, rows: torch.Tensor, standardized: bool = False) -> torch.Tensor:
        """Logits `[M, P, L]` of every member for hypercolumn rows `[P, sum C_s]` (already standardised with the
        head's mean and std when `standardized`)."""
        if not standardized:
            rows = (rows - self.mean) / self.std
        return torch.stack([member(rows) for member in self.members])

    def _check(self, maps: Sequence[torch.Tensor]) -> None:
        got = [int(source.shape[1]) for source in maps]
        if got != list(self.config.channels):
            raise UsageError(f"the head expects feature sources of {self.config.channels} channels, got {got}: "
                             "use the features it was fitted on.")

    def probabilities(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Label probabilities `[N, L, size, size]`, the members' softmax averaged; computed source by source at
        each source's resolution (see the module docstring)."""
        self._check(maps)
        bounds = [0]
        for channels in self.config.channels:
            bounds.append(bounds[-1] + channels)
        probabilities = 0
        for member in self.members:
            first = member[0]
            by_size: dict[tuple[int, int], torch.Tensor] = {}  # same-resolution projections summed before upsampling
            for source, start, stop in zip(maps, bounds[:-1], bounds[1:]):
                scale = first.weight[:, start:stop] / self.std[start:stop]
                shift = scale @ self.mean[start:stop]
                projected = torch.einsum("nchw,kc->nkhw", source.to(scale.dtype), scale) - shift.view(1, -1, 1, 1)
                key = tuple(source.shape[-2:])
                by_size[key] = by_size[key] + projected if key in by_size else projected
            total = first.bias.view(1, -1, 1, 1) + sum(upsample(part, self.config.size) for part in by_size.values())
            logits = total if len(member) == 1 else torch.einsum(
                "nkhw,lk->nlhw", F.relu(total), member[2].weight) + member[2].bias.view(1, -1, 1, 1)
            probabilities = probabilities + logits.softmax(dim=1)
        return probabilities / len(self.members)

    @torch.no_grad()
    def predict(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Label maps `[N, size, size]` (int64), the most probable label of every pixel."""
        return self.probabilities(maps).argmax(dim=1)


@dataclass
class FitSettings:
    """How a head is fitted: Adam `steps` at `learning_rate`, `weight_decay` (decoupled, AdamW), class-balanced
    cross-entropy (`balanced`), the ensemble `seed`."""

    steps: int = 200
    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    balanced: bool = True
    seed: int = 0


def fit_head(config: HeadConfig, rows: torch.Tensor, labels: torch.Tensor,
             settings: FitSettings | None = None) -> SegmentationHead:
    """Fit a [`SegmentationHead`] on hypercolumn rows `[P, sum C_s]` with labels `[P]` in `0..L-1`; members differ
    by their initialisation (seeded). Raises [`UsageError`] for no rows or labels outside the label set."""
    settings = settings or FitSettings()
    if len(rows) == 0:
        raise UsageError("no annotated pixels to fit the head on.")
    if rows.ndim != 2 or rows.shape[1] != sum(config.channels) or len(labels) != len(rows):
        raise ValueError(f"rows must be [P, {sum(config.channels)}] with P labels, got {tuple(rows.shape)} and "
                         f"{tuple(labels.shape)}.")
    if int(labels.min()) < 0 or int(labels.max()) >= config.num_labels:
        raise UsageError(f"labels outside the label set 0..{config.num_labels - 1}: found {int(labels.min())}.."
                         f"{int(labels.max())}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        head = SegmentationHead(config)
    rows = rows.float()
    head.mean.copy_(rows.mean(dim=0))
    head.std.copy_(rows.std(dim=0, unbiased=False).clamp_min(1e-6))
    counts = torch.bincount(labels, minlength=config.num_labels).float()
    weight = None
    if settings.balanced:
        weight = torch.where(counts > 0, counts.sum() / (counts.clamp_min(1) * int((counts > 0).sum())), 0.0)
    optimizer = torch.optim.AdamW(head.members.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    targets = labels.expand(config.members, -1).reshape(-1)
    rows = (rows - head.mean) / head.std
    for _ in range(settings.steps):
        logits = head.rows_logits(rows, standardized=True)
        loss = F.cross_entropy(logits.reshape(-1, config.num_labels), targets, weight=weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return head.eval().requires_grad_(False)


def save_head(head: SegmentationHead, directory: str | os.PathLike) -> Path:
    """Write `head.safetensors` and `head_config.json` into `directory` (created); returns it."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in head.state_dict().items()}
    save_file(state, str(directory / HEAD_WEIGHTS), metadata={"format": "pt"})
    (directory / HEAD_CONFIG).write_text(json.dumps(asdict(head.config), indent=2) + "\n")
    return directory


def load_head(directory: str | os.PathLike) -> SegmentationHead:
    """The head [`save_head`] wrote in `directory`. Raises [`UsageError`] when it is missing or does not match
    its configuration."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / HEAD_CONFIG).is_file() or not (directory / HEAD_WEIGHTS).is_file():
        raise UsageError(f"{directory} holds no segmentation head ({HEAD_CONFIG} and {HEAD_WEIGHTS}); fit one with "
                         "`ghfeat segment fit`.")
    try:
        config = HeadConfig(**json.loads((directory / HEAD_CONFIG).read_text()))
        head = SegmentationHead(config)
        head.load_state_dict(load_file(str(directory / HEAD_WEIGHTS)))
    except (TypeError, ValueError, RuntimeError) as error:
        raise UsageError(f"the segmentation head in {directory} cannot be loaded: {error}") from error
    return head.eval().requires_grad_(False)


__all__ = ["HEAD_CONFIG", "HEAD_WEIGHTS", "FitSettings", "HeadConfig", "SegmentationHead", "fit_head", "load_head",
           "save_head"]
